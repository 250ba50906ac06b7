"""Limits: who a key belongs to and what it may do (``KeyState``), and the limits back end (``LimitsBackend``).

``KeyState`` is the principal the authentication step yields: subscriber, product (a ``ProductSlot``
holding the product's current ``ProductLimits``), enabled, and ``counters``, the mutable per-subscriber
state on the event loop (token bucket and requests in flight). A hot reload builds a new key table off the
event loop (``build_keys`` -> ``KeyTable``); a key whose subscriber, product and enabled flag did not change
keeps its very ``KeyState`` object, a changed one gets a new ``KeyState`` sharing the old ``counters`` (the
bucket and the in-flight count carry over, nothing is copied across threads), and changed product limits
are set on their slots when the table is installed, on the loop, together with the swap.

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

from ..model import JwtIssuer, Product
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
    # credentials the product accepts (products.<id>.auth), the scopes tokens must carry, its external issuer
    auth: frozenset[str] = frozenset({"api_key"})
    scopes: frozenset[str] = frozenset()
    jwt: JwtIssuer | None = None
    token_ttl: int = 3600

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
            auth=frozenset(product.auth),
            scopes=frozenset(product.scopes),
            jwt=product.jwt,
            token_ttl=product.token_ttl,
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


class ProductSlot:
    """One product id's current limits, shared by all its keys and by every key table: a reload that
    changes a product's limits replaces ``limits`` here (on the event loop, with the table swap) instead of
    rebuilding the product's keys."""

    __slots__ = ("id", "limits")

    def __init__(self, limits: ProductLimits):
        self.id = limits.id
        self.limits = limits


class KeyState:
    """One API key: subscriber, product (``slot.limits``), enabled, and the subscriber's ``counters``."""

    __slots__ = ("subscriber", "product", "enabled", "slot", "counters")

    def __init__(self, subscriber: str, enabled: bool, slot: ProductSlot, counters: Counters):
        self.subscriber = subscriber
        self.product = slot.id
        self.enabled = enabled
        self.slot = slot
        self.counters = counters

    # the product's limits, for code off the hot path (the pipeline reads ``slot.limits`` once)
    @property
    def limits(self) -> ProductLimits:
        return self.slot.limits

    @property
    def rate(self) -> float:
        return self.slot.limits.rate

    @property
    def burst(self) -> float:
        return self.slot.limits.burst

    @property
    def tokens(self) -> float:
        return self.counters.tokens

    def take(self, lim: ProductLimits, now: float) -> bool:
        """Take one token if there is one (refilling ``rate`` per second up to ``burst``)."""
        c = self.counters
        burst = lim.burst
        tokens = c.tokens + (now - c.stamp) * lim.rate
        if tokens > burst:
            tokens = burst
        c.stamp = now
        if tokens >= 1.0:
            c.tokens = tokens - 1.0
            return True
        c.tokens = tokens
        return False

    def rate_limit_headers(self) -> dict[str, str]:
        """Headers of a 429 from the bucket: Retry-After is when one request fits again, RateLimit-Reset
        when the bucket is full again (IETF RateLimit header fields draft: remaining back to the limit)."""
        lim, tokens = self.slot.limits, self.counters.tokens
        retry = max(1, math.ceil((1.0 - tokens) / lim.rate))
        full = max(retry, math.ceil((lim.burst - tokens) / lim.rate))
        return {
            "Retry-After": str(retry),
            "RateLimit-Limit": str(int(lim.burst)),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(full),
        }

    def rate_limit_body(self) -> bytes:
        lim = self.slot.limits
        retry = max(1, math.ceil((1.0 - self.counters.tokens) / lim.rate))
        return json.dumps(
            {
                "error": "rate_limited",
                "message": f"rate limit exceeded: {lim.rate:g} requests per second, burst "
                f"{lim.burst:g}; retry after {retry} s",
                "rate_limit": {"rate": int(lim.rate), "burst": int(lim.burst)},
                "retry_after": retry,
            }
        ).encode()


@dataclass
class KeyTable:
    """A key table built off the event loop, ready to install: ``keys``, the product limits to set on
    their slots (``limits``), and the keys whose bucket must be filled (their product gained a rate)."""

    keys: dict[str, KeyState]
    slots: dict[str, ProductSlot]
    limits: list[tuple[ProductSlot, ProductLimits]]
    refill: list[KeyState]
    by_subscriber: dict[str, KeyState] | None = None  # set by the gateway's build (auth.GatewayAuth)

    def install(self) -> dict[str, KeyState]:
        """On the event loop, right before the table is swapped in: O(products + refills)."""
        for slot, limits in self.limits:
            slot.limits = limits
        for ks in self.refill:
            ks.counters.tokens, ks.counters.stamp = ks.slot.limits.burst, 0.0
        return self.keys


