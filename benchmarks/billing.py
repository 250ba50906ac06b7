"""Ledger, export and invoice benchmarks. Run: ``.venv/bin/python benchmarks/billing.py [--rows N] [--runs 3]``.

Each measurement runs in a fresh child process so its peak RSS (``ru_maxrss``) is its own, ``--runs`` times;
every figure is printed as median (min–max) beside its ceiling measured in the same run, and the ratio to it
computed within each run:

  ingest    ``Ledger.replace_window`` of N rows into an empty SQLite ledger vs a bare ``executemany`` INSERT
            of the same rows (tuples) into the same table, one transaction (the ceiling)
  re-pull   the same window again, one row in ten revised (the diff path), vs the bare INSERT
  export    CSV export of the N rows (``usage export``'s code) vs a bare SELECT + csv.writer of the same rows
  invoice   invoices for 100,000 subscribers x 31 days vs a bare SQL sum of the same window per subscriber

Targets (issues 9 and 21): ingest 1,000,000 usage rows at >= 300,000 rows/s with peak RSS < 200 MB; exports
stream (peak RSS independent of the row count); invoice of 100,000 subscribers <= 3 s.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchstats import load, median, ratio_spread, runs_arg, spread

PRODUCTS = 5
DAYS = 20
METRICS = ("success", "blocked", "failed", "other", "total")
START = date(2026, 1, 1)


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def _usage_rows(n: int, bump: int = 0):
    """n UsageRows as a provider would yield them: per subscriber, product, day, metric (lazily)."""
    from apimon_cli.model import UsageRow

    per_sub = PRODUCTS * DAYS * len(METRICS)
    subs = [f"sub-{i:06d}" for i in range(-(-n // per_sub))]
    products = [f"product-{j}" for j in range(PRODUCTS)]
    days = [(START + timedelta(days=d)).isoformat() for d in range(DAYS)]
    emitted = 0
    for si, sub in enumerate(subs):
        for product in products:
            for di, day in enumerate(days):
                for mi, metric in enumerate(METRICS):
                    if emitted == n:
                        return
                    # bump revises one row in 10 on a re-pull
                    yield UsageRow(sub, product, day, metric, si + di + mi + (bump if emitted % 10 == 0 else 0))
                    emitted += 1


def _window() -> tuple[date, date]:
    return START, START + timedelta(days=DAYS - 1)


# --- child measurements (each in its own process) ------------------------------------------------------
def child_source(n: int, _db: str) -> dict:
    t0, c0 = time.perf_counter(), _cpu_s()
    count = sum(1 for _ in _usage_rows(n))
    return {"rows": count, "seconds": time.perf_counter() - t0, "cpu": _cpu_s() - c0}


def child_ingest(n: int, db: str) -> dict:
    from apimon_cli.ledger import Ledger

    with Ledger.open(db) as ledger:
        t0, c0 = time.perf_counter(), _cpu_s()
        report = ledger.replace_window("aws", "bench", *_window(), _usage_rows(n))
        seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return {"rows": report.new_count, "seconds": seconds, "cpu": cpu}


def child_repull(n: int, db: str) -> dict:
    from apimon_cli.ledger import Ledger

    with Ledger.open(db) as ledger:
        t0, c0 = time.perf_counter(), _cpu_s()
        report = ledger.replace_window("aws", "bench", *_window(), _usage_rows(n, bump=1))
        seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return {
        "rows": report.new_count + report.revised_count + report.unchanged,
        "seconds": seconds,
        "cpu": cpu,
        "revised": report.revised_count,
        "unchanged": report.unchanged,
    }


def child_export(n: int, db: str) -> dict:
    from apimon_cli.export import USAGE_COLUMNS, USAGE_NUMERIC_COLUMNS, usage_records, write_csv
    from apimon_cli.ledger import Ledger

    start, end = _window()
    if n < 1_000_000:  # a leading slice of days holding n rows of the 1M-row ledger
        end = start + timedelta(days=max(1, n * DAYS // 1_000_000) - 1)
    out_path = db + f".{n}.csv"
    with Ledger.open(db) as ledger, open(out_path, "w", newline="", encoding="utf-8") as out:
        t0, c0 = time.perf_counter(), _cpu_s()
        rows = write_csv(usage_records(ledger.iter_rows(start, end)), USAGE_COLUMNS, out, USAGE_NUMERIC_COLUMNS)
        seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
    size = os.path.getsize(out_path)
    os.remove(out_path)
    return {"rows": rows, "seconds": seconds, "cpu": cpu, "bytes": size}


PULLED_AT = "2026-02-01T00:00:00+00:00"


def child_bare_ingest(n: int, db: str) -> dict:
    """The ceiling of ingest: the same rows as tuples, one executemany INSERT into the ledger's own table."""
    from apimon_cli.ledger import Ledger

    with Ledger.open(db):  # the same schema (table, key) as the ledger's
        pass
    conn = sqlite3.connect(db, isolation_level=None)
    t0, c0 = time.perf_counter(), _cpu_s()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO usage (day, provider, target, subscriber, product, metric, count, pulled_at) "
                     "VALUES (?, 'aws', 'bench', ?, ?, ?, ?, ?)",
                     ((r.day, r.subscriber, r.product, r.metric, r.count, PULLED_AT) for r in _usage_rows(n)))
    conn.execute("COMMIT")
    seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
    count = conn.execute("SELECT count(*) FROM usage").fetchone()[0]
    conn.close()
    return {"rows": count, "seconds": seconds, "cpu": cpu}


