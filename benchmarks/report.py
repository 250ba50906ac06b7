"""Report and portal benchmark. Run: ``.venv/bin/python benchmarks/report.py [--subscribers N] [--runs 3]``.

A plan of 4 products and N subscribers, a ledger with 31 days of success/blocked/total per subscriber for
the period and the one before; times the figures (ledger read + two invoice runs + what-ifs), the HTML
report, and the portal (pricing page + N statements), and prints peak RSS. Each of ``--runs`` runs also
times the figures' ceiling, a bare read of the same ledger rows (``Ledger.iter_rows`` of both periods);
printed: median (min–max) and the per-run ratio to it.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import textwrap
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchstats import load, ratio_spread, spread

PLAN = """
apimon: 1
target: {provider: local, local: {state_dir: state}}
products:
  free: {display_name: Free, quota: {limit: 1000, period: month}, pricing: {model: free}}
  trial: {display_name: Trial, quota: {limit: 50, period: day}, pricing: {model: flat, fee: "5.00"}}
  starter:
    display_name: Starter
    rate_limit: {rate: 50, burst: 100}
    quota: {limit: 100000, period: month}
    pricing: {model: per_unit, fee: "29.00", included: 10000, unit_price: "0.001"}
  pro:
    display_name: Pro
    rate_limit: {rate: 200, burst: 400}
    pricing:
      model: graduated
      fee: "199.00"
      tiers: [{up_to: 1000000, unit_price: "0.0008"}, {up_to: inf, unit_price: "0.0005"}]
subscribers:
"""
PRODUCTS = ("free", "trial", "starter", "pro")


def rows(n: int, start: date, end: date):
    from apimon_cli.model import UsageRow

    d = start
    while d <= end:
        day = d.isoformat()
        for i in range(n):
            ok = 30 + (i * 7 + d.day) % 500
            blocked = (i + d.day) % 5
            pid = PRODUCTS[i % 4]
            sid = f"s{i:06d}"
            yield UsageRow(sid, pid, day, "success", ok)
            if blocked:
                yield UsageRow(sid, pid, day, "blocked", blocked)
            yield UsageRow(sid, pid, day, "total", ok + blocked)
        d += timedelta(days=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3, help=">= 3 for the README")
    args = ap.parse_args()
    n = args.subscribers
    from apimon_cli.billing.periods import parse_period
    from apimon_cli.ledger import Ledger
    from apimon_cli.planfile.loader import load_or_raise
    from apimon_cli.portal import build
    from apimon_cli.report.html import render_report
    from apimon_cli.report.source import gather

    tmp = Path(tempfile.mkdtemp(prefix="apimon-bench-report-"))
    plan = tmp / "plan.yaml"
    plan.write_text(textwrap.dedent(PLAN).lstrip()
                    + "".join(f"  s{i:06d}: {{product: {PRODUCTS[i % 4]}}}\n" for i in range(n)))
    desired = load_or_raise([str(plan)]).desired
    res: dict[str, list[float]] = {"read": [], "figures": [], "html": [], "portal": []}
    with Ledger.open(tmp / "ledger.db") as book:
        for s, e in ((date(2026, 10, 1), date(2026, 10, 31)), (date(2026, 11, 1), date(2026, 11, 30))):
            book.replace_window("local", "bench", s, e, rows(n, s, e))
        window = parse_period("2026-11", "month")
        for run_no in range(1, args.runs + 1):
            t0 = time.perf_counter()
            read = sum(1 for _ in book.iter_rows(date(2026, 10, 1), date(2026, 11, 30)))
            tr = time.perf_counter()
            report = gather(desired, book, window, "local", "bench", as_of=date(2026, 11, 20))
            t1 = time.perf_counter()
            html = render_report(report)
            t2 = time.perf_counter()
            out = tmp / f"portal-tokens-{run_no}.json"
            files, _tokens = build(desired, book, window, "local", "bench", tokens_file=out, as_of=date(2026, 11, 20))
            t3 = time.perf_counter()
            os.remove(out)
            for k, v in (("read", tr - t0), ("figures", t1 - tr), ("html", t2 - t1), ("portal", t3 - t2)):
                res[k].append(v)
            print(f"run {run_no}: ledger read {tr - t0:.2f} s ({read:,} rows), figures {t1 - tr:.2f} s, HTML "
                  f"{t2 - t1:.2f} s, portal {t3 - t2:.2f} s; {load()}", flush=True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n:,} subscribers x 30 days ({n * 30 * 3:,} ledger rows in the period), median (min–max) of {args.runs}:")
    print(f"  report figures {spread(res['figures'], '.2f', ' s')}; ceiling, the bare ledger read "
          f"{spread(res['read'], '.2f', ' s')}: {ratio_spread(res['figures'], res['read'])} of it")
    print(f"  HTML {spread(res['html'], '.2f', ' s')} ({len(html) / 1e6:.1f} MB)")
    print(f"  portal {spread(res['portal'], '.2f', ' s')}: {len(files):,} files, "
          f"{sum(map(len, files.values())) / 1e6:.0f} MB")
    print(f"  peak RSS {rss:.0f} MB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
