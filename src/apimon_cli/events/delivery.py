"""Outbox -> sinks. ``KafkaPump`` and ``WebhookPump`` each own a sink and an outbox connection and make
progress one ``step`` at a time; ``deliver`` runs both until the outbox is empty or a deadline (the
commands), the gateway runs each on a thread of its own (``events.gateway``).

Kafka: rows are read in outbox order and handed to librdkafka while fewer than ``max_inflight`` await an
acknowledgement; an acknowledged row leaves the outbox, a row librdkafka gave up on (its message timeout)
is read again and sent again. Nothing is deleted before the broker acknowledged it, so a crash, a SIGTERM or
a broker outage at any moment loses nothing; it may send an event twice (the consumer drops it by id).

Webhook: rows whose type the webhook wants and whose backoff has passed are posted one at a time; a
retryable failure waits ``min(0.5 s x 2^attempts, 60 s)`` (with jitter), until the event is older than the
give-up time (``APIMON_EVENTS_WEBHOOK_GIVE_UP`` seconds, default 900): then it is dropped with one log
line per pass. A refused event (4xx) is dropped at once, also with one line per pass.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..render.words import count
from .config import EventsConfig
from .outbox import KAFKA, WEBHOOK, Outbox

GIVE_UP_ENV = "APIMON_EVENTS_WEBHOOK_GIVE_UP"
DEFAULT_GIVE_UP = 900.0
BACKOFF_BASE = 0.5
BACKOFF_MAX = 60.0

Log = Callable[[str], None]


def give_up_after() -> float:
    try:
        return max(0.0, float(os.environ.get(GIVE_UP_ENV, DEFAULT_GIVE_UP)))
    except ValueError:
        return DEFAULT_GIVE_UP


def backoff(attempts: int) -> float:
    delay = min(BACKOFF_BASE * 2 ** max(0, attempts - 1), BACKOFF_MAX)
    return delay * random.uniform(0.8, 1.2)


class KafkaPump:
    """Rounds: rows after ``acked_through`` are handed to the producer (up to ``max_inflight`` at a time);
    once the producer holds nothing and reported no failure, every row up to ``cursor`` (the last one handed
    over) is acknowledged and leaves the outbox in two range statements. After a failure (a message timeout
    while the broker was unreachable) everything after ``acked_through`` is sent again once the producer is
    empty. A round that runs longer than ``hold_after`` stops taking new rows until it is acknowledged, so a
    busy gateway still clears its outbox every second or so."""

    hold_after = 1.0

    def __init__(self, outbox: Outbox, sink, *, max_inflight: int = 50_000, batch: int = 5_000):
        self.outbox = outbox
        self.sink = sink
        self.max_inflight = max_inflight
        self.batch = batch
        self.cursor = 0  # the last row handed to the producer
        self.acked_through = 0  # every row up to here is acknowledged (and gone from the outbox)
        self.delivered = 0
        self.last_error: str | None = None
        self.last_ack = time.monotonic()
        self.retry_due = True  # rows may wait (at start, after a failure, a full producer queue)
        self._failed = False
        self._round_started = time.monotonic()

    @property
    def inflight(self) -> int:
        return self.sink.pending()

    def fill(self) -> int:
        """Hand outbox rows after ``cursor`` to the producer; returns how many."""
        sent = 0
        while (room := self.max_inflight - self.sink.pending()) > 0:
            rows = self.outbox.for_kafka(self.cursor, min(self.batch, room))
            if not rows:
                break
            left = self.sink.send(rows)
            taken = len(rows) - len(left)
            if taken:
                self.cursor = rows[taken - 1].seq
                sent += taken
            if left:  # librdkafka's queue is full: serve its reports first
                self.retry_due = True
                break
        return sent

    def step(self, timeout: float = 0.05, fill: bool = True) -> int:
        """Send what waits (``fill``), serve librdkafka; returns how many rows were acknowledged."""
        now = time.monotonic()
        busy = self.sink.pending() > 0
        if busy and now - self._round_started >= self.hold_after:
            pass  # hold: let this round be acknowledged before taking more
        elif fill or self.retry_due:
            self.retry_due = False
            if not busy:
                self._round_started = now
            self.fill()
        self.sink.poll(timeout if self.sink.pending() else 0.0)
        for msg in self.sink.take_errors():
            self.last_error = msg
        if self.sink.failures:
            self.sink.failures = 0
            self._failed = True
            self.last_error = self.sink.last_failure or self.last_error
        if self.sink.pending():
            return 0
        if self._failed:  # some of the round did not get through: send it all again (duplicates dropped by id)
            self._failed = False
            self.cursor = self.acked_through
            self.retry_due = True
            return 0
        return self.record()

    def record(self) -> int:
        """The producer is empty and reported no failure: rows up to ``cursor`` are acknowledged."""
        if self.cursor <= self.acked_through:
            return 0
        n = self.outbox.done_through(KAFKA, self.cursor)
        self.acked_through = self.cursor
        self.delivered += n
        self.last_ack = time.monotonic()
        self.sink.all_brokers_down = False
        self.retry_due = True  # rows may have arrived during the round
        return n

    def waiting(self) -> int:
        return self.outbox.pending(KAFKA)

    def close(self, timeout: float = 0.0) -> None:
        """Wait up to ``timeout`` for what is in flight, record it if it all got through, then drop what the
        producer still holds (it stays in the outbox)."""
        if timeout > 0 and self.sink.pending():
            self.sink.flush(timeout)
        if not self.sink.pending() and not self.sink.failures and not self._failed:
            self.record()
        self.sink.close()


@dataclass
class WebhookPass:
    delivered: int = 0
    retried: int = 0
    refused: list[str] = field(default_factory=list)  # "HTTP 400" per refused event
    gave_up: list[str] = field(default_factory=list)  # last failure per dropped event


class WebhookPump:
    def __init__(self, outbox: Outbox, sink, log: Log, *, give_up: float | None = None):
        self.outbox = outbox
        self.sink = sink
        self.log = log
        self.give_up = give_up_after() if give_up is None else give_up
        self.delivered = 0
        self.last_error: str | None = None

    def step(self, now: float | None = None, limit: int = 100, stop: Callable[[], bool] = lambda: False) -> WebhookPass:
        """Post the due rows (up to ``limit``); one log line for the refused and one for the dropped ones."""
        res = WebhookPass()
        now = time.time() if now is None else now
        done: list[int] = []
        for row in self.outbox.for_webhook(now, limit):
            if stop():
                break
            if not self.sink.wants(row.type):  # the plan's types changed since the event was written
                done.append(row.seq)
                continue
            r = self.sink.post(row)
            if r.ok:
                done.append(row.seq)
                res.delivered += 1
                continue
            self.last_error = r.detail
            attempts = row.attempts + 1
            if not r.retry:
                done.append(row.seq)
                res.refused.append(r.detail)
            elif time.time() + backoff(attempts) - row.created > self.give_up:
                done.append(row.seq)
                res.gave_up.append(r.detail)
            else:
                self.outbox.retry_later(row.seq, attempts, time.time() + backoff(attempts))
                res.retried += 1
        self.outbox.done(WEBHOOK, done)
        self.delivered += res.delivered
        url = self.sink.config.url
        if res.refused:
            self.log(f"events: the webhook {url} refused {count(len(res.refused), 'event')} ({res.refused[-1]}); "
                     "not retried (4xx)")
        if res.gave_up:
            self.log(f"events: gave up on {count(len(res.gave_up), 'event')} for the webhook {url} after "
                     f"{self.give_up:g} s of retries (last: {res.gave_up[-1]})")
        return res

    def next_due(self) -> float | None:
        return self.outbox.next_webhook_try()

    def waiting(self) -> int:
        return self.outbox.pending(WEBHOOK)

    def close(self) -> None:
        self.sink.close()


def sink_bits(config: EventsConfig) -> int:
    return (KAFKA if config.kafka else 0) | (WEBHOOK if config.webhook else 0)


def pending_bits(config: EventsConfig, type_: str) -> int:
    """Which sinks an event of ``type_`` goes to: Kafka gets every type, the webhook its ``types``."""
    bits = KAFKA if config.kafka else 0
    if config.webhook is not None and type_ in config.webhook.types:
        bits |= WEBHOOK
    return bits


@dataclass
class DeliveryReport:
    delivered: dict[str, int] = field(default_factory=dict)  # sink -> events delivered
    waiting: dict[str, int] = field(default_factory=dict)  # sink -> events left in the outbox
    errors: dict[str, str] = field(default_factory=dict)  # sink -> last error
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not any(self.waiting.values())


def make_pumps(outbox: Outbox, config: EventsConfig, log: Log) -> tuple[KafkaPump | None, WebhookPump | None]:
    from .sinks import KafkaSink, WebhookSink

    unused = (KAFKA | WEBHOOK) & ~sink_bits(config)
    dropped = outbox.drop_sinks(unused) if unused else 0
    if dropped:
        log(f"events: dropped {count(dropped, 'event')} in {outbox.path}: for a sink the plan no longer configures")
    kafka = KafkaPump(outbox, KafkaSink(config.kafka, message_timeout_ms=30_000)) if config.kafka else None
    webhook = WebhookPump(outbox, WebhookSink(config.webhook), log) if config.webhook else None
    return kafka, webhook


def deliver(outbox: Outbox, config: EventsConfig, log: Log, *, timeout: float = 10.0) -> DeliveryReport:
    """Deliver what the outbox holds, for up to ``timeout`` seconds (the commands: apply, usage pull, flush).

    Stops early when every row is delivered, when librdkafka reports every broker down (nothing will get
    through in this run), or when only webhook retries scheduled after the deadline are left."""
    report = DeliveryReport()
    kafka, webhook = make_pumps(outbox, config, log)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            busy = False
            if kafka is not None:
                kafka.step(0.05)
                if kafka.inflight or kafka.waiting():
                    busy = True
                    if kafka.sink.all_brokers_down and time.monotonic() - kafka.last_ack > 1.0:
                        kafka.last_error = kafka.last_error or "all brokers are down"
                        break
            if webhook is not None and webhook.waiting():
                webhook.step(stop=lambda: time.monotonic() >= deadline)
                due = webhook.next_due()
                if due is not None:
                    wall_deadline = time.time() + (deadline - time.monotonic())
                    if due <= wall_deadline:
                        busy = True
                        if kafka is None or not (kafka.inflight or kafka.waiting()):
                            time.sleep(max(0.0, min(due - time.time(), deadline - time.monotonic())))
            if not busy:
                break
    finally:
        if kafka is not None:
            kafka.close()
            report.delivered["kafka"] = kafka.delivered
            report.waiting["kafka"] = kafka.waiting()
            if kafka.last_error and report.waiting["kafka"]:
                report.errors["kafka"] = kafka.last_error
            report.notes += kafka.sink.notes
        if webhook is not None:
            webhook.close()
            report.delivered["webhook"] = webhook.delivered
            report.waiting["webhook"] = webhook.waiting()
            if webhook.last_error and report.waiting["webhook"]:
                report.errors["webhook"] = webhook.last_error
    return report
