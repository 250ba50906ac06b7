"""The gateway's life: start, hot reload, flushing, the deadline sweep, the shutdown drain, the event loop.

``Gateway`` puts the parts together (``auth``, ``limits``, ``pipeline``, ``proxy``, ``connections``, ``store``)
and runs three background tasks:

- **reload**: every ``poll_interval`` the state's ``meta.revision`` is read; when an apply changed it (and
  has finished: never a half-applied plan), the snapshot is read *and the new key table built* on the
  database thread (``limits.build_keys``, reusing every unchanged ``KeyState``), then swapped in on the
  event loop in one assignment: the loop never rebuilds 90,000 keys itself;
- **flush**: every ``flush_interval`` the pending usage counts and the limits back end's quota deltas are
  added to the state in one transaction (a failed write keeps them for the next one);
- **sweep**: about once a second, requests past ``total_timeout`` are cancelled (504, or a cut body).

Shutdown (SIGINT/SIGTERM, ``stop``): the listener closes, idle connections close, new requests on open
connections get ``503`` with ``Connection: close``; requests in flight run on for up to ``drain_timeout``
(bodies still stream both ways), then the rest are cancelled (metered 500); then every pending count is
written and the summary says exactly which counts could not be written.

``run`` uses uvloop's event loop when uvloop is installed (``APIMON_GATEWAY_UVLOOP=0``: asyncio's own).
"""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

from aiohttp import web

from ..providers.base import ProviderError
from .auth import Authenticator, GatewayAuth
from .clock import Clock, clock_from_env, windows_at
from .config import GatewayConfig, GatewayError, Summary
from .connections import ConnectionGate, GatewayServer
from .limits import InMemoryLimits, KeyState, KeyTable, LimitsBackend, ProductSlot, build_keys
from .log import GatewayLog
from .metering import Meter, MeterObserver, usage_rows
from .pipeline import Pipeline
from .proxy import Upstream
from .store import Snapshot, StateLock, StateStore

FD_RESERVE = 64  # descriptors kept for the state database, the listener, DNS and the like
UVLOOP_ENV = "APIMON_GATEWAY_UVLOOP"


