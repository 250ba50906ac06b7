"""Limits: who a key belongs to and what it may do (``KeyState``), and the limits back end (``LimitsBackend``).

``KeyState`` is the principal the authentication step yields: subscriber, product, enabled, the product's
limits, and ``counters``, the mutable per-subscriber state on the event loop (token bucket and requests in
flight). A hot reload builds a new key table off the event loop; a key whose subscriber, product limits and
enabled flag did not change keeps its very ``KeyState`` object, and a key whose limits changed gets a new
``KeyState`` sharing the old ``counters`` (the bucket and the in-flight count carry over, nothing is copied
across threads).

``LimitsBackend`` is the seam for shared limits: ``admit`` takes one token from the subscriber's bucket and
counts one call against the product's quota window, or says why not. ``InMemoryLimits`` (the default) keeps
buckets in ``KeyState.counters`` and quota counters in memory, persisted to the SQLite state with the usage
counts; it is exact for one gateway process only, so it sets ``exclusive_state`` and the gateway takes the
state's lock. A shared back end (e.g. Redis) implements the same methods, keeps its counters outside the
process and leaves ``exclusive_state`` False.

Requests in flight per subscriber (``max_concurrent``) are bounded per gateway process, in ``counters``.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

from ..model import Product
from .clock import Windows, iso_utc

#: a refusal: status, JSON body, headers
Refusal = tuple[int, bytes, dict[str, str]]
QuotaKey = tuple[str, str]  # subscriber, window


@dataclass(frozen=True)
class ProductLimits:
    """What the gateway needs of a product; ``usable`` is False for a row whose spec could not be read."""

    id: str
    apis: frozenset[str]
    rate: float = 0.0  # 0: no rate limit
    burst: float = 0.0
    quota_limit: int | None = None
    quota_period: str = "month"
    max_concurrent: int | None = None  # None: the gateway's default
    usable: bool = True

    @classmethod
    def of(cls, product: Product) -> ProductLimits:
        rl, q = product.rate_limit, product.quota
        return cls(
            product.id,
            frozenset(product.apis),
            rate=float(rl.rate) if rl else 0.0,
            burst=float(rl.burst) if rl else 0.0,
            quota_limit=q.limit if q else None,
            quota_period=q.period if q else "month",
            max_concurrent=product.max_concurrent,
        )

    @classmethod
    def unusable(cls, pid: str) -> ProductLimits:
        return cls(pid, frozenset(), usable=False)


class Counters:
    """Per-subscriber state that lives on the event loop: token bucket (``tokens`` at ``stamp``, monotonic
    seconds) and requests in flight."""

    __slots__ = ("tokens", "stamp", "inflight")

    def __init__(self, tokens: float, stamp: float):
        self.tokens = tokens
        self.stamp = stamp
        self.inflight = 0


class KeyState:
    """One API key: subscriber, product, its limits (flattened for the hot path) and shared ``counters``."""

    __slots__ = (
        "subscriber",
        "product",
        "enabled",
        "limits",
        "usable",
        "apis",
        "rate",
        "burst",
        "quota_limit",
        "quota_period",
        "max_concurrent",
        "counters",
    )

    def __init__(self, subscriber: str, enabled: bool, limits: ProductLimits, counters: Counters,
                 default_concurrent: int = 64):
        self.subscriber = subscriber
        self.product = limits.id
        self.enabled = enabled
        self.limits = limits
        self.usable = limits.usable
        self.apis = limits.apis
        self.rate = limits.rate
        self.burst = limits.burst
        self.quota_limit = limits.quota_limit
        self.quota_period = limits.quota_period
        self.max_concurrent = limits.max_concurrent or default_concurrent
        self.counters = counters

    @property
    def tokens(self) -> float:
        return self.counters.tokens

    def take(self, now: float) -> bool:
        """Take one token if there is one (refilling ``rate`` per second up to ``burst``)."""
        c = self.counters
        tokens = c.tokens + (now - c.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        c.stamp = now
        if tokens >= 1.0:
            c.tokens = tokens - 1.0
            return True
        c.tokens = tokens
        return False

    def rate_limit_headers(self) -> dict[str, str]:
        """Headers of a 429 from the bucket: Retry-After is when one request fits again, RateLimit-Reset
        when the bucket is full again (IETF RateLimit header fields draft: remaining back to the limit)."""
        tokens = self.counters.tokens
        retry = max(1, math.ceil((1.0 - tokens) / self.rate))
        full = max(retry, math.ceil((self.burst - tokens) / self.rate))
        return {
            "Retry-After": str(retry),
            "RateLimit-Limit": str(int(self.burst)),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(full),
        }

    def rate_limit_body(self) -> bytes:
        retry = max(1, math.ceil((1.0 - self.counters.tokens) / self.rate))
        return json.dumps(
            {
                "error": "rate_limited",
                "message": f"rate limit exceeded: {self.rate:g} requests per second, burst "
                f"{self.burst:g}; retry after {retry} s",
                "rate_limit": {"rate": int(self.rate), "burst": int(self.burst)},
                "retry_after": retry,
            }
        ).encode()


def build_keys(
    products: dict[str, ProductLimits],
    subscribers: Iterable[tuple[str, str, bool, str]],
    previous: dict[str, KeyState],
    now: float,
    default_concurrent: int = 64,
) -> tuple[dict[str, KeyState], list[KeyState]]:
    """api_key -> KeyState from (subscriber, product, enabled, api_key) rows, and the keys whose bucket must
    be filled on the event loop (their product gained a rate limit).

    Safe to run off the event loop: ``previous`` is only read, and no ``counters`` is written. A key that
    stays with its subscriber keeps its counters (bucket and in-flight count; a smaller burst clamps the
    bucket at its next use); an unchanged key keeps its KeyState object; a new key starts with a full
    bucket."""
    keys: dict[str, KeyState] = {}
    refill: list[KeyState] = []
    missing: dict[str, ProductLimits] = {}
    for sid, pid, enabled, api_key in subscribers:
        limits = products.get(pid)
        if limits is None:
            limits = missing.get(pid) or missing.setdefault(pid, ProductLimits.unusable(pid))
        old = previous.get(api_key)
        if old is not None and old.subscriber == sid:
            if old.limits is limits and old.enabled == enabled and old.max_concurrent == (
                limits.max_concurrent or default_concurrent
            ):
                keys[api_key] = old
                continue
            ks = KeyState(sid, enabled, limits, old.counters, default_concurrent)
            if ks.rate and not old.rate:
                refill.append(ks)
        else:
            ks = KeyState(sid, enabled, limits, Counters(limits.burst, now), default_concurrent)
        keys[api_key] = ks
    return keys, refill


# ---------------------------------------------------------------- the limits back end


class LimitsBackend(ABC):
    """Token buckets and quota counters, behind one call per admitted request.

    ``admit`` runs on the event loop for every request the gateway would proxy; it returns None (admitted:
    one token taken, one call counted against the quota window) or a ``Refusal`` (429, nothing counted).
    ``mono`` is the loop's monotonic clock (buckets), ``win`` and ``now`` the wall-clock windows (quotas).
    Counters that must be persisted with the usage counts are handed over by ``take_pending`` (and given
    back by ``restore_pending`` when the write failed)."""

    #: True when the counters live in this process: two gateways on one state would each count alone, so
    #: the gateway refuses to start a second one on the same state (see ``store.StateLock``)
    exclusive_state: ClassVar[bool] = False
    name: ClassVar[str] = "limits"

    async def start(self, read_quota_counts: Callable[[Iterable[str]], Awaitable[dict[QuotaKey, int]]],
                    win: Windows) -> None:
        """Called once before the first request."""
        return None

    @abstractmethod
    async def admit(self, ks: KeyState, mono: float, win: Windows, now: float) -> Refusal | None: ...

    def roll(self, win: Windows) -> None:
        """The quota windows changed (a new UTC day): forget counters of windows that ended."""
        return None

    def take_pending(self) -> dict[QuotaKey, int]:
        """Quota deltas not yet persisted (the in-memory back end writes them with the usage counts)."""
        return {}

    def restore_pending(self, pending: dict[QuotaKey, int]) -> None:
        """Give back deltas whose write failed; the next flush writes them."""
        return None

    async def close(self) -> None:
        """Called once after the last request."""
        return None


class InMemoryLimits(LimitsBackend):
    """The default: buckets in ``KeyState.counters``, quota counters in this process (loaded from the
    state at start, deltas persisted at least once a second). One gateway per state."""

    exclusive_state = True
    name = "in-memory (SQLite state)"

    def __init__(self) -> None:
        self.quota_used: dict[QuotaKey, int] = {}
        self.quota_pending: dict[QuotaKey, int] = {}

    async def start(self, read_quota_counts, win: Windows) -> None:
        self.quota_used = dict(await read_quota_counts(win.window.values()))

    async def admit(self, ks: KeyState, mono: float, win: Windows, now: float) -> Refusal | None:
        if ks.rate and not ks.take(mono):
            return 429, ks.rate_limit_body(), ks.rate_limit_headers()
        if ks.quota_limit is not None:
            period = ks.quota_period
            key = (ks.subscriber, win.window[period])
            used = self.quota_used.get(key, 0)
            if used >= ks.quota_limit:
                return quota_refusal(ks, win, now)
            self.quota_used[key] = used + 1
            self.quota_pending[key] = self.quota_pending.get(key, 0) + 1
        return None

    def roll(self, win: Windows) -> None:
        current = set(win.window.values())
        self.quota_used = {k: v for k, v in self.quota_used.items() if k[1] in current}

    def take_pending(self) -> dict[QuotaKey, int]:
        pending, self.quota_pending = self.quota_pending, {}
        return pending

    def restore_pending(self, pending: dict[QuotaKey, int]) -> None:
        for k, n in pending.items():
            self.quota_pending[k] = self.quota_pending.get(k, 0) + n


def quota_refusal(ks: KeyState, win: Windows, now: float) -> Refusal:
    period = ks.quota_period
    resets = win.resets[period]
    at = iso_utc(resets)
    body = json.dumps(
        {
            "error": "quota_exceeded",
            "message": f"quota exhausted: {ks.quota_limit} requests per {period} (not the rate limit); "
            f"it resets at {at}",
            "quota": {"limit": ks.quota_limit, "period": period, "resets_at": at},
        }
    ).encode()
    return 429, body, {"Retry-After": str(max(1, int(resets - now + 0.999)))}
