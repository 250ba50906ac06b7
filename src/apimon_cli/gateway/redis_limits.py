"""``target.local.limits: {backend: redis, url: ...}``: rate limits and quotas shared by every gateway process.

Algorithm: **GCRA** (the generic cell rate algorithm, the "virtual scheduling" form of a token bucket).
Why GCRA rather than a stored token bucket: it keeps one number per subscriber and product (the
theoretical arrival time, TAT), not two (tokens + stamp), so there is nothing to refill and nothing that
can drift; it admits exactly what a token bucket of the same ``rate`` and ``burst`` admits (``burst``
requests at once, then one per ``1/rate`` s); and its key's natural expiry is the moment the bucket is full
again, so an idle subscriber costs Redis nothing. Time is Redis's own (``TIME``), so the clocks of the
gateway hosts do not matter.

One Lua script per request (``EVALSHA``: atomic on the server; the requests of one event-loop iteration share
one pipelined round trip) does both checks: the
GCRA step on ``<prefix>r:<product>:<subscriber>`` and the quota counter on
``<prefix>q:<product>:<subscriber>:<window>`` (``INCR``, ``EXPIREAT`` one day after the window ends: kept
across gateway restarts, gone once useless). A request refused by either takes nothing from the other: the
quota is checked before the TAT is stored, and nothing is written for a refusal.

The client is this module's own, not redis-py's (whose per-call machinery cost ~20 us of CPU per request,
more than the rest of the limits step): one pipelined connection per process (``_Wire``), commands packed
once per subscriber and window, one write per loop iteration, replies read by hiredis (or ``_PyReader``);
redis-py only parses the URL.

Redis unreachable (or slower than ``timeout``): ``on_error: allow`` (default, like Kong's
``fault_tolerant``) admits, ``deny`` answers 503; the gateway logs one line when the outage starts and one
when it ends, and counts the requests decided without Redis (``errors``, in the gateway's summary). After a
failure Redis is not asked again for ``_BACKOFF`` seconds (doubling up to ``_BACKOFF_MAX``): requests
never wait on a dead server, one probe at a time finds out when it is back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from collections import deque
from typing import ClassVar

from .clock import Windows
from .limits import KeyState, LimitsBackend, ProductLimits, QuotaKey, Refusal, quota_refusal

_BACKOFF = 0.5
_BACKOFF_MAX = 5.0
_COMMANDS_KEPT = 50_000  # packed commands of that many subscribers at most
_QUOTA_GRACE_S = 86400  # quota keys outlive their window by a day (late observers, clock skew)

# KEYS[1] rate key, KEYS[2] quota key
# ARGV: rate (per s, 0: none), burst, quota limit (-1: none), quota expiry (unix s)
# returns {0, quota used (-1: no quota)} | {1, retry-after us, full-again us} | {2, quota used}
LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local qlimit = tonumber(ARGV[3])
local new_tat = nil
if rate > 0 then
  local interval = 1000000 / rate
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  if allow_at > now then
    return {1, math.ceil(allow_at - now), math.ceil(tat - now)}
  end
end
local used = -1
if qlimit >= 0 then
  used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= qlimit then
    return {2, used}
  end
  used = redis.call('INCR', KEYS[2])
  if used == 1 then
    redis.call('EXPIREAT', KEYS[2], ARGV[4])
  end
end
if new_tat then
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
end
return {0, used}
"""


def rate_refusal(lim: ProductLimits, retry_us: int, full_us: int) -> Refusal:
    retry = max(1, math.ceil(retry_us / 1e6))
    full = max(retry, math.ceil(full_us / 1e6))
    body = json.dumps(
        {
            "error": "rate_limited",
            "message": f"rate limit exceeded: {lim.rate:g} requests per second, burst {lim.burst:g}; "
            f"retry after {retry} s",
            "rate_limit": {"rate": int(lim.rate), "burst": int(lim.burst)},
            "retry_after": retry,
        }
    ).encode()
    headers = {"Retry-After": str(retry), "RateLimit-Limit": str(int(lim.burst)), "RateLimit-Remaining": "0",
               "RateLimit-Reset": str(full)}
    return 429, body, headers


_UNAVAILABLE: Refusal = (
    503,
    json.dumps({"error": "limits_unavailable",
                "message": "the gateway cannot check rate limits and quotas right now (its Redis is unreachable;"
                " target.local.limits.on_error: deny); retry shortly"}).encode(),
    {"Retry-After": "1"},
)


