"""Client-side pacing under AWS API Gateway's control-plane quotas, and the one place that retries.

AWS's management quotas are fixed per account and region (they cannot be raised):

* every management call: 10 requests per second, burst 40 (one account-wide token bucket);
* UpdateUsagePlan: 1 request every 20 seconds;
* CreateApiKey, DeleteApiKey: 5 requests per second each.

``Quotas`` keeps one token bucket per operation class plus the account-wide one, and a call goes out
only when every bucket it draws from has a token, so a large apply stays under the quotas instead of
collecting 429s. The buckets are a little stricter than AWS's (1 % slower, a few tokens of burst kept
in reserve, and the 1-per-20-s interval counted from the *end* of the previous call) because AWS counts
a request when it arrives, not when we send it. Other clients of the same account can still drain the
account's buckets, so throttling errors are retried too: see ``RetryPolicy``.

``APIMON_AWS_QUOTA_SCALE`` (float, default 1.0) divides every quota's time by its value: with 10,
UpdateUsagePlan may run every 2 s and the account-wide rate is 100/s. It exists for tests and
benchmarks against a local fake that enforces equally scaled quotas; never set it against real AWS.
Backoff delays (when no Retry-After is given) are divided by it as well.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from dataclasses import dataclass

from ...reconcile.solver import Cancelled  # raised to calls still waiting for a token when the apply stops

QUOTA_SCALE_ENV = "APIMON_AWS_QUOTA_SCALE"

GLOBAL = "*"
GLOBAL_RATE = 10.0  # requests per second, every management call
GLOBAL_BURST = 40
#: operation -> (requests per second, bucket size), AWS's fixed per-operation quotas
PER_OPERATION: dict[str, tuple[float, int]] = {
    "UpdateUsagePlan": (1 / 20, 1),
    "CreateApiKey": (5.0, 5),
    "DeleteApiKey": (5.0, 5),
}
#: how much slower than AWS the client paces (AWS counts arrivals; ours are departures)
RATE_MARGIN = 0.01
GLOBAL_BURST_RESERVE = 3


class QuotaScaleError(ValueError):
    pass


def quota_scale(environ: dict[str, str] | None = None) -> float:
    raw = (os.environ if environ is None else environ).get(QUOTA_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise QuotaScaleError(f"{QUOTA_SCALE_ENV} must be a positive number; got {raw!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise QuotaScaleError(f"{QUOTA_SCALE_ENV} must be a positive number; got {raw!r}")
    return value


class TokenBucket:
    """A token bucket; not thread-safe by itself (``Quotas`` holds one lock over all buckets).

    ``serial`` buckets (capacity 1) count the interval from the completion of the previous call, which
    is after AWS received it: the next request can never arrive early.
    """

    def __init__(self, rate: float, capacity: float, *, serial: bool = False, now: float | None = None):
        self.rate = rate
        self.capacity = max(1.0, capacity)
        self.serial = serial
        self.tokens = self.capacity
        self.last = time.monotonic() if now is None else now
        self.blocked_until = 0.0
        self.in_flight = 0

    def _refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
            self.last = now

    def wait_time(self, now: float) -> float:
        if self.serial and self.in_flight:
            return math.inf  # woken by ``completed``
        self._refill(now)
        wait = 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate
        return max(wait, self.blocked_until - now)

    def take(self, now: float) -> None:
        self._refill(now)
        self.tokens -= 1.0
        self.in_flight += 1

    def completed(self, now: float) -> None:
        self.in_flight -= 1
        if self.serial:
            self.tokens = min(self.tokens, 0.0)
            self.last = max(self.last, now)

    def block(self, until: float) -> None:
        self.blocked_until = max(self.blocked_until, until)


class Quotas:
    """The account-wide bucket and the per-operation buckets, shared by all threads of one apimon run.

    The AWS provider's apply policy (``reconcile.solver.ApplyPolicy.pacing``): every call acquires its
    tokens here; the solver cancels it when an apply stops."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale
        self._cond = threading.Condition()
        self._global = TokenBucket(GLOBAL_RATE * scale * (1 - RATE_MARGIN), GLOBAL_BURST - GLOBAL_BURST_RESERVE)
        self._per_op: dict[str, TokenBucket] = {}
        for op, (rate, size) in PER_OPERATION.items():
            capacity = max(1, math.floor(rate * scale * (1 - RATE_MARGIN)) - 1) if size > 1 else 1
            self._per_op[op] = TokenBucket(rate * scale * (1 - RATE_MARGIN), capacity, serial=size == 1)
        self.cancelled = False

    def _buckets(self, op: str) -> list[TokenBucket]:
        return [self._global] + ([self._per_op[op]] if op in self._per_op else [])

    def acquire(self, op: str) -> None:
        """Block until ``op`` may be sent under every quota it counts against; take the tokens."""
        buckets = self._buckets(op)
        with self._cond:
            while True:
                if self.cancelled:
                    raise Cancelled()
                now = time.monotonic()
                wait = max(b.wait_time(now) for b in buckets)
                if wait <= 0:
                    for b in buckets:
                        b.take(now)
                    return
                self._cond.wait(timeout=None if math.isinf(wait) else wait)

    def cancel(self) -> None:
        with self._cond:
            self.cancelled = True
            self._cond.notify_all()

    def completed(self, op: str) -> None:
        now = time.monotonic()
        with self._cond:
            for b in self._buckets(op):
                b.completed(now)
            self._cond.notify_all()

    def throttled(self, op: str, retry_after: float | None) -> None:
        """AWS said 429: hold back the bucket that most likely ran dry."""
        delay = retry_after if retry_after is not None else 1.0 / self.scale
        with self._cond:
            bucket = self._per_op.get(op, self._global)
            bucket.block(time.monotonic() + delay)
            self._cond.notify_all()


def lower_bound_seconds(counts: dict[str, int], scale: float = 1.0) -> dict[str, float]:
    """The least time AWS's quotas allow for these calls, per quota: {'*': s, 'UpdateUsagePlan': s, ...}.

    ``counts`` maps operation name -> number of calls; every call also counts against the global quota.
    Buckets are assumed full at the start (AWS's bucket sizes: 40 for the global quota, one second's
    worth for CreateApiKey/DeleteApiKey, one call for UpdateUsagePlan).
    """
    total = sum(counts.values())
    out = {GLOBAL: max(0, total - GLOBAL_BURST) / (GLOBAL_RATE * scale)}
    for op, (rate, size) in PER_OPERATION.items():
        n = counts.get(op, 0)
        if n:
            out[op] = max(0, n - size) / (rate * scale)
    return out


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff (full jitter), honouring Retry-After when given."""

    max_attempts: int = 8
    base_delay: float = 0.25  # seconds at scale 1
    max_delay: float = 10.0
    scale: float = 1.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
        if retry_after is not None:
            return max(0.0, retry_after)
        cap = min(self.max_delay, self.base_delay * (2 ** (attempt - 1))) / self.scale
        return random.uniform(cap / 2, cap)
