"""Call counts per subscriber, product and UTC day, aggregated in memory, and the per-request observer hook.

Metrics follow Azure API Management's report definitions, by the status code the client received:
success (status <= 301, 304, 307), blocked (401, 403, 429), failed (400, 5xx; an unreachable or timed-out
upstream is a 502/504 from the gateway), other (everything else, e.g. 404), total (all of them).
Requests without a known key have no subscriber and are not metered (only counted for the shutdown
summary). The server swaps the pending counters out at least once a second and the store adds them to the
``usage`` table (with the limits back end's quota deltas, in one transaction); a write that fails puts them
back, so nothing is lost.

``MeteredRequest`` / ``MeterObserver``: the per-request hook. ``Gateway.add_observer(fn)`` has ``fn`` called
once per answered metered request (the same requests the usage table counts), e.g. to emit events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


class Meter:
    """Usage counts per subscriber, product and day, pending until the next flush."""

    def __init__(self) -> None:
        self.usage: dict[UsageKey, list[int]] = {}
        self.unauthenticated = 0  # requests with no or an unknown key: not metered
        self.requests = 0  # metered requests, for the shutdown summary

    def count(self, key: UsageKey, status: int) -> None:
        c = self.usage.get(key)
        if c is None:
            c = self.usage[key] = [0, 0, 0, 0]
        c[METRIC_BY_STATUS[status] if 0 <= status < 1000 else OTHER] += 1
        self.requests += 1

    def swap(self) -> dict[UsageKey, list[int]]:
        """Take the pending deltas for writing; new calls count into a fresh dict."""
        usage, self.usage = self.usage, {}
        return usage

    def restore(self, usage: dict[UsageKey, list[int]]) -> None:
        """Put deltas back after a failed write, so the next flush writes them."""
        for k, counts in usage.items():
            c = self.usage.setdefault(k, [0, 0, 0, 0])
            for i, n in enumerate(counts):
                c[i] += n

    @property
    def pending(self) -> bool:
        return bool(self.usage)


@dataclass(frozen=True, slots=True)
class MeteredRequest:
    """One answered metered request, as the observer hook sees it (never the key, never a body)."""

    subscriber: str
    product: str
    api: str  # the path's first segment ("" if the request had none)
    method: str
    status: int  # what the client received (or 502/504 for a body cut mid-way)
    outcome: str  # success | blocked | failed | other (the metric it was counted in)
    latency: float  # seconds from the request's arrival to its response's last byte handed over
    bytes_in: int  # request body bytes read from the client
    bytes_out: int  # response body bytes sent to the client
    time: float = 0.0  # wall-clock arrival (POSIX seconds, the gateway's clock)
    limits: str = ""  # admitted | rate_limited | quota_exceeded; "" when refused before the limits check
    quota: tuple | None = None  # (limit, used, period, window) when the product has a quota and it was checked


#: called once per answered metered request, on the event loop: must not block (queue the event and
#: return); an exception is reported once and never affects the request
MeterObserver = Callable[[MeteredRequest], None]


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
