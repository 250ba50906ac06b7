"""The ledger's daily counts, grouped the way reports, statements and sparklines read them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta

from apimon_cli.model import METRICS

_INDEX = {m: i for i, m in enumerate(METRICS)}  # success, blocked, failed, other, total
SUCCESS, BLOCKED, FAILED, OTHER, TOTAL = range(5)


class DailyUsage:
    """(subscriber, product, day) -> counts of ``model.METRICS``, from ledger rows of one provider+target."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, date], list[int]] = {}

    @classmethod
    def from_rows(cls, rows: Iterable) -> DailyUsage:
        """From ``Ledger.iter_rows`` (or any rows with subscriber, product, day, metric, count)."""
        usage = cls()
        days: dict[str, date] = {}
        get = usage.rows.get
        for r in rows:
            day = days.get(r.day)
            if day is None:
                day = days[r.day] = date.fromisoformat(r.day)
            key = (r.subscriber, r.product, day)
            counts = get(key)
            if counts is None:
                counts = usage.rows[key] = [0, 0, 0, 0, 0]
            counts[_INDEX[r.metric]] += r.count
        return usage

    def add(self, subscriber: str, product: str, day: date, metric: str, count: int) -> None:
        counts = self.rows.setdefault((subscriber, product, day), [0, 0, 0, 0, 0])
        counts[_INDEX[metric]] += count

    def between(self, start: date, end: date) -> Iterable[tuple[tuple[str, str, date], list[int]]]:
        return ((k, c) for k, c in self.rows.items() if start <= k[2] <= end)


def calls(c: list[int]) -> int:
    """Every call the gateway saw: ``total``, or the sum of the other metrics where no total was reported."""
    return c[TOTAL] or (c[SUCCESS] + c[BLOCKED] + c[FAILED] + c[OTHER])


def admitted(c: list[int]) -> int:
    """Calls a quota counted: every call the gateway did not block."""
    return max(0, calls(c) - c[BLOCKED])


def billable(c: list[int], metric: str) -> int:
    """The billable quantity of one day (README: ``success``, or ``total`` minus ``blocked``)."""
    if metric == "success":
        return c[SUCCESS]
    return max(0, c[TOTAL] - c[BLOCKED])


def days_of(start: date, end: date) -> list[date]:
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def daily_series(rows: Iterable, start: date, end: date, by: str, metric: str = "total") -> dict[str, list[int]]:
    """key (subscriber or product) -> counts of ``metric`` per day of [start, end] (for sparklines)."""
    if by not in ("subscriber", "product"):
        raise ValueError(f"daily series by {by!r}: expected subscriber or product")
    n = (end - start).days + 1
    out: dict[str, list[int]] = {}
    for r in rows:
        if r.metric != metric:
            continue
        i = (date.fromisoformat(r.day) - start).days
        if not 0 <= i < n:
            continue
        key = r.subscriber if by == "subscriber" else r.product
        series = out.get(key)
        if series is None:
            series = out[key] = [0] * n
        series[i] += r.count
    return out
