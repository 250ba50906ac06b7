"""Client connections: what a hostile or broken client can do to the gateway, bounded.

aiohttp's low-level server with its own connection protocol (``Connection``, a ``RequestHandler``):

- **connection limit**: at most ``ConnectionGate.limit`` open client connections (``max_connections``,
  lowered to fit the process's open-file limit); a connection over it gets ``503`` with ``Retry-After`` and
  is closed at once, and the log says so at most once per 10 s with a count (never a line, let alone a
  traceback, per connection);
- **header timeout**: once the first byte of a request arrives, its head (request line and headers) must be
  complete within ``header_timeout``, however slowly it trickles: else ``408`` and the connection closes;
- **keep-alive timeout**: a connection with no request in progress is closed ``keepalive_timeout`` after its
  last response (or after it opened);
- **sizes**: request target up to ``max_request_line`` bytes (``414``), one header up to
  ``max_header_line`` bytes and at most ``max_headers`` of them (``431``), the whole head up to
  ``max_head_size`` bytes (``431``); the parser never buffers more than that for a head;
- error answers are JSON like the gateway's own, and no response carries a ``Server`` header.

While draining (shutdown) the gate refuses new connections the same way.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web
from aiohttp.http import RawRequestMessage
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler

from .config import GatewayConfig
from .log import GatewayLog

try:  # how aiohttp queues a parse error as a message; without it a refused head just closes
    from aiohttp.web_protocol import _ErrInfo
except ImportError:  # pragma: no cover - another aiohttp
    _ErrInfo = None  # type: ignore[assignment,misc]


def _json_body(code: str, message: str) -> bytes:
    return json.dumps({"error": code, "message": message}).encode()


def _refusal(message: str) -> bytes:
    body = _json_body("too_many_connections", message)
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class ConnectionGate:
    """Open client connections, shared by all ``Connection`` objects of one gateway."""

    def __init__(self, limit: int, log: GatewayLog):
        self.limit = limit
        self.log = log
        self.open = 0
        self.refused = 0
        self.draining = False
        self._full = _refusal(f"the gateway has {limit} connections open, its limit; retry shortly")
        self._closing = _refusal("the gateway is shutting down")

    def admit(self, transport: asyncio.BaseTransport) -> bool:
        if self.open < self.limit and not self.draining:
            self.open += 1
            return True
        self.refused += 1
        try:
            transport.write(self._closing if self.draining else self._full)  # type: ignore[attr-defined]
        finally:
            transport.close()
        if not self.draining:
            self.log.warn_every(
                "connection-limit",
                f"connection limit reached: {self.limit} client connections open; new ones get 503 "
                "(slow or idle clients are closed after the header and keep-alive timeouts)",
            )
        return False


class Request(web.BaseRequest):
    """The gateway's request: its responses never announce the server software."""

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        response.headers.popall("Server", None)


