"""Quota windows as the gateway counts them, headroom at a burn rate, and what a quota would have refused.

Quota semantics (README, "The local gateway"; ``gateway.clock.windows_at``): a quota counts the calls a
subscriber's key was admitted with (past the key and rate-limit checks) per UTC day, ISO week (Monday to
Sunday) or calendar month, across the subscriber's products; the window resets at the next one. The ledger
keeps daily counts, so everything here works on days: the calls of day *d* that a quota admitted are
``total - blocked`` of that day (``success`` where a gateway reports no total), and a quota of ``limit``
refuses exactly ``max(0, cumulative - limit)`` calls of a window, whatever the order within a day.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from functools import lru_cache

from apimon_cli.billing.periods import window_of

_ONE_DECIMAL = Decimal("0.1")


def quota_window(day: date, period: str) -> tuple[date, date]:
    """The quota window (first day, last day) of ``period`` ('day', 'week', 'month') containing ``day``."""
    if period == "day":
        return day, day
    if period not in ("week", "month"):
        raise ValueError(f"unknown quota period {period!r}: expected day, week or month")
    w = window_of(day, period)
    return w.start, w.end


@lru_cache(maxsize=256)
def windows_between(start: date, end: date, period: str) -> tuple[tuple[date, date], ...]:
    """Every quota window of ``period`` that has a day in [start, end], in order (cached: every subscriber
    of a report asks for the same few)."""
    out: list[tuple[date, date]] = []
    day = start
    while day <= end:
        w = quota_window(day, period)
        out.append(w)
        if w[1] >= date.max - timedelta(days=1):
            break
        day = w[1] + timedelta(days=1)
    return tuple(out)


def lookback_start(start: date) -> date:
    """The first day of every quota window (any period) that contains ``start``: usage from here on is enough
    to count every quota window of a billing window that begins at ``start``."""
    return min(quota_window(start, "week")[0], quota_window(start, "month")[0])


def most_windows(quota_period: str, billing_period: str) -> int:
    """The most quota windows one billing period can touch (a month touches up to 31 days and 6 ISO weeks;
    an ISO week up to 7 days and 2 months)."""
    table = {
        ("day", "month"): 31,
        ("week", "month"): 6,
        ("month", "month"): 1,
        ("day", "week"): 7,
        ("week", "week"): 1,
        ("month", "week"): 2,
    }
    return table[(quota_period, billing_period)]


def refusals(admitted: Mapping[date, int], limit: int, period: str, start: date, end: date) -> tuple[int, int]:
    """(calls refused on days in [start, end], windows that reached their limit) by a quota of ``limit`` per
    ``period``, for calls ``admitted`` per day. A window that began before ``start`` counts its earlier days
    toward the limit (they are not refused again here)."""
    refused = 0
    over = 0
    for ws, we in windows_between(start, end, period):
        cumulative = 0
        window_refused = 0
        reached = False
        day = ws
        while day <= we:
            n = admitted.get(day, 0)
            before = max(0, cumulative - limit)
            cumulative += n
            after = max(0, cumulative - limit)
            if start <= day <= end:
                window_refused += after - before
                if cumulative >= limit and n:
                    reached = True
            if day == date.max:
                break
            day += timedelta(days=1)
        refused += window_refused
        over += reached
    return refused, over


@dataclass(frozen=True)
class Headroom:
    """A subscriber's quota in the window that contains ``as_of``."""

    limit: int
    period: str
    window_start: date
    window_end: date
    resets_on: date  # the first day of the next window
    used: int  # calls admitted in the window up to and including as_of
    remaining: int
    used_pct: Decimal  # 0.0-100.0 (more when a provider let calls past the limit), one decimal
    elapsed_days: int  # days of the window up to and including as_of
    burn_rate: Decimal  # calls per day: used / elapsed_days, one decimal
    days_to_exhaust: Decimal | None  # remaining / burn_rate, one decimal; None when idle or exhausted
    exhausts_on: date | None  # the day the limit is reached at the burn rate, if before the reset
    status: str  # exhausted | at_risk (runs out before the reset) | ok | idle (no calls yet)
    windows_in_period: int  # quota windows that touch the billing period
    windows_exhausted: int  # of those, the windows whose limit was reached
    peak_used: int  # the most calls admitted in one of those windows (up to the period's last day)


def headroom(
    admitted: Mapping[date, int],
    limit: int,
    period: str,
    as_of: date,
    period_start: date,
    period_end: date,
) -> Headroom:
    """Headroom of a quota of ``limit`` per ``period`` on ``as_of``, at the window's burn rate so far.

    The burn rate is the window's admitted calls up to ``as_of`` divided by the days elapsed (``as_of`` counts
    as a whole day). At that rate the limit is reached after ``remaining / rate`` more days: on
    ``as_of + ceil(remaining / rate)``; if that is after the window's last day the quota resets first."""
    ws, we = quota_window(as_of, period)
    used = 0
    day = ws
    while day <= as_of:
        used += admitted.get(day, 0)
        day += timedelta(days=1)
    elapsed = (as_of - ws).days + 1
    remaining = max(0, limit - used)
    rate = Decimal(used) / elapsed
    pct = (Decimal(used) * 100 / limit).quantize(_ONE_DECIMAL, ROUND_HALF_UP)
    days: Decimal | None = None
    exhausts: date | None = None
    if used >= limit:
        status = "exhausted"
    elif used == 0:
        status = "idle"
    else:
        exact = Decimal(remaining) / rate
        days = exact.quantize(_ONE_DECIMAL, ROUND_HALF_UP)
        ahead = int(exact.to_integral_value(ROUND_CEILING))
        on = as_of + timedelta(days=ahead)
        if on <= we:
            status, exhausts = "at_risk", on
        else:
            status = "ok"
    windows = windows_between(period_start, period_end, period)
    peak = 0
    for w_start, w_end in windows:
        n = 0
        day = w_start
        while day <= min(w_end, period_end):
            n += admitted.get(day, 0)
            day += timedelta(days=1)
        peak = max(peak, n)
    _refused, exhausted = refusals(admitted, limit, period, period_start, period_end)
    return Headroom(
        limit=limit,
        period=period,
        window_start=ws,
        window_end=we,
        resets_on=we + timedelta(days=1),
        used=used,
        remaining=remaining,
        used_pct=pct,
        elapsed_days=elapsed,
        burn_rate=rate.quantize(_ONE_DECIMAL, ROUND_HALF_UP),
        days_to_exhaust=days,
        exhausts_on=exhausts,
        status=status,
        windows_in_period=len(windows),
        windows_exhausted=exhausted,
        peak_used=peak,
    )
