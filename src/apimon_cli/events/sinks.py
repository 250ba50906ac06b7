"""The two sinks: Kafka (confluent-kafka / librdkafka) and a Standard Webhooks endpoint.

Kafka: an idempotent producer (``enable.idempotence``: librdkafka retries without duplicating or reordering
within one producer), ``acks=all``, batched (``linger.ms``). The message key is the subscriber id (one
subscriber's events stay ordered in one partition), the value the structured CloudEvent, the attributes
also as ``ce_*`` headers. librdkafka's own log lines are kept off stderr; errors reach the caller through
``errors``. If a broker refuses the idempotent producer (InitProducerId unsupported or not authorized: a
fatal error) the sink falls back to a plain producer with ``acks=all`` and one request in flight (order
kept; a retry may duplicate, which consumers drop by event id) and says so once.

Webhook: a POST of the CloudEvent (``content-type: application/cloudevents+json``) with ``webhook-id`` (the
event id, the same on every retry), ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body">``. 2xx is delivered; 5xx, 408, 429, timeouts and connection errors are retried with
exponential backoff; any other 4xx is refused and not retried.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass

from .cloudevent import CONTENT_TYPE, kafka_headers
from .config import KafkaConfig, WebhookConfig
from .outbox import Row

_QUIET = logging.getLogger("apimon.events.librdkafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


class KafkaSink:
    """Not thread-safe: one thread produces and polls.

    No callback per message (it costs Python work per event and, on the gateway, GIL time the event loop
    wants): librdkafka reports only failures (``delivery.report.only.error``), and what was handed over is
    acknowledged as a whole when nothing is left in the producer (``pending() == 0``) and no failure was
    reported meanwhile (``KafkaPump`` works in such rounds)."""

    def __init__(self, config: KafkaConfig, *, linger_ms: int = 20, message_timeout_ms: int = 120_000):
        self.config = config
        self.linger_ms = linger_ms
        self.message_timeout_ms = message_timeout_ms
        self.idempotent = True
        self.errors: list[str] = []  # error_cb messages since the last take_errors()
        self.notes: list[str] = []  # one-off remarks (the idempotence fallback)
        self.all_brokers_down = False
        self.failures = 0  # messages librdkafka gave up on since the pump last looked
        self.last_failure: str | None = None
        self._fixed_headers: dict = {}  # (type, source) -> the ce_* headers every such event shares
        self._rebuild = False
        self.producer = self._make()

    def _make(self):
        from confluent_kafka import Producer

        conf = self.config.client_config() | {
            "acks": "all",
            "enable.idempotence": self.idempotent,
            "linger.ms": self.linger_ms,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 200_000,
            "message.timeout.ms": self.message_timeout_ms,
            "socket.keepalive.enable": True,
            "delivery.report.only.error": True,
            "on_delivery": self._on_failed,
            "error_cb": self._on_error,
            "logger": _QUIET,
            "client.id": "apimon",
        }
        if not self.idempotent:
            conf["max.in.flight.requests.per.connection"] = 1
        return Producer(conf)

    # callbacks run inside poll()/flush() on the calling thread
    def _on_error(self, err) -> None:
        from confluent_kafka import KafkaError

        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.all_brokers_down = True
        if err.fatal() and self.idempotent:
            self.notes.append(
                f"the Kafka broker refused the idempotent producer ({err.str()}); continuing with acks=all and one "
                "request in flight (a retry may duplicate an event; consumers drop duplicates by id)"
            )
            self.idempotent = False
            self._rebuild = True
        self.errors.append(err.str())

    def _on_failed(self, err, _msg) -> None:
        if err is not None:
            self.failures += 1
            self.last_failure = err.str()

    def send(self, rows: list[Row]) -> list[Row]:
        """Hand rows to librdkafka; returns those it had no room for (send them again after a poll)."""
        produce = self.producer.produce
        topic = self.config.topic
        fixed = self._fixed_headers
        for i, r in enumerate(rows):
            _seq, eid, type_, source, when, subject, body = r[:7]
            head = fixed.get((type_, source))
            if head is None:
                head = fixed[(type_, source)] = [h for h in kafka_headers("", source, type_, "", None)
                                                 if h[0] not in ("ce_id", "ce_time")]
            headers = [*head, ("ce_id", eid.encode()), ("ce_time", when.encode())]
            if subject is not None:
                key = subject.encode()
                headers.append(("ce_subject", key))
            else:
                key = None
            try:
                produce(topic, value=body, key=key, headers=headers)
            except BufferError:
                return rows[i:]
        return []

    def pending(self) -> int:
        """Messages librdkafka still holds (queued, in flight, or a report not served yet)."""
        return len(self.producer)

    def poll(self, timeout: float = 0.0) -> None:
        """Serve librdkafka's callbacks, waiting up to ``timeout``."""
        self.producer.poll(timeout)
        if self._rebuild:
            self._rebuild = False
            self._discard()
            self.failures += 1  # what the old producer held is sent again
            self.producer = self._make()

    def take_errors(self) -> list[str]:
        errors, self.errors = self.errors, []
        return errors

    def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` for what is in flight."""
        deadline = time.monotonic() + timeout
        while self.pending() > 0 and (left := deadline - time.monotonic()) > 0:
            self.poll(min(left, 0.1))

    def _discard(self) -> None:
        """Drop what librdkafka still holds (it stays in the outbox) without waiting for a broker."""
        try:
            self.producer.purge(in_queue=True, in_flight=True, blocking=False)
            self.producer.poll(0)
        except Exception:
            pass

    def close(self) -> None:
        self._discard()
        self.producer = None  # librdkafka's destroy does not wait for unacknowledged messages once purged


# ---------------------------------------------------------------- webhook


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature header value: ``v1,<base64 HMAC-SHA256(id.timestamp.body)>``."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


@dataclass
class WebhookResult:
    ok: bool
    retry: bool  # a failure worth retrying (5xx, 408, 429, timeout, connection error)
    detail: str  # "HTTP 503", "timeout", ...


class WebhookSink:
    def __init__(self, config: WebhookConfig, *, timeout: tuple[float, float] = (5.0, 10.0)):
        import requests

        self.config = config
        self.key = config.key
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy or netrc from the environment: the plan's URL, checked
        self._requests = requests

    def wants(self, type_: str) -> bool:
        return type_ in self.config.types

    def post(self, row: Row, now: float | None = None) -> WebhookResult:
        ts = int(time.time() if now is None else now)
        headers = {
            "content-type": CONTENT_TYPE,
            "webhook-id": row.id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(self.key, row.id, ts, row.body),
            "user-agent": "apimon-events",
        }
        try:
            resp = self.session.post(self.config.url, data=row.body, headers=headers, timeout=self.timeout,
                                     allow_redirects=False)
        except self._requests.Timeout:
            return WebhookResult(False, True, "timeout")
        except self._requests.RequestException as exc:
            return WebhookResult(False, True, f"{type(exc).__name__}")
        status = resp.status_code
        resp.close()
        if 200 <= status < 300:
            return WebhookResult(True, False, f"HTTP {status}")
        return WebhookResult(False, status >= 500 or status in (408, 429), f"HTTP {status}")

    def close(self) -> None:
        self.session.close()
