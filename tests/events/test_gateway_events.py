"""The local gateway publishes one com.apimon.request per metered request and quota alerts once per
threshold, without slowing down or losing anything when the broker stops: a real broker, the real
`apimon gateway serve` process, and an independent consumer (aiokafka)."""

from __future__ import annotations

import base64
import sqlite3
import threading
import time
from collections import Counter

import broker
import pytest
import requests
from conftest import run_cli, write_plan
from helpers import GatewayProcess, UpstreamThread, WebhookReceiver, read_topic
from standardwebhooks import Webhook

from apimon_cli.events import types as T
from apimon_cli.ledger import Ledger

kafka = broker.fixture()
SECRET = "whsec_" + base64.b64encode(b"gateway-events-test-secret-0123").decode()
IMPORTED = "imported-key-value-0123456789abcdef"
PLAN = """
apimon: 1
target: {{provider: local, local: {{state_dir: state, upstreams: {{petstore: "{up}", orders: "{up}"}}}}}}
events:
  kafka: {{bootstrap_servers: "{bootstrap}", topic: apimon.events}}
{webhook}
  quota_alerts: [50, 100]
products:
  free:
    display_name: Free
    apis: [petstore]
    rate_limit: {{rate: 2, burst: 5}}
    quota: {{limit: 10, period: day}}
  pro:
    display_name: Pro
    apis: [petstore, orders]
subscribers:
  bob: {{product: free}}
  acme: {{product: pro, key: {{from_env: ACME_KEY}}}}
  off: {{product: pro, enabled: false}}
"""


@pytest.fixture
def upstream():
    u = UpstreamThread()
    yield u
    u.close()


def _setup(tmp_path, kafka, upstream, webhook: str = "") -> tuple:
    plan = write_plan(tmp_path / "plan.yaml", PLAN.format(up=upstream.url, bootstrap=kafka.bootstrap,
                                                          webhook=webhook))
    env = {"ACME_KEY": IMPORTED, "WHSEC": SECRET}
    if webhook:
        env["APIMON_ALLOW_ENDPOINTS"] = webhook.split("//")[1].split("/")[0]
    r = run_cli("apply", str(plan), "--auto-approve", env=env)
    assert r.code == 0, r.output
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        keys = dict(conn.execute("SELECT id, api_key FROM subscribers"))
    return plan, env, keys


def _state_usage(tmp_path) -> dict[tuple[str, str], int]:
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        return {(s, m): n for s, m, n in conn.execute(
            "SELECT subscriber, metric, sum(count) FROM usage GROUP BY subscriber, metric")}


