"""Team setup benchmark (issue 13). Run: ``.venv/bin/python benchmarks/team.py [--rows 1000000] [--duration 8]``.

Printed in one run, each figure beside its ceiling measured in the same run:

  ingest      1,000,000 usage rows into a PostgreSQL ledger (``Ledger.replace_window``: validation + COPY)
              vs a bare psycopg ``COPY`` of the same rows into the same table (target: >= 0.7x)
  parquet     the 1,000,000 rows exported from that ledger to a Parquet dataset (server-side cursor, row
              groups): rows/s beside the CSV export of the same rows, peak RSS of the exporting process
              (target: < 200 MB)
  gateway     `apimon gateway serve` with target.local.limits backend redis vs the memory back end, same wrk
              load, interleaved rounds, ratios within a round (target: >= 0.7x on the median), then `--workers 2` vs 1
              (Redis back end). On a 2-core machine wrk, the
              upstream and the gateway share the cores: the workers ratio is reported as measured.

Needs PostgreSQL (APIMON_TEST_POSTGRES_URL, default postgresql://postgres@127.0.0.1:5432/postgres), Redis
(APIMON_TEST_REDIS_URL, default redis://127.0.0.1:6379/0) and wrk (``apt-get install -y wrk``). Creates and
drops its own database and Redis key prefix. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
PYTHON = sys.executable
PG = os.environ.get("APIMON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("APIMON_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
START = date(2026, 1, 1)
DAYS = 20
PRODUCTS = 5
METRICS = ("success", "blocked", "failed", "other", "total")


def rows(n: int, as_tuples: bool = False):
    """n rows as a provider yields them (lazily): UsageRow, or the COPY tuple of the bare ceiling."""
    from apimon_cli.model import UsageRow

    per_sub = PRODUCTS * DAYS * len(METRICS)
    days = [(START + timedelta(days=d)).isoformat() for d in range(DAYS)]
    products = [f"product-{j}" for j in range(PRODUCTS)]
    emitted = 0
    for si in range(-(-n // per_sub)):
        sub = f"sub-{si:06d}"
        for product in products:
            for di, day in enumerate(days):
                for mi, metric in enumerate(METRICS):
                    if emitted == n:
                        return
                    count = si + di + mi
                    if as_tuples:
                        yield (day, "bench", "pg", sub, product, metric, count, "2026-02-01T00:00:00+00:00")
                    else:
                        yield UsageRow(sub, product, day, metric, count)
                    emitted += 1


def db_url(name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    p = urlsplit(PG)
    return urlunsplit((p.scheme, p.netloc, "/" + name, p.query, ""))


def admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(sql)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- children (own process: own RSS)


def child_export(url: str, out: str, fmt: str) -> dict:
    from apimon_cli.export.parquet import write_dataset
    from apimon_cli.export.writers import USAGE_COLUMNS, USAGE_NUMERIC_COLUMNS, usage_records, write_csv
    from apimon_cli.ledger import Ledger

    t0 = time.perf_counter()
    with Ledger.open(url) as ledger:
        if fmt == "parquet":
            n = write_dataset(ledger.iter_rows(), out)
        else:
            with open(out, "w", newline="") as fh:
                n = write_csv(usage_records(ledger.iter_rows()), USAGE_COLUMNS, fh, USAGE_NUMERIC_COLUMNS)
    return {"rows": n, "seconds": time.perf_counter() - t0, "rss_mb": peak_rss_mb()}


def run_child(*args: str) -> dict:
    out = subprocess.run([PYTHON, __file__, "--_child", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- ledger


def bench_ledger(n: int, work: Path) -> list[tuple[str, bool]]:
    import psycopg

    from apimon_cli.ledger import Ledger
    from apimon_cli.ledger.pg import translate
    from apimon_cli.ledger.store import _USAGE_V2

    checks = []
    tag = uuid.uuid4().hex[:8]
    ledger_db, bare_db = f"apimon_bench_ledger_{tag}", f"apimon_bench_bare_{tag}"
    admin(f'CREATE DATABASE "{ledger_db}"')
    admin(f'CREATE DATABASE "{bare_db}"')
    try:
        # ceiling: bare psycopg COPY of the same rows into the same table (same DDL, same key)
        with psycopg.connect(db_url(bare_db), autocommit=True) as conn:
            conn.execute(translate(_USAGE_V2))
            t0 = time.perf_counter()
            with conn.transaction(), conn.cursor() as cur, cur.copy(
                "COPY usage (day, provider, target, subscriber, product, metric, count, pulled_at) FROM STDIN"
            ) as copy:
                for r in rows(n, as_tuples=True):
                    copy.write_row(r)
            bare_s = time.perf_counter() - t0
        with Ledger.open(db_url(ledger_db)) as ledger:
            t0 = time.perf_counter()
            report = ledger.replace_window("bench", "pg", START, START + timedelta(days=DAYS - 1), rows(n),
                                           pulled_at="2026-02-01T00:00:00+00:00")
            ingest_s = time.perf_counter() - t0
            assert report.new_count == n
        ratio = bare_s / ingest_s
        print(f"ingest {n:,} rows into PostgreSQL   {n / ingest_s:>12,.0f} rows/s ({ingest_s:.1f} s)   "
              f"bare psycopg COPY {n / bare_s:>12,.0f} rows/s ({bare_s:.1f} s)   ratio {ratio:.2f}x (target >= 0.7x)")
        checks.append(("ingest >= 0.7x bare COPY", ratio >= 0.7))

        pq = run_child("export", db_url(ledger_db), str(work / "dataset"), "parquet")
        cs = run_child("export", db_url(ledger_db), str(work / "usage.csv"), "csv")
        assert pq["rows"] == cs["rows"] == n
        print(f"export {n:,} rows to Parquet        {n / pq['seconds']:>12,.0f} rows/s ({pq['seconds']:.1f} s)   "
              f"CSV export {n / cs['seconds']:>12,.0f} rows/s ({cs['seconds']:.1f} s)   "
              f"peak RSS {pq['rss_mb']:.0f} MB (ceiling 200 MB; CSV {cs['rss_mb']:.0f} MB)")
        checks.append(("parquet export peak RSS < 200 MB", pq["rss_mb"] < 200))
    finally:
        admin(f'DROP DATABASE IF EXISTS "{ledger_db}" WITH (FORCE)')
        admin(f'DROP DATABASE IF EXISTS "{bare_db}" WITH (FORCE)')
    return checks


# ---------------------------------------------------------------- gateway


def bench_gateway(work: Path, duration: int, connections: int, rounds: int) -> list[tuple[str, bool]]:
    import sqlite3

    import redis
    from gateway import free_port, run_wrk, stop, wait_ok

    prefix = f"apimon_bench_{uuid.uuid4().hex[:8]}:"
    up_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")}
    upstream = subprocess.Popen([PYTHON, str(ROOT / "examples" / "upstream.py"), "--port", str(up_port)],
                                stdout=subprocess.DEVNULL)
    results: dict[str, list[dict]] = {}
    try:
        for backend in ("memory", "redis"):
            d = work / backend
            d.mkdir()
            limits = f'{{backend: redis, url: "{REDIS}", key_prefix: "{prefix}"}}' if backend == "redis" else \
                "{backend: memory}"
            (d / "plan.yaml").write_text(f"""apimon: 1
