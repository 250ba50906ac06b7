"""Apigee plan benchmark. Run: ``.venv/bin/python benchmarks/apigee_plan.py [--products 1000] [--developers 5000]``.

Seeds the Apigee fake (through its Python API) with N owned API products, each with a published apimon rate
plan, and M owned developers with one app each; writes the matching plan file; then times ``apimon plan``
(a fresh CLI process, so the fake's server threads do not share its interpreter) and counts the HTTP
requests the plan made, by kind. Two runs:

- ``org-apps``: a fake with the organization-level app list (``GET .../apps?expand=true``), as Apigee has;
- ``per-developer``: the shared fake as it is (no organization-level app list): apimon falls back to listing
  apps per developer.

Each run times ``plan`` and, as its ceiling, ``validate`` of the same plan (no HTTP); printed: median
(min–max) of ``--runs`` runs and the per-run ratio plan / validate.

Expected: pages of up to 1,000 with ``expand=true``, no per-resource GET, and "No changes.".
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "tests" / "providers"), str(ROOT / "benchmarks")]

from benchstats import load, ratio_spread, spread  # noqa: E402
from fakes.apigee import ApigeeFake  # noqa: E402
from test_apigee_support import OrgAppsFake  # noqa: E402

from apimon_cli.model import Pricing, Product  # noqa: E402
from apimon_cli.providers.apigee.rateplans import rate_plan_body  # noqa: E402

ORG = "acme"
MANAGED = [{"name": "apimon-managed", "value": "true"}]
START_MS = "1798761600000"  # 2027-01-01T00:00:00Z


def seed(fake: ApigeeFake, products: int, developers: int) -> None:
    for i in range(products):
        pid = f"p{i:04d}"
        fake.add_product(pid, displayName=f"Product {i}", environments=["prod"], proxies=["petstore"],
                         quota="100000", quotaInterval="1", quotaTimeUnit="month",
                         attributes=MANAGED + [{"name": "apimon-rate", "value": "10"},
                                               {"name": "apimon-burst", "value": "20"}])
        pricing = Pricing(model="per_unit", fee=Decimal("29"), unit_price=Decimal("0.001"))
        body = rate_plan_body(Product(pid, f"Product {i}", pricing=pricing), "USD", "month")
        fake.add_rate_plan(pid, **body, state="PUBLISHED", startTime=START_MS)
    for i in range(developers):
        email = f"dev{i:05d}@example.com"
        fake.add_developer(email, attributes=MANAGED)
        fake.add_app(email, f"s{i:05d}", api_products=[f"p{i % products:04d}"],
                     attributes=MANAGED + [{"name": "apimon-meta-customer_id", "value": f"cus_{i}"}])


def write_plan(path: Path, endpoint: str, products: int, developers: int) -> None:
    lines = ["apimon: 1", "target:", "  provider: apigee",
             f"  apigee: {{organization: {ORG}, environments: [prod], endpoint: '{endpoint}'}}",
             "billing: {currency: USD, period: month}", "products:"]
    for i in range(products):
        lines.append(f"  p{i:04d}: {{display_name: Product {i}, apis: [petstore], rate_limit: {{rate: 10, burst: 20}},"
                     " quota: {limit: 100000, period: month},"
                     ' pricing: {model: per_unit, fee: "29.00", unit_price: "0.001"}}')
    lines.append("subscribers:")
    for i in range(developers):
        lines.append(f"  s{i:05d}: {{product: p{i % products:04d}, email: dev{i:05d}@example.com,"
                     f" metadata: {{customer_id: cus_{i}}}}}")
    path.write_text("\n".join(lines) + "\n")


def kind_of(path: str, query: dict) -> str:
    tail = path.split(f"/organizations/{ORG}", 1)[1] or "/"
    if tail == "/":
        return "GET organization"
    if tail == "/apiproducts":
        return "list apiproducts"
    if tail == "/apiproducts/-/rateplans":
        return "list rateplans (all products)"
    if tail == "/apps":
        return "list apps (organization)"
    if tail == "/developers":
        return "list developers"
    if tail.startswith("/developers/") and tail.endswith("/apps"):
        return "list apps (per developer)"
    if tail == "/apis":
        return "list apis"
    return "other: " + tail


def run(label: str, fake_cls, products: int, developers: int, workdir: Path, runs: int) -> None:
    with fake_cls(org=ORG, environments=["prod"], proxies=["petstore"]) as fake:
        t0 = time.perf_counter()
        seed(fake, products, developers)
        seeded = time.perf_counter() - t0
        plan = workdir / f"{label}.yaml"
        write_plan(plan, fake.endpoint, products, developers)
        hostport = fake.endpoint.split("//", 1)[1].rstrip("/")
        env = {**os.environ, "APIMON_APIGEE_TOKEN": "bench", "NO_COLOR": "1", "APIMON_ALLOW_ENDPOINTS": hostport}
        walls, validates, ok = [], [], True
        for _ in range(runs):
            fake.reset_requests()
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "apimon_cli.cli", "plan", str(plan)], env=env,
                                  capture_output=True, text=True, timeout=600)
            walls.append(time.perf_counter() - t0)
            requests = list(fake.requests)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "apimon_cli.cli", "validate", str(plan)], env=env,
                           capture_output=True, text=True, timeout=600)
            validates.append(time.perf_counter() - t0)
            ok &= proc.returncode == 0 and "No changes." in proc.stdout
    kinds = collections.Counter(kind_of(p, q) for _, p, q in requests)
    methods = collections.Counter(m for m, _, _ in requests)
    expand = all(q.get("expand") == "true" for _, p, q in requests
                 if kind_of(p, q).startswith(("list apiproducts", "list rateplans", "list apps")))
    counts = {q.get("count") or q.get("pageSize") for _, p, q in requests if q.get("count") or q.get("pageSize")}
    print(f"\n[{label}] {products} products (+{products} rate plans), {developers} developers with one app each "
          f"(seeded in {seeded:.1f} s); {runs} runs; {load()}")
    print(f"  apimon plan: {spread(walls, '.2f', ' s')} wall, {'No changes.' if ok else 'UNEXPECTED'}; ceiling, "
          f"apimon validate of the same plan (no HTTP) {spread(validates, '.2f', ' s')}: plan "
          f"{ratio_spread(walls, validates)} of it")
    print(f"  HTTP requests (last run): {len(requests)} "
          f"({', '.join(f'{m} {n}' for m, n in sorted(methods.items()))}); page sizes {sorted(counts)}; "
          f"expand=true on every list: {expand}")
    for kind, n in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"    {n:6d}  {kind}")
    if not ok:
        print(proc.stdout[-2000:], proc.stderr[-2000:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--products", type=int, default=1000)
    parser.add_argument("--developers", type=int, default=5000)
    parser.add_argument("--only", choices=["org-apps", "per-developer"])
    parser.add_argument("--runs", type=int, default=3, help=">= 3 for the README")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for label, cls in (("org-apps", OrgAppsFake), ("per-developer", ApigeeFake)):
            if args.only in (None, label):
                run(label, cls, args.products, args.developers, Path(tmp), args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