def test_every_metered_request_gives_exactly_one_event_and_no_key_anywhere(kafka, upstream, tmp_path):
    kafka.create_topic("apimon.events", partitions=3)
    plan, env, keys = _setup(tmp_path, kafka, upstream)
    gw = GatewayProcess(plan, env=env)
    statuses = Counter()
    try:
        s = requests.Session()
        calls = ([("/petstore/pets/1?token=query-secret-123", keys["acme"])] * 30
                 + [("/orders/pets/2", keys["acme"])] * 5
                 + [("/petstore/status/404", keys["acme"])] * 4
                 + [("/petstore/status/503", keys["acme"])] * 3
                 + [("/petstore/pets/1", keys["bob"])] * 8  # burst 5: 3 rate-limited
                 + [("/petstore/pets/1?slow", keys["bob"])] * 10  # under the rate, quota 10: 3 over quota
                 + [("/orders/pets/1", keys["bob"])] * 2  # API outside the product: 403
                 + [("/petstore/pets/1", keys["off"])] * 2  # disabled: 403
                 + [("/petstore/pets/1", "not-a-key")] * 3 + [("/petstore/pets/1", None)] * 2)  # not metered
        for path, key in calls:
            r = s.get(gw.url + path, headers={"x-api-key": key} if key else {})
            statuses[(key, r.status_code)] += 1
            if path.endswith("?slow"):
                time.sleep(0.55)
    finally:
        gw.stop()
    assert "events:" not in gw.stderr  # no stall, no drop, nothing left waiting
    with sqlite3.connect(tmp_path / "state" / "events-gateway.db") as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)  # all delivered before exit
    metered = _state_usage(tmp_path)
    total = sum(n for (_s, m), n in metered.items() if m == "total")
    assert total == len(calls) - 5
    # + bob's two quota alerts + apply's 5 created events
    msgs = read_topic(kafka.bootstrap, "apimon.events", expect=total + 2 + 5)
    requests_ = [m for m in msgs if m.event["type"] == T.REQUEST]
    assert len(requests_) == total
    assert Counter(m.event["type"] for m in msgs if m.event["type"] != T.REQUEST) == {
        T.QUOTA_THRESHOLD: 2, T.PRODUCT_CREATED: 2, T.SUBSCRIBER_CREATED: 3}
    assert len({m.event["id"] for m in requests_}) == total
    # the counts the events carry are the gateway's own meter
    by = Counter((m.event["subject"], m.event["data"]["outcome"]) for m in requests_)
    by.update((m.event["subject"], "total") for m in requests_)
    assert dict(by) == {k: v for k, v in metered.items() if v}
    secrets = [k.encode() for k in keys.values()] + [b"not-a-key", IMPORTED.encode(), b"query-secret-123",
                                                      b"token="]
    for m in msgs:
        blob = m.value + (m.key or b"") + b"".join(m.headers.values())
        assert not any(s in blob for s in secrets), m.value
    one = next(m for m in requests_ if m.event["data"]["status"] == 200 and m.event["subject"] == "acme")
    d = one.event["data"]
    assert one.key == b"acme" and one.headers["ce_type"] == T.REQUEST.encode()
    assert one.event["source"].startswith("apimon/gateway/127.0.0.1:")
    assert d["api"] in ("petstore", "orders") and d["method"] == "GET" and d["outcome"] == "success"
    assert d["quota"] == {"outcome": "none"} and d["rate_limit"] == "allowed" and d["response_bytes"] > 0
    assert d["latency_ms"] > 0
    bob = [m.event["data"] for m in requests_ if m.event["subject"] == "bob"]
    assert {(x["status"], x["rate_limit"], x["quota"]["outcome"]) for x in bob} >= {
        (200, "allowed", "counted"), (429, "limited", "none"), (429, "allowed", "exceeded")}
    assert {x["api"] for x in bob if x["status"] == 403} == {None}  # not an API of bob's product


def test_quota_alerts_fire_once_per_threshold_also_across_restarts(kafka, upstream, tmp_path):
    hook = WebhookReceiver()
    try:
        plan, env, keys = _setup(tmp_path, kafka, upstream,
                                 webhook=f"  webhook: {{url: \"{hook.url}\", secret: {{from_env: WHSEC}}}}")
        for _round in range(2):
            gw = GatewayProcess(plan, env=env)
            try:
                for _ in range(14):
                    requests.get(gw.url + "/petstore/pets/1", headers={"x-api-key": keys["bob"]})
                    time.sleep(0.5)  # under the rate limit: only the quota says no
            finally:
                gw.stop()
        msgs = read_topic(kafka.bootstrap, "apimon.events", expect=28 + 2 + 5)  # requests, alerts, apply's
        alerts = [m.event for m in msgs if m.event["type"] == T.QUOTA_THRESHOLD]
        assert sorted(a["data"]["percent"] for a in alerts) == [50, 100]
        fifty = next(a for a in alerts if a["data"]["percent"] == 50)
        assert fifty["subject"] == "bob" and fifty["data"]["used"] == 5 and fifty["data"]["limit"] == 10
        assert fifty["data"]["period"] == "day" and fifty["data"]["product"] == "free"
        assert fifty["data"]["period_end"] > fifty["data"]["period_start"]
        # the webhook got the alerts (not the request firehose), signed
        wh = Webhook(SECRET)
        got = [wh.verify(r.body, r.headers) for r in hook.received]
        assert Counter(e["type"] for e in got) == {T.QUOTA_THRESHOLD: 2, T.PRODUCT_CREATED: 2,
                                                   T.SUBSCRIBER_CREATED: 3}
        assert sorted(e["data"]["percent"] for e in got if e["type"] == T.QUOTA_THRESHOLD) == [50, 100]
    finally:
        hook.close()


