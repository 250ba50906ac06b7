"""Billing push benchmark: 10,000 subscribers x 31 days (310,000 ledger rows) to the Lago fake.

Run: ``.venv/bin/python benchmarks/billing_push.py [--subscribers N] [--days D] [--runs 3]``

The Lago contract fake (tests/fakes/lago_fake.py) runs standalone in its own process on 127.0.0.1, so the
figures include real HTTP, JSON and the fake's validation. Prints rows/s, the requests made and how many
carried a full batch of 100 (target: >= 99 %), then a second push of the same window (nothing to send), and
Stripe's lower bound for the same rows at its documented limits (one meter event per request, 1,000 calls/s in
live mode; in test mode the basic limit of 25 writes/s). Each of ``--runs`` runs uses a fresh fake and
ledger and also times the push's ceiling, a bare keep-alive ``http.client`` loop POSTing the same number of
pre-built 100-event batches to the same fake; printed: median (min–max) and the per-run ratio to it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchstats import load, ratio_spread, spread

ROOT = Path(__file__).resolve().parent.parent
KEY = "lago_bench_key_0001"
STRIPE_LIVE_PER_S = 1000
STRIPE_TEST_PER_S = 25


def bare_push(url: str, n: int) -> float:
    """Seconds to POST n events in batches of 100 over one keep-alive connection (bodies built beforehand)."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    bodies = [json.dumps({"events": [{"transaction_id": f"bare-{b}-{i}", "code": "api_requests",
                                      "external_subscription_id": f"sub_{(b * 100 + i) % 10_000:05d}",
                                      "timestamp": 1790000000 + i, "properties": {"requests": 1 + i % 97}}
                                     for i in range(min(100, n - b * 100))]}).encode()
              for b in range(-(-n // 100))]
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    t0 = time.perf_counter()
    for body in bodies:
        for attempt in (1, 2):
            try:
                conn.request("POST", "/api/v1/events/batch", body, headers)
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 200, resp.status
                break
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                if attempt == 2:
                    raise
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed


def push_once(args) -> dict:
    from apimon_cli.billing.push import run_push
    from apimon_cli.billing.push.vendors import make_client
    from apimon_cli.ledger import Ledger
    from apimon_cli.model import UsageRow
    from apimon_cli.planfile.loader import load_plans

    fake = subprocess.Popen([sys.executable, str(ROOT / "tests/fakes/lago_fake.py"), "--port", "0", "--api-key", KEY],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = fake.stdout.readline().strip()
        start = date(2026, 10, 1)
        end = start + timedelta(days=args.days - 1)
        with tempfile.TemporaryDirectory() as tmp:
            plan = Path(tmp) / "plan.yaml"
            lines = ["apimon: 1", "target: {provider: local}", "billing:", "  push:", "    lago:",
                     f"      api_url: {url}", "      api_key: {from_env: LAGO_API_KEY}",
                     "      metric_code: api_requests", "      subscription: metadata.lago_subscription_id",
                     "products:", "  pro: {display_name: Pro}", "subscribers:"]
            lines += [f"  s{i:05d}: {{product: pro, metadata: {{lago_subscription_id: sub_{i:05d}}}}}"
                      for i in range(args.subscribers)]
            plan.write_text("\n".join(lines) + "\n")
            env = {"LAGO_API_KEY": KEY, "APIMON_ALLOW_ENDPOINTS": url.removeprefix("http://")}
            desired = load_plans([str(plan)], env=env).desired
            assert desired is not None
            sink = desired.billing.sink("lago")
            with Ledger.open(Path(tmp) / "ledger.db") as book:
                rows = (UsageRow(f"s{i:05d}", "pro", (start + timedelta(days=d)).isoformat(), "success",
                                 1 + (i + d) % 97) for d in range(args.days) for i in range(args.subscribers))
                book.replace_window("local", "local", start, end, rows)
                n = args.subscribers * args.days
                t0 = time.perf_counter()
                report = run_push(book, desired, sink, "local", "local", start, end, make_client(sink))
                elapsed = time.perf_counter() - t0
                t1 = time.perf_counter()
                again = run_push(book, desired, sink, "local", "local", start, end, make_client(sink))
                idle = time.perf_counter() - t1
        with urllib.request.urlopen(url + "/_fake/stats") as resp:
            stats = json.load(resp)
        bare = bare_push(url, n)
    finally:
        fake.terminate()
        fake.wait()
    full = stats["batch_sizes"].get("100", 0)
    batches = stats["accepted_batches"]
    print(f"push {n:,} rows ({args.subscribers:,} subscribers x {args.days} days) to the Lago fake: "
          f"{elapsed:.1f} s, {n / elapsed:,.0f} rows/s; {report.requests:,} requests, "
          f"{full:,}/{batches:,} batches full ({100 * full / max(batches, 1):.2f} %), "
          f"{report.sent:,} sent, ok={report.ok}; bare POST loop {bare:.1f} s; second push: {again.sent} sent, "
          f"{again.requests} requests, {idle:.1f} s; {load()}", flush=True)
    assert report.ok and report.sent == n and again.requests == 0
    return {"n": n, "seconds": elapsed, "bare": bare, "idle": idle, "requests": report.requests,
            "full": full / max(batches, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=31)
    ap.add_argument("--runs", type=int, default=3, help=">= 3 for the README")
    args = ap.parse_args()
    results = [push_once(args) for _ in range(args.runs)]
    n = results[0]["n"]
    rates = [n / r["seconds"] for r in results]
    bare = [n / r["bare"] for r in results]
    print(f"\n{args.runs} runs, median (min–max): push {spread([r['seconds'] for r in results], '.1f', ' s')}, "
          f"{spread(rates)} rows/s; ceiling, the bare POST loop of the same batches {spread(bare)} rows/s: "
          f"{ratio_spread(rates, bare)} of it; {results[0]['requests']:,} requests, full batches "
          f"{spread([100 * r['full'] for r in results], '.2f', ' %')}; second push (planning only) "
          f"{spread([r['idle'] for r in results], '.1f', ' s')}")
    print(f"Stripe lower bound for the same {n:,} rows: {n:,} requests (one meter event each) = "
          f"{n / STRIPE_LIVE_PER_S:,.0f} s at 1,000 calls/s (live mode), {n / STRIPE_TEST_PER_S / 3600:,.1f} h at "
          f"25/s (test mode); Lago needed {results[0]['requests']:,} requests")
    assert all(r["full"] >= 0.99 for r in results)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