class ReplyError(Exception):
    """An error reply from Redis (``-ERR ...``, ``-NOSCRIPT ...``)."""


def _pack(*args: str | bytes | int) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class _Incomplete(Exception):
    pass


class _PyReader:
    """RESP2 replies with hiredis.Reader's interface (``feed``; ``gets``: a reply, or False until one is
    complete), for an installation without hiredis."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def gets(self):
        try:
            reply, pos = self._parse(0)
        except _Incomplete:
            return False
        del self.buf[:pos]
        return reply

    def _parse(self, pos: int):
        buf = self.buf
        end = buf.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete
        kind, line, pos = buf[pos], bytes(buf[pos + 1:end]), end + 2
        if kind == 0x3A:  # :
            return int(line), pos
        if kind == 0x2B:  # +
            return line, pos
        if kind == 0x2D:  # -
            return ReplyError(line.decode(errors="replace")), pos
        if kind == 0x24:  # $
            n = int(line)
            if n < 0:
                return None, pos
            if len(buf) < pos + n + 2:
                raise _Incomplete
            return bytes(buf[pos:pos + n]), pos + n + 2
        if kind == 0x2A:  # *
            n = int(line)
            if n < 0:
                return None, pos
            items = []
            for _ in range(n):
                item, pos = self._parse(pos)
                items.append(item)
            return items, pos
        raise ValueError(f"not a RESP2 reply (type byte {kind!r})")


def _reader():
    try:
        import hiredis
    except ImportError:
        return _PyReader()
    return hiredis.Reader(replyError=ReplyError)


class _Wire(asyncio.Protocol):
    """One connection to Redis, pipelined: the commands of a batch go out in one write, the replies come
    back in order and each resolves the next waiting future.

    The timeout is one timer for the whole connection, not one per request: it fires at the oldest
    unanswered batch's deadline; if that batch is still unanswered then, every waiting request fails
    (``TimeoutError``) and the connection is dropped (a late reply would answer the wrong request)."""

    def __init__(self, timeout: float, on_closed) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.on_closed = on_closed
        self.reader = _reader()
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[asyncio.Future] = deque()
        self.marks: deque[tuple[float, int]] = deque()  # (deadline, serial of the batch's last command)
        self.sent = 0
        self.answered = 0
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def send(self, data: bytes, futs: list[asyncio.Future]) -> None:
        self.transport.write(data)  # type: ignore[union-attr]
        self.waiters.extend(futs)
        self.sent += len(futs)
        self.marks.append((self.loop.time() + self.timeout, self.sent))
        if self.timer is None:
            self.timer = self.loop.call_at(self.marks[0][0], self._check)

    def call(self, *commands: bytes) -> list[asyncio.Future]:
        futs = [self.loop.create_future() for _ in commands]
        self.send(b"".join(commands), futs)
        return futs

    def _check(self) -> None:
        self.timer = None
        marks = self.marks
        while marks and marks[0][1] <= self.answered:
            marks.popleft()
        if not marks:
            return
        if marks[0][0] <= self.loop.time():
            self.fail(TimeoutError(f"no answer within {self.timeout:g} s"))
        else:
            self.timer = self.loop.call_at(marks[0][0], self._check)

    def data_received(self, data: bytes) -> None:
        reader, waiters = self.reader, self.waiters
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                self.answered += 1
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_result(reply)
        except Exception as exc:  # not RESP, or a reply nobody asked for: the stream cannot be trusted
            self.fail(ConnectionError(f"unexpected data from Redis ({type(exc).__name__}: {exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(ConnectionError(f"connection to Redis lost: {exc}" if exc else "Redis closed the connection"))

    def fail(self, exc: Exception) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiters, self.waiters = self.waiters, deque()
        for fut in waiters:
            if not fut.done():
                fut.set_exception(exc)
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.on_closed(self)


class RedisLimits(LimitsBackend):
    """GCRA buckets and quota counters in Redis, shared by every gateway process that uses the same Redis."""

    exclusive_state: ClassVar[bool] = False
    name: ClassVar[str] = "redis"

    def __init__(self, url: str, *, on_error: str = "allow", timeout: float = 0.25, prefix: str = "apimon:",
                 log=None) -> None:
        if on_error not in ("allow", "deny"):
            raise ValueError(f"on_error must be allow or deny; got {on_error!r}")
        self.url = url
        self.on_error = on_error
        self.timeout = timeout
        self.prefix = prefix
        self.log = log
        self.errors = 0  # requests decided by on_error (Redis unreachable)
        self.outages = 0
        self._opts: dict = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wire: _Wire | None = None
        self._connecting: asyncio.Task | None = None
        self._sha = hashlib.sha1(LUA.encode()).hexdigest()
        self._queue: list[bytes] = []
        self._futs: list[asyncio.Future] = []
        self._scheduled = False
        # (subscriber, product) -> (limits, quota window, expiry, the EVALSHA command, its keys and args)
        self._commands: dict[tuple[str, str], tuple] = {}
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._backoff = _BACKOFF
        self._used: dict[QuotaKey, int] = {}

    @property
    def display_url(self) -> str:
        """The URL with its password masked, in the authority or a ``password=`` query parameter (a Unix
        socket's only place for it)."""
        from ..ledger.pg import mask_url

        return mask_url(self.url)

    async def start(self, read_quota_counts, win: Windows) -> None:
        from redis.connection import parse_url  # the URL's syntax and options exactly as redis-py reads them

        self._opts = parse_url(self.url)
        self._loop = asyncio.get_running_loop()
        try:  # not fatal: the gateway starts and applies on_error until Redis answers
            wire = await self._connect()
            (loaded,) = await asyncio.wait_for(asyncio.gather(*wire.call(_pack("SCRIPT", "LOAD", LUA))), self.timeout)
            if isinstance(loaded, Exception):
                raise loaded
        except Exception as exc:
            self._failed(exc)

    # ---------------------------------------------------------------- the connection
    def _ssl_context(self):
        if not self.url.startswith("rediss://"):
            return None
        import ssl

        o = self._opts
        ctx = ssl.create_default_context(cafile=o.get("ssl_ca_certs"))
        reqs = o.get("ssl_cert_reqs", "required")
        if isinstance(reqs, str):
            reqs = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL}.get(reqs.lower(), ssl.CERT_REQUIRED)
        check = o.get("ssl_check_hostname", True)
        ctx.check_hostname = reqs != ssl.CERT_NONE and str(check).lower() not in ("false", "0", "no")
        ctx.verify_mode = reqs
        if o.get("ssl_certfile"):
            ctx.load_cert_chain(o["ssl_certfile"], o.get("ssl_keyfile"))
        return ctx

    async def _connect(self) -> _Wire:
        """A new connection (TCP, TLS or a Unix socket; AUTH and SELECT as the URL says), within ``timeout``."""
        loop = asyncio.get_running_loop()
        o = self._opts
        wire = _Wire(self.timeout, self._closed)

        async def handshake() -> None:
            if "path" in o:
                await loop.create_unix_connection(lambda: wire, o["path"])
            else:
                await loop.create_connection(lambda: wire, o.get("host") or "localhost", int(o.get("port") or 6379),
                                             ssl=self._ssl_context())
            hello = []
            if o.get("password") is not None:
                hello.append(_pack("AUTH", *([o["username"]] if o.get("username") else []), o["password"]))
            if int(o.get("db") or 0):
                hello.append(_pack("SELECT", int(o["db"])))
            if hello:
                for reply in await asyncio.gather(*wire.call(*hello)):
                    if isinstance(reply, Exception):
                        raise ConnectionError(f"Redis refused the connection's AUTH or SELECT: {reply}")

        try:
            await asyncio.wait_for(handshake(), self.timeout)
        except BaseException:
            wire.fail(ConnectionError("connection setup failed"))
            raise
        self._wire = wire
        return wire

    def _closed(self, wire: _Wire) -> None:
        if self._wire is wire:
            self._wire = None

    async def _reconnect(self) -> None:
        try:
            await self._connect()
        except Exception as exc:
            futs, self._queue, self._futs = self._futs, [], []
            for fut in futs:
                if not fut.done():
                    fut.set_exception(exc)
        finally:
            self._connecting = None
        if self._queue and not self._scheduled:
            self._flush()

    # Requests admitted in the same event-loop iteration share one write on the one connection (one reply
    # read for all of them): still one EVALSHA, atomic on the server, per request. The commands are packed
    # once per subscriber and window, not per request; no task, no pool checkout, no timeout wrapper per
    # request or batch (the connection's one timer, see _Wire).
    def _call(self, command: bytes) -> asyncio.Future:
        fut = self._loop.create_future()  # type: ignore[union-attr]
        self._queue.append(command)
        self._futs.append(fut)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)  # type: ignore[union-attr]
        return fut

    def _flush(self) -> None:
        self._scheduled = False
        wire = self._wire
        if wire is None:  # sent once connected (or failed, with the connection's error)
            if self._connecting is None:
                self._connecting = self._loop.create_task(self._reconnect())  # type: ignore[union-attr]
            return
        commands, futs = self._queue, self._futs
        self._queue, self._futs = [], []
        wire.send(b"".join(commands), futs)

    def _command(self, ks: KeyState, lim: ProductLimits, window: str | None, expire: int) -> tuple:
        base = f"{ks.product}:{ks.subscriber}"
        keys = (f"{self.prefix}r:{base}", f"{self.prefix}q:{base}:{window or '-'}")
        args = (repr(float(lim.rate)), repr(float(lim.burst)),
                lim.quota_limit if lim.quota_limit is not None else -1, expire)
        return lim, window, expire, _pack("EVALSHA", self._sha, 2, *keys, *args), (2, *keys, *args)

    async def admit(self, ks: KeyState, mono: float, win: Windows, now: float) -> Refusal | None:
        lim = ks.slot.limits
        if not lim.rate and lim.quota_limit is None:
            return None
        if self._down_since is not None and time.monotonic() < self._retry_at:
            return self._fallback()
        window = win.window[lim.quota_period] if lim.quota_limit is not None else None
        # a day past the window's end, and never in the past (an injected clock may lag the real one)
        expire = max(int(win.resets[lim.quota_period]), int(time.time())) + _QUOTA_GRACE_S if window else 0
        cmd = self._commands.get((ks.subscriber, ks.product))
        if cmd is None or cmd[0] is not lim or cmd[1] != window or cmd[2] != expire:
            if len(self._commands) >= _COMMANDS_KEPT:  # a bound on memory (about 1 KB each), not an LRU
                self._commands.clear()
            cmd = self._commands[(ks.subscriber, ks.product)] = self._command(ks, lim, window, expire)
        try:
            result = await self._call(cmd[3])
            if isinstance(result, ReplyError) and str(result).startswith("NOSCRIPT"):
                # Redis lost its script cache (a restart): this request did not run; EVAL runs it and loads
                # the script again for the next EVALSHAs
                result = await self._call(_pack("EVAL", LUA, *cmd[4]))
            if isinstance(result, ReplyError):
                raise result
        except Exception as exc:  # ReplyError, OSError, TimeoutError: all mean "no answer"
            self._failed(exc)
            return self._fallback()
        if self._down_since is not None:
            self._recovered()
        verdict = int(result[0])
        if verdict == 0:
            if window is not None:
                self._used[(ks.subscriber, window)] = int(result[1])
            return None
        if verdict == 1:
            return rate_refusal(lim, int(result[1]), int(result[2]))
        self._used[(ks.subscriber, window)] = int(result[1])  # type: ignore[index]
        return quota_refusal(lim, win, now)

    def _fallback(self) -> Refusal | None:
        self.errors += 1
        return None if self.on_error == "allow" else _UNAVAILABLE

    def _failed(self, exc: Exception) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._backoff = _BACKOFF
            self.outages += 1
            if self.log is not None:
                what = "admitting requests without limits" if self.on_error == "allow" else "answering 503"
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self.log.write(f"warning: the Redis limits back end at {self.display_url} is unreachable "
                               f"({detail}); {what} (on_error: {self.on_error}) until it answers again")
        else:
            self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
        self._retry_at = now + self._backoff

    def _recovered(self) -> None:
        down = time.monotonic() - (self._down_since or time.monotonic())
        self._down_since = None
        if self.log is not None:
            self.log.write(f"the Redis limits back end at {self.display_url} answers again after {down:.1f} s; "
                           f"{self.errors} requests so far decided by on_error: {self.on_error}")

    def quota_count(self, key: QuotaKey) -> int | None:
        return self._used.get(key)

    def roll(self, win: Windows) -> None:
        current = set(win.window.values())
        self._used = {k: v for k, v in self._used.items() if k[1] in current}
        self._commands.clear()

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._wire is not None:
            self._wire.fail(ConnectionError("the gateway closed its Redis connection"))