def build_keys(
    products: dict[str, ProductLimits],
    subscribers: Iterable[tuple[str, str, bool, str]],
    previous: dict[str, KeyState],
    slots: dict[str, ProductSlot] | None = None,
    removed: Iterable[str] | None = None,
) -> KeyTable:
    """The key table for (subscriber, product, enabled, api_key) rows: all rows, or with ``removed`` given,
    only the rows that changed since ``previous`` (and the keys that are gone).

    Safe to run off the event loop: ``previous`` and ``slots`` are only read, nothing the loop uses is
    written. A key whose subscriber, product and enabled flag did not change keeps its KeyState object (a
    product whose limits changed gets them through its slot); a key that stays with its subscriber keeps
    its counters (bucket and in-flight count; a smaller burst clamps the bucket at its next use); a new
    key starts with a full bucket."""
    old_slots = slots or {}
    new_slots: dict[str, ProductSlot] = {}
    limits_of: dict[str, ProductLimits] = {}  # pid -> the limits its slot holds once installed
    updates: list[tuple[ProductSlot, ProductLimits]] = []
    gained_rate: set[str] = set()
    for pid in old_slots.keys() | products.keys():
        limits = products.get(pid) or ProductLimits.unusable(pid)
        slot = old_slots.get(pid)
        if slot is None:
            slot = ProductSlot(limits)
        elif slot.limits != limits:
            updates.append((slot, limits))
            if limits.rate and not slot.limits.rate:
                gained_rate.add(pid)
        new_slots[pid] = slot
        limits_of[pid] = limits

    incremental = removed is not None
    keys: dict[str, KeyState] = dict(previous) if incremental else {}
    for api_key in removed or ():
        keys.pop(api_key, None)
    refill: list[KeyState] = []
    fresh: list[tuple[str, str, bool, str, ProductSlot]] = []  # keys new to this subscriber: after the rest
    for sid, pid, enabled, api_key in subscribers:
        slot = new_slots.get(pid)
        if slot is None:  # a subscriber of a product that has no row
            slot = new_slots[pid] = ProductSlot(ProductLimits.unusable(pid))
            limits_of[pid] = slot.limits
        old = previous.get(api_key)
        if old is not None and old.subscriber == sid:
            if old.slot is slot and old.enabled == enabled:
                ks = keys[api_key] = old
            else:
                ks = keys[api_key] = KeyState(sid, enabled, slot, old.counters)
            if pid not in gained_rate and old.slot is not slot and limits_of[pid].rate and not old.slot.limits.rate:
                refill.append(ks)
        else:
            fresh.append((sid, pid, enabled, api_key, slot))
    if fresh:
        # a subscriber's keys share one bucket and in-flight count (a rotation's old and new key): a new key
        # of a subscriber that has one already takes its counters
        counters_of: dict[str, Counters] = {}
        fresh_sids = {f[0] for f in fresh}
        for ks in keys.values():
            if ks.subscriber in fresh_sids and ks.subscriber not in counters_of:
                counters_of[ks.subscriber] = ks.counters
        for sid, pid, enabled, api_key, slot in fresh:
            counters = counters_of.get(sid)
            if counters is None:
                counters = counters_of[sid] = Counters(limits_of[pid].burst, 0.0)
            keys[api_key] = KeyState(sid, enabled, slot, counters)
    if gained_rate:  # rare: a product got a rate limit; its keys start with a full bucket
        refill.extend(ks for ks in keys.values() if ks.product in gained_rate)
    return KeyTable(keys, new_slots, updates, refill)


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

    def quota_count(self, key: QuotaKey) -> int | None:
        """The calls counted in a (subscriber, window), if this back end can say cheaply (observers)."""
        return None

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
        lim = ks.slot.limits
        if lim.rate and not ks.take(lim, mono):
            return 429, ks.rate_limit_body(), ks.rate_limit_headers()
        if lim.quota_limit is not None:
            key = (ks.subscriber, win.window[lim.quota_period])
            used = self.quota_used.get(key, 0)
            if used >= lim.quota_limit:
                return quota_refusal(lim, win, now)
            self.quota_used[key] = used + 1
            self.quota_pending[key] = self.quota_pending.get(key, 0) + 1
        return None

    def quota_count(self, key: QuotaKey) -> int | None:
        return self.quota_used.get(key, 0)

    def roll(self, win: Windows) -> None:
        current = set(win.window.values())
        self.quota_used = {k: v for k, v in self.quota_used.items() if k[1] in current}

    def take_pending(self) -> dict[QuotaKey, int]:
        pending, self.quota_pending = self.quota_pending, {}
        return pending

    def restore_pending(self, pending: dict[QuotaKey, int]) -> None:
        for k, n in pending.items():
            self.quota_pending[k] = self.quota_pending.get(k, 0) + n


def quota_refusal(lim: ProductLimits, win: Windows, now: float) -> Refusal:
    period = lim.quota_period
    resets = win.resets[period]
    at = iso_utc(resets)
    body = json.dumps(
        {
            "error": "quota_exceeded",
            "message": f"quota exhausted: {lim.quota_limit} requests per {period} (not the rate limit); "
            f"it resets at {at}",
            "quota": {"limit": lim.quota_limit, "period": period, "resets_at": at},
        }
    ).encode()
    return 429, body, {"Retry-After": str(max(1, int(resets - now + 0.999)))}
