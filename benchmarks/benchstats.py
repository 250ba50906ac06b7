"""Shared by the benchmarks: how a figure is stated (issue 21: min / median / max of >= 3 runs, each beside
its ceiling measured in the same run, and the ratio to it), and the machine's load beside it.

A figure is printed as ``median (min-max)``; a ratio is computed within each run (the figure and its
ceiling under the same machine load), then summarised the same way.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence


def spread(values: Sequence[float], fmt: str = ",.0f", unit: str = "") -> str:
    """``median (min–max)`` of values, formatted with ``fmt``."""
    if not values:
        return "n/a"
    vals = sorted(values)
    med = statistics.median(vals)
    return f"{med:{fmt}}{unit} ({vals[0]:{fmt}}–{vals[-1]:{fmt}}{unit})"


def ratios(values: Sequence[float], ceilings: Sequence[float]) -> list[float]:
    """Per-run ratios value / ceiling (runs paired in order)."""
    return [v / c for v, c in zip(values, ceilings, strict=True) if c]


def ratio_spread(values: Sequence[float], ceilings: Sequence[float]) -> str:
    return spread(ratios(values, ceilings), ".2f", "x")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def load() -> str:
    one, five, _fifteen = os.getloadavg()
    return f"load average {one:.1f} (5 min {five:.1f}) on {os.cpu_count()} CPUs"


def runs_arg(parser, default: int = 3) -> None:
    parser.add_argument("--runs", type=int, default=default,
                        help=f"repetitions of every measure (default {default}; >= 3 for the README)")
