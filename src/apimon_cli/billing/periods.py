"""Billing windows: calendar months and ISO 8601 weeks, in UTC.

A window is named by its label (``2026-11`` for November 2026, ``2026-W48`` for ISO week 48 of ISO year
2026) and covers ``start`` to ``end``, both inclusive. A day belongs to exactly one window of each kind.
ISO weeks start on Monday and belong to the ISO year of their Thursday, so ``2026-W01`` may start in
December of the previous calendar year and ``window_of(date(2027, 1, 1), 'week')`` is ``2026-W53``.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, timedelta

_MONTH = re.compile(r"(\d{4})-(\d{2})")
_WEEK = re.compile(r"(\d{4})-W(\d{2})")
_KINDS = ("month", "week")


@dataclass(frozen=True, slots=True)
class BillingWindow:
    label: str  # "2026-11" or "2026-W48"
    start: date
    end: date  # inclusive

    def __contains__(self, day: object) -> bool:
        return isinstance(day, date) and self.start <= day <= self.end


def parse_period(text: str, kind: str) -> BillingWindow:
    """The window named ``text``: ``YYYY-MM`` when ``kind`` is 'month', ``YYYY-Www`` when 'week'."""
    _check_kind(kind)
    text = text.strip()
    if kind == "month":
        m = _MONTH.fullmatch(text)
        if m is None:
            hint = " (this plan bills by month, not by week)" if _WEEK.fullmatch(text) else ""
            raise ValueError(f"invalid month period {text!r}: expected YYYY-MM, e.g. 2026-11{hint}")
        year, month = int(m[1]), int(m[2])
        if year < 1:
            raise ValueError(f"invalid month period {text!r}: the year must be 0001-9999")
        if not 1 <= month <= 12:
            raise ValueError(f"invalid month period {text!r}: the month must be 01-12")
        return _month(year, month)
    m = _WEEK.fullmatch(text)
    if m is None:
        hint = " (this plan bills by ISO week, not by month)" if _MONTH.fullmatch(text) else ""
        raise ValueError(f"invalid week period {text!r}: expected YYYY-Www, e.g. 2026-W48{hint}")
    year, week = int(m[1]), int(m[2])
    last = date(year, 12, 28).isocalendar().week if year >= 1 else 0  # Dec 28 is always in the last week
    if year < 1 or not 1 <= week <= last:
        raise ValueError(f"invalid week period {text!r}: ISO year {m[1]} has weeks W01-W{last:02d}")
    start = date.fromisocalendar(year, week, 1)
    end = date.max if (year, week) == (9999, last) else start + timedelta(days=6)
    return BillingWindow(f"{year:04d}-W{week:02d}", start, end)


def window_of(day: date, kind: str) -> BillingWindow:
    """The window of ``kind`` ('month' or 'week') that contains ``day``."""
    _check_kind(kind)
    if kind == "month":
        return _month(day.year, day.month)
    iso = day.isocalendar()
    return parse_period(f"{iso.year:04d}-W{iso.week:02d}", "week")


def _month(year: int, month: int) -> BillingWindow:
    last_day = calendar.monthrange(year, month)[1]
    return BillingWindow(f"{year:04d}-{month:02d}", date(year, month, 1), date(year, month, last_day))


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"unknown billing period kind {kind!r}: expected 'month' or 'week'")