def test_broker_paused_while_traffic_flows_and_gateway_restarted_loses_nothing(kafka, upstream, tmp_path):
    kafka.create_topic("apimon.events", partitions=3)
    plan, env, keys = _setup(tmp_path, kafka, upstream)
    answered = Counter()
    slowest = [0.0]
    stop_traffic = threading.Event()
    gw_url = {"url": ""}

    def traffic() -> None:
        s = requests.Session()
        while not stop_traffic.is_set():
            url = gw_url["url"]
            if not url:
                time.sleep(0.01)
                continue
            started = time.monotonic()
            try:
                r = s.get(url + "/petstore/pets/1", headers={"x-api-key": keys["acme"]}, timeout=5)
            except requests.RequestException:  # the gateway restarting: not answered, not metered
                time.sleep(0.05)
                continue
            slowest[0] = max(slowest[0], time.monotonic() - started)
            answered[r.status_code] += 1
            time.sleep(0.005)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    first = GatewayProcess(plan, env=env)
    second = None
    try:
        gw_url["url"] = first.url
        time.sleep(1.5)
        kafka.pause()
        time.sleep(7)  # the broker answers nothing; traffic goes on
        gw_url["url"] = ""
        took = first.stop()
        assert took < 8, f"SIGTERM took {took:.1f} s with the broker paused"
        second = GatewayProcess(plan, env=env)
        gw_url["url"] = second.url
        time.sleep(6.5)
        kafka.resume()
        time.sleep(4)
        gw_url["url"] = ""
        time.sleep(0.2)
        stop_traffic.set()
        worker.join(10)
        second.stop()
    finally:
        stop_traffic.set()
        kafka.resume()
        first.kill()
        if second is not None:
            second.kill()
    assert "events: delivery to kafka stalled" in first.stderr
    assert "events: delivery to kafka resumed" in second.stderr
    assert slowest[0] < 1.0, f"a request took {slowest[0]:.2f} s while the broker was paused"
    total = sum(answered.values())
    assert total > 500 and _state_usage(tmp_path)[("acme", "total")] == total
    msgs = read_topic(kafka.bootstrap, "apimon.events", expect=total, timeout=90)
    ids = [m.event["id"] for m in msgs if m.event["type"] == T.REQUEST]
    assert len(set(ids)) == total  # every event arrived; duplicates (a retry after the restart) have one id
    # and the ledger counts each once, whatever the duplicates
    ledger = tmp_path / "ledger.db"
    for _ in range(2):
        r = run_cli("events", "consume", str(plan), "--ledger", str(ledger), "--once", env=env)
        assert r.code == 0, r.output
        with Ledger.open(ledger) as book:
            got = {(x.subscriber, x.metric): x.count for x in book.iter_rows()}
        assert got == {("acme", "success"): total, ("acme", "total"): total}


