"""A contract fake of OpenMeter's event ingestion API, on 127.0.0.1.

Written from OpenMeter's API reference (``POST /api/v1/events``) and its usage-events guide:

* Content types: ``application/cloudevents+json`` (one CloudEvent), ``application/cloudevents-batch+json``
  (a JSON array of CloudEvents) and ``application/json`` (either); anything else is ``415``.
* Each event is a CloudEvents 1.0 JSON object: ``specversion`` "1.0", ``id``, ``source``, ``type`` and
  ``subject`` (the customer the meter aggregates by) required non-empty strings, ``time`` RFC 3339 (optional:
  defaults to receipt), ``data`` an object. One invalid event rejects the request: ``400`` with an RFC 7807
  problem document (``application/problem+json``: ``type``, ``title``, ``status``, ``detail``).
* Events are deduplicated by ``id`` + ``source``: a repeat is accepted (``204``) and not counted again.
* ``Authorization: Bearer <token>``; otherwise ``401`` problem document.

Corrections: events are immutable; a SUM meter adds negative values too, so a correction is a compensating
event with a new id.

In-process: ``with OpenMeterFake(token="om_x") as fake: fake.total("acme", "api_requests", "requests")``.
Standalone: ``python tests/fakes/openmeter_fake.py --port 0 --token om_x``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

try:
    from ._billing_http import FakeServer, Reply, Request, serve_forever_cli
except ImportError:  # run as a script: python tests/fakes/NAME.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _billing_http import FakeServer, Reply, Request, serve_forever_cli

_TYPES = ("application/cloudevents+json", "application/cloudevents-batch+json", "application/json")


def _problem(status: int, title: str, detail: str) -> Reply:
    return Reply(status, {"type": "about:blank", "title": title, "status": status, "detail": detail},
                 content_type="application/problem+json")


class OpenMeterFake(FakeServer):
    routes = [("POST", r"/api/v1/events", "ingest"), ("GET", r"/_fake/totals", "fake_totals")]

    def __init__(self, token: str = "om_fake_token") -> None:
        super().__init__()
        self.token = token
        self.events: dict[tuple[str, str], dict] = {}  # (source, id) -> event
        self.batch_sizes: list[int] = []
        self.rejected = 0

    def total(self, subject: str, type_: str = "api_requests", field: str = "requests") -> int:
        with self.lock:
            return sum(int(e["data"].get(field, 0)) for e in self.events.values()
                       if e["subject"] == subject and e["type"] == type_)

    def totals(self, type_: str = "api_requests", field: str = "requests") -> dict[str, int]:
        out: dict[str, int] = {}
        with self.lock:
            for e in self.events.values():
                if e["type"] == type_:
                    out[e["subject"]] = out.get(e["subject"], 0) + int(e["data"].get(field, 0))
        return out

    @staticmethod
    def _check(i: int, e: object) -> str | None:
        if not isinstance(e, dict):
            return f"event {i}: a CloudEvent must be a JSON object"
        if e.get("specversion") != "1.0":
            return f"event {i}: specversion must be \"1.0\""
        for name in ("id", "source", "type", "subject"):
            if not isinstance(e.get(name), str) or not e[name]:
                return f"event {i}: {name} is required"
        if "time" in e:
            try:
                datetime.fromisoformat(str(e["time"]).replace("Z", "+00:00"))
            except ValueError:
                return f"event {i}: time must be RFC 3339"
        if "data" in e and not isinstance(e["data"], dict):
            return f"event {i}: data must be a JSON object"
        return None

    def ingest(self, req: Request) -> Reply:
        if req.headers.get("authorization") != f"Bearer {self.token}":
            return _problem(401, "Unauthorized", "missing or invalid bearer token")
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in _TYPES:
            return _problem(415, "Unsupported Media Type", f"content type {ctype or 'none'} is not supported")
        try:
            body = json.loads(req.body)
        except ValueError:
            return _problem(400, "Bad Request", "request body is not valid JSON")
        if ctype == "application/cloudevents-batch+json" and not isinstance(body, list):
            return _problem(400, "Bad Request", "a batch must be a JSON array of CloudEvents")
        events = body if isinstance(body, list) else [body]
        for i, e in enumerate(events):
            problem = self._check(i, e)
            if problem:
                self.rejected += 1
                return _problem(400, "Bad Request", "invalid event: " + problem)
        with self.lock:
            for e in events:
                self.events.setdefault((e["source"], e["id"]), {**e, "data": e.get("data") or {}})
            self.batch_sizes.append(len(events))
        return Reply(204)

    def fake_totals(self, req: Request) -> Reply:
        return Reply(200, self.totals())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", default="om_fake_token")
    args = ap.parse_args()
    serve_forever_cli(OpenMeterFake(args.token), args.port)


if __name__ == "__main__":
    main()
