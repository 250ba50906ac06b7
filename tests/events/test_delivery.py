"""Outbox -> Kafka and webhook, against a real broker and a real HTTP endpoint."""

from __future__ import annotations

import base64
import json
import socket
import time

import broker
import pytest
from helpers import WebhookReceiver, read_topic
from standardwebhooks import Webhook

from apimon_cli.events import types as T
from apimon_cli.events.cloudevent import CloudEvent, IdSequence, rfc3339
from apimon_cli.events.config import EventsConfig, KafkaConfig, WebhookConfig
from apimon_cli.events.delivery import deliver
from apimon_cli.events.outbox import Outbox
from apimon_cli.events.publish import enqueue

kafka = broker.fixture()
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def _events(n: int, type_: str = T.REQUEST) -> list[CloudEvent]:
    ids = IdSequence()
    return [CloudEvent(ids(), "apimon/test", type_, rfc3339(time.time()), f"sub-{i % 5}", {"n": i}) for i in range(n)]


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_event_reaches_kafka_in_structured_mode_with_ce_headers(kafka, tmp_path):
    kafka.create_topic("ev", partitions=3)
    config = EventsConfig(kafka=KafkaConfig(kafka.bootstrap, "ev"))
    events = _events(500)
    path = tmp_path / "outbox.db"
    assert enqueue(path, events, config) == 500
    report = deliver(Outbox(path), config, print, timeout=30)
    assert report.complete and report.delivered == {"kafka": 500}
    assert Outbox(path).pending() == 0
    msgs = read_topic(kafka.bootstrap, "ev", expect=500)
    assert len(msgs) == 500
    by_id = {m.event["id"]: m for m in msgs}
    assert set(by_id) == {e.id for e in events}
    m = by_id[events[7].id]
    assert m.key == b"sub-2"
    assert m.event == {"specversion": "1.0", "id": events[7].id, "source": "apimon/test", "type": T.REQUEST,
                       "time": events[7].time, "subject": "sub-2", "datacontenttype": "application/json",
                       "data": {"n": 7}}
    assert m.headers["content-type"] == b"application/cloudevents+json"
    assert m.headers["ce_id"] == events[7].id.encode() and m.headers["ce_type"] == T.REQUEST.encode()
    assert m.headers["ce_specversion"] == b"1.0" and m.headers["ce_subject"] == b"sub-2"
    # every attribute of the envelope (all but data) is a ce_* header with the same value
    assert {k: v.decode() for k, v in m.headers.items() if k.startswith("ce_")} == {
        f"ce_{k}": v for k, v in m.event.items() if k != "data"}
    # one subscriber's events stay in one partition, in order
    for sub in {m.key for m in msgs}:
        mine = [x for x in msgs if x.key == sub]
        assert len({x.partition for x in mine}) == 1
        ns = [x.event["data"]["n"] for x in sorted(mine, key=lambda x: x.offset)]
        assert ns == sorted(ns)


def test_unreachable_broker_keeps_events_then_delivers_them(kafka, tmp_path):
    path = tmp_path / "outbox.db"
    down = EventsConfig(kafka=KafkaConfig(f"127.0.0.1:{_dead_port()}", "ev2"))
    enqueue(path, _events(20), down)
    started = time.monotonic()
    report = deliver(Outbox(path), down, print, timeout=20)
    assert time.monotonic() - started < 10  # every broker down: it stops waiting
    assert not report.complete and report.waiting == {"kafka": 20} and "kafka" in report.errors
    up = EventsConfig(kafka=KafkaConfig(kafka.bootstrap, "ev2"))
    report = deliver(Outbox(path), up, print, timeout=30)
    assert report.complete and report.delivered == {"kafka": 20}
    assert len(read_topic(kafka.bootstrap, "ev2", expect=20)) == 20


@pytest.fixture
def receiver():
    r = WebhookReceiver()
    yield r
    r.close()


def test_webhook_signature_verifies_with_standard_webhooks_and_503_is_retried(receiver, tmp_path):
    receiver.statuses = [503, 503]
    config = EventsConfig(webhook=WebhookConfig(receiver.url, SECRET))
    path = tmp_path / "outbox.db"
    ev = _events(1, T.QUOTA_THRESHOLD)
    assert enqueue(path, ev + _events(3, T.REQUEST), config) == 1  # request events are not for the webhook
    report = deliver(Outbox(path), config, print, timeout=30)
    assert report.complete and report.delivered == {"webhook": 1}
    assert len(receiver.received) == 3
    wh = Webhook(SECRET)
    for got in receiver.received:  # every attempt is signed; the id stays, the timestamp is the attempt's
        assert got.headers["webhook-id"] == ev[0].id
        assert got.headers["content-type"] == "application/cloudevents+json"
        assert wh.verify(got.body, got.headers)["id"] == ev[0].id
    assert json.loads(receiver.received[-1].body)["type"] == T.QUOTA_THRESHOLD
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(receiver.received[0].body,
                                                                         receiver.received[0].headers)


def test_webhook_4xx_is_not_retried(receiver, tmp_path):
    receiver.statuses = [400]
    logs: list[str] = []
    config = EventsConfig(webhook=WebhookConfig(receiver.url, SECRET))
    path = tmp_path / "outbox.db"
    enqueue(path, _events(1, T.KEY_REVOKED), config)
    report = deliver(Outbox(path), config, logs.append, timeout=10)
    assert len(receiver.received) == 1 and report.complete
    assert len(logs) == 1 and "refused 1 event (HTTP 400); not retried" in logs[0]


def test_webhook_gives_up_after_a_bounded_time(receiver, tmp_path, monkeypatch):
    monkeypatch.setenv("APIMON_EVENTS_WEBHOOK_GIVE_UP", "2")
    receiver.statuses = [503] * 100
    logs: list[str] = []
    config = EventsConfig(webhook=WebhookConfig(receiver.url, SECRET))
    path = tmp_path / "outbox.db"
    enqueue(path, _events(2, T.PRODUCT_CREATED), config)
    started = time.monotonic()
    report = deliver(Outbox(path), config, logs.append, timeout=20)
    assert time.monotonic() - started < 6
    assert report.complete and Outbox(path).pending() == 0
    assert 2 < len(receiver.received) < 20  # retried with backoff, not hammered
    gave_up = [line for line in logs if "gave up" in line]
    assert len(gave_up) >= 1 and "after 2 s of retries (last: HTTP 503)" in gave_up[0]
    assert sum(int(line.split("gave up on ")[1].split()[0]) for line in gave_up) == 2