target:
  provider: local
  local: {{state_dir: state, upstreams: {{petstore: "http://127.0.0.1:{up_port}"}}, limits: {limits}}}
products:
  bench:
    display_name: Bench
    apis: [petstore]
    rate_limit: {{rate: 1000000, burst: 1000000}}
    quota: {{limit: 1000000000, period: month}}
    pricing: {{model: free}}
subscribers:
  loadgen: {{product: bench}}
""")
            subprocess.run([PYTHON, "-m", "apimon_cli.cli", "apply", str(d / "plan.yaml"), "--auto-approve"],
                           env=env, check=True, capture_output=True)
        with sqlite3.connect(work / "memory" / "state" / "state.db") as conn:
            key_mem = conn.execute("SELECT api_key FROM subscribers").fetchone()[0]
        with sqlite3.connect(work / "redis" / "state" / "state.db") as conn:
            key_redis = conn.execute("SELECT api_key FROM subscribers").fetchone()[0]
        runs = [("memory back end", "memory", key_mem, 1), ("redis back end", "redis", key_redis, 1),
                ("redis, --workers 2", "redis", key_redis, 2)]
        for label, backend, key, workers in [run for _ in range(rounds) for run in runs]:  # interleaved rounds
            port = free_port()
            plan = str(work / backend / "plan.yaml")
            gw = subprocess.Popen([PYTHON, "-m", "apimon_cli.cli", "gateway", "serve", plan,
                                   "--listen", f"127.0.0.1:{port}", "--workers", str(workers)],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                url = f"http://127.0.0.1:{port}/petstore/pets/2"
                wait_ok(url, key, 30)
                pid = gw.pid if workers == 1 else None  # one process: its CPU time per request too
                results.setdefault(label, []).append(run_wrk(url, key, duration, connections, 2, pid))
            finally:
                stop(gw)
    finally:
        stop(upstream)
        client = redis.Redis.from_url(REDIS)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    import statistics

    def mmm(values: list[float], fmt: str = "{:,.0f}") -> str:
        return " / ".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))

    for label, rs in results.items():
        print(f"gateway {label:<20} req/s {mmm([r['rps'] for r in rs]):<26} p99 ms "
              f"{mmm([r['p99'] for r in rs], '{:.1f}'):<20} errors {sum(r['errors'] for r in rs)}"
              "  (min / median / max)")
    mem, red, two = (results[k] for k in ("memory back end", "redis back end", "redis, --workers 2"))
    # ratios within each round (the same machine load), then min / median / max over the rounds
    ratio = [r["rps"] / m["rps"] for r, m in zip(red, mem, strict=True) if m["rps"]]
    workers = [t["rps"] / r["rps"] for t, r in zip(two, red, strict=True) if r["rps"]]
    print(f"gateway redis / memory back end, same round: {mmm(ratio, '{:.2f}x')} (target >= 0.7x on the median)")
    cpu_mem = statistics.median(r["cpu_us"] for r in mem)
    cpu_red = statistics.median(r["cpu_us"] for r in red)
    print(f"gateway CPU per request (median, less disturbed by other load): memory {cpu_mem:.0f} us, redis "
          f"{cpu_red:.0f} us: {cpu_mem / cpu_red:.2f}x")
    print(f"gateway --workers 2 / 1 (redis), same round: {mmm(workers, '{:.2f}x')} (2 cores shared with wrk and the "
          "upstream: as measured)")
    return [("gateway redis >= 0.7x memory (median)", bool(ratio) and statistics.median(ratio) >= 0.7)]


def main() -> int:
    parser = argparse.ArgumentParser(description="apimon team-setup benchmark (PostgreSQL, Parquet, Redis, workers)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved gateway rounds (min / median / max)")
    parser.add_argument("--only", choices=["ledger", "gateway"], help="one half only")
    parser.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        kind, *rest = args._child
        assert kind == "export"
        print(json.dumps(child_export(*rest)))
        return 0
    checks: list[tuple[str, bool]] = []
    with tempfile.TemporaryDirectory(prefix="apimon-bench-team-") as tmp:
        work = Path(tmp)
        if args.only in (None, "ledger"):
            checks += bench_ledger(args.rows, work)
        if args.only in (None, "gateway"):
            if not shutil.which("wrk"):
                print("benchmark: wrk is not installed (apt-get install -y wrk); gateway figures skipped",
                      file=sys.stderr)
            else:
                (work / "gw").mkdir()
                checks += bench_gateway(work / "gw", args.duration, args.connections, args.rounds)
    missed = [name for name, ok in checks if not ok]
    print("targets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
