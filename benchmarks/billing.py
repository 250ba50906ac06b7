"""Ledger, export and invoice benchmarks. Run: ``.venv/bin/python benchmarks/billing.py [--rows N]``.

Each measurement runs in a fresh child process so its peak RSS (``ru_maxrss``) is its own.
Targets (issue): ingest 1,000,000 usage rows at >= 300,000 rows/s with peak RSS < 200 MB; exports stream
(peak RSS independent of the row count).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta

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


CHILDREN = {
    "source": child_source,
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


CHILDREN.update({"invoice_seed": child_invoice_seed, "invoice": child_invoice})


def bench_invoice(n: int = INVOICE_SUBSCRIBERS) -> None:
    with tempfile.TemporaryDirectory(prefix="apimon-bench-invoice-") as tmp:
        db = os.path.join(tmp, "ledger.db")
        seed = _run_child("invoice_seed", n, db)
        print(_line(f"invoice ledger ({n:,} subs x {INVOICE_DAYS} days)", seed))
        r = _run_child("invoice", n, db)
        print(f"{'invoice ' + format(n, ',') + ' subscribers':<34} {r['lines']:>10,} lines "
              f"{r['seconds']:6.2f} s wall (cpu {r['cpu']:.2f} s)"
              f"  peak RSS {r['rss_mb']:6.1f} MB   target <= 3 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=3, metavar=("KIND", "N", "DB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, n, db = args.child
        result = CHILDREN[kind](int(n), db)
        result["rss_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return

    n = args.rows
    with tempfile.TemporaryDirectory(prefix="apimon-bench-") as tmp:
        db = os.path.join(tmp, "ledger.db")
        baseline = _run_child("source", 0, db)
        print(
            f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
            f" (wall-clock rates need an idle machine; cpu s is less sensitive), "
            f"interpreter baseline peak RSS {baseline['rss_mb']:.1f} MB"
        )
        source = _run_child("source", n, db)
        print(_line("row source alone (UsageRow gen)", source))
        r = _run_child("ingest", n, db)
        print(_line("ingest, empty window (fast path)", r))
        ok = r["rows"] / r["seconds"] >= 300_000 and r["rss_mb"] < 200
        print(f"  target >= 300,000 rows/s and < 200 MB, row source included: {'met' if ok else 'NOT MET'}")
        ledger_only = r["cpu"] - source["cpu"]
        print(f"  ledger's own share: {ledger_only:.2f} s cpu = {r['rows'] / ledger_only:,.0f} rows/s")
        small = _run_child("ingest", n // 4, os.path.join(tmp, "small.db"))
        print(_line(f"ingest {n // 4:,} rows (RSS check)", small))
        r = _run_child("repull", n, db)
        print(_line("re-pull same window (diff path)", r) + f"  ({r['revised']:,} revised)")
        print(f"ledger file {os.path.getsize(db) / 1e6:.1f} MB")
        for m in (n, n // 4):
            r = _run_child("export", m, db)
            print(_line(f"export CSV {m:,} rows", r) + f"  ({r['bytes'] / 1e6:.0f} MB)")
    bench_invoice()


if __name__ == "__main__":
    main()
