"""Per-key state on the hot path: who the key belongs to, what it may call, its token bucket.

The gateway keeps one ``KeyState`` per API key in a dict, rebuilt when the state database's revision
changes; a key that survives a reload keeps its bucket. Quota counters live in ``metering.Meter`` (they are
per subscriber and window, and persisted), the check itself is here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

from ..model import Product


@dataclass(frozen=True)
class ProductLimits:
    """What the gateway needs of a product; ``usable`` is False for a row whose spec could not be read."""

    id: str
    apis: frozenset[str]
    rate: float = 0.0  # 0: no rate limit
    burst: float = 0.0
    quota_limit: int | None = None
    quota_period: str = "month"
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
        )

    @classmethod
    def unusable(cls, pid: str) -> ProductLimits:
        return cls(pid, frozenset(), usable=False)


class KeyState:
    """One API key: subscriber, product, limits and the token bucket (tokens at ``stamp``, monotonic)."""

    __slots__ = (
        "subscriber",
        "product",
        "enabled",
        "usable",
        "apis",
        "rate",
        "burst",
        "tokens",
        "stamp",
        "quota_limit",
        "quota_period",
    )

    def __init__(self, subscriber: str, enabled: bool, limits: ProductLimits, now: float):
        self.subscriber = subscriber
        self.product = limits.id
        self.enabled = enabled
        self.usable = limits.usable
        self.apis = limits.apis
        self.rate = limits.rate
        self.burst = limits.burst
        self.tokens = limits.burst  # a new key starts with a full bucket
        self.stamp = now
        self.quota_limit = limits.quota_limit
        self.quota_period = limits.quota_period

    def take(self, now: float) -> bool:
        """Take one token if there is one (refilling ``rate`` per second up to ``burst``)."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False

    def rate_limit_headers(self) -> dict[str, str]:
        """Headers of a 429 from the bucket: Retry-After is when one request fits again, RateLimit-Reset
        when the bucket is full again (IETF RateLimit header fields draft: remaining back to the limit)."""
        retry = max(1, math.ceil((1.0 - self.tokens) / self.rate))
        full = max(retry, math.ceil((self.burst - self.tokens) / self.rate))
        return {
            "Retry-After": str(retry),
            "RateLimit-Limit": str(int(self.burst)),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(full),
        }

    def rate_limit_body(self) -> bytes:
        retry = max(1, math.ceil((1.0 - self.tokens) / self.rate))
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
) -> dict[str, KeyState]:
    """api_key -> KeyState from (subscriber, product, enabled, api_key) rows; buckets carry over when the
    same subscriber keeps the same key (clamped to a smaller burst)."""
    keys: dict[str, KeyState] = {}
    for sid, pid, enabled, api_key in subscribers:
        limits = products.get(pid) or ProductLimits.unusable(pid)
        ks = KeyState(sid, enabled, limits, now)
        old = previous.get(api_key)
        if old is not None and old.subscriber == sid and ks.rate:
            ks.tokens, ks.stamp = min(old.tokens, ks.burst), old.stamp
        keys[api_key] = ks
    return keys
