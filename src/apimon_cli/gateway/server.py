"""The local gateway: an aiohttp reverse proxy enforcing the local target's keys, limits and quotas.

One event loop, a low-level aiohttp server (no router: one handler) and one shared ``ClientSession`` with a
connection pool to the upstreams. The hot path touches only memory: a dict lookup for the key, the token
bucket, a quota counter and a usage counter. Two background tasks do the rest: every ``poll_interval`` the
state database's ``meta.revision`` is read and, when an apply changed it, products and subscribers are
reloaded (keys keep their buckets); every ``flush_interval`` the pending usage and quota deltas are added to
the database. Database calls run on one worker thread. SIGINT/SIGTERM stop accepting, let requests in
flight finish (up to ``drain_timeout``), then flush: no counted call is lost.

A request ``/{api}/{rest}`` goes to ``{upstream of api}/{rest}`` with the method, the query, the headers
(less hop-by-hop headers and ``x-api-key``; plus ``X-Forwarded-For/-Host/-Proto`` and
``X-Apimon-Subscriber/-Product``) and the body, streamed both ways.
"""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..providers.base import ProviderError
from .clock import Clock, Windows, clock_from_env, iso_utc, windows_at
from .limits import KeyState, build_keys
from .metering import Meter, usage_rows
from .store import Snapshot, StateStore

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
_RESPONSE_DROP = _HOP_BY_HOP


class GatewayError(Exception):
    """A problem that stops the gateway from starting (bad options, no state, port in use)."""


@dataclass
class GatewayConfig:
    state_dir: Path
    upstreams: dict[str, str]  # api name -> base URL
    host: str = "127.0.0.1"
    port: int = 8080
    connect_timeout: float = 5.0  # seconds to get an upstream connection (pool wait + TCP connect): 504
    upstream_timeout: float = 30.0  # seconds to wait for response headers or the next body chunk: 504
    poll_interval: float = 0.25  # revision polling (hot reload)
    flush_interval: float = 1.0  # usage / quota writes
    drain_timeout: float = 10.0  # on shutdown, how long requests in flight may still run
    max_upstream_connections: int = 512


@dataclass
class Summary:
    requests: int = 0  # metered requests (a known key)
    unauthenticated: int = 0  # no or unknown key: not metered
    seconds: float = 0.0
    lost: list[tuple] = field(default_factory=list)  # usage rows that could not be written (should be [])


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None
) -> web.Response:
    body = json.dumps({"error": code, "message": message, **(extra or {})}).encode()
    return web.Response(status=status, body=body, headers=headers, content_type="application/json")


def _unsafe_path(rest: str) -> bool:
    """True if the path has a '.' or '..' segment (plain or percent-encoded): it could climb out of an
    upstream's base path."""
    path = rest.split("?", 1)[0]
    if "." not in path and "%" not in path:
        return False
    return any(unquote(s) in (".", "..") for s in path.split("/"))