def _fd_limit() -> int:
    """Raise the soft open-file limit to the hard one (up to 65,536); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        clock: Clock | None = None,
        limits: LimitsBackend | None = None,
        auth: Authenticator | None = None,
    ):
        config.check()
        self.config = config
        self.clock: Clock = clock or clock_from_env()
        self.log = GatewayLog()
        self.auth: Authenticator = auth or GatewayAuth(issuer=config.issuer or "")
        self.limits: LimitsBackend = limits or limits_from_config(config.limits)
        if getattr(self.limits, "log", False) is None:
            self.limits.log = self.log  # type: ignore[attr-defined]
        self.upstream_pools = {api: Upstream(api, url, config.upstream_connections)
                               for api, url in config.upstreams.items()}
        self.meter = Meter()
        self.pipeline = Pipeline(config, self.clock, self.auth, self.limits, self.upstream_pools, self.meter,
                                 self.log)
        self.revision: str | None = None
        self.port: int | None = None
        self.connection_limit = config.max_connections
        self.loop_name = "asyncio"
        self._slots: dict[str, ProductSlot] = {}
        self._store = StateStore(config.state_dir, config.database)
        self._lock = StateLock(config.state_dir, config.database) if self.limits.exclusive_state else None
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apimon-gateway-db")
        self._flush_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._runner: web.ServerRunner | None = None
        self._site: web.TCPSite | None = None
        self._server: GatewayServer | None = None
        self._gate: ConnectionGate | None = None
        self._exit = ExitStack()
        self._started = 0.0
        self.events = None  # events.gateway.GatewayEvents when config.events is set (started with the gateway)

    # ---------------------------------------------------------------- what the CLI and tests read
    @property
    def keys(self) -> dict[str, KeyState]:
        return self.auth.keys

    @property
    def upstreams(self) -> dict[str, str]:
        return {api: up.base for api, up in self.upstream_pools.items()}

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{'https' if self.config.tls_cert else 'http'}://{host}:{self.port}"

    def add_observer(self, observer: MeterObserver) -> None:
        """Have ``observer`` called once per answered metered request (see ``metering.MeteredRequest``)."""
        self.pipeline.observers.append(observer)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self.pipeline.handle(request)

    # ---------------------------------------------------------------- start
    async def _call(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def start(self) -> None:
        """Load the state, take its lock, bind the listener, start the background tasks."""
        loop = asyncio.get_running_loop()
        self.pipeline.mono = loop.time
        if isinstance(self.auth, GatewayAuth):
            from .oauth import OAuthEndpoints

            self.pipeline.endpoints = OAuthEndpoints(self.auth, self.clock, issuer=lambda: self.auth.issuer or self.url,
                                                     body_timeout=self.config.body_timeout)
        self.loop_name = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
        self._started = time.monotonic()
        cfg = self.config
        try:
            snap, table = await self._call(self._build, {})
        except ProviderError as exc:
            await self._close_db()
            raise GatewayError(str(exc)) from None
        except Exception as exc:  # sqlite errors: a damaged or foreign file
            await self._close_db()
            where = "PostgreSQL" if cfg.database else cfg.state_dir
            raise GatewayError(f"cannot read the local gateway state in {where}: {exc}") from None
        try:
            if self._lock is not None:
                self._lock.acquire()
            win = windows_at(self.clock())
            self.pipeline.win = win
            await self.limits.start(lambda wins: self._call(self._store.quota_counts, list(wins)), win)
        except BaseException:
            await self._close_db()
            raise
        self._install(snap, table)
        self._exit.enter_context(self.log.capture(loop))

        fds = _fd_limit()
        pooled = sum(up.limit for up in self.upstream_pools.values())
        budget = fds - FD_RESERVE - min(pooled, (fds - FD_RESERVE) // 2)
        self.connection_limit = max(1, min(cfg.max_connections, budget))
        if self.connection_limit < cfg.max_connections:
            self.log.warn_once(
                "fd-limit",
                f"the open-file limit ({fds}) allows {self.connection_limit} client connections, not "
                f"{cfg.max_connections}; raise `ulimit -n` for more",
            )
        for up in self.upstream_pools.values():
            up.open(cfg.connect_timeout, cfg.upstream_timeout)
        self._gate = ConnectionGate(self.connection_limit, self.log)
        self._server = GatewayServer(self.pipeline.handle, gate=self._gate, cfg=cfg)
        self._runner = web.ServerRunner(self._server, shutdown_timeout=1.0, handle_signals=False)
        await self._runner.setup()
        try:
            tls = tls_context(cfg)
        except GatewayError:
            await self._runner.cleanup()
            await self._close_pools()
            await self._close_db()
            raise
        if cfg.events is not None:  # the plan's events block: an observer, the queue and the events process
            from ..events.gateway import prepare
            from ..events.outbox import OutboxError

            try:
                self.events = prepare(self)
            except OutboxError as exc:
                await self._runner.cleanup()
                await self._close_pools()
                await self._close_db()
                raise GatewayError(str(exc)) from None
        self._site = web.TCPSite(self._runner, cfg.host, cfg.port, backlog=1024, reuse_port=cfg.reuse_port or None,
                                 ssl_context=tls)
        try:
            await self._site.start()
        except OSError as exc:
            await self._runner.cleanup()
            await self._close_pools()
            await self._close_db()
            if self.events is not None:
                await self.events.stop()
                self.events = None
            raise GatewayError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None
        sockets = self._site._server.sockets if self._site._server else ()  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else cfg.port
        if self.events is not None:
            self.events.start(cfg.host, self.port)
        if isinstance(self.auth, GatewayAuth) and not self.auth.issuer:
            self.auth.issuer = self.url  # the iss of the tokens it issues (target.local.oauth2.issuer overrides)
        self._tasks = [asyncio.create_task(t()) for t in (self._poll, self._flusher, self._sweeper)]

    # ---------------------------------------------------------------- reload
    def _build(self, previous: dict[str, KeyState]) -> tuple[Snapshot, KeyTable]:
        """On the database thread: the snapshot and the key table built from it. The cyclic GC is held off
        meanwhile (a full collection over 90,000 fresh keys would hold the GIL, and so the event loop, for
        tens of ms) and the new table is frozen out of later full collections."""
        enabled = gc.isenabled()
        gc.disable()
        interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)  # the event loop gets the GIL back within 0.5 ms when it asks
        try:
            snap = self._store.snapshot(incremental=bool(previous))
            if any("oauth2" in p.auth for p in snap.products.values()) and not any(
                    k.retired_at is None for k in snap.signing):  # the first token product: a signing key
                from .store import load_signing_keys

                self._store.ensure_signing_key(self.config.signing_alg)
                snap.signing = load_signing_keys(self._store.conn)
            table = build_keys(snap.products, snap.subscribers, previous, self._slots, snap.removed)
            # subscriber -> KeyState for the schemes whose credential names a subscriber (tokens, certificates)
            table.by_subscriber = {ks.subscriber: ks for ks in table.keys.values()}
        finally:
            sys.setswitchinterval(interval)
            if enabled:
                gc.enable()
        gc.freeze()
        return snap, table

    def _install(self, snap: Snapshot, table: KeyTable) -> None:
        """On the event loop, without yielding: new product limits onto their slots, buckets filled for
        products that gained a rate, and the new key table swapped in (one assignment)."""
        self.auth.clock = self.clock
        if isinstance(self.auth, GatewayAuth):
            self.auth.install(table.install(), snap.expiring, table.by_subscriber)
            self.auth.install_credentials(snap.secrets, snap.certs, snap.signing)
        else:
            self.auth.install(table.install(), snap.expiring)
        self._slots = table.slots
        self.revision = snap.revision
        for pid in snap.unreadable:
            self.log.warn_once(f"product:{pid}", f"product {pid} in the state cannot be read; its keys get 403")
        apis = {a for p in snap.products.values() for a in p.apis}
        for api in sorted(apis - self.upstream_pools.keys()):
            self.log.warn_once(
                f"api:{api}", f"no upstream for the API {api!r} in target.local.upstreams; calls to it get 502"
            )

    async def reload(self) -> None:
        """Read the state and swap the new key table in; the build runs off the event loop, and so does
        freeing the old table (its last reference is dropped on the database thread)."""
        snap, table = await self._call(self._build, self.auth.keys)
        garbage = [self.auth.keys, snap]
        try:
            self._install(snap, table)
        except BaseException:
            self._store.forget()
            raise
        del snap, table
        await self._call(garbage.clear)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            try:
                if await self._call(self._store.revision) != self.revision and not await self._call(
                    self._store.apply_running
                ):  # never a half-applied plan: reload once the apply has finished
                    await self.reload()
                self.log.clear("poll")
            except Exception as exc:  # the DB briefly unreadable: keep serving the last state
                self.log.warn_once("poll", f"reading the state failed ({exc}); serving the last state read")

    # ---------------------------------------------------------------- flush
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
            pipeline = self.pipeline
            prune = pipeline.prune_windows
            usage = self.meter.swap()
            quota = self.limits.take_pending()
            if not usage and not quota and not prune:
                return
            pipeline.prune_windows = False
            rows = usage_rows(usage)
            qrows = [(sid, win, n) for (sid, win), n in quota.items()]
            keep = list(pipeline.win.window.values()) if prune else None
            try:
                await self._call(self._store.add, rows, qrows, keep)
            except Exception as exc:
                self.meter.restore(usage)
                self.limits.restore_pending(quota)
                pipeline.prune_windows = pipeline.prune_windows or prune
                if raise_errors:
                    raise
                self.log.warn_once("flush", f"writing usage counts failed ({exc}); will retry")
            else:
                self.log.clear("flush")

    async def _sweeper(self) -> None:
        every = min(1.0, self.config.total_timeout / 4)
        while True:
            await asyncio.sleep(every)
            self.pipeline.expire()

    # ---------------------------------------------------------------- stop
    async def drain(self) -> None:
        """Stop accepting, refuse new requests, let requests in flight finish for up to ``drain_timeout``,
        then cancel the rest and close every connection."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout
        if self._site is not None:
            await self._site.stop()  # the listener closes: new connections are refused by the kernel
        if self._gate is not None:
            self._gate.draining = True
        self.pipeline.draining = True
        inflight = self.pipeline.inflight
        while True:
            self._close_idle()
            if not inflight or loop.time() >= deadline:
                break
            await asyncio.sleep(0.02)
        if inflight:
            for task in list(inflight):
                task.cancel()
            cut = loop.time() + 1.0
            while inflight and loop.time() < cut:
                await asyncio.sleep(0.01)
        if self._server is not None:
            for conn in self._server.connections:
                conn.force_close()

    def _close_idle(self) -> None:
        if self._server is None:
            return
        for conn in self._server.connections:
            waiter = conn._waiter  # waiting for its next request head: idle
            if waiter is not None and not waiter.done() and not conn._messages:
                conn.force_close()

    async def stop(self) -> Summary:
        """Drain, write every pending count, close."""
        try:
            await self.drain()
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._runner is not None:
                await self._runner.cleanup()
            await self._close_pools()
        for attempt in range(3):
            try:
                await self.flush(raise_errors=True)
                if not self.meter.pending:
                    break
                # a request the drain cancelled counted after that write: write it too
            except Exception as exc:
                self.log.warn_once(f"final-flush:{attempt}", f"writing usage counts failed ({exc}); retrying")
                await asyncio.sleep(0.5 * (attempt + 1))
        # whatever is still pending now is not in the usage table (the writes failed): the summary says so
        # rather than counting it as written
        lost = usage_rows(self.meter.swap())
        lost_quota = [(sid, win, n) for (sid, win), n in self.limits.take_pending().items()]
        await self.limits.close()
        await self._close_db()
        if self.events is not None:  # after the drain: the last requests' events are written and delivered
            events, self.events = self.events, None
            await events.stop()
        self._exit.close()
        refused = self.pipeline.refused + (self._gate.refused if self._gate else 0)
        return Summary(self.meter.requests, self.meter.unauthenticated, time.monotonic() - self._started, lost,
                       lost_quota, refused, getattr(self.limits, "errors", 0))

    async def _close_pools(self) -> None:
        for up in self.upstream_pools.values():
            await up.close()

    async def _close_db(self) -> None:
        try:
            await self._call(self._store.close)
        finally:
            self._db.shutdown(wait=True)
            if self._lock is not None:
                self._lock.release()


