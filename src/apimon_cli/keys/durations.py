"""Durations as written in plans and flags: ``30s``, ``15m``, ``24h``, ``7d`` (a whole number and a unit)."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_RE = re.compile(r"^\s*(\d{1,7})\s*([smhd])\s*$")
MAX = timedelta(days=3650)


def parse_duration(text: str) -> timedelta:
    """``"24h"`` -> 24 hours; ValueError with the allowed forms otherwise."""
    m = _RE.match(str(text))
    if not m:
        raise ValueError(f"{text!r} is not a duration: write a whole number and a unit, e.g. 30s, 15m, 24h, 7d")
    value = timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    if value > MAX:
        raise ValueError(f"{text!r} is too long: at most 3650d")
    return value


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
