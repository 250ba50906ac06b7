"""Benchmark: `apimon apply` of 50 new usage plans and 500 new subscribers under AWS's quotas.

Runs the AwsFake (tests/fakes) in this process with quota enforcement (429 + Retry-After past AWS's
fixed control-plane quotas, time scaled by 1/SCALE) and the real CLI as a subprocess with
APIMON_AWS_QUOTA_SCALE=SCALE, so the client paces itself against equally scaled quotas. Prints the
requests made, the throttling errors the fake sent (must be 0) and the wall time against the lower bound
the quotas imply for those requests (target: at most 1.1x). ``--runs`` applies, each into a fresh fake;
printed: median (min–max) beside that ceiling, the quota lower bound of the same run (ratio per run).

    .venv/bin/python benchmarks/aws_apply.py [--plans 50] [--subscribers 500] [--scale 5] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from benchstats import load, ratio_spread, spread  # noqa: E402
from fakes.aws_gateway import AwsFake  # noqa: E402

from apimon_cli.providers.aws.scheduler import lower_bound_seconds  # noqa: E402


class _RequestSpan:
    """When the fake saw its first and last request (polls its counters every 2 ms)."""

    def __init__(self, fake: AwsFake):
        self.fake = fake
        self.first = self.last = 0.0
        self._seen = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            n = sum(self.fake.counts.values())
            if n != self._seen:
                now = time.monotonic()
                self.first = self.first or now
                self.last, self._seen = now, n
            time.sleep(0.002)

    def stop(self) -> tuple[float, float]:
        self._done.set()
        self._thread.join()
        return self.first, self.last


def write_plan(path: Path, n_plans: int, n_subs: int) -> None:
    lines = ["apimon: 1", "target: {provider: aws, aws: {region: us-east-1}}", "products:"]
    for i in range(n_plans):
        lines.append(f"  p{i:03d}: {{display_name: P{i}, apis: [petstore/prod], rate_limit: {{rate: 10, burst: 20}}, "
                     f"quota: {{limit: {1000 + i}, period: month}}}}")
    lines.append("subscribers:")
    for i in range(n_subs):
        lines.append(f"  s{i:04d}: {{product: p{i % n_plans:03d}, email: s{i}@example.com, "
                     f"metadata: {{customer_id: cus_{i}}}}}")
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=50)
    ap.add_argument("--subscribers", type=int, default=500)
    ap.add_argument("--scale", type=float, default=5.0, help="quota time divided by this (client and fake)")
    ap.add_argument("--runs", type=int, default=3, help=">= 3 for the README")
    args = ap.parse_args()
    results = [apply_once(args) for _ in range(args.runs)]
    if any(r is None for r in results):
        return 1
    walls, bounds, spans = ([r[k] for r in results] for k in ("wall", "bound", "span"))
    print(f"\n{args.runs} runs, median (min–max): wall {spread(walls, '.2f', ' s')}; ceiling, the quota lower bound "
          f"{spread(bounds, '.2f', ' s')}: {ratio_spread(walls, bounds)} of it (target <= 1.1x); first to last "
          f"request {ratio_spread(spans, bounds)}; throttling errors {sum(r['throttled'] for r in results)}")
    return 0 if all(r["throttled"] == 0 for r in results) else 1


def apply_once(args) -> dict | None:

    with AwsFake() as fake, tempfile.TemporaryDirectory() as tmp:
        fake.add_rest_api("petstore", ["prod"])
        mc = fake.moto_client()  # a resource apimon does not own, bypassing the front (not counted)
        mc.create_usage_plan(name="legacy")
        plan = Path(tmp) / "plan.yaml"
        write_plan(plan, args.plans, args.subscribers)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "APIMON_"))}
        env.update({"AWS_ENDPOINT_URL": fake.endpoint_url, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "NO_COLOR": "1",
                    "APIMON_AWS_QUOTA_SCALE": repr(args.scale)})
        fake.enforce_quotas(scale=1 / args.scale)
        fake.reset_counts()
        span = _RequestSpan(fake)
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "apimon_cli.cli", "apply", str(plan), "--auto-approve"],
                              env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        first, last_request = span.stop()
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            return None
        counts = dict(fake.counts)
        total = sum(counts.values())
        bounds = lower_bound_seconds(counts, args.scale)
        bound = max(bounds.values())
        which = max(bounds, key=lambda k: bounds[k])
        print(f"apply of {args.plans} usage plans + {args.subscribers} subscribers, quotas scaled by "
              f"{args.scale:g} (client APIMON_AWS_QUOTA_SCALE and fake enforcement)")
        print(f"  HTTP requests: {total}: " + ", ".join(f"{op} {n}" for op, n in sorted(counts.items())))
        print(f"  throttling errors (429) sent by the fake: {fake.throttled}")
        quota = "account-wide 10/s burst 40" if which == "*" else which
        print(f"  lower bound from the quotas: {bound:.2f} s ({quota}); at real AWS quotas: {bound * args.scale:.0f} s")
        print(f"  wall time (CLI process, start to exit): {wall:.2f} s = {wall / bound:.3f}x the bound")
        print(f"  first to last request at the fake: {last_request - first:.2f} s = "
              f"{(last_request - first) / bound:.3f}x the bound (process start-up and plan load excluded)")
        last = [line for line in proc.stdout.splitlines() if line.startswith("Apply complete")]
        print(f"  {last[0] if last else 'no summary line'}; {load()}", flush=True)
        return {"wall": wall, "bound": bound, "span": last_request - first, "throttled": fake.throttled}


if __name__ == "__main__":
    sys.exit(main())
