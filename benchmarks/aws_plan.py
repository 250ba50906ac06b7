"""Benchmark: `apimon plan` on an AWS account with 300 usage plans and 10,000 API keys.

Runs the AwsFake (moto + front, from tests/fakes) in this process, seeds it straight into moto's backend
(fast; timed separately), then runs the real CLI as a subprocess (AWS_ENDPOINT_URL = the fake) and prints
the HTTP requests the plan made, by operation, against the most a page-only read may make:
ceil(plans/500) + ceil(keys/500) + one GetUsagePlanKeys page per owned plan + REST API/stage lookups.

At APIMON_AWS_QUOTA_SCALE=1 the wall time is what AWS's account-wide quota (10 requests/s, burst 40)
imposes; a second run at a large scale shows apimon's own cost. Each scale is planned ``--runs`` times
(interleaved); printed: median (min–max) wall time beside its ceiling from the same run, the quota floor
for the requests made (ratio wall / floor per run).

    .venv/bin/python benchmarks/aws_plan.py [--plans 300] [--keys 10000] [--scales 1,100] [--runs 3]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchstats import load, ratio_spread, spread  # noqa: E402
from fakes.aws_gateway import AwsFake  # noqa: E402

MANAGED = {"apimon:managed": "true"}


def seed(fake: AwsFake, n_plans: int, n_keys: int, unmanaged_plans: int, unmanaged_keys: int) -> tuple[int, int]:
    """Plans p000.. (owned) and u000.. (not), keys s00000.. (owned, spread over owned plans) and x0000.."""
    from moto.apigateway.models import apigateway_backends

    api_id = fake.add_rest_api("petstore", ["prod"])
    backend = apigateway_backends[fake.account_id][fake.region]
    owned_plans = n_plans - unmanaged_plans
    plan_ids = []
    for i in range(n_plans):
        owned = i < owned_plans
        plan = backend.create_usage_plan({
            "name": f"p{i:03d}" if owned else f"u{i:03d}", "description": f"plan {i}",
            "apiStages": [{"apiId": api_id, "stage": "prod"}], "throttle": {"rateLimit": 10.0, "burstLimit": 20},
            "quota": {"limit": 1000 + i, "period": "MONTH", "offset": 0}, "tags": dict(MANAGED) if owned else None})
        plan_ids.append(plan.id)
    owned_keys = n_keys - unmanaged_keys
    for i in range(n_keys):
        owned = i < owned_keys
        key = backend.create_api_key({"name": f"s{i:05d}" if owned else f"x{i:05d}", "enabled": True,
                                      "description": "", "tags": dict(MANAGED) if owned else None})
        backend.create_usage_plan_key(plan_ids[i % owned_plans] if owned else plan_ids[-1],
                                      {"keyId": key.id, "keyType": "API_KEY"})
    return owned_plans, owned_keys


def write_plan(path: Path, owned_plans: int, owned_keys: int) -> None:
    lines = ["apimon: 1", "target: {provider: aws, aws: {region: us-east-1}}", "products:"]
    for i in range(owned_plans):
        lines.append(f"  p{i:03d}: {{display_name: P{i}, description: plan {i}, apis: [petstore/prod], "
                     f"rate_limit: {{rate: 10, burst: 20}}, quota: {{limit: {1000 + i}, period: month}}}}")
    lines.append("subscribers:")
    for i in range(owned_keys):
        lines.append(f"  s{i:05d}: {{product: p{i % owned_plans:03d}}}")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=300)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--unmanaged-plans", type=int, default=10)
    ap.add_argument("--unmanaged-keys", type=int, default=100)
    ap.add_argument("--scales", default="1,100", help="APIMON_AWS_QUOTA_SCALE values to run plan with")
    ap.add_argument("--runs", type=int, default=3, help=">= 3 for the README")
    args = ap.parse_args()

    with AwsFake() as fake, tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        owned_plans, owned_keys = seed(fake, args.plans, args.keys, args.unmanaged_plans, args.unmanaged_keys)
        seeded = time.monotonic() - t0
        plan = Path(tmp) / "plan.yaml"
        write_plan(plan, owned_plans, owned_keys)
        print(f"seeded {args.plans} usage plans ({owned_plans} apimon-managed) and {args.keys} API keys "
              f"({owned_keys} managed) into moto in {seeded:.1f} s")
        bound = (math.ceil(args.plans / 500) + math.ceil(args.keys / 500) + owned_plans * 1
                 + 1 + 1)  # GetRestApis page + one GetStages for the one API the plan names
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "APIMON_"))}
        env.update({"AWS_ENDPOINT_URL": fake.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "NO_COLOR": "1"})
        scales = [s.strip() for s in args.scales.split(",") if s.strip()]
        figures: dict[str, list[tuple[float, float]]] = {scale: [] for scale in scales}
        for run_no in range(1, args.runs + 1):
            for scale in scales:
                fake.reset_counts()
                time.sleep(0.2)
                t0 = time.monotonic()
                proc = subprocess.run([sys.executable, "-m", "apimon_cli.cli", "plan", str(plan),
                                       "--detailed-exitcode"], env=env | {"APIMON_AWS_QUOTA_SCALE": scale},
                                      capture_output=True, text=True)
                wall = time.monotonic() - t0
                total = sum(fake.counts.values())
                quota_floor = max(0, total - 40) / (10 * float(scale))
                figures[scale].append((wall, quota_floor))
                status = "no changes" if proc.returncode == 0 else f"exit {proc.returncode}"
                print(f"run {run_no}, APIMON_AWS_QUOTA_SCALE={scale}: {status}, wall {wall:.1f} s (AWS quota floor "
                      f"for {total} requests: {quota_floor:.1f} s); {load()}", flush=True)
                if run_no == 1:
                    print(f"  HTTP requests: {total} (page-only bound {bound}): "
                          + ", ".join(f"{op} {n}" for op, n in sorted(fake.counts.items())))
                if proc.returncode not in (0, 2):
                    print(proc.stderr[-2000:])
                    return 1
                if total > bound:
                    print("  FAIL: more requests than pages")
                    return 1
        print()
        for scale in scales:
            walls, floors = [w for w, _ in figures[scale]], [f for _, f in figures[scale]]
            print(f"plan at APIMON_AWS_QUOTA_SCALE={scale}: {spread(walls, '.1f', ' s')}; ceiling, the quota floor "
                  f"{spread(floors, '.1f', ' s')}: {ratio_spread(walls, floors) if min(floors) > 0 else 'n/a'} of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
