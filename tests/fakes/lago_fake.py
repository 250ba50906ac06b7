"""A contract fake of Lago's event ingestion API (``/api/v1``), on 127.0.0.1.

Written from Lago's API reference and its open-source server (``Events::CreateBatchService``, the ``events``
table's unique index):

* ``POST /api/v1/events/batch`` ``{"events": [...]}``: at most 100 events (else ``422`` ``too_many_events``;
  none is ``no_events``). Each event: ``transaction_id`` and ``code`` required, ``external_subscription_id``
  (this fake requires it, as the batch reference does), ``timestamp`` (Unix seconds, integer or float, or a
  numeric string; else ``invalid_format``), ``properties`` (an object). The batch is **atomic**: every event
  is validated and any invalid one rejects the whole request with ``422`` and
  ``{"status": 422, "error": "Unprocessable Entity", "code": "validation_errors",
  "error_details": {"<index>": {"<field>": ["<code>"]}}}``; nothing is stored.
* ``transaction_id`` is unique per organization and ``external_subscription_id`` (Lago's unique index):
  an event whose id is already stored, or that appears twice in one batch, is ``value_already_exist``.
* ``GET /api/v1/events/{transaction_id}``: the stored event, or ``404`` ``event_not_found``.
* ``Authorization: Bearer <api key>``; otherwise ``401`` ``{"status": 401, "error": "Unauthorized"}``.

Corrections: Lago has no API to edit or delete an ingested event; a billable metric with ``sum_agg`` adds up
the property, negative values included, so a correction is a compensating event (new ``transaction_id``).

In-process: ``with LagoFake(api_key="lago_x") as fake: fake.total("sub_1", "api_requests", "requests")``.
Standalone: ``python tests/fakes/lago_fake.py --port 0 --api-key lago_x``.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

try:
    from ._billing_http import FakeServer, Reply, Request, serve_forever_cli
except ImportError:  # run as a script: python tests/fakes/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _billing_http import FakeServer, Reply, Request, serve_forever_cli

MAX_BATCH = 100


def _invalid(details: dict) -> Reply:
    return Reply(422, {"status": 422, "error": "Unprocessable Entity", "code": "validation_errors",
                       "error_details": details})


class LagoFake(FakeServer):
    routes = [
        ("POST", r"/api/v1/events/batch", "batch"),
        ("POST", r"/api/v1/events", "create_one"),
        ("GET", r"/api/v1/events/([^/]+)", "get_event"),
        ("GET", r"/_fake/totals", "fake_totals"),
        ("GET", r"/_fake/stats", "fake_stats"),
    ]

    def __init__(self, api_key: str = "lago_fake_key", *, latency: float = 0.0,
                 subscriptions: set[str] | None = None) -> None:
        super().__init__()
        # Optional: the external_subscription_ids that exist. Lago versions that resolve the subscription at
        # ingestion reject others with ``subscription_not_found``; None accepts any (asynchronous ingestion).
        self.subscriptions = subscriptions
        self.api_key = api_key
        self.latency = latency
        self.events: dict[tuple[str, str], dict] = {}  # (external_subscription_id, transaction_id) -> event
        self.batch_sizes: list[int] = []  # events in each accepted batch
        self.rejected_batches = 0

    def total(self, subscription: str, code: str = "api_requests", field: str = "requests",
              start: float | None = None, end: float | None = None) -> int:
        with self.lock:
            return sum(int(e["properties"].get(field, 0)) for (sub, _), e in self.events.items()
                       if sub == subscription and e["code"] == code
                       and (start is None or e["_ts"] >= start) and (end is None or e["_ts"] < end))

    def totals(self, code: str = "api_requests", field: str = "requests") -> dict[str, int]:
        out: dict[str, int] = {}
        with self.lock:
            for (sub, _), e in self.events.items():
                if e["code"] == code:
                    out[sub] = out.get(sub, 0) + int(e["properties"].get(field, 0))
        return out

    def _auth(self, req: Request) -> Reply | None:
        if req.headers.get("authorization") != f"Bearer {self.api_key}":
            return Reply(401, {"status": 401, "error": "Unauthorized"})
        return None

    @staticmethod
    def _validate(raw: object) -> tuple[dict, float | None]:
        errors: dict[str, list[str]] = {}
        if not isinstance(raw, dict):
            return {"event": ["invalid_format"]}, None
        for name in ("transaction_id", "code", "external_subscription_id"):
            if not isinstance(raw.get(name), str) or not raw.get(name):
                errors[name] = ["value_is_mandatory"]
        ts = raw.get("timestamp")
        when = None
        if ts is None:
            when = time.time()
        else:
            try:
                if isinstance(ts, bool):
                    raise ValueError
                when = float(ts)
            except (TypeError, ValueError):
                errors["timestamp"] = ["invalid_format"]
        props = raw.get("properties", {})
        if props is not None and not isinstance(props, dict):
            errors["properties"] = ["invalid_format"]
        return errors, when

    def batch(self, req: Request) -> Reply:
        denied = self._auth(req)
        if denied:
            return denied
        if self.latency:
            time.sleep(self.latency)
        try:
            events = req.json().get("events")
        except (ValueError, AttributeError):
            return Reply(400, {"status": 400, "error": "Bad Request", "code": "bad_request"})
        if not events or not isinstance(events, list):
            return _invalid({"events": ["no_events"]})
        if len(events) > MAX_BATCH:
            return _invalid({"events": ["too_many_events"]})
        details: dict[str, dict] = {}
        stamped = []
        with self.lock:
            seen: set[tuple[str, str]] = set()
            for i, raw in enumerate(events):
                errors, when = self._validate(raw)
                if not errors and self.subscriptions is not None \
                        and raw["external_subscription_id"] not in self.subscriptions:
                    errors["external_subscription_id"] = ["subscription_not_found"]
                if not errors:
                    key = (raw["external_subscription_id"], raw["transaction_id"])
                    if key in self.events or key in seen:
                        errors["transaction_id"] = ["value_already_exist"]
                    seen.add(key)
                if errors:
                    details[str(i)] = errors
                stamped.append(when)
            if details:
                self.rejected_batches += 1
                return _invalid(details)
            out = []
            now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            for raw, when in zip(events, stamped, strict=True):
                event = {
                    "lago_id": str(uuid.uuid4()),
                    "transaction_id": raw["transaction_id"],
                    "lago_customer_id": None,
                    "code": raw["code"],
                    "timestamp": datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z"),
                    "lago_subscription_id": None,
                    "external_subscription_id": raw["external_subscription_id"],
                    "precise_total_amount_cents": raw.get("precise_total_amount_cents"),
                    "properties": raw.get("properties") or {},
                    "created_at": now,
                }
                self.events[(raw["external_subscription_id"], raw["transaction_id"])] = {**event, "_ts": when}
                out.append(event)
            self.batch_sizes.append(len(events))
        return Reply(200, {"events": out})

    def create_one(self, req: Request) -> Reply:
        try:
            event = req.json().get("event")
        except (ValueError, AttributeError):
            return Reply(400, {"status": 400, "error": "Bad Request", "code": "bad_request"})
        reply = self.batch(Request(req.method, req.path, req.query, req.headers,
                                   __import__("json").dumps({"events": [event]}).encode()))
        if reply.status == 422:
            reply.body["error_details"] = reply.body["error_details"].get("0", reply.body["error_details"])
        elif reply.status == 200:
            reply.body = {"event": reply.body["events"][0]}
        return reply

    def get_event(self, req: Request) -> Reply:
        denied = self._auth(req)
        if denied:
            return denied
        tid = req.match.group(1)
        with self.lock:
            for (_, t), e in self.events.items():
                if t == tid:
                    return Reply(200, {"event": {k: v for k, v in e.items() if k != "_ts"}})
        return Reply(404, {"status": 404, "error": "Not Found", "code": "event_not_found"})

    def fake_totals(self, req: Request) -> Reply:
        return Reply(200, self.totals())

    def fake_stats(self, req: Request) -> Reply:
        with self.lock:
            sizes: dict[str, int] = {}
            for n in self.batch_sizes:
                sizes[str(n)] = sizes.get(str(n), 0) + 1
            return Reply(200, {"requests": self.request_count, "accepted_batches": len(self.batch_sizes),
                               "rejected_batches": self.rejected_batches, "batch_sizes": sizes,
                               "events": len(self.events)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--api-key", default="lago_fake_key")
    args = ap.parse_args()
    serve_forever_cli(LagoFake(args.api_key), args.port)


if __name__ == "__main__":
    main()
