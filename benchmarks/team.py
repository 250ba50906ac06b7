"""Team setup benchmark (issue 13). Run: ``.venv/bin/python benchmarks/team.py [--rows 1000000] [--duration 8]
[--runs 3]``.

Printed in one run, every figure median (min–max) of ``--runs`` runs, each beside its ceiling measured in
the same run (ratios computed within a run):

  ingest      1,000,000 usage rows into a PostgreSQL ledger (``Ledger.replace_window``: validation + COPY)
              vs a bare psycopg ``COPY`` (``write_row``) of the same rows from the same source (the
              ``UsageRow`` generator a provider is) into the same table (target: >= 0.7x); also shown, the
              bare COPY of ready-made COPY tuples (the source's own cost left out: no provider yields those)
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
from benchstats import load, median, ratio_spread, spread  # noqa: E402

PYTHON = sys.executable
PG = os.environ.get("APIMON_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("APIMON_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
START = date(2026, 1, 1)
DAYS = 20
PRODUCTS = 5
METRICS = ("success", "blocked", "failed", "other", "total")


def rows(n: int, as_tuples: bool = False):
    """n rows as a provider yields them (lazily): UsageRow, or (``as_tuples``) ready-made COPY tuples."""
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


def bench_ledger(n: int, work: Path, runs: int) -> list[tuple[str, bool]]:
    import psycopg

    from apimon_cli.ledger import Ledger
    from apimon_cli.ledger.pg import translate
    from apimon_cli.ledger.store import _USAGE_V2

    checks = []
    res: dict[str, list[float]] = {"bare": [], "bare_tuples": [], "ingest": [], "parquet": [], "csv": [], "rss": [],
                                   "csv_rss": []}
    copy_sql = "COPY usage (day, provider, target, subscriber, product, metric, count, pulled_at) FROM STDIN"
    at = "2026-02-01T00:00:00+00:00"
    for run_no in range(1, runs + 1):
        tag = uuid.uuid4().hex[:8]
        ledger_db, bare_db = f"apimon_bench_ledger_{tag}", f"apimon_bench_bare_{tag}"
        admin(f'CREATE DATABASE "{ledger_db}"')
        admin(f'CREATE DATABASE "{bare_db}"')
        try:
            # ceiling: bare psycopg COPY of the same rows (the same UsageRow source) into the same table
            # (same DDL, same key); then, for reference, of ready-made tuples (no source cost)
            with psycopg.connect(db_url(bare_db), autocommit=True) as conn:
                conn.execute(translate(_USAGE_V2))
                conn.execute("CHECKPOINT")  # each measure starts without the previous one's dirty pages / WAL
                t0 = time.perf_counter()
                with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
                    for r in rows(n):
                        copy.write_row((r.day, "bench", "pg", r.subscriber, r.product, r.metric, r.count, at))
                bare_s = time.perf_counter() - t0
                conn.execute("DROP TABLE usage")
                conn.execute(translate(_USAGE_V2))
                conn.execute("CHECKPOINT")
                t0 = time.perf_counter()
                with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as copy:
                    for r in rows(n, as_tuples=True):
                        copy.write_row(r)
                tuples_s = time.perf_counter() - t0
            admin(f'DROP DATABASE IF EXISTS "{bare_db}" WITH (FORCE)')
            with Ledger.open(db_url(ledger_db)) as ledger:
                admin("CHECKPOINT")
                t0 = time.perf_counter()
                report = ledger.replace_window("bench", "pg", START, START + timedelta(days=DAYS - 1), rows(n),
                                               pulled_at=at)
                ingest_s = time.perf_counter() - t0
                assert report.new_count == n
            out = work / f"run{run_no}"
            out.mkdir()
            pq = run_child("export", db_url(ledger_db), str(out / "dataset"), "parquet")
            cs = run_child("export", db_url(ledger_db), str(out / "usage.csv"), "csv")
            shutil.rmtree(out)
            assert pq["rows"] == cs["rows"] == n
        finally:
            admin(f'DROP DATABASE IF EXISTS "{ledger_db}" WITH (FORCE)')
            admin(f'DROP DATABASE IF EXISTS "{bare_db}" WITH (FORCE)')
        res["bare"].append(n / bare_s)
        res["bare_tuples"].append(n / tuples_s)
        res["ingest"].append(n / ingest_s)
        res["parquet"].append(n / pq["seconds"])
        res["csv"].append(n / cs["seconds"])
        res["rss"].append(pq["rss_mb"])
        res["csv_rss"].append(cs["rss_mb"])
        print(f"run {run_no}/{runs}: ingest {n / ingest_s:,.0f} rows/s, bare COPY {n / bare_s:,.0f} rows/s "
              f"({bare_s / ingest_s:.2f}x), of tuples {n / tuples_s:,.0f} rows/s ({tuples_s / ingest_s:.2f}x); "
              f"Parquet export {n / pq['seconds']:,.0f} rows/s ({pq['rss_mb']:.0f} MB), "
              f"CSV export {n / cs['seconds']:,.0f} rows/s; {load()}", flush=True)
    ratio = median([i / b for i, b in zip(res["ingest"], res["bare"], strict=True)])
    print(f"ingest {n:,} rows into PostgreSQL: {spread(res['ingest'])} rows/s; ceiling, bare psycopg COPY of the "
          f"same rows from the same source {spread(res['bare'])} rows/s: {ratio_spread(res['ingest'], res['bare'])} "
          f"(target >= 0.7x); bare COPY of ready-made tuples {spread(res['bare_tuples'])} rows/s: "
          f"{ratio_spread(res['ingest'], res['bare_tuples'])}")
    checks.append(("ingest >= 0.7x bare COPY (median)", ratio >= 0.7))
    print(f"export {n:,} rows to Parquet: {spread(res['parquet'])} rows/s, peak RSS {max(res['rss']):.0f} MB "
          f"(ceiling 200 MB); CSV export of the same rows {spread(res['csv'])} rows/s "
          f"({max(res['csv_rss']):.0f} MB): Parquet {ratio_spread(res['parquet'], res['csv'])} the CSV rate")
    checks.append(("parquet export peak RSS < 200 MB", max(res["rss"]) < 200))
    return checks


# ---------------------------------------------------------------- gateway


def bench_gateway(work: Path, duration: int, connections: int, rounds: int) -> list[tuple[str, bool]]:
    import sqlite3

    import redis
    from gateway import BODY, free_port, nginx_conf, run_wrk, start_nginx, stop, wait_ok

    prefix = f"apimon_bench_{uuid.uuid4().hex[:8]}:"
    up_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")}
    if shutil.which("nginx"):  # one nginx process serving a fixed response: little CPU taken from the gateway
        (work / "nginx").mkdir()
        upstream = start_nginx(nginx_conf(work / "nginx", "upstream", f"listen 127.0.0.1:{up_port} reuseport; "
                                          f"location / {{ default_type application/json; return 200 '{BODY}'; }}"))
        print("gateway upstream: nginx fixed response (1 process)")
    else:
        upstream = subprocess.Popen([PYTHON, str(ROOT / "examples" / "upstream.py"), "--port", str(up_port)],
                                    stdout=subprocess.DEVNULL)
        print("gateway upstream: examples/upstream.py (aiohttp, 1 process; `apt-get install -y nginx-light` frees "
              "a core)")
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
                r = results[label][-1]
                print(f"  {label:<20} {r['rps']:>8,.0f} req/s  p99 {r['p99']:6.1f} ms  {load()}", flush=True)
            finally:
                stop(gw)
    finally:
        import signal

        stop(upstream, signal.SIGQUIT if upstream.args and upstream.args[0] == "nginx" else signal.SIGTERM)
        client = redis.Redis.from_url(REDIS)
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    for label, rs in results.items():
        print(f"gateway {label:<20} req/s {spread([r['rps'] for r in rs]):<24} p99 "
              f"{spread([r['p99'] for r in rs], '.1f', ' ms'):<24} errors {sum(r['errors'] for r in rs)}")
    mem, red, two = (results[k] for k in ("memory back end", "redis back end", "redis, --workers 2"))
    # ratios within each round (the same machine load), then median (min–max) over the rounds
    rps = {k: [r["rps"] for r in v] for k, v in (("mem", mem), ("red", red), ("two", two))}
    ratio = median([r / m for r, m in zip(rps["red"], rps["mem"], strict=True) if m])
    print(f"gateway redis / memory back end (the ceiling), same round: {ratio_spread(rps['red'], rps['mem'])} "
          "(target >= 0.7x on the median)")
    cpu_mem = [r["cpu_us"] for r in mem]
    cpu_red = [r["cpu_us"] for r in red]
    print(f"gateway CPU per request (less disturbed by other load): memory {spread(cpu_mem, '.0f', ' us')}, redis "
          f"{spread(cpu_red, '.0f', ' us')}: memory/redis {ratio_spread(cpu_mem, cpu_red)}")
    print(f"gateway --workers 2 / 1 (redis), same round: {ratio_spread(rps['two'], rps['red'])} (2 cores shared "
          "with wrk and the upstream: as measured)")
    return [("gateway redis >= 0.7x memory (median)", ratio >= 0.7)]


def main() -> int:
    parser = argparse.ArgumentParser(description="apimon team-setup benchmark (PostgreSQL, Parquet, Redis, workers)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--runs", "--rounds", type=int, default=3, dest="runs",
                        help="ledger runs and interleaved gateway rounds (>= 3 for the README)")
    parser.add_argument("--only", choices=["ledger", "gateway"], help="one half only")
    parser.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        kind, *rest = args._child
        assert kind == "export"
        print(json.dumps(child_export(*rest)))
        return 0
    checks: list[tuple[str, bool]] = []
    print(f"team benchmark: {args.runs} runs, figures median (min–max); {load()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="apimon-bench-team-") as tmp:
        work = Path(tmp)
        if args.only in (None, "ledger"):
            checks += bench_ledger(args.rows, work, args.runs)
        if args.only in (None, "gateway"):
            if not shutil.which("wrk"):
                print("benchmark: wrk is not installed (apt-get install -y wrk); gateway figures skipped",
                      file=sys.stderr)
            else:
                (work / "gw").mkdir()
                checks += bench_gateway(work / "gw", args.duration, args.connections, args.runs)
    missed = [name for name, ok in checks if not ok]
    print(f"{load()} at the end")
    print("targets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
