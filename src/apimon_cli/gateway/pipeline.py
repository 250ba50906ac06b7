"""One request through the gateway: authenticate, admit, proxy, meter, notify.

``Pipeline.handle`` is aiohttp's request handler. The steps, in order (the first that refuses answers):

1. while draining (shutdown): ``503`` + ``Connection: close``, not metered;
2. **authentication** (``auth.Authenticator``): a ``KeyState`` (subscriber, product, limits) or ``403`` /
   ``401`` (bearer tokens, RFC 6750), not metered; a request without credentials to ``/oauth2/...`` or
   ``/.well-known/...`` is the gateway's own OAuth 2.0 endpoints (``oauth``);
3. **admission** (metered from here on): key enabled, product readable, the target a path ``/API/...``,
   the API in the product, an upstream for it, a path that cannot leave the upstream's base path
   (``paths.check_rest``), a declared body within ``max_body_size`` (``413``);
4. **bounds**: the subscriber's requests in flight below its product's ``max_concurrent``, the upstream's
   below its pool size: else ``503`` with ``Retry-After`` (nothing counted against limits);
5. **limits** (``limits.LimitsBackend.admit``): one token and one quota call, or ``429``;
6. **proxy** (``proxy.forward``), under the total deadline ``total_timeout`` (``504``, or the connection
   is cut when the response had started);
7. **metering** (``metering.Meter``) and the **observer hook**: every registered ``MeterObserver`` gets one
   ``MeteredRequest`` per metered request.

Requests in flight are registered (task -> deadline) for the deadline sweep and the shutdown drain.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from .auth import Authenticator
from .clock import Clock, Windows, windows_at
from .config import GatewayConfig
from .limits import KeyState, LimitsBackend
from .log import GatewayLog
from .metering import METRIC_BY_STATUS, METRIC_NAMES, OTHER, Meter, MeteredRequest, MeterObserver
from .paths import PathRefused, check_rest, split_target
from .proxy import Exchange, Upstream, error, forward

_current_task = asyncio.current_task
_OWN_PATHS = ("/oauth2/", "/.well-known/")  # reserved: no API of the local target has these names


class Pipeline:
    def __init__(
        self,
        cfg: GatewayConfig,
        clock: Clock,
        auth: Authenticator,
        limits: LimitsBackend,
        upstreams: dict[str, Upstream],
        meter: Meter,
        log: GatewayLog,
    ):
        self.cfg = cfg
        self.clock = clock
        self.auth = auth
        self.limits = limits
        self.upstreams = upstreams
        self.meter = meter
        self.log = log
        self.observers: list[MeterObserver] = []
        # /oauth2/token and /.well-known/*: answered by the gateway itself (gateway/oauth.py), never proxied
        self.endpoints: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]] | None = None
        self.inflight: dict[asyncio.Task, float] = {}  # request task -> deadline (loop time)
        self.expired: set[asyncio.Task] = set()
        self.draining = False
        self.refused = 0  # requests refused while draining
        self.win: Windows = windows_at(clock())
        self.prune_windows = False
        self.mono: Callable[[], float] = time.monotonic  # the loop's clock once started

    # ---------------------------------------------------------------- windows
    def roll(self, now: float) -> Windows:
        """The clock left the cached day: recompute the windows, forget ended quota windows."""
        old, win = self.win, windows_at(now)
        self.win = win
        if dict(win.window) != dict(old.window):
            self.limits.roll(win)
            self.prune_windows = True
        return win

    # ---------------------------------------------------------------- deadline sweep
    def expire(self) -> None:
        """Cancel requests past the total deadline (called about once a second)."""
        now = self.mono()
        for task, deadline in list(self.inflight.items()):
            if deadline <= now and task not in self.expired:
                self.expired.add(task)
                task.cancel()

    # ---------------------------------------------------------------- the hot path
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.draining:
            self.refused += 1
            resp = error(503, "shutting_down", "the gateway is shutting down; retry", {"Retry-After": "1"})
            resp.force_close()
            return resp
        if self.endpoints is not None and request.raw_path.startswith(_OWN_PATHS):
            return await self.endpoints(request)  # the token endpoint, JWKS, metadata: not an API, not metered
        ks = self.auth.authenticate(request)
        if type(ks) is not KeyState:
            if ks is not None and hasattr(ks, "__await__"):  # the authenticator had to wait (a JWKS fetch)
                ks = await ks
            if type(ks) is not KeyState:
                self.meter.unauthenticated += 1
                return error(ks.status, ks.code, ks.message, ks.headers, ks.extra)  # type: ignore[union-attr]

        started = self.mono()
        now = self.clock()
        win = self.win
        if not win.start <= now < win.end:
            win = self.roll(now)
        task = _current_task()
        self.inflight[task] = started + self.cfg.total_timeout
        ex = Exchange()
        route = split_target(request.raw_path)
        api = route[0] if route else ""
        try:
            resp, status = await self._serve(request, ks, win, now, started, route, ex)
        except asyncio.CancelledError:
            if task not in self.expired:  # shutdown past the drain timeout: still a counted call
                self._done(ks, win, api, request, 500, started, ex, now)
                raise
            self.expired.discard(task)
            task.uncancel()
            status = 504
            if ex.started:  # the client has the status line: all that is left is to cut the body
                request.protocol.force_close()
                resp = ex.response
            else:
                resp = error(
                    504, "deadline_exceeded",
                    f"the request took longer than {self.cfg.total_timeout:g} s (the gateway's total timeout)",
                )
                resp.force_close()
        except BaseException:  # a bug: still a counted call
            self._done(ks, win, api, request, 500, started, ex, now)
            raise
        finally:
            self.inflight.pop(task, None)
        self._done(ks, win, api, request, status, started, ex, now)
        return resp

    def _done(self, ks: KeyState, win: Windows, api: str, request: web.BaseRequest, status: int,
              started: float, ex: Exchange, now: float) -> None:
        self.meter.count((ks.subscriber, ks.product, win.day), status)
        if self.observers:
            metric = METRIC_BY_STATUS[status] if 0 <= status < 1000 else OTHER
            quota = None
            lim = ks.slot.limits
            if ex.limits and lim.quota_limit is not None:
                window = win.window[lim.quota_period]
                quota = (lim.quota_limit, self.limits.quota_count((ks.subscriber, window)), lim.quota_period, window)
            event = MeteredRequest(ks.subscriber, ks.product, api, request.method, status, METRIC_NAMES[metric],
                                   self.mono() - started, ex.bytes_in, ex.bytes_out, now, ex.limits, quota)
            for observer in self.observers:
                try:
                    observer(event)
                except Exception as exc:
                    self.log.warn_every(f"observer:{id(observer)}",
                                        f"a metering observer failed ({type(exc).__name__}: {exc}); "
                                        "the request was not affected")

    async def _serve(
        self, request: web.BaseRequest, ks: KeyState, win: Windows, now: float, mono: float,
        route: tuple[str, str] | None, ex: Exchange,
    ) -> tuple[web.StreamResponse, int]:
        """Admission, bounds, limits, proxy: the response and the status to meter."""
        lim = ks.slot.limits
        if not ks.enabled:
            return _e(403, "key_disabled", "the subscription of this API key is disabled")
        if not lim.usable:
            return _e(403, "product_unavailable",
                      f"the product of this API key ({ks.product}) is not readable in the gateway state")
        if route is None:
            return _e(400, "bad_request", "the request target must be a path: /API/PATH (not an absolute URI)")
        api, rest = route
        if not api:
            return _e(404, "no_api", "no API in the path: call /API/PATH")
        if api not in lim.apis:
            return _e(403, "api_not_in_product",
                      f"the product of this API key ({ks.product}) does not include the API {api!r}")
        up = self.upstreams.get(api)
        if up is None:
            return _e(502, "no_upstream",
                      f"the gateway has no upstream for the API {api!r} (target.local.upstreams in the plan)")
        try:
            check_rest(rest)
        except PathRefused as exc:
            return _e(400, "bad_path", str(exc))
        length = request.content_length
        if length is not None and length > self.cfg.max_body_size:
            resp = error(413, "body_too_large", f"the request body is larger than {self.cfg.max_body_size} bytes")
            resp.force_close()
            return resp, 413

        counters = ks.counters
        bound = lim.max_concurrent or self.cfg.max_concurrent
        if counters.inflight >= bound:
            return _e(503, "too_many_in_flight",
                      f"this subscriber already has {bound} requests in flight (the product's "
                      "max_concurrent); retry when one has finished", {"Retry-After": "1"})
        if up.inflight >= up.limit:
            return _e(503, "upstream_busy",
                      f"the upstream of {api!r} already has {up.limit} requests in flight; retry shortly",
                      {"Retry-After": "1"})
        counters.inflight += 1
        up.inflight += 1
        try:
            refused = await self.limits.admit(ks, mono, win, now)
            if refused is None:
                ex.limits = "admitted"
            else:
                status, body, headers = refused
                # a bucket's refusal carries the RateLimit-* fields, a quota's does not
                ex.limits = "rate_limited" if "RateLimit-Limit" in headers else "quota_exceeded"
                return web.Response(status=status, body=body, headers=headers,
                                    content_type="application/json"), status
            return await forward(request, up, up.base + rest, ks, ex, self.cfg.max_body_size, self.cfg.body_timeout)
        finally:
            counters.inflight -= 1
            up.inflight -= 1


def _e(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> tuple[web.Response, int]:
    return error(status, code, message, headers), status
