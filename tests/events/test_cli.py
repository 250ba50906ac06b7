"""`apply` and `usage pull` publish after committing, `events flush` delivers what waits, `events consume`
feeds the ledger exactly once: through the real CLI, a real broker and an independent consumer."""

from __future__ import annotations

import socket
import sqlite3
import time

import broker
from confluent_kafka import Producer
from conftest import run_cli, write_plan
from helpers import read_topic

from apimon_cli.events import types as T
from apimon_cli.events.cloudevent import CloudEvent, IdSequence, kafka_headers, request_data, rfc3339
from apimon_cli.ledger import Ledger
from apimon_cli.ledger.stream import stream_target

kafka = broker.fixture()
KEY = "imported-key-value-0123456789abcdef"
PLAN = """
apimon: 1
target: {provider: local, local: {state_dir: state}}
events:
  kafka: {bootstrap_servers: "${env:KAFKA_BOOTSTRAP}", topic: apimon.events}
products:
  free: {display_name: Free, quota: {limit: 1000, period: month}}
  pro: {display_name: Pro, description: Production}
subscribers:
  acme: {product: pro, email: billing@acme.example}
  bob: {product: free, key: {from_env: BOB_KEY}}
"""


def _env(bootstrap: str) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP": bootstrap, "BOB_KEY": KEY, "APIMON_EVENTS_TIMEOUT": "20"}


def _dead() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_apply_publishes_after_the_changes_without_key_values(kafka, tmp_path):
    kafka.create_topic("apimon.events")
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    r = run_cli("apply", str(plan), "--auto-approve", env=_env(kafka.bootstrap))
    assert r.code == 0, r.output
    assert "Published events: 4 to kafka." in r.stderr
    # bob disabled and acme deleted: updated + key.revoked (disabled), deleted + key.revoked (deleted)
    write_plan(plan, PLAN.replace("bob: {product: free,", "bob: {product: free, enabled: false,")
               .replace("  acme: {product: pro, email: billing@acme.example}\n", ""))
    r = run_cli("apply", str(plan), "--auto-approve", env=_env(kafka.bootstrap))
    assert r.code == 0, r.output
    msgs = read_topic(kafka.bootstrap, "apimon.events", expect=8)
    events = [m.event for m in msgs]
    types = sorted(e["type"] for e in events)
    assert types == sorted([T.PRODUCT_CREATED, T.PRODUCT_CREATED, T.SUBSCRIBER_CREATED, T.SUBSCRIBER_CREATED,
                            T.SUBSCRIBER_UPDATED, T.KEY_REVOKED, T.SUBSCRIBER_DELETED, T.KEY_REVOKED])
    for m in msgs:
        assert KEY.encode() not in m.value and all(KEY.encode() not in v for v in m.headers.values())
        assert m.event["source"] == "apimon/apply"
    created = next(e for e in events if e["type"] == T.SUBSCRIBER_CREATED and e["subject"] == "bob")
    assert created["data"]["fields"]["product"] == {"before": None, "after": "free"}
    assert created["data"]["key_changed"] is True and "key" not in created["data"]["fields"]
    revoked = sorted((e["subject"], e["data"]["reason"]) for e in events if e["type"] == T.KEY_REVOKED)
    assert revoked == [("acme", "deleted"), ("bob", "disabled")]
    product = next(e for e in events if e["type"] == T.PRODUCT_CREATED and e["data"]["product"] == "pro")
    assert "subject" not in product  # no subscriber: no subject, no message key
    assert product["data"]["fields"]["description"]["after"] == "Production"
    # the state keys themselves never appear either
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        state_keys = [k for (k,) in conn.execute("SELECT api_key FROM subscribers")]
    assert state_keys and not any(k.encode() in m.value for k in state_keys for m in msgs)


