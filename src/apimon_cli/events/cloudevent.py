"""CloudEvents 1.0 in structured JSON mode, and the builders of apimon's events.

What an event may hold is decided here, field by field: ids (subscriber, product, API), counts, statuses,
times, and for apply the plan fields that changed. Never a key value or its fingerprint, a secret, a URL's
query string or a request path: the builders take no such argument, and apply's field changes drop
``key``. Values of the plan that came from the environment are masked (``***``) like in every output.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from . import types as T

SPECVERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"  # structured mode (Kafka binding: content-type header)
SOURCE_APPLY = "apimon/apply"
SOURCE_USAGE_PULL = "apimon/usage-pull"
SOURCE_KEYS = "apimon/keys"

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def gateway_source(host: str, port: int) -> str:
    return f"apimon/gateway/{host}:{port}"


_second: list = [None, ""]  # the last whole second formatted (events come in bursts of the same second)


def rfc3339(ts: float) -> str:
    """POSIX seconds -> RFC 3339 UTC with milliseconds: 2026-11-30T12:00:00.123Z."""
    whole = int(ts // 1)
    micro = round((ts - whole) * 1e6)  # as datetime rounds a float timestamp
    if micro >= 1_000_000:
        whole, micro = whole + 1, 0
    ms = micro // 1000
    if _second[0] != whole:
        _second[1] = datetime.fromtimestamp(whole, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second[0] = whole
    return f"{_second[1]}{ms:03d}Z"


def new_id() -> str:
    return str(uuid.uuid4())


class IdSequence:
    """Cheap unique ids for a process that emits many events (the gateway): a random 64-bit prefix per
    process and a counter, e.g. ``9f2c4e01d3a7b655-1042``. Unique per source without a uuid4 per request."""

    def __init__(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"{self.prefix}-{self.n}"


@dataclass(frozen=True)
class CloudEvent:
    id: str
    source: str
    type: str
    time: str  # RFC 3339, UTC
    subject: str | None  # the subscriber id where there is one (also the Kafka message key)
    data: dict

    def envelope(self) -> dict:
        doc = {
            "specversion": SPECVERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time,
        }
        if self.subject is not None:
            doc["subject"] = self.subject
        doc["datacontenttype"] = "application/json"
        doc["data"] = self.data
        return doc

    def body(self) -> bytes:
        return _dumps(self.envelope()).encode()


def kafka_headers(event_id: str, source: str, type_: str, time: str, subject: str | None) -> list[tuple[str, bytes]]:
    """The CloudEvents attributes as ``ce_*`` headers (Kafka protocol binding), next to the structured value,
    so consumers can route without parsing it (every attribute of the envelope but ``data``: also
    ``ce_datacontenttype``, since ``content-type`` names the structured envelope)."""
    headers = [
        ("content-type", CONTENT_TYPE.encode()),
        ("ce_specversion", SPECVERSION.encode()),
        ("ce_id", event_id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", type_.encode()),
        ("ce_time", time.encode()),
        ("ce_datacontenttype", b"application/json"),
    ]
    if subject is not None:
        headers.append(("ce_subject", subject.encode()))
    return headers


# ---------------------------------------------------------------- the gateway's events


def request_data(
    subscriber: str,
    product: str,
    api: str | None,
    method: str,
    status: int,
    outcome: str,
    quota: dict | None,
    rate_limit: str,
    latency_ms: float,
    request_bytes: int,
    response_bytes: int,
) -> dict:
    """``com.apimon.request`` data. ``quota`` is {"outcome": "counted"|"exceeded", "limit", "used", "period"}
    or None (no quota, or the request never reached the quota check); ``rate_limit`` is "allowed",
    "limited" or "none"."""
    return {
        "subscriber": subscriber,
        "product": product,
        "api": api,
        "method": method,
        "status": status,
        "outcome": outcome,
        "quota": quota if quota is not None else {"outcome": "none"},
        "rate_limit": rate_limit,
        "latency_ms": round(latency_ms, 3),
        "request_bytes": request_bytes,
        "response_bytes": response_bytes,
    }


_q = json.encoder.encode_basestring  # a JSON string literal (C), for the hand-built request body


def request_body(eid: str, source_literal: str, when: str, subscriber: str, product: str, api: str | None,
                 method: str, status: int, outcome: str, quota: tuple | None, rate_limit: str, latency_ms: float,
                 request_bytes: int, response_bytes: int) -> bytes:
    """The structured ``com.apimon.request`` CloudEvent, the same JSON as ``CloudEvent(...).body()`` with
    ``request_data(...)`` but built with one format string (the gateway writes one per request; json.dumps
    of the nested dict costs several times more). ``source_literal`` is ``_q(source)``; ``quota`` is
    (outcome, limit, used, period) or None."""
    sub = _q(subscriber)
    if quota is None:
        qj = '{"outcome":"none"}'
    else:
        qj = f'{{"outcome":{_q(quota[0])},"limit":{int(quota[1])},"used":{int(quota[2])},"period":{_q(quota[3])}}}'
    return (
        f'{{"specversion":"1.0","id":{_q(eid)},"source":{source_literal},"type":"{T.REQUEST}","time":"{when}",'
        f'"subject":{sub},"datacontenttype":"application/json","data":{{"subscriber":{sub},"product":{_q(product)},'
        f'"api":{"null" if api is None else _q(api)},"method":{_q(method)},"status":{int(status)},'
        f'"outcome":{_q(outcome)},"quota":{qj},"rate_limit":{_q(rate_limit)},'
        f'"latency_ms":{round(latency_ms, 3)!r},"request_bytes":{int(request_bytes)},'
        f'"response_bytes":{int(response_bytes)}}}}}'
    ).encode()


def quota_threshold_data(
    subscriber: str, product: str, period: str, period_start: str, period_end: str, limit: int, used: int,
    percent: int,
) -> dict:
    return {
        "subscriber": subscriber,
        "product": product,
        "period": period,
        "period_start": period_start,
        "period_end": period_end,
        "limit": limit,
        "used": used,
        "percent": percent,
    }


# ---------------------------------------------------------------- usage pull


def usage_daily_events(report, now: float | None = None) -> Iterator[CloudEvent]:
    """One ``com.apimon.usage.daily`` per ledger row a pull added, revised or removed (count 0)."""
    when = rfc3339(now if now is not None else datetime.now(UTC).timestamp())

    def event(sub: str, prod: str, day: str, metric: str, count: int, previous: int | None) -> CloudEvent:
        return CloudEvent(new_id(), SOURCE_USAGE_PULL, T.USAGE_DAILY, when, sub, {
            "provider": report.provider,
            "target": report.target,
            "day": day,
            "subscriber": sub,
            "product": prod,
            "metric": metric,
            "count": count,
            "previous_count": previous,
        })

    for c in report.new:
        yield event(c.subscriber, c.product, c.day, c.metric, c.count, None)
    for r in report.revised:
        yield event(r.subscriber, r.product, r.day, r.metric, r.new, r.old)
    for c in report.removed:
        yield event(c.subscriber, c.product, c.day, c.metric, 0, c.count)


# ---------------------------------------------------------------- apply

_TYPES = {
    ("subscriber", "create"): T.SUBSCRIBER_CREATED,
    ("subscriber", "update"): T.SUBSCRIBER_UPDATED,
    ("subscriber", "delete"): T.SUBSCRIBER_DELETED,
    ("product", "create"): T.PRODUCT_CREATED,
    ("product", "update"): T.PRODUCT_UPDATED,
    ("product", "delete"): T.PRODUCT_DELETED,
}


def _masked(value: object, mask: Callable[[str], str]) -> object:
    return mask(value) if isinstance(value, str) else value


def change_events(
    change, *, provider: str, target: str, mask: Callable[[str], str] = lambda s: s, now: float | None = None
) -> list[CloudEvent]:
    """The events of one change apply made: ``<kind>.<action>`` with the fields that changed, and
    ``key.revoked`` when a subscriber's key stops working (deleted, disabled, or replaced by an imported
    value). Key values never appear: the ``key`` field change is reported as ``key_changed: true`` only."""
    when = rfc3339(now if now is not None else datetime.now(UTC).timestamp())
    fields: dict[str, dict] = {}
    key_changed = False
    for f in change.fields:
        if f.field == "key":
            key_changed = True
            continue
        fields[f.field] = {"before": _masked(f.before, mask), "after": _masked(f.after, mask)}
    data: dict = {
        change.kind: change.id,
        "provider": provider,
        "target": target,
        "action": change.action,
        "fields": fields,
    }
    if change.adopt:
        data["adopted"] = True
    if key_changed:
        data["key_changed"] = True
    subject = change.id if change.kind == "subscriber" else None
    # a replacement (a new resource for the old one, e.g. an AWS key with a new value) is the kind's update
    kind_action = (change.kind, "update" if change.action == "replace" else change.action)
    events = [CloudEvent(new_id(), SOURCE_APPLY, _TYPES[kind_action], when, subject, data)]
    if change.kind == "subscriber":
        reason = None
        if change.action == "delete":
            reason = "deleted"
        elif change.action in ("update", "replace"):
            enabled = next((f for f in change.fields if f.field == "enabled"), None)
            if enabled is not None and enabled.before is True and enabled.after is False:
                reason = "disabled"
            elif key_changed:
                reason = "replaced"
        if reason is not None:
            events.append(CloudEvent(new_id(), SOURCE_APPLY, T.KEY_REVOKED, when, change.id, {
                "subscriber": change.id,
                "provider": provider,
                "target": target,
                "reason": reason,
            }))
    return events


def apply_events(outcomes: Iterable, *, provider: str, target: str, mask: Callable[[str], str]) -> list[CloudEvent]:
    """Events for the changes that took effect (failed ones made no change)."""
    out: list[CloudEvent] = []
    for o in outcomes:
        if o.ok:
            out.extend(change_events(o.change, provider=provider, target=target, mask=mask))
    return out
