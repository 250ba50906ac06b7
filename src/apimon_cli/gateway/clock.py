"""Wall-clock time for quotas and metering, and the UTC calendar windows they count in.

The token bucket runs on the event loop's monotonic clock; quota windows and usage days follow the wall
clock, which is injectable: a constructor argument for in-process tests, or ``APIMON_GATEWAY_FAKE_NOW``
(an ISO 8601 instant; the fake clock starts there and then advances in real time) for a gateway run as a
process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

Clock = Callable[[], float]  # POSIX seconds
FAKE_NOW_ENV = "APIMON_GATEWAY_FAKE_NOW"


def parse_instant(text: str) -> float:
    """An ISO 8601 instant (``Z`` or an offset; naive means UTC) as POSIX seconds."""
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def clock_from_env(env: Mapping[str, str] | None = None) -> Clock:
    """The system clock, or a clock that starts at ``APIMON_GATEWAY_FAKE_NOW`` and runs in real time."""
    raw = (os.environ if env is None else env).get(FAKE_NOW_ENV)
    if not raw:
        return time.time
    try:
        start = parse_instant(raw)
    except ValueError:
        raise ValueError(f"{FAKE_NOW_ENV}={raw!r} is not an ISO 8601 instant (e.g. 2026-11-30T23:59:58Z)") from None
    offset = start - time.time()
    return lambda: time.time() + offset


class FakeClock:
    """A settable clock for tests: ``clock.set("2026-11-30T23:59:59Z")``, ``clock.advance(2)``."""

    def __init__(self, start: str | float):
        self.now = parse_instant(start) if isinstance(start, str) else float(start)

    def __call__(self) -> float:
        return self.now

    def set(self, when: str | float) -> None:
        self.now = parse_instant(when) if isinstance(when, str) else float(when)

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _utc(d: date) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class Windows:
    """The UTC day, ISO week and calendar month containing one instant, valid for ``[start, end)``."""

    start: float  # the day's first second
    end: float  # the next day's first second: windows must be recomputed from then on
    day: str  # usage day, "2026-11-30"
    window: Mapping[str, str]  # quota period -> window id: "day:2026-11-30", "week:2026-W49", "month:2026-11"
    resets: Mapping[str, float]  # quota period -> when its window ends (POSIX seconds)


def windows_at(now: float) -> Windows:
    today = datetime.fromtimestamp(now, tz=UTC).date()
    iso = today.isocalendar()
    next_day = today + timedelta(days=1)
    next_week = today + timedelta(days=7 - today.weekday())
    next_month = date(today.year + (today.month == 12), today.month % 12 + 1, 1)
    return Windows(
        start=_utc(today),
        end=_utc(next_day),
        day=today.isoformat(),
        window={
            "day": f"day:{today.isoformat()}",
            "week": f"week:{iso.year}-W{iso.week:02d}",
            "month": f"month:{today.year}-{today.month:02d}",
        },
        resets={"day": _utc(next_day), "week": _utc(next_week), "month": _utc(next_month)},
    )


def iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
