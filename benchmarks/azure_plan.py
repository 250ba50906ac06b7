"""Azure plan benchmark. Run: ``.venv/bin/python benchmarks/azure_plan.py [--products 500] [--subscribers 5000]
[--latency 0.005] [--concurrency 8,1] [--runs 3]``.

Starts the Azure APIM ARM fake (tests/fakes/azure_apim.py) as a separate process, seeds it by running
``apply`` of a generated plan (plus products and subscriptions apimon does not own), then times ``plan``
(read the service, check, diff, annotate: in process, as the CLI does it) with each read concurrency
(APIMON_AZURE_CONCURRENCY) and counts the HTTP requests the fake served. The fake adds a fixed latency to
every request (default 5 ms) to model network round trips; without it the numbers measure only local CPU.
Each run times one plan per concurrency (interleaved, so machine load hits them alike); printed: median
(min–max) over ``--runs`` runs, beside two ceilings from the same run: concurrency 1 (the speed-up, a
same-run ratio) and the latency floor (requests x latency / concurrency: what the modelled network alone
costs). Exit status 1 if a plan is not "no changes" or bounded concurrency is not faster than concurrency 1.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchstats import load, median, ratio_spread, spread  # noqa: E402


def generate_plan(path: Path, url: str, products: int, subscribers: int) -> Path:
    lines = ["apimon: 1", "target:", "  provider: azure",
             f'  azure: {{subscription_id: sub-1, resource_group: rg, service: apim, endpoint: "{url}"}}',
             "products:"]
    for i in range(products):
        apis = "[petstore, orders]" if i % 2 else "[petstore]"
        lines += [f"  p{i:04d}: {{display_name: Product {i}, apis: {apis}, rate_limit: {{rate: {5 + i}, "
                  f"burst: {5 + i}}}, quota: {{limit: {1000 * (i + 1)}, period: day}}}}"]
    lines.append("subscribers:")
    for i in range(subscribers):
        enabled = "" if i % 10 else ", enabled: false"
        lines.append(f"  s{i:05d}: {{product: p{i % products:04d}{enabled}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def control(url: str, path: str, body: dict | None = None, method: str = "POST") -> dict:
    data = json.dumps(body or {}).encode() if method == "POST" else None
    req = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def seed_unowned(url: str, products: int, subscriptions: int) -> None:
    from azure.mgmt.apimanagement import ApiManagementClient
    from azure.mgmt.apimanagement.models import ProductContract, SubscriptionCreateParameters
    from fakes.azure_apim import StubCredential, _auth_policy_class

    c = ApiManagementClient(StubCredential(), "sub-1", base_url=url, retry_total=0,
                            authentication_policy=_auth_policy_class()("t"))
    for i in range(products):
        c.product.create_or_update("rg", "apim", f"other{i:02d}",
                                   ProductContract(display_name=f"Other {i}", state="published"))
    for i in range(subscriptions):
        c.subscription.create_or_update("rg", "apim", f"partner{i:03d}", SubscriptionCreateParameters(
            scope=f"/products/other{i % products:02d}", display_name=f"Partner {i}", state="active"))
    c.close()


def kind_of(method: str, path: str) -> str:
    parts = path.split("/service/apim/", 1)[-1].split("/")
    if len(parts) == 1:
        return f"{method} {parts[0]} (list pages)"
    if len(parts) >= 3:
        return f"{method} {parts[0]}/{{id}}/{parts[2]}"
    return f"{method} {parts[0]}/{{id}}"


def page_cost(url: str) -> float:
    """Milliseconds the fake needs for one 100-item subscriptions page (its lock serializes requests)."""
    full = (url + "/subscriptions/sub-1/resourceGroups/rg/providers/Microsoft.ApiManagement/service/apim/"
            "subscriptions?api-version=2024-05-01&$top=100&$skip=1000")
    started = time.perf_counter()
    for _ in range(5):
        with urllib.request.urlopen(urllib.request.Request(full, headers={"Authorization": "Bearer t"})) as r:
            r.read()
    return (time.perf_counter() - started) / 5 * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--products", type=int, default=500)
    ap.add_argument("--subscribers", type=int, default=5000)
    ap.add_argument("--latency", type=float, default=0.005, help="seconds the fake adds to every request")
    ap.add_argument("--concurrency", default="8,1", help="comma-separated APIMON_AZURE_CONCURRENCY values")
    ap.add_argument("--runs", "--repeat", type=int, default=3, dest="runs",
                    help="runs (one plan per concurrency each); >= 3 for the README")
    args = ap.parse_args()

    from apimon_cli.reconcile.engine import apply_changes, make_plan

    fake = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fakes" / "azure_apim.py"), "--port", "0",
                             "--seed-apis", "petstore,orders"], stdout=subprocess.PIPE, text=True)
    failed = False
    try:
        url = fake.stdout.readline().strip()
        os.environ["APIMON_AZURE_TOKEN"] = "benchmark"
        os.environ["APIMON_ALLOW_ENDPOINTS"] = url.split("//", 1)[1].rstrip("/")  # the fake (README "Security")
        with tempfile.TemporaryDirectory() as tmp:
            plan = generate_plan(Path(tmp) / "plan.yaml", url, args.products, args.subscribers)
            seed_unowned(url, 20, 200)
            started = time.perf_counter()
            run = make_plan([str(plan)])
            report = apply_changes(run.provider, run.changes.changes, run.live)
            run.provider.close()
            if report.failed:
                print("seeding failed:", report.failed[0].message)
                return 1
            print(f"seeded by apply: {len(report.outcomes):,} creates in {time.perf_counter() - started:.1f} s "
                  "(no latency; products one by one, subscriptions at concurrency 8)")
            print(f"service: {args.products:,} apimon products + 20 unowned, {args.subscribers:,} apimon "
                  f"subscriptions + 200 unowned; fake latency {args.latency * 1000:.0f} ms per request "
                  "(models a network round trip)")
            print(f"the fake serves one 100-item subscriptions page in {page_cost(url):.0f} ms (it rebuilds the "
                  "whole list per page, under one lock: server time that no client concurrency removes)\n")
            control(url, "/_fake/latency", {"seconds": args.latency})
            concs = [int(c) for c in args.concurrency.split(",")]
            results: dict[int, list[tuple[float, float, int]]] = {c: [] for c in concs}
            kinds_of: dict[int, collections.Counter] = {}
            for run_no in range(1, max(1, args.runs) + 1):
                line = []
                for conc in concs:
                    os.environ["APIMON_AZURE_CONCURRENCY"] = str(conc)
                    control(url, "/_fake/requests", method="DELETE")
                    started, cpu = time.perf_counter(), time.process_time()
                    run = make_plan([str(plan)])
                    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
                    run.provider.close()
                    requests = control(url, "/_fake/requests", method="GET")["requests"]
                    kinds_of[conc] = collections.Counter(kind_of(m, p) for m, p, _q in requests)
                    results[conc].append((elapsed, cpu, len(requests)))
                    failed |= not run.changes.empty
                    line.append(f"concurrency {conc} {elapsed:.2f} s ({len(requests):,} requests, "
                                f"{'no changes' if run.changes.empty else 'CHANGES'})")
                print(f"run {run_no}: " + "; ".join(line) + f"; {load()}", flush=True)
            print()
            for conc in concs:
                walls = [r[0] for r in results[conc]]
                floors = [r[2] * args.latency / conc for r in results[conc]]
                print(f"plan, concurrency {conc}: {spread(walls, '.2f', ' s')} wall (apimon CPU "
                      f"{spread([r[1] for r in results[conc]], '.2f', ' s')}), {results[conc][-1][2]:,} HTTP requests; "
                      f"latency floor {median(floors):.2f} s: {ratio_spread(walls, floors)} of it")
                for kind, n in sorted(kinds_of[conc].items()):
                    print(f"    {n:6,}  {kind}")
            if 1 in results and len(results) > 1:
                best = min(c for c in results if c != 1)
                one = [r[0] for r in results[1]]
                other = [r[0] for r in results[best]]
                print(f"\nspeed-up of concurrency {best} over 1, same run: {ratio_spread(one, other)}")
                failed |= median(other) >= median(one)
    finally:
        fake.terminate()
        fake.wait(timeout=10)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