def test_unreachable_broker_apply_succeeds_then_flush_delivers(kafka, tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    started = time.monotonic()
    r = run_cli("apply", str(plan), "--auto-approve", env=_env(_dead()))
    assert r.code == 0, r.output
    assert time.monotonic() - started < 25
    lines = [line for line in r.stderr.splitlines() if "events" in line]
    assert len(lines) == 1, r.stderr
    assert "warning: events: 4 events not delivered (kafka:" in lines[0]
    assert f"wait in {tmp_path / '.apimon' / 'events-outbox.db'}" in lines[0]
    assert f"`apimon events flush {plan}`" in lines[0]
    r = run_cli("events", "flush", str(plan), env=_env(_dead()))
    assert r.code == 1 and "error: events: 4 events not delivered" in r.stderr
    r = run_cli("events", "flush", str(plan), env=_env(kafka.bootstrap))
    assert r.code == 0, r.output
    assert "Published events: 4 to kafka." in r.stderr
    assert len(read_topic(kafka.bootstrap, "apimon.events", expect=4)) == 4
    r = run_cli("events", "flush", str(plan), env=_env(kafka.bootstrap))
    assert r.code == 0 and "nothing to deliver" in r.stderr


def test_usage_pull_publishes_usage_daily_for_new_and_revised_rows(kafka, tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    assert run_cli("apply", str(plan), "--auto-approve", env=_env(kafka.bootstrap)).code == 0
    state = sqlite3.connect(tmp_path / "state" / "state.db")
    with state:  # what a gateway would have metered
        state.executemany("INSERT INTO usage (subscriber, product, day, metric, count) VALUES (?, ?, ?, ?, ?)",
                          [("acme", "pro", "2026-11-02", "success", 5), ("acme", "pro", "2026-11-02", "total", 5)])
    args = ("usage", "pull", str(plan), "--from", "2026-11-01", "--to", "2026-11-30")
    assert run_cli(*args, env=_env(kafka.bootstrap)).code == 0
    with state:
        state.execute("UPDATE usage SET count = 7 WHERE metric = 'success'")
    r = run_cli(*args, env=_env(kafka.bootstrap))
    assert r.code == 0 and "Published events: 1 to kafka." in r.stderr
    msgs = [m for m in read_topic(kafka.bootstrap, "apimon.events", expect=7) if m.event["type"] == T.USAGE_DAILY]
    data = sorted((m.event["data"]["metric"], m.event["data"]["count"], m.event["data"]["previous_count"])
                  for m in msgs)
    assert data == [("success", 5, None), ("success", 7, 5), ("total", 5, None)]
    assert all(m.event["source"] == "apimon/usage-pull" and m.key == b"acme" for m in msgs)
    assert msgs[0].event["data"]["provider"] == "local" and msgs[0].event["data"]["day"] == "2026-11-02"
    # the plan meters through events.kafka: usage show and invoice read the stream rows, and say so when only
    # pulled rows exist (nothing consumed yet) instead of showing an empty table silently
    for cmd in (("usage", "show"), ("invoice",)):
        r = run_cli(*cmd, str(plan), "--period", "2026-11", env=_env(kafka.bootstrap))
        assert r.code == 0, r.output
        assert "note: this plan meters through events.kafka" in r.stderr
        assert "the pulled rows of target" in r.stderr and "are not used" in r.stderr


def _request(ids, sub: str, outcome: str, day: str = "2026-11-30", status: int = 200) -> CloudEvent:
    data = request_data(sub, "pro", "petstore", "GET", status, outcome, None, "allowed", 1.5, 0, 10)
    when = rfc3339(time.mktime(time.strptime(day + " 12", "%Y-%m-%d %H")))
    return CloudEvent(ids(), "apimon/gateway/127.0.0.1:8080", T.REQUEST, when, sub, data)


def _produce(bootstrap: str, topic: str, events: list[CloudEvent], raw: list[bytes] = ()) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for e in events:
        p.produce(topic, key=e.subject.encode() if e.subject else None, value=e.body(),
                  headers=kafka_headers(e.id, e.source, e.type, e.time, e.subject))
    for value in raw:
        p.produce(topic, value=value)
    assert p.flush(15) == 0


def test_consume_twice_gives_the_same_ledger_and_drops_duplicates(kafka, tmp_path):
    kafka.create_topic("apimon.events", partitions=3)
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    ids = IdSequence()
    events = ([_request(ids, "acme", "success") for _ in range(300)] + [_request(ids, "bob", "blocked", status=429)
              for _ in range(50)] + [_request(ids, "acme", "failed", day="2026-11-29", status=502) for _ in range(7)])
    other = CloudEvent(ids(), "apimon/apply", T.PRODUCT_CREATED, rfc3339(time.time()), None, {"product": "pro"})
    _produce(kafka.bootstrap, "apimon.events", events + [other] + events[:10], [b"not json", b'{"type": 1}'])
    ledger = tmp_path / "ledger.db"
    r = run_cli("events", "consume", str(plan), "--ledger", str(ledger), "--once", env=_env(kafka.bootstrap))
    assert r.code == 0, r.output
    assert ("Consumed 370 messages from apimon.events (3 partitions): 357 request events counted" in r.stderr)
    assert "10 duplicates dropped by id" in r.stderr and "1 other events" in r.stderr
    assert "2 messages that are not apimon events (ignored)" in r.stderr
    with Ledger.open(ledger) as book:
        first = list(book.iter_rows())
    counts = {(x.day, x.subscriber, x.metric): x.count for x in first}
    assert all(x.target == stream_target("apimon.events") and x.provider == "local" for x in first)
    assert counts == {("2026-11-30", "acme", "success"): 300, ("2026-11-30", "acme", "total"): 300,
                      ("2026-11-30", "bob", "blocked"): 50, ("2026-11-30", "bob", "total"): 50,
                      ("2026-11-29", "acme", "failed"): 7, ("2026-11-29", "acme", "total"): 7}
    r = run_cli("events", "consume", str(plan), "--ledger", str(ledger), "--once", env=_env(kafka.bootstrap))
    assert r.code == 0 and "0 request events counted" in r.stderr
    with Ledger.open(ledger) as book:
        assert list(book.iter_rows()) == first
    # a fresh ledger re-reads the whole topic from the start: the same counts
    again = tmp_path / "again.db"
    assert run_cli("events", "consume", str(plan), "--ledger", str(again), "--once",
                   env=_env(kafka.bootstrap)).code == 0
    with Ledger.open(again) as book:
        assert {(x.day, x.subscriber, x.metric): x.count for x in book.iter_rows()} == counts
    # new traffic: only it is added
    _produce(kafka.bootstrap, "apimon.events", [_request(ids, "bob", "success") for _ in range(5)])
    assert run_cli("events", "consume", str(plan), "--ledger", str(ledger), "--once",
                   env=_env(kafka.bootstrap)).code == 0
    with Ledger.open(ledger) as book:
        assert {(x.subscriber, x.metric): x.count for x in book.iter_rows() if x.day == "2026-11-30"}[
            ("bob", "total")] == 55
    # usage show reads the stream rows for a plan that meters through events.kafka
    r = run_cli("usage", "show", str(plan), "--ledger", str(ledger), "--period", "2026-11", "--by", "subscriber",
                env=_env(kafka.bootstrap))
    assert r.code == 0, r.output
    assert "note:" not in r.stderr
    acme = next(line for line in r.stdout.splitlines() if "acme" in line)
    assert acme.replace("│", " ").split()[:6] == ["acme", "300", "0", "7", "0", "307"]


def test_consume_of_a_missing_topic_and_a_plan_without_kafka(kafka, tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    r = run_cli("events", "consume", str(plan), "--once", env=_env(kafka.bootstrap))
    assert r.code == 0 and "The topic apimon.events does not exist (yet): nothing to consume." in r.stderr
    bare = write_plan(tmp_path / "bare.yaml", "apimon: 1\ntarget: {provider: local}\n")
    r = run_cli("events", "consume", str(bare), "--once")
    assert r.code == 1 and "error: the plan has no events.kafka block" in r.stderr


def test_consume_runs_until_sigterm_and_counts_within_seconds(kafka, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    kafka.create_topic("apimon.events", partitions=3)
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    ledger = tmp_path / "ledger.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")} | _env(kafka.bootstrap)
    proc = subprocess.Popen([sys.executable, "-m", "apimon_cli.cli", "events", "consume", str(plan), "--ledger",
                             str(ledger)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        ids = IdSequence()
        for batch in range(3):
            _produce(kafka.bootstrap, "apimon.events", [_request(ids, "acme", "success") for _ in range(40)])
            sent = time.monotonic()
            deadline = sent + 20
            got = 0
            while time.monotonic() < deadline:
                if ledger.exists():
                    with Ledger.open(ledger) as book:
                        got = sum(x.count for x in book.iter_rows() if x.metric == "total")
                if got == 40 * (batch + 1):
                    break
                time.sleep(0.1)
            assert got == 40 * (batch + 1)
            assert time.monotonic() - sent < 10  # within seconds of being produced
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        err = proc.stderr.read()
        assert "Consuming apimon.events into" in err and "120 request events counted" in err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