class Connection(RequestHandler):
    __slots__ = ("_gate", "_cfg", "_counted", "_reading", "_payload", "_head_bytes", "_head_timer", "_refusing")

    def __init__(self, manager: web.Server, *, gate: ConnectionGate, cfg: GatewayConfig, **kwargs):
        super().__init__(manager, **kwargs)
        self._gate = gate
        self._cfg = cfg
        self._counted = False
        self._reading = True  # between requests: the next bytes are a request head
        self._payload = None  # the body of the last request head parsed
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusing = False

    # ---------------------------------------------------------------- open / close
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._gate.admit(transport):
            self._manager = None  # never registered: connection_lost has nothing to undo
            return
        self._counted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._gate.open -= 1
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    # ---------------------------------------------------------------- reading heads
    def data_received(self, data: bytes) -> None:
        if self._refusing:
            return
        reading = self._reading
        if not reading:  # after a head: its body first, then the next head
            payload = self._payload
            reading = self._reading = payload is None or payload.is_eof()
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:  # a head (or a parse error) is complete
            if self._head_bytes + len(data) > self._cfg.max_head_size and self._too_big():
                return
            self._reading = False
            self._payload = self._messages[-1][1] if self._messages else None
            self._head_bytes = 0
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
        elif reading:
            self._head_bytes += len(data)
            if self._head_bytes > self._cfg.max_head_size:
                self._fail(431, "request_header_fields_too_large",
                           f"the request head is larger than {self._cfg.max_head_size} bytes")
            elif self._head_timer is None and data:
                self._head_timer = self._loop.call_later(self._cfg.header_timeout, self._head_timeout)

    def stop_reading(self) -> None:
        """Ignore whatever else the client sends; the request's body ends here (the connection closes after
        the response)."""
        self._refusing = True
        if self._payload is not None and not self._payload.is_eof():
            self._payload.feed_eof()

    def _too_big(self) -> bool:
        """The head just parsed arrived with more bytes than a head may have: is it itself too large?"""
        last = self._messages[-1][0] if self._messages else None
        if not isinstance(last, RawRequestMessage):
            return False
        size = len(last.method) + len(last.path) + 12 + sum(len(k) + len(v) + 4 for k, v in last.raw_headers) + 2
        if size <= self._cfg.max_head_size:
            return False
        self._messages.pop()
        self._fail(431, "request_header_fields_too_large",
                   f"the request head is larger than {self._cfg.max_head_size} bytes")
        return True

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._reading and not self._refusing and self.transport is not None:
            self._fail(408, "request_timeout",
                       f"the request head was not complete within {self._cfg.header_timeout:g} s")

    def _fail(self, status: int, code: str, message: str) -> None:
        """Answer ``status`` as the next response and close: further bytes are not parsed."""
        self._refusing = True
        if _ErrInfo is None:  # pragma: no cover
            self.force_close()
            return
        exc = HttpProcessingError(code=status, message=message)
        exc.apimon_code = code  # type: ignore[attr-defined]
        self._messages.append((_ErrInfo(status=status, exc=exc, message=message), EMPTY_PAYLOAD))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---------------------------------------------------------------- error answers
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started; it cannot become an error")
        cfg = self._cfg
        code = getattr(exc, "apimon_code", None)
        if code is not None:
            text = message or ""
        elif isinstance(exc, LineTooLong):
            if exc.args[1:2] == (cfg.max_request_line,) and cfg.max_request_line != cfg.max_header_line:
                status, code = 414, "uri_too_long"
                text = f"the request target is longer than {cfg.max_request_line} bytes"
            else:
                status, code = 431, "request_header_fields_too_large"
                text = f"a request header is longer than {cfg.max_header_line} bytes"
        elif isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc):
            status, code = 431, "request_header_fields_too_large"
            text = f"more than {cfg.max_headers} request headers"
        elif status == 500:
            code, text = "internal_error", "the gateway failed to handle the request"
            self._gate.log.warn_every(
                "internal-error", f"unexpected error handling a request: {type(exc).__name__}: {exc}"
            )
        else:
            code = "bad_request"
            text = f"malformed HTTP request: {getattr(exc, 'message', None) or message or 'unparseable'}"
        self._refusing = True
        resp = web.Response(status=status, body=_json_body(code, text), content_type="application/json")
        resp.force_close()
        return resp


class GatewayServer(web.Server):
    """aiohttp's low-level server making ``Connection`` protocols and ``Request`` objects."""

    def __init__(self, handler, *, gate: ConnectionGate, cfg: GatewayConfig, **kwargs):
        super().__init__(handler, request_factory=self._request, access_log=None, **kwargs)
        self._gate = gate
        self._cfg = cfg
        self._protocol_kwargs = {
            "keepalive_timeout": cfg.keepalive_timeout,
            "max_line_size": cfg.max_request_line,
            "max_field_size": cfg.max_header_line,
            "max_headers": cfg.max_headers,
            "lingering_time": 2.0,
            "auto_decompress": False,  # bodies are forwarded as sent, Content-Encoding and all
            "access_log": None,
        }

    def _request(self, message, payload, protocol, writer, task) -> web.BaseRequest:
        return Request(message, payload, protocol, writer, task, self._loop)

    def __call__(self) -> Connection:
        return Connection(self, loop=self._loop, gate=self._gate, cfg=self._cfg, **self._protocol_kwargs)