def test_events_flush_delivers_what_a_stopped_gateway_left_and_leaves_a_running_ones_alone(kafka, upstream, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"

    class Down:
        bootstrap = dead

    plan, env, keys = _setup(tmp_path, Down, upstream)  # the broker is "down" while the gateway serves
    gw = GatewayProcess(plan, env=env)
    try:
        for _ in range(25):
            assert requests.get(gw.url + "/petstore/pets/1", headers={"x-api-key": keys["acme"]}).status_code == 200
        time.sleep(0.3)
        # the running gateway holds its outbox: flush leaves it alone
        r = run_cli("events", "flush", str(plan), env=env)
        assert "in use by a running gateway" in r.stderr
    finally:
        gw.stop()
    assert "events: 25 events waiting in" in gw.stderr
    # the plan now names the live broker: flush delivers what the gateway left
    live = PLAN.format(up=upstream.url, bootstrap=kafka.bootstrap, webhook="")
    write_plan(plan, live)
    r = run_cli("events", "flush", str(plan), env=env)
    assert r.code == 0, r.output
    assert "events-gateway.db: Published events: 25 to kafka." in r.stderr
    assert "events-outbox.db: Published events: 5 to kafka." in r.stderr  # apply's, also left waiting
    msgs = read_topic(kafka.bootstrap, "apimon.events", expect=30)
    reqs = [m for m in msgs if m.event["type"] == T.REQUEST]
    assert len(msgs) == 30 and len({m.event["id"] for m in reqs}) == 25


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (of any of its threads: a child started from the writer thread is
    listed under that thread)."""
    import os

    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += [int(x) for x in f.read().split()]
    return kids


def _gone(pid: int, within: float) -> bool:
    import os

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":  # exited, not reaped yet (its parent is gone)
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return not os.path.exists(f"/proc/{pid}")


@pytest.mark.parametrize("how", ["ctrl-c", "kill-9"])
def test_the_events_process_writes_and_delivers_what_it_got_when_the_gateway_ends(kafka, upstream, tmp_path, how):
    """The events process (a child of the gateway: outbox + delivery) ignores a Ctrl-C sent to the whole
    process group and ends only when its pipe closes: after the gateway's own drain on Ctrl-C, and also
    when the gateway is killed, once it has written and delivered the batches it already received."""
    import os
    import signal
    import subprocess
    import sys

    kafka.create_topic("apimon.events", partitions=3)
    plan, env, keys = _setup(tmp_path, kafka, upstream)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")} | env
    proc = subprocess.Popen([sys.executable, "-m", "apimon_cli.cli", "gateway", "serve", str(plan), "--listen",
                             "127.0.0.1:0"], env=full_env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = ""
        while "listening on" not in line:
            line = proc.stderr.readline()
            assert line, "the gateway did not start"
        url = next(w for w in line.split() if w.startswith("http://"))
        s = requests.Session()
        for _ in range(40):
            assert s.get(url + "/petstore/pets/1", headers={"x-api-key": keys["acme"]}).status_code == 200
        (child,) = _children(proc.pid)
        time.sleep(0.5)  # past the 0.1 s hand-over: the batch is with the events process
        if how == "ctrl-c":  # the terminal sends it to the whole process group
            os.killpg(proc.pid, signal.SIGINT)
        else:  # kill -9 of the gateway alone (a SIGKILL to the group would end the events process too)
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
        assert _gone(child, 15), "the events process outlived the gateway"
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in err, err
    if how == "ctrl-c":
        assert proc.returncode == 0, err
    with sqlite3.connect(tmp_path / "state" / "events-gateway.db") as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)  # written, then delivered
    msgs = read_topic(kafka.bootstrap, "apimon.events", expect=40 + 5)
    assert len({m.event["id"] for m in msgs if m.event["type"] == T.REQUEST}) == 40


def test_a_dead_events_process_is_replaced_and_later_events_still_arrive(kafka, upstream, tmp_path):
    import os
    import signal

    kafka.create_topic("apimon.events", partitions=3)
    plan, env, keys = _setup(tmp_path, kafka, upstream)
    gw = GatewayProcess(plan, env=env)
    try:
        s = requests.Session()
        for _ in range(10):
            assert s.get(gw.url + "/petstore/pets/1", headers={"x-api-key": keys["acme"]}).status_code == 200
        time.sleep(1.5)  # handed over and delivered
        (child,) = _children(gw.proc.pid)
        os.kill(child, signal.SIGKILL)
        assert _gone(child, 5)
        time.sleep(1.1)
        for _ in range(20):
            assert s.get(gw.url + "/petstore/pets/1", headers={"x-api-key": keys["acme"]}).status_code == 200
        time.sleep(0.5)
        assert len(_children(gw.proc.pid)) == 1
    finally:
        gw.stop()
    assert "events: the events process exited (code -9); starting another" in gw.stderr
    msgs = read_topic(kafka.bootstrap, "apimon.events", expect=30 + 5)
    assert len({m.event["id"] for m in msgs if m.event["type"] == T.REQUEST}) == 30


def test_an_in_process_gateway_with_an_events_block_publishes_to_kafka_and_the_webhook(kafka, upstream, tmp_path,
                                                                                      monkeypatch):
    """`Gateway(config_from_plan(...))` in this process, not `gateway serve`: its start() starts the events
    pipeline and its stop() writes and delivers the last requests' events (it used to publish nothing)."""
    import asyncio

    import aiohttp

    from apimon_cli.gateway import Gateway, config_from_plan
    from apimon_cli.planfile.loader import load_plans

    hook = WebhookReceiver()
    try:
        plan, env, keys = _setup(tmp_path, kafka, upstream, webhook=(
            f"  webhook: {{url: \"{hook.url}\", secret: {{from_env: WHSEC}}, types: [{T.REQUEST}]}}"))
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        config = config_from_plan(load_plans([str(plan)]).desired, listen="127.0.0.1:0")

        async def main() -> None:
            gw = Gateway(config)
            await gw.start()
            try:
                async with aiohttp.ClientSession() as s:
                    for _ in range(4):
                        async with s.get(gw.url + "/petstore/pets/1", headers={"x-api-key": keys["acme"]}) as r:
                            assert r.status == 200
            finally:
                await gw.stop()

        asyncio.run(main())
        msgs = read_topic(kafka.bootstrap, "apimon.events", expect=4 + 5)  # + apply's created events
        reqs = [m for m in msgs if m.event["type"] == T.REQUEST]
        assert len(reqs) == 4 and {m.key for m in reqs} == {b"acme"}
        got = [Webhook(SECRET).verify(r.body, r.headers) for r in hook.received]
        assert sorted(e["id"] for e in got) == sorted(m.event["id"] for m in reqs)
        with sqlite3.connect(tmp_path / "state" / "events-gateway.db") as conn:
            assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,)
    finally:
        hook.close()


