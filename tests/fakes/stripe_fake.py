"""A contract fake of Stripe Billing's meter event API (v1), on 127.0.0.1.

Written from Stripe's public API reference and usage-based billing guide:

* ``POST /v1/billing/meter_events`` (form-encoded): ``event_name`` (must name an active meter), ``payload[...]``
  holding the meter's customer key (``stripe_customer_id``) and value key (``value``: whole numbers only,
  negative allowed: "you can also fix incorrectly recorded usage data by recording negative quantities"),
  ``identifier`` (<= 100 chars; unique within a rolling 24 h: a repeat is ``400 An event already exists with
  identifier ...``), ``timestamp`` (Unix seconds, within the past 35 calendar days and at most 5 minutes in
  the future). Rate limits: one concurrent call per customer per meter (``429`` ``rate_limit``), and an
  optional account-wide calls-per-second limit (``429`` ``rate_limit``).
* ``POST /v1/billing/meter_event_adjustments``: ``type=cancel``, ``event_name``, ``cancel[identifier]``;
  only events Stripe received within the last 24 hours can be cancelled.
* ``GET /v1/billing/meters`` and ``GET /v1/billing/meters/{id}/event_summaries`` (``customer``,
  ``start_time``, ``end_time`` required): the aggregated (sum) value of the customer's non-cancelled events;
  with ``value_grouping_window`` (``day`` or ``hour``) one summary per window that has usage, newest first,
  ``limit`` (1-100, default 10) and ``starting_after`` paging, so the SDK's ``auto_paging_iter`` works.
* ``Idempotency-Key`` on POSTs: a repeat within 24 h replays the first response (``Idempotent-Replayed:
  true``); different parameters are ``400 idempotency_error``; a repeat while the first is still running is
  ``409 idempotency_error``.
* Authentication: ``Authorization: Bearer <secret key>`` (or HTTP Basic with the key as user name); a
  wrong key is ``401`` with Stripe's error shape ``{"error": {"type", "code", "message", "param"}}``.

In-process (tests)::

    with StripeFake(api_key="sk_test_x", meters={"api_requests": "mtr_1"}) as fake:
        ... fake.url ...; fake.total("cus_1", "api_requests")

Standalone: ``python tests/fakes/stripe_fake.py --port 0 --api-key sk_test_x --meter api_requests``
(prints the base URL; ``GET /_fake/totals`` returns ``{event_name: {customer: total}}``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path

try:
    from ._billing_http import FakeServer, Reply, Request, serve_forever_cli
except ImportError:  # run as a script: python tests/fakes/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _billing_http import FakeServer, Reply, Request, serve_forever_cli

DAY = 86_400
IDENTIFIER_WINDOW = DAY  # identifiers are unique within a rolling 24 h
CANCEL_WINDOW = DAY  # events can be cancelled within 24 h of Stripe receiving them
IDEMPOTENCY_TTL = DAY
PAST_LIMIT = 35 * DAY
FUTURE_LIMIT = 300
_INT = re.compile(r"-?\d+")


@dataclass
class MeterEvent:
    event_name: str
    identifier: str
    customer: str
    value: int
    timestamp: int
    created: float
    canceled: bool = False


def _err(status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
         param: str | None = None) -> Reply:
    error = {"type": type_, "message": message}
    if code:
        error["code"] = code
    if param:
        error["param"] = param
    return Reply(status, {"error": error}, headers={"Request-Id": "req_" + secrets.token_hex(7)})


class StripeFake(FakeServer):
    routes = [
        ("POST", r"/v1/billing/meter_events", "create_event"),
        ("POST", r"/v1/billing/meter_event_adjustments", "create_adjustment"),
        ("GET", r"/v1/billing/meters", "list_meters"),
        ("GET", r"/v1/billing/meters/([^/]+)/event_summaries", "event_summaries"),
        ("GET", r"/_fake/totals", "fake_totals"),
    ]

    def __init__(self, api_key: str = "sk_test_fake", meters: dict[str, str] | None = None, *,
                 latency: float = 0.0, rate_limit_per_s: float | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self.meters = dict(meters or {"api_requests": "mtr_fake_api_requests"})  # event_name -> meter id
        self.latency = latency  # seconds each meter event call takes (makes overlapping calls visible)
        self.rate_limit_per_s = rate_limit_per_s
        self.events: dict[str, MeterEvent] = {}  # identifier -> event
        self.adjustments: list[dict] = []
        self.idempotency: dict[str, tuple[str, float, Reply | None]] = {}  # key -> (params digest, at, reply)
        self.in_flight: set[tuple[str, str]] = set()
        self.max_in_flight = 0  # most meter event calls served at once (any customer)
        self._current = 0
        self._window: list[float] = []
        self.fail_next_429 = 0  # inject this many account rate-limit 429s
        self.rejected_429 = 0
        self.event_calls = 0

    # --- test helpers ---------------------------------------------------------------------------------
    def total(self, customer: str, event_name: str = "api_requests", start: int | None = None,
              end: int | None = None) -> int:
        with self.lock:
            return sum(e.value for e in self.events.values()
                       if e.customer == customer and e.event_name == event_name and not e.canceled
                       and (start is None or e.timestamp >= start) and (end is None or e.timestamp < end))

    def totals(self, event_name: str = "api_requests") -> dict[str, int]:
        out: dict[str, int] = {}
        with self.lock:
            for e in self.events.values():
                if e.event_name == event_name and not e.canceled:
                    out[e.customer] = out.get(e.customer, 0) + e.value
        return out

    # --- auth and idempotency -----------------------------------------------------------------------
    def _auth(self, req: Request) -> Reply | None:
        header = req.headers.get("authorization", "")
        key = None
        if header.startswith("Bearer "):
            key = header[7:]
        elif header.startswith("Basic "):
            try:
                key = base64.b64decode(header[6:]).decode().split(":", 1)[0]
            except ValueError:
                key = None
        if not key:
            return _err(401, "You did not provide an API key. You need to provide your API key in the "
                             "Authorization header, using Bearer auth.")
        if key != self.api_key:
            shown = key[:8] + "*" * 4 + key[-4:] if len(key) > 12 else "****"
            return _err(401, f"Invalid API Key provided: {shown}", code="api_key_invalid")
        return None

    def _idempotent(self, req: Request, handler) -> Reply:
        key = req.headers.get("idempotency-key")
        if not key:
            return handler()
        digest = hashlib.sha256(req.path.encode() + b"?" + req.body).hexdigest()
        now = self.now()
        with self.lock:
            seen = self.idempotency.get(key)
            if seen is not None and now - seen[1] < IDEMPOTENCY_TTL:
                if seen[0] != digest:
                    return _err(400, "Keys for idempotent requests can only be used with the same parameters "
                                     "they were first used with. Try using a key other than "
                                     f"'{key}' if you meant to execute a different request.",
                                type_="idempotency_error")
                if seen[2] is None:
                    return _err(409, "There is currently another in-progress request using this Idempotent "
                                     "Key (that probably means you submitted twice, and the other request is "
                                     "still going through): " + key, type_="idempotency_error")
                replay = seen[2]
                return Reply(replay.status, replay.body, {**replay.headers, "Idempotent-Replayed": "true"})
            self.idempotency[key] = (digest, now, None)
        reply = handler()
        with self.lock:
            if reply.status == 429 or reply.status >= 500:
                self.idempotency.pop(key, None)  # not saved: the request may be retried with the same key
            else:
                self.idempotency[key] = (digest, now, reply)
        return reply

    # --- meter events ---------------------------------------------------------------------------------
    def create_event(self, req: Request) -> Reply:
        denied = self._auth(req)
        if denied:
            return denied
        with self.lock:
            self.event_calls += 1
            if self.fail_next_429 > 0:
                self.fail_next_429 -= 1
                self.rejected_429 += 1
                return _err(429, "Request rate limit exceeded. Learn more about rate limits here "
                                 "https://stripe.com/docs/rate-limits.", code="rate_limit")
            if self.rate_limit_per_s:
                now = time.monotonic()
                self._window = [t for t in self._window if now - t < 1.0]
                if len(self._window) >= self.rate_limit_per_s:
                    self.rejected_429 += 1
                    return _err(429, "Request rate limit exceeded.", code="rate_limit")
                self._window.append(now)
        return self._idempotent(req, lambda: self._create_event(req.form()))

    def _create_event(self, form: dict[str, str]) -> Reply:
        name = form.get("event_name", "")
        if not name:
            return _err(400, "Missing required param: event_name.", code="parameter_missing", param="event_name")
        if name not in self.meters:
            return _err(400, f"No active meter was found with event_name '{name}'.", code="resource_missing",
                        param="event_name")
        customer = form.get("payload[stripe_customer_id]", "")
        if not customer:
            return _err(400, "The payload must contain stripe_customer_id (the meter's customer mapping key).",
                        code="parameter_missing", param="payload[stripe_customer_id]")
        raw_value = form.get("payload[value]")
        if raw_value is None:
            return _err(400, "The payload must contain value (the meter's value key).", code="parameter_missing",
                        param="payload[value]")
        if not _INT.fullmatch(raw_value):
            return _err(400, f"Invalid value '{raw_value}': the meter event value only accepts whole numbers.",
                        code="parameter_invalid_integer", param="payload[value]")
        identifier = form.get("identifier") or "evt_" + secrets.token_hex(12)
        if len(identifier) > 100:
            return _err(400, "identifier must be at most 100 characters.", param="identifier")
        now = self.now()
        if "timestamp" in form:
            if not _INT.fullmatch(form["timestamp"]):
                return _err(400, "Invalid integer: " + form["timestamp"], code="parameter_invalid_integer",
                            param="timestamp")
            ts = int(form["timestamp"])
        else:
            ts = int(now)
        if ts < now - PAST_LIMIT:
            return _err(400, "Timestamp must be within the past 35 calendar days.", param="timestamp")
        if ts > now + FUTURE_LIMIT:
            return _err(400, "Timestamp must not be more than 5 minutes in the future.", param="timestamp")
        slot = (name, customer)
        with self.lock:
            old = self.events.get(identifier)
            if old is not None and now - old.created < IDENTIFIER_WINDOW:
                return _err(400, f"An event already exists with identifier {identifier}.", param="identifier")
            if slot in self.in_flight:
                self.rejected_429 += 1
                return _err(429, "Too many concurrent requests for this customer and meter: send at most one "
                                 "meter event at a time per customer and meter.", code="rate_limit")
            self.in_flight.add(slot)
            self._current += 1
            self.max_in_flight = max(self.max_in_flight, self._current)
        try:
            if self.latency:
                time.sleep(self.latency)
            with self.lock:
                self.events[identifier] = MeterEvent(name, identifier, customer, int(raw_value), ts, now)
        finally:
            with self.lock:
                self.in_flight.discard(slot)
                self._current -= 1
        return Reply(200, {"object": "billing.meter_event", "created": int(now), "event_name": name,
                           "identifier": identifier, "livemode": False,
                           "payload": {"stripe_customer_id": customer, "value": raw_value}, "timestamp": ts})

    def create_adjustment(self, req: Request) -> Reply:
        denied = self._auth(req)
        if denied:
            return denied
        return self._idempotent(req, lambda: self._create_adjustment(req.form()))

    def _create_adjustment(self, form: dict[str, str]) -> Reply:
        name = form.get("event_name", "")
        if not name:
            return _err(400, "Missing required param: event_name.", code="parameter_missing", param="event_name")
        if form.get("type") != "cancel":
            return _err(400, "Invalid type: must be cancel.", code="parameter_invalid", param="type")
        identifier = form.get("cancel[identifier]", "")
        if not identifier:
            return _err(400, "Missing required param: cancel[identifier].", code="parameter_missing",
                        param="cancel[identifier]")
        now = self.now()
        with self.lock:
            event = self.events.get(identifier)
            if event is None or event.event_name != name:
                return _err(400, f"No meter event found with identifier {identifier}.", code="resource_missing",
                            param="cancel[identifier]")
            if event.canceled:
                return _err(400, f"The meter event {identifier} has already been canceled.",
                            param="cancel[identifier]")
            if now - event.created > CANCEL_WINDOW:
                return _err(400, "You can only cancel events within 24 hours of Stripe receiving them.",
                            code="out_of_window", param="cancel[identifier]")
            event.canceled = True
            self.adjustments.append({"identifier": identifier, "at": now})
        return Reply(200, {"object": "billing.meter_event_adjustment", "livemode": False, "status": "pending",
                           "event_name": name, "type": "cancel", "cancel": {"identifier": identifier}})

    def list_meters(self, req: Request) -> Reply:
        denied = self._auth(req)
        if denied:
            return denied
        data = [{"id": mid, "object": "billing.meter", "event_name": name, "status": "active",
                 "default_aggregation": {"formula": "sum"},
                 "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
                 "value_settings": {"event_payload_key": "value"}} for name, mid in self.meters.items()]
        return Reply(200, {"object": "list", "data": data, "has_more": False, "url": "/v1/billing/meters"})

    def event_summaries(self, req: Request) -> Reply:
        denied = self._auth(req)
        if denied:
            return denied
        meter_id = req.match.group(1)
        names = [n for n, mid in self.meters.items() if mid == meter_id]
        if not names:
            return _err(404, f"No such billing meter: '{meter_id}'", code="resource_missing", param="id")
        q = {k: v[-1] for k, v in req.query.items()}
        for required in ("customer", "start_time", "end_time"):
            if not q.get(required):
                return _err(400, f"Missing required param: {required}.", code="parameter_missing", param=required)
        start, end = int(q["start_time"]), int(q["end_time"])
        window = q.get("value_grouping_window")
        if window is None:  # one summary for the whole range
            value = self.total(q["customer"], names[0], start, end)
            return Reply(200, {"object": "list", "has_more": False, "url": req.path, "data": [
                {"id": "mtrusg_" + secrets.token_hex(6), "object": "billing.meter_event_summary",
                 "aggregated_value": float(value), "start_time": start, "end_time": end, "livemode": False,
                 "meter": meter_id}]})
        size = {"day": 86_400, "hour": 3_600}.get(window)
        if size is None:
            return _err(400, "Invalid value_grouping_window: must be one of day or hour", param="value_grouping_window")
        limit = int(q.get("limit", 10))
        if not 1 <= limit <= 100:
            return _err(400, "Invalid limit: must be between 1 and 100", param="limit")
        # one summary per window that has usage, newest first (as Stripe lists them), paged by id
        summaries = []
        for w0 in range(start, end, size):
            w1 = min(w0 + size, end)
            with self.lock:
                has = any(e.customer == q["customer"] and e.event_name == names[0] and not e.canceled
                          and w0 <= e.timestamp < w1 for e in self.events.values())
            if has:
                summaries.append({"id": f"mtrusg_{meter_id}_{w0}", "object": "billing.meter_event_summary",
                                  "aggregated_value": float(self.total(q["customer"], names[0], w0, w1)),
                                  "start_time": w0, "end_time": w1, "livemode": False, "meter": meter_id})
        summaries.reverse()
        after = q.get("starting_after")
        if after:
            ids = [x["id"] for x in summaries]
            summaries = summaries[ids.index(after) + 1:] if after in ids else []
        return Reply(200, {"object": "list", "has_more": len(summaries) > limit, "url": req.path,
                           "data": summaries[:limit]})

    def fake_totals(self, req: Request) -> Reply:
        return Reply(200, {name: self.totals(name) for name in self.meters})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--api-key", default="sk_test_fake")
    ap.add_argument("--meter", action="append", default=[], help="event_name of an active meter (repeatable)")
    ap.add_argument("--latency", type=float, default=0.0)
    args = ap.parse_args()
    meters = {name: f"mtr_{i}" for i, name in enumerate(args.meter or ["api_requests"], 1)}
    serve_forever_cli(StripeFake(args.api_key, meters, latency=args.latency), args.port)


if __name__ == "__main__":
    main()


__all__ = ["StripeFake"]
