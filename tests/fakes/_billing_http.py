"""The small HTTP server the billing-platform fakes share (stdlib ``http.server``, 127.0.0.1 only).

A fake subclasses :class:`FakeServer`, sets ``routes`` to ``[(METHOD, regex, handler_name)]`` and implements
the handlers as ``handler(self, req) -> Reply``. ``with fake:`` serves it on a free port in a thread;
``fake.url`` is its base URL. ``serve_forever_cli`` runs one standalone (prints the URL, stops on SIGTERM).
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    match: re.Match | None = None

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def form(self) -> dict[str, str]:
        """application/x-www-form-urlencoded: last value wins, as Rack and Stripe do."""
        return {k: v[-1] for k, v in parse_qs(self.body.decode("utf-8"), keep_blank_values=True).items()}


@dataclass
class Reply:
    status: int
    body: Any = None  # dict/list -> JSON; bytes as-is; None -> no body
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet
        pass

    def _dispatch(self) -> None:
        fake = self.server.fake
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:  # the client went away mid-body: like the vendors, process nothing
            self.close_connection = True
            return
        req = Request(self.command, parts.path, parse_qs(parts.query, keep_blank_values=True),
                      {k.lower(): v for k, v in self.headers.items()}, body)
        reply = None
        for method, pattern, name in fake.routes:
            m = re.fullmatch(pattern, parts.path)
            if m and method == self.command:
                req.match = m
                with fake.stats_lock:
                    fake.request_count += 1
                try:
                    reply = getattr(fake, name)(req)
                except Exception as exc:  # a bug in the fake: say so, never look like the vendor
                    reply = Reply(500, {"fake_error": f"{type(exc).__name__}: {exc}"})
                break
        if reply is None:
            reply = Reply(404 if not any(re.fullmatch(p, parts.path) for _, p, _ in fake.routes) else 405,
                          {"fake_error": f"not implemented by the fake: {self.command} {parts.path}"})
        if isinstance(reply.body, (dict, list)):
            data = json.dumps(reply.body).encode()
        else:
            data = reply.body or b""
        self.send_response(reply.status)
        if data:
            self.send_header("Content-Type", reply.content_type)
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _dispatch


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, fake: FakeServer, port: int) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", port), _Handler)


class FakeServer:
    routes: list[tuple[str, str, str]] = []

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.stats_lock = threading.Lock()
        self.request_count = 0
        self.clock_offset = 0.0  # seconds added to the real clock (tests move time forward)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def now(self) -> float:
        return time.time() + self.clock_offset

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self, port: int = 0) -> FakeServer:
        self._server = _Server(self, port)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def hostport(self) -> str:
        return self.url.removeprefix("http://")


def serve_forever_cli(fake: FakeServer, port: int) -> None:
    """Standalone mode: print the base URL, serve until SIGINT/SIGTERM."""
    fake.start(port)
    print(fake.url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    fake.stop()
    sys.exit(0)
