"""Forwarding one admitted request to its upstream, streaming both ways.

Each upstream (one entry of ``target.local.upstreams``) has its own ``ClientSession`` and connection pool
of ``upstream_connections`` connections, and the gateway never queues for it: a request that finds the
upstream's requests in flight at that bound gets ``503`` with ``Retry-After`` at once, so one slow upstream
cannot take connections (or file descriptors) from the others.

A request ``/{api}/{rest}`` goes to ``{upstream base}{rest}`` with the method, the query, the headers (less
hop-by-hop headers and ``x-api-key``; plus ``X-Forwarded-For/-Host/-Proto`` and
``X-Apimon-Subscriber/-Product``) and the body, read from the client chunk by chunk (at most
``max_body_size`` bytes: 413; the client silent for ``body_timeout``: 408). Responses up to ``SMALL_BODY``
with a Content-Length are read whole, larger ones streamed; the upstream's ``Server`` header is not passed
on (the gateway announces no software either).
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .limits import KeyState

SMALL_BODY = 64 * 1024  # upstream responses up to this size (with a Content-Length) are read whole

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# request headers never forwarded: hop-by-hop, the key, ones the gateway sets itself
_REQUEST_DROP = _HOP_BY_HOP | {
    "host",
    "expect",
    "x-api-key",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-apimon-subscriber",
    "x-apimon-product",
}
_RESPONSE_DROP = _HOP_BY_HOP | {"server"}


def error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, extra: dict | None = None
) -> web.Response:
    body = json.dumps({"error": code, "message": message, **(extra or {})}).encode()
    return web.Response(status=status, body=body, headers=headers, content_type="application/json")


class Upstream:
    """One API's upstream: base URL, its own pool, and the requests in flight to it."""

    __slots__ = ("api", "base", "base_path", "limit", "inflight", "session")

    def __init__(self, api: str, url: str, limit: int):
        self.api = api
        self.base = url.rstrip("/")
        self.base_path = urlsplit(self.base).path or "/"
        self.limit = limit
        self.inflight = 0
        self.session: aiohttp.ClientSession | None = None

    def open(self, connect_timeout: float, read_timeout: float) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.limit, limit_per_host=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=read_timeout
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


class Exchange:
    """What one proxied request did, for metering and the observer hook: bytes both ways, whether the
    response has started (then an error can only cut it), and why the client's body failed."""

    __slots__ = ("bytes_in", "bytes_out", "started", "response", "body_error", "limits")

    def __init__(self) -> None:
        self.limits = ""  # what the limits check said (see metering.MeteredRequest.limits)
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = False  # a streamed response has been prepared (``response``)
        self.response: web.StreamResponse | None = None
        self.body_error: web.Response | None = None


async def _client_body(request: web.BaseRequest, ex: Exchange, limit: int, idle: float):
    """The client's body, chunk by chunk: at most ``limit`` bytes, at most ``idle`` s between chunks."""
    content = request.content
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await content.readany()
        except TimeoutError:
            ex.body_error = error(408, "body_timeout", f"the request body stalled for {idle:g} s")
            raise
        if not chunk:
            return
        ex.bytes_in += len(chunk)
        if ex.bytes_in > limit:
            ex.body_error = error(413, "body_too_large", f"the request body is larger than {limit} bytes")
            raise ValueError("request body too large")
        yield chunk


async def forward(
    request: web.BaseRequest,
    up: Upstream,
    url: str,
    ks: KeyState,
    ex: Exchange,
    max_body: int,
    body_timeout: float,
) -> tuple[web.StreamResponse, int]:
    """Proxy the request; returns the response (prepared and finished if streamed) and the status to meter
    (502/504 for a body the upstream broke off or stalled mid-way)."""
    in_headers = request.headers
    headers = CIMultiDict()
    for name, value in in_headers.items():
        if name.lower() not in _REQUEST_DROP:
            headers.add(name, value)
    conn = in_headers.get("connection")
    if conn:
        for token in conn.split(","):
            headers.popall(token.strip(), None)
    remote = request.remote or ""
    xff = in_headers.get("x-forwarded-for")
    headers["X-Forwarded-For"] = f"{xff}, {remote}" if xff else remote
    headers["X-Forwarded-Proto"] = "http"
    host = in_headers.get("host")
    if host:
        headers["X-Forwarded-Host"] = host
    headers["X-Apimon-Subscriber"] = ks.subscriber
    headers["X-Apimon-Product"] = ks.product

    body = None
    if request.body_exists:
        body = _client_body(request, ex, max_body, body_timeout)
        expect = in_headers.get("expect")
        if expect and expect.lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert up.session is not None
    try:
        upstream = await up.session.request(
            request.method, URL(url, encoded=True), headers=headers, data=body, allow_redirects=False
        )
    except (TimeoutError, aiohttp.ServerTimeoutError):
        if ex.body_error is not None:
            return _body_failed(request, ex)
        return error(504, "upstream_timeout", "the upstream did not answer in time"), 504
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        if ex.body_error is not None:
            return _body_failed(request, ex)
        return error(502, "upstream_unreachable", f"the upstream could not be reached ({type(exc).__name__})"), 502
    try:
        out = CIMultiDict()
        for name, value in upstream.headers.items():
            if name.lower() not in _RESPONSE_DROP:
                out.add(name, value)
        conn = upstream.headers.get("connection")
        if conn:
            for token in conn.split(","):
                out.popall(token.strip(), None)
        length = upstream.content_length
        status = upstream.status
        if (length is not None and length <= SMALL_BODY) or request.method == "HEAD" or status in (204, 304):
            try:
                data = await upstream.read()
            except (TimeoutError, aiohttp.ServerTimeoutError):
                upstream.close()
                return error(504, "upstream_timeout", "the upstream did not send its response in time"), 504
            except (aiohttp.ClientError, OSError) as exc:
                upstream.close()
                return error(502, "upstream_failed", f"the upstream response broke off ({type(exc).__name__})"), 502
            ex.bytes_out = len(data)
            return web.Response(status=status, reason=upstream.reason, body=data, headers=out), status
        return await _stream(request, upstream, status, out, ex)
    finally:
        upstream.release()


def _body_failed(request: web.BaseRequest, ex: Exchange) -> tuple[web.StreamResponse, int]:
    resp = ex.body_error
    assert resp is not None
    resp.force_close()  # the rest of the client's body is not read
    if resp.status == 408:  # a stalled client: no lingering read of a body that does not come
        stop = getattr(request.protocol, "stop_reading", None)
        if stop is not None:
            stop()
    return resp, resp.status


async def _stream(
    request: web.BaseRequest, upstream: aiohttp.ClientResponse, status: int, headers: CIMultiDict, ex: Exchange
) -> tuple[web.StreamResponse, int]:
    """Stream the body through; a body the upstream breaks off is metered as failed (502)."""
    resp = web.StreamResponse(status=status, reason=upstream.reason, headers=headers)
    ex.response = resp
    ex.started = True
    await resp.prepare(request)
    content = upstream.content
    while True:
        try:
            chunk = await content.readany()
        except Exception:  # the upstream broke off or stalled mid-body: the client must see it too
            upstream.close()
            request.protocol.force_close()  # no terminating chunk: the client sees a cut body
            return resp, 502
        if not chunk:
            break
        try:
            await resp.write(chunk)
        except Exception:  # the client went away
            upstream.close()
            return resp, status
        ex.bytes_out += len(chunk)
    await resp.write_eof()
    return resp, status