def test_workers_with_an_events_block_publish_every_request_once_and_each_alert_once(kafka, upstream, tmp_path,
                                                                                     redis_prefix):
    """`gateway serve --workers 2` with events and Redis limits: each worker has its own events process and
    outbox (events-gateway.db, events-gateway-1.db), every request is one event, an alert fires once for
    both workers (they share the quota in Redis and the alerts raised in events-gateway.db)."""
    hook = WebhookReceiver()
    try:
        webhook = f"  webhook: {{url: \"{hook.url}\", secret: {{from_env: WHSEC}}}}"
        text = PLAN.format(up=upstream.url, bootstrap=kafka.bootstrap, webhook=webhook).replace(
            "local: {state_dir: state,",
            f"local: {{limits: {{backend: redis, url: \"{redis_prefix[0]}\", key_prefix: \"{redis_prefix[1]}\"}}, "
            "state_dir: state,")
        plan = write_plan(tmp_path / "plan.yaml", text)
        env = {"ACME_KEY": IMPORTED, "WHSEC": SECRET, "APIMON_ALLOW_ENDPOINTS": hook.hostport}
        assert run_cli("apply", str(plan), "--auto-approve", env=env).code == 0
        with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
            keys = dict(conn.execute("SELECT id, api_key FROM subscribers"))
        gw = GatewayProcess(plan, env=env, args=("--workers", "2"), ready_timeout=60)
        try:
            assert "(2 workers;" in "".join(gw.lines)
            for _ in range(12):  # a fresh connection each: the kernel spreads them over both workers
                requests.get(gw.url + "/petstore/pets/1", headers={"x-api-key": keys["bob"], "connection": "close"})
                time.sleep(0.5)  # under bob's rate limit: only his quota (10) says no
            for _ in range(20):
                requests.get(gw.url + "/orders/pets/1", headers={"x-api-key": keys["acme"], "connection": "close"})
        finally:
            gw.stop(timeout=60)
        assert gw.code == 0, gw.stderr
        assert "events:" not in gw.stderr, gw.stderr
        msgs = read_topic(kafka.bootstrap, "apimon.events", expect=32 + 2 + 5)
        reqs = [m.event for m in msgs if m.event["type"] == T.REQUEST]
        assert len(reqs) == 32 and len({e["id"] for e in reqs}) == 32
        assert Counter(e["subject"] for e in reqs) == {"bob": 12, "acme": 20}
        alerts = [m.event for m in msgs if m.event["type"] == T.QUOTA_THRESHOLD]
        assert sorted(a["data"]["percent"] for a in alerts) == [50, 100]
        got = [Webhook(SECRET).verify(r.body, r.headers) for r in hook.received]
        assert sorted(e["data"]["percent"] for e in got if e["type"] == T.QUOTA_THRESHOLD) == [50, 100]
        assert (tmp_path / "state" / "events-gateway-1.db").exists()
        for name in ("events-gateway.db", "events-gateway-1.db"):
            with sqlite3.connect(tmp_path / "state" / name) as conn:
                assert conn.execute("SELECT count(*) FROM events").fetchone() == (0,), name
    finally:
        hook.close()