def child_bare_export(n: int, db: str) -> dict:
    """The ceiling of export: SELECT the window's rows in key order and write them with csv.writer."""
    start, end = _window()
    if n < 1_000_000:
        end = start + timedelta(days=max(1, n * DAYS // 1_000_000) - 1)
    out_path = db + f".bare{n}.csv"
    conn = sqlite3.connect(db)
    with open(out_path, "w", newline="", encoding="utf-8") as out:
        t0, c0 = time.perf_counter(), _cpu_s()
        writer = csv.writer(out)
        writer.writerow(("day", "provider", "target", "subscriber", "product", "metric", "count", "pulled_at"))
        cur = conn.execute("SELECT day, provider, target, subscriber, product, metric, count, pulled_at FROM usage "
                           "WHERE day BETWEEN ? AND ? ORDER BY day, provider, target, subscriber, product, metric",
                           (start.isoformat(), end.isoformat()))
        rows = 0
        while batch := cur.fetchmany(10_000):
            writer.writerows(batch)
            rows += len(batch)
        seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
    conn.close()
    os.remove(out_path)
    return {"rows": rows, "seconds": seconds, "cpu": cpu}


CHILDREN = {
    "source": child_source,
    "bare_ingest": child_bare_ingest,
    "bare_export": child_bare_export,
    "ingest": child_ingest,
    "repull": child_repull,
    "export": child_export,
}


def _run_child(kind: str, n: int, db: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(n), db], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _line(label: str, r: dict) -> str:
    rate = r["rows"] / r["seconds"] if r["seconds"] else float("inf")
    return (
        f"{label:<34} {r['rows']:>10,} rows  {r['seconds']:6.2f} s (cpu {r['cpu']:5.2f} s)"
        f"  {rate:>10,.0f} rows/s  peak RSS {r['rss_mb']:6.1f} MB"
    )


# --- invoice -------------------------------------------------------------------------------------------
INVOICE_SUBSCRIBERS = 100_000
INVOICE_DAYS = 31
INVOICE_PRODUCTS = {  # a mix of every model family
    "free": {"model": "free"},
    "starter": {"model": "per_unit", "fee": "29.00", "included": 10000, "unit_price": "0.001", "setup_fee": "5"},
    "pro": {"model": "graduated", "fee": "199.00", "minimum": "250.00",
            "tiers": [{"up_to": 1000, "unit_price": "0.0008"}, {"up_to": 5000, "unit_price": "0.0005"},
                      {"up_to": "inf", "unit_price": "0.0003", "flat_fee": "1.00"}]},
    "volume": {"model": "volume", "tiers": [{"up_to": 2000, "unit_price": "0.002"},
                                            {"up_to": "inf", "unit_price": "0.001"}], "maximum": "500"},
    "bulk": {"model": "package", "package": {"size": 1000, "price": "0.50", "round": "up"}},
}


def _invoice_plan(n: int):
    from apimon_cli.model import Billing, DesiredState, Subscriber, Target
    from apimon_cli.planfile.writer import product_from_plan

    products = {pid: product_from_plan(pid, {"display_name": pid, "pricing": pricing})
                for pid, pricing in INVOICE_PRODUCTS.items()}
    names = list(products)
    subs = {f"sub-{i:06d}": Subscriber(f"sub-{i:06d}", names[i % len(names)]) for i in range(n)}
    return DesiredState(Target("local", {}), Billing(), products, subs)


def child_invoice_seed(n: int, db: str) -> dict:
    """The ledger for the invoice benchmark: n subscribers x 31 days of `success` counts."""
    from apimon_cli.ledger import Ledger
    from apimon_cli.model import UsageRow

    names = list(INVOICE_PRODUCTS)
    days = [date(2026, 11, d + 1).isoformat() if d < 30 else date(2026, 10, 31).isoformat()
            for d in range(INVOICE_DAYS)]

    def rows():
        for i in range(n):
            sub, product = f"sub-{i:06d}", names[i % len(names)]
            for d, day in enumerate(days):
                yield UsageRow(sub, product, day, "success", (i * 7 + d * 13) % 400)

    with Ledger.open(db) as ledger:
        t0, c0 = time.perf_counter(), _cpu_s()
        report = ledger.replace_window("local", "bench", date(2026, 10, 31), date(2026, 11, 30), rows())
        seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
    return {"rows": report.new_count, "seconds": seconds, "cpu": cpu}


def child_invoice(n: int, db: str) -> dict:
    """What `apimon invoice --period 2026-11` does after loading the plan: ledger totals + invoices."""
    from apimon_cli.billing.periods import parse_period
    from apimon_cli.cli.billing import invoices_for
    from apimon_cli.ledger import Ledger

    desired = _invoice_plan(n)
    window = parse_period("2026-11", "month")
    t0, c0 = time.perf_counter(), _cpu_s()
    with Ledger.open(db) as ledger:
        invoices = invoices_for(desired, window, ledger, "local", "bench")
    seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
    lines = sum(len(inv.lines) for inv in invoices)
    return {"rows": len(invoices), "seconds": seconds, "cpu": cpu, "lines": lines}


def child_bare_invoice(n: int, db: str) -> dict:
    """The ceiling of invoice: the ledger's read alone, a bare SQL sum of the period per subscriber."""
    conn = sqlite3.connect(db)
    t0, c0 = time.perf_counter(), _cpu_s()
    rows = conn.execute("SELECT subscriber, product, metric, SUM(count) FROM usage WHERE provider = 'local' AND "
                        "target = 'bench' AND day BETWEEN '2026-11-01' AND '2026-11-30' "
                        "GROUP BY subscriber, product, metric").fetchall()
    seconds, cpu = time.perf_counter() - t0, _cpu_s() - c0
    conn.close()
    return {"rows": len(rows), "seconds": seconds, "cpu": cpu}


CHILDREN.update({"invoice_seed": child_invoice_seed, "invoice": child_invoice, "bare_invoice": child_bare_invoice})


def bench_invoice(runs: int, n: int = INVOICE_SUBSCRIBERS) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="apimon-bench-invoice-") as tmp:
        db = os.path.join(tmp, "ledger.db")
        seed = _run_child("invoice_seed", n, db)
        print(_line(f"invoice ledger ({n:,} subs x {INVOICE_DAYS} days)", seed) + "  (setup, once)")
        inv, bare = [], []
        for i in range(runs):
            inv.append(_run_child("invoice", n, db))
            bare.append(_run_child("bare_invoice", n, db))
            print(f"  run {i + 1}: invoice {inv[-1]['seconds']:.2f} s (cpu {inv[-1]['cpu']:.2f} s, "
                  f"{inv[-1]['lines']:,} lines, {inv[-1]['rss_mb']:.0f} MB); bare SQL sum {bare[-1]['seconds']:.2f} s; "
                  f"{load()}", flush=True)
    secs = [r["seconds"] for r in inv]
    print(f"invoice {n:,} subscribers x {INVOICE_DAYS} days: {spread(secs, '.2f', ' s')} (cpu "
          f"{spread([r['cpu'] for r in inv], '.2f', ' s')}), peak RSS {max(r['rss_mb'] for r in inv):.0f} MB; "
          f"ceiling, bare SQL sum of the window {spread([r['seconds'] for r in bare], '.2f', ' s')}: invoice takes "
          f"{ratio_spread(secs, [r['seconds'] for r in bare])} the ceiling's time; target <= 3 s: "
          f"{'met' if median(secs) <= 3 else 'NOT MET'} (median)")
    return [] if median(secs) <= 3 else ["invoice <= 3 s"]


def _rates(rs: list[dict]) -> list[float]:
    return [r["rows"] / r["seconds"] if r["seconds"] else float("inf") for r in rs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    runs_arg(parser)
    parser.add_argument("--only", choices=["ledger", "invoice"], help="one half only")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "N", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, n, db = args.child
        result = CHILDREN[kind](int(n), db)
        result["rss_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return 0

    n, missed = args.rows, []
    print(f"python {sys.version.split()[0]}, {load()}; {args.runs} runs, figures median (min–max), ratios within "
          "each run (wall-clock rates need an idle machine; cpu s is less sensitive)", flush=True)
    if args.only in (None, "ledger"):
        with tempfile.TemporaryDirectory(prefix="apimon-bench-") as tmp:
            baseline = _run_child("source", 0, os.path.join(tmp, "x.db"))
            print(f"interpreter baseline peak RSS {baseline['rss_mb']:.1f} MB")
            kinds = ("source", "bare", "ingest", "repull", "export", "bare_export")
            res: dict[str, list[dict]] = {k: [] for k in kinds}
            for i in range(args.runs):
                db, bare_db = os.path.join(tmp, f"ledger{i}.db"), os.path.join(tmp, f"bare{i}.db")
                res["source"].append(_run_child("source", n, db))
                res["bare"].append(_run_child("bare_ingest", n, bare_db))
                res["ingest"].append(_run_child("ingest", n, db))
                res["repull"].append(_run_child("repull", n, db))
                res["export"].append(_run_child("export", n, db))
                res["bare_export"].append(_run_child("bare_export", n, db))
                print(f"run {i + 1}/{args.runs} ({load()}):")
                print("  " + _line("row source alone (UsageRow gen)", res["source"][-1]))
                print("  " + _line("bare executemany INSERT (ceiling)", res["bare"][-1]))
                print("  " + _line("ingest, empty window (fast path)", res["ingest"][-1]))
                print("  " + _line("re-pull same window (diff path)", res["repull"][-1])
                      + f"  ({res['repull'][-1]['revised']:,} revised)")
                print("  " + _line(f"export CSV {n:,} rows", res["export"][-1])
                      + f"  ({res['export'][-1]['bytes'] / 1e6:.0f} MB)")
                print("  " + _line("bare SELECT + csv.writer (ceiling)", res["bare_export"][-1]), flush=True)
                os.remove(bare_db)
                if i < args.runs - 1:
                    os.remove(db)
            small = _run_child("ingest", n // 4, os.path.join(tmp, "small.db"))
            small_export = _run_child("export", n // 4, db)
            print(f"ledger file {os.path.getsize(db) / 1e6:.1f} MB; RSS check, once: ingest {n // 4:,} rows "
                  f"{small['rss_mb']:.0f} MB, export {n // 4:,} rows {small_export['rss_mb']:.0f} MB")

        ingest, bare = _rates(res["ingest"]), _rates(res["bare"])
        rss = max(r["rss_mb"] for r in res["ingest"])
        print(f"\ningest {n:,} rows: {spread(ingest)} rows/s, peak RSS {rss:.0f} MB; ceiling, bare executemany "
              f"INSERT {spread(bare)} rows/s: {ratio_spread(ingest, bare)} of it")
        ok = median(ingest) >= 300_000 and rss < 200
        print(f"  target >= 300,000 rows/s (median) and < 200 MB, row source included: {'met' if ok else 'NOT MET'}")
        if not ok:
            missed.append("ingest >= 300,000 rows/s, < 200 MB")
        own = [r["rows"] / (r["cpu"] - s["cpu"]) for r, s in zip(res["ingest"], res["source"], strict=True)
               if r["cpu"] > s["cpu"]]
        print(f"  ledger's own share (cpu less the row source's): {spread(own)} rows/s")
        repull = _rates(res["repull"])
        print(f"re-pull of the same window: {spread(repull)} rows/s; vs the bare INSERT {ratio_spread(repull, bare)}")
        export, bare_export = _rates(res["export"]), _rates(res["bare_export"])
        print(f"export CSV {n:,} rows: {spread(export)} rows/s, peak RSS "
              f"{max(r['rss_mb'] for r in res['export']):.0f} MB ({n // 4:,} rows: {small_export['rss_mb']:.0f} MB); "
              f"ceiling, bare SELECT + csv.writer {spread(bare_export)} rows/s: {ratio_spread(export, bare_export)} "
              "of it", flush=True)
    if args.only in (None, "invoice"):
        missed += bench_invoice(args.runs)
    print(f"{load()} at the end; " + ("targets met" if not missed else "MISSED: " + "; ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
