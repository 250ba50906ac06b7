"""Call counts per subscriber, product and UTC day, and quota counters, aggregated in memory.

Metrics follow Azure API Management's report definitions, by the status code the client received:
success (status <= 301, 304, 307), blocked (401, 403, 429), failed (400, 5xx; an unreachable or timed-out
upstream is a 502/504 from the gateway), other (everything else, e.g. 404), total (all of them).
Requests without a known key have no subscriber and are not metered (only counted for the shutdown
summary). The server swaps the pending counters out at least once a second and the store adds them to the
``usage`` and ``quota_counters`` tables; a write that fails puts them back, so nothing is lost.
"""

from __future__ import annotations

from collections.abc import Iterable

SUCCESS, BLOCKED, FAILED, OTHER = 0, 1, 2, 3
METRIC_NAMES = ("success", "blocked", "failed", "other")


def metric_of(status: int) -> int:
    if status <= 301 or status in (304, 307):
        return SUCCESS
    if status in (401, 403, 429):
        return BLOCKED
    if status == 400 or 500 <= status <= 599:
        return FAILED
    return OTHER


#: status code -> metric index, for the hot path
METRIC_BY_STATUS: tuple[int, ...] = tuple(metric_of(s) for s in range(1000))

UsageKey = tuple[str, str, str]  # subscriber, product, day
QuotaKey = tuple[str, str]  # subscriber, window


class Meter:
    def __init__(self, quota_used: dict[QuotaKey, int] | None = None):
        self.usage: dict[UsageKey, list[int]] = {}
        self.quota_used: dict[QuotaKey, int] = dict(quota_used or {})
        self.quota_pending: dict[QuotaKey, int] = {}
        self.unauthenticated = 0  # requests with no or an unknown key: not metered
        self.requests = 0  # metered requests, for the shutdown summary

    def count(self, key: UsageKey, status: int) -> None:
        c = self.usage.get(key)
        if c is None:
            c = self.usage[key] = [0, 0, 0, 0]
        c[METRIC_BY_STATUS[status] if 0 <= status < 1000 else OTHER] += 1
        self.requests += 1

    def take_quota(self, key: QuotaKey, limit: int) -> int | None:
        """Count one call against the window; None if the quota is used up (then nothing is counted)."""
        used = self.quota_used.get(key, 0)
        if used >= limit:
            return None
        self.quota_used[key] = used + 1
        self.quota_pending[key] = self.quota_pending.get(key, 0) + 1
        return used + 1

    def keep_windows(self, windows: Iterable[str]) -> None:
        """Forget counters of windows that ended (pending deltas are still written)."""
        current = set(windows)
        self.quota_used = {k: v for k, v in self.quota_used.items() if k[1] in current}

    def swap(self) -> tuple[dict[UsageKey, list[int]], dict[QuotaKey, int]]:
        """Take the pending deltas for writing; new calls count into fresh dicts."""
        usage, quota = self.usage, self.quota_pending
        self.usage, self.quota_pending = {}, {}
        return usage, quota

    def restore(self, usage: dict[UsageKey, list[int]], quota: dict[QuotaKey, int]) -> None:
        """Put deltas back after a failed write, so the next flush writes them."""
        for k, counts in usage.items():
            c = self.usage.setdefault(k, [0, 0, 0, 0])
            for i, n in enumerate(counts):
                c[i] += n
        for k, n in quota.items():
            self.quota_pending[k] = self.quota_pending.get(k, 0) + n

    @property
    def pending(self) -> bool:
        return bool(self.usage or self.quota_pending)


def usage_rows(usage: dict[UsageKey, list[int]]) -> list[tuple[str, str, str, str, int]]:
    """(subscriber, product, day, metric, delta) rows, zero deltas left out; total is the sum."""
    rows = []
    for (sid, pid, day), counts in usage.items():
        for name, n in zip(METRIC_NAMES, counts, strict=True):
            if n:
                rows.append((sid, pid, day, name, n))
        total = sum(counts)
        if total:
            rows.append((sid, pid, day, "total", total))
    return rows
