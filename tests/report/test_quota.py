"""Quota windows are the gateway's (gateway.clock), refusals are exact at day granularity."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from apimon_cli.gateway.clock import windows_at
from apimon_cli.report import quota as Q


def test_quota_windows_are_the_gateways_windows():
    day = date(2026, 1, 1)
    for _ in range(800):  # two years: every month end, ISO week 53 of 2026, a leap-free February
        ts = datetime(day.year, day.month, day.day, 12, tzinfo=UTC).timestamp()
        w = windows_at(ts)
        for period in ("day", "week", "month"):
            start, end = Q.quota_window(day, period)
            assert start <= day <= end
            reset = datetime(*(end + timedelta(days=1)).timetuple()[:3], tzinfo=UTC).timestamp()
            assert reset == w.resets[period], (day, period)
            # every day of the window is in the same gateway window as `day`
            for probe in (start, end):
                pts = datetime(probe.year, probe.month, probe.day, tzinfo=UTC).timestamp()
                assert windows_at(pts).window[period] == w.window[period], (day, period, probe)
        day += timedelta(days=1)


def test_refusals_count_the_excess_of_each_window():
    per_day = {date(2026, 11, d): 30 for d in range(1, 31)}
    assert Q.refusals(per_day, 50, "day", date(2026, 11, 1), date(2026, 11, 30)) == (0, 0)
    assert Q.refusals(per_day, 20, "day", date(2026, 11, 1), date(2026, 11, 30)) == (300, 30)
    assert Q.refusals(per_day, 600, "month", date(2026, 11, 1), date(2026, 11, 30)) == (300, 1)


def test_a_week_that_began_last_month_counts_its_earlier_days():
    # ISO week 2026-W48 runs Mon 23 Nov .. Sun 29 Nov; W44 runs Mon 26 Oct .. Sun 1 Nov
    per_day = {date(2026, 10, 26) + timedelta(days=i): 100 for i in range(7)}
    refused, over = Q.refusals(per_day, 550, "week", date(2026, 11, 1), date(2026, 11, 30))
    assert (refused, over) == (100, 1)  # Oct 26-31 used 600 already: all 100 calls of Nov 1 refused
    only_october = Q.refusals(per_day, 550, "week", date(2026, 10, 1), date(2026, 10, 31))
    assert only_october == (50, 1)


def test_headroom_at_risk_ok_exhausted_idle():
    per_day = {date(2026, 11, d): 100 for d in range(1, 11)}
    h = Q.headroom(per_day, 2000, "month", date(2026, 11, 10), date(2026, 11, 1), date(2026, 11, 30))
    assert (h.used, h.burn_rate, h.days_to_exhaust, h.exhausts_on, h.status) == (
        1000, Decimal("100.0"), Decimal("10.0"), date(2026, 11, 20), "at_risk")
    h = Q.headroom(per_day, 5000, "month", date(2026, 11, 10), date(2026, 11, 1), date(2026, 11, 30))
    assert h.status == "ok" and h.exhausts_on is None and h.days_to_exhaust == Decimal("40.0")
    h = Q.headroom(per_day, 900, "month", date(2026, 11, 10), date(2026, 11, 1), date(2026, 11, 30))
    assert h.status == "exhausted" and h.remaining == 0 and h.used_pct == Decimal("111.1")
    h = Q.headroom({}, 900, "week", date(2026, 11, 10), date(2026, 11, 1), date(2026, 11, 30))
    assert h.status == "idle" and (h.window_start, h.window_end) == (date(2026, 11, 9), date(2026, 11, 15))
    assert h.windows_in_period == 6  # Nov 2026 touches ISO weeks 44 .. 49


@pytest.mark.parametrize("quota,billing", [(q, b) for q in ("day", "week", "month") for b in ("month", "week")])
def test_most_windows_is_an_upper_bound(quota, billing):
    from apimon_cli.billing.periods import window_of

    most = 0
    day = date(2024, 1, 1)
    while day < date(2030, 1, 1):
        w = window_of(day, billing)
        most = max(most, len(Q.windows_between(w.start, w.end, quota)))
        day = w.end + timedelta(days=1)
    assert most == Q.most_windows(quota, billing)