class Gateway:
    def __init__(self, config: GatewayConfig, *, clock: Clock | None = None):
        self.config = config
        self.clock: Clock = clock or clock_from_env()
        self.upstreams = {api: url.rstrip("/") for api, url in config.upstreams.items()}
        self.keys: dict[str, KeyState] = {}
        self.revision: str | None = None
        self.meter = Meter()
        self.port: int | None = None
        self._store = StateStore(config.state_dir)
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apimon-gateway-db")
        self._win: Windows = windows_at(self.clock())
        self._prune_windows = False
        self._flush_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._loop_time: Callable[[], float] = time.monotonic
        self._warned: set[str] = set()
        self._started = 0.0

    # ---------------------------------------------------------------- lifecycle
    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def start(self) -> None:
        """Load the state, bind the listener, start polling and flushing."""
        loop = asyncio.get_running_loop()
        self._loop_time = loop.time
        self._started = time.monotonic()
        try:
            snap = await self._call(self._store.snapshot)
            self._win = windows_at(self.clock())
            used = await self._call(self._store.quota_counts, self._win.window.values())
        except ProviderError as exc:
            await self._close_db()
            raise GatewayError(str(exc)) from None
        except Exception as exc:  # sqlite errors: a damaged or foreign file
            await self._close_db()
            raise GatewayError(f"cannot read the local gateway state in {self.config.state_dir}: {exc}") from None
        self.meter = Meter(used)
        self._install(snap)
        cfg = self.config
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.max_upstream_connections, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=cfg.connect_timeout,
                sock_connect=cfg.connect_timeout,
                sock_read=cfg.upstream_timeout,
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        server = web.Server(self.handle, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=cfg.drain_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.host, cfg.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            await self._session.close()
            await self._close_db()
            raise GatewayError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
        sockets = site._server.sockets if site._server else ()  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else cfg.port
        self._tasks = [asyncio.create_task(self._poll()), asyncio.create_task(self._flusher())]

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> Summary:
        """Stop accepting, drain requests in flight, write every pending count, close."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        lost: list[tuple] = []
        for attempt in range(3):
            try:
                await self.flush(raise_errors=True)
                break
            except Exception as exc:
                self._warn("final-flush", f"writing usage counts failed ({exc}); retrying")
                await asyncio.sleep(0.5 * (attempt + 1))
        else:
            usage, quota = self.meter.swap()
            lost = usage_rows(usage)
        await self._close_db()
        return Summary(self.meter.requests, self.meter.unauthenticated, time.monotonic() - self._started, lost)

    async def _close_db(self) -> None:
        await self._call(self._store.close)
        self._db.shutdown(wait=True)

    def _install(self, snap: Snapshot) -> None:
        self.keys = build_keys(snap.products, snap.subscribers, self.keys, self._loop_time())
        self.revision = snap.revision
        for pid in snap.unreadable:
            self._warn(f"product:{pid}", f"product {pid} in the state cannot be read; its keys get 403")
        for api in sorted({a for p in snap.products.values() for a in p.apis} - self.upstreams.keys()):
            self._warn(f"api:{api}", f"no upstream for the API {api!r} in target.local.upstreams; calls to it get 502")

    def _warn(self, what: str, message: str) -> None:
        if what not in self._warned:  # once per distinct problem: no per-request logging
            self._warned.add(what)
            sys.stderr.write(f"apimon gateway: warning: {message}\n")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            try:
                if await self._call(self._store.revision) != self.revision:
                    self._install(await self._call(self._store.snapshot))
                self._warned.discard("poll")
            except Exception as exc:  # the DB briefly unreadable: keep serving the last state
                self._warn("poll", f"reading the state failed ({exc}); serving the last state read")

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:  # on a fixed schedule: a slow write does not stretch the interval
            due += self.config.flush_interval
            await asyncio.sleep(max(0.0, due - loop.time()))
            await asyncio.shield(self.flush())
            due = max(due, loop.time() - self.config.flush_interval)

    async def flush(self, raise_errors: bool = False) -> None:
        """Add the pending deltas to the database; on failure keep them for the next flush."""
        async with self._flush_lock:
            prune = self._prune_windows
            if not self.meter.pending and not prune:
                return
            usage, quota = self.meter.swap()
            self._prune_windows = False
            rows = usage_rows(usage)
            qrows = [(sid, win, n) for (sid, win), n in quota.items()]
            keep = list(self._win.window.values()) if prune else None
            try:
                await self._call(self._store.add, rows, qrows, keep)
                self._warned.discard("flush")
            except Exception as exc:
                self.meter.restore(usage, quota)
                self._prune_windows = self._prune_windows or prune
                if raise_errors:
                    raise
                self._warn("flush", f"writing usage counts failed ({exc}); will retry")

    def _roll(self, now: float) -> Windows:
        """The clock left the cached day: recompute the windows, forget ended quota windows."""
        old, win = self._win, windows_at(now)
        self._win = win
        if dict(win.window) != dict(old.window):
            self.meter.keep_windows(win.window.values())
            self._prune_windows = True
        return win

    # ---------------------------------------------------------------- the hot path
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        key = request.headers.get("x-api-key")
        ks = self.keys.get(key) if key else None
        if ks is None:
            self.meter.unauthenticated += 1
            if key:
                return _error(403, "invalid_key", "the API key is not valid")
            return _error(403, "missing_key", "missing API key: send it in the x-api-key header")

        now = self.clock()
        win = self._win
        if not win.start <= now < win.end:
            win = self._roll(now)
        ukey = (ks.subscriber, ks.product, win.day)
        resp = self._admit(request, ks, win, now)
        if type(resp) is str:  # admitted: the upstream URL
            try:
                resp = await self._proxy(request, resp, ks)
            except BaseException:  # a bug or a cancellation at shutdown: still a counted call
                self.meter.count(ukey, 500)
                raise
            if type(resp) is tuple:  # streamed: (response sent, status to meter)
                resp, status = resp
                self.meter.count(ukey, status)
                return resp
        self.meter.count(ukey, resp.status)
        return resp

    def _admit(self, request: web.BaseRequest, ks: KeyState, win: Windows, now: float) -> web.Response | str:
        """The checks in order (enabled, API in the product, upstream, path, rate limit, quota): an error
        response, or the upstream URL to proxy to. Only requests that would be proxied take a token and
        count against the quota."""
        if not ks.enabled:
            return _error(403, "key_disabled", "the subscription of this API key is disabled")
        if not ks.usable:
            return _error(
                403,
                "product_unavailable",
                f"the product of this API key ({ks.product}) is not readable in the gateway state",
            )
        path = request.raw_path
        if path[:1] != "/":
            return _error(400, "bad_request", "the request target must be a path: /API/PATH")
        slash = path.find("/", 1)
        query = path.find("?", 1)
        if slash == -1 or (query != -1 and query < slash):
            end = len(path) if query == -1 else query
            api, rest = path[1:end], "/" + path[end:]
        else:
            api, rest = path[1:slash], path[slash:]
        if not api:
            return _error(404, "no_api", "no API in the path: call /API/PATH")
        if api not in ks.apis:
            return _error(
                403,
                "api_not_in_product",
                f"the product of this API key ({ks.product}) does not include the API {api!r}",
            )
        base = self.upstreams.get(api)
        if base is None:
            return _error(
                502,
                "no_upstream",
                f"the gateway has no upstream for the API {api!r} (target.local.upstreams in the plan)",
            )
        if _unsafe_path(rest):
            return _error(400, "bad_path", "'.' and '..' path segments are not allowed")
        if ks.rate and not ks.take(self._loop_time()):
            return web.Response(
                status=429, body=ks.rate_limit_body(), headers=ks.rate_limit_headers(), content_type="application/json"
            )
        if ks.quota_limit is not None:
            period = ks.quota_period
            if self.meter.take_quota((ks.subscriber, win.window[period]), ks.quota_limit) is None:
                resets = win.resets[period]
                at = iso_utc(resets)
                return _error(
                    429,
                    "quota_exceeded",
                    f"quota exhausted: {ks.quota_limit} requests per {period} (not the rate limit); it resets at {at}",
                    headers={"Retry-After": str(max(1, int(resets - now + 0.999)))},
                    extra={"quota": {"limit": ks.quota_limit, "period": period, "resets_at": at}},
                )
        return base + rest

    async def _proxy(
        self, request: web.BaseRequest, url: str, ks: KeyState
    ) -> web.StreamResponse | tuple[web.StreamResponse, int]:
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
            body = request.content
            expect = in_headers.get("expect")
            if expect and expect.lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert self._session is not None
        try:
            upstream = await self._session.request(
                request.method, URL(url, encoded=True), headers=headers, data=body, allow_redirects=False
            )
        except (TimeoutError, aiohttp.ServerTimeoutError):
            return _error(504, "upstream_timeout", "the upstream did not answer in time")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return _error(502, "upstream_unreachable", f"the upstream could not be reached ({type(exc).__name__})")
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
                    return _error(504, "upstream_timeout", "the upstream did not send its response in time")
                except (aiohttp.ClientError, OSError) as exc:
                    upstream.close()
                    return _error(502, "upstream_failed", f"the upstream response broke off ({type(exc).__name__})")
                return web.Response(status=status, reason=upstream.reason, body=data, headers=out)
            return await self._stream(request, upstream, status, out)
        finally:
            upstream.release()

    async def _stream(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, status: int, headers: CIMultiDict
    ) -> tuple[web.StreamResponse, int]:
        """Stream the body through; a body the upstream breaks off is metered as failed (502)."""
        resp = web.StreamResponse(status=status, reason=upstream.reason, headers=headers)
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
        await resp.write_eof()
        return resp, status


# ---------------------------------------------------------------- entry point for the CLI


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT', 'PORT' or '[IPv6]:PORT'."""
    raw = text.strip()
    host, sep, port = raw.rpartition(":")
    if not sep:
        host, port = "", raw
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise GatewayError(f"--listen must be HOST:PORT; got {text!r}") from None
    if not 0 <= number <= 65535:
        raise GatewayError(f"--listen port must be 0..65535; got {number}")
    return host, number


def check_upstreams(upstreams: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for api, url in (upstreams or {}).items():
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise GatewayError(
                f"target.local.upstreams.{api}: must be an http(s) URL like http://127.0.0.1:9000; got {url!r}"
            )
        if "/" in api:
            raise GatewayError(
                f"target.local.upstreams.{api}: an API name for the local gateway is one path segment (no '/')"
            )
        out[str(api)] = str(url)
    return out


def run(
    config: GatewayConfig, *, clock: Clock | None = None, on_ready: Callable[[Gateway], None] | None = None
) -> Summary:
    """Serve until SIGINT or SIGTERM; returns what was served."""

    async def main() -> Summary:
        gateway = Gateway(config, clock=clock)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await gateway.start()
            # Everything loaded so far (the CLI, the plan loader, aiohttp) lives as long as the process: keep
            # it out of the cyclic GC's full collections, which otherwise stall the loop for tens of ms.
            gc.collect()
            gc.freeze()
            if on_ready is not None:
                on_ready(gateway)
            await stop.wait()
            return await gateway.stop()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(main())