def tls_context(cfg: GatewayConfig):
    """``--tls-cert``/``--tls-key``: TLS 1.2 or later with the ssl module's secure defaults; ``--client-ca``
    asks clients for a certificate and verifies it against that CA, without requiring one (products
    without mtls still serve clients that have none). None without a certificate (plain HTTP)."""
    if cfg.tls_cert is None and cfg.tls_key is None and cfg.client_ca is None:
        return None
    import ssl

    if cfg.tls_cert is None or cfg.tls_key is None:
        raise GatewayError("--tls-cert and --tls-key go together" + (" (and --client-ca needs them)"
                                                                      if cfg.client_ca else ""))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cfg.tls_cert), str(cfg.tls_key))
    except FileNotFoundError as exc:
        raise GatewayError(f"--tls-cert/--tls-key: no such file {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        raise GatewayError(f"--tls-cert {cfg.tls_cert} / --tls-key {cfg.tls_key}: not a certificate and its "
                           f"private key in PEM ({getattr(exc, 'reason', None) or exc})") from None
    if cfg.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(cfg.client_ca))
        except FileNotFoundError:
            raise GatewayError(f"--client-ca: no such file {cfg.client_ca}") from None
        except (ssl.SSLError, OSError) as exc:
            raise GatewayError(f"--client-ca {cfg.client_ca}: not PEM CA certificates "
                               f"({getattr(exc, 'reason', None) or exc})") from None
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def limits_from_config(settings: dict | None) -> LimitsBackend:
    """The limits back end ``target.local.limits`` names: memory (default) or Redis (gateway/redis_limits.py)."""
    if not settings or settings.get("backend", "memory") == "memory":
        return InMemoryLimits()
    try:
        from .redis_limits import RedisLimits
    except ImportError:  # pragma: no cover - redis-py missing
        raise GatewayError("target.local.limits.backend redis needs redis-py: pip install 'apimon[redis]'") from None
    return RedisLimits(settings["url"], on_error=settings.get("on_error") or "allow",
                       timeout=float(settings.get("timeout") or 0.25), prefix=settings.get("key_prefix") or "apimon:")


# ---------------------------------------------------------------- entry point for the CLI


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (and not turned off), else None (asyncio's)."""
    if os.environ.get(UVLOOP_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


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
            await gateway.start()  # with the plan's events block: the events pipeline too
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

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main())
