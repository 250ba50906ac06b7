from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apimon_cli.billing.periods import BillingWindow, parse_period, window_of


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2026-11", date(2026, 11, 1), date(2026, 11, 30)),
        ("2026-12", date(2026, 12, 1), date(2026, 12, 31)),
        ("2026-02", date(2026, 2, 1), date(2026, 2, 28)),
        ("2028-02", date(2028, 2, 1), date(2028, 2, 29)),  # leap year
        ("2000-02", date(2000, 2, 1), date(2000, 2, 29)),
        ("1900-02", date(1900, 2, 1), date(1900, 2, 28)),
    ],
)
def test_months(text, start, end):
    assert parse_period(text, "month") == BillingWindow(text, start, end)


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2026-W48", date(2026, 11, 23), date(2026, 11, 29)),
        ("2026-W01", date(2025, 12, 29), date(2026, 1, 4)),  # week 1 starts in the previous year
        ("2026-W53", date(2026, 12, 28), date(2027, 1, 3)),  # 2026 starts on a Thursday: 53 weeks
        ("2027-W52", date(2027, 12, 27), date(2028, 1, 2)),
    ],
)
def test_iso_weeks(text, start, end):
    assert parse_period(text, "week") == BillingWindow(text, start, end)


def test_window_of():
    assert window_of(date(2026, 11, 30), "month") == parse_period("2026-11", "month")
    assert window_of(date(2026, 11, 1), "month").label == "2026-11"
    assert window_of(date(2027, 1, 1), "week").label == "2026-W53"
    assert window_of(date(2025, 12, 29), "week").label == "2026-W01"
    assert window_of(date(2025, 12, 28), "week").label == "2025-W52"
    assert window_of(date(2026, 11, 29), "week").label == "2026-W48"  # Sunday
    assert window_of(date(2026, 11, 30), "week").label == "2026-W49"  # Monday


def test_contains():
    w = parse_period("2026-11", "month")
    assert date(2026, 11, 1) in w and date(2026, 11, 30) in w
    assert date(2026, 10, 31) not in w and date(2026, 12, 1) not in w
    assert "2026-11-05" not in w


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("2026-13", "month", "month must be 01-12"),
        ("2026-00", "month", "month must be 01-12"),
        ("2026-1", "month", "expected YYYY-MM, e.g. 2026-11"),
        ("2026/11", "month", "expected YYYY-MM"),
        ("November 2026", "month", "expected YYYY-MM"),
        ("2026-W48", "month", "bills by month, not by week"),
        ("2026-11", "week", "bills by ISO week, not by month"),
        ("2026-W5", "week", "expected YYYY-Www, e.g. 2026-W48"),
        ("2026-w48", "week", "expected YYYY-Www"),
        ("2027-W53", "week", "ISO year 2027 has weeks W01-W52"),
        ("2026-W00", "week", "W01-W53"),
        ("0000-W01", "week", "weeks"),
        ("0000-01", "month", "year must be 0001-9999"),
    ],
)
def test_bad_periods(text, kind, message):
    with pytest.raises(ValueError, match=message):
        parse_period(text, kind)


@pytest.mark.parametrize("kind", ["day", "year", "Month", ""])
def test_bad_kind(kind):
    with pytest.raises(ValueError, match="expected 'month' or 'week'"):
        parse_period("2026-11", kind)
    with pytest.raises(ValueError, match="expected 'month' or 'week'"):
        window_of(date(2026, 11, 1), kind)


@given(st.dates(min_value=date(1, 1, 1), max_value=date(9998, 12, 31)), st.sampled_from(["month", "week"]))
def test_every_day_is_in_exactly_its_window(day, kind):
    w = window_of(day, kind)
    assert w.start <= day <= w.end
    assert parse_period(w.label, kind) == w
    assert window_of(w.start, kind) == w and window_of(w.end, kind) == w
    if kind == "week":
        assert w.start.weekday() == 0 and w.end - w.start == timedelta(days=6)
    else:
        assert w.start.day == 1 and (w.end + timedelta(days=1)).day == 1
