"""Inline SVG charts, generated as text: no script, no fonts or images to fetch, printable.

Each chart is one ``<svg role="img">`` with a ``<title>`` and ``<desc>`` (screen readers read them; the
page also shows the numbers as a table). Every bar is a ``<g class="bar" data-key=...>`` holding one
``<rect class="seg" data-series=... data-value=...>`` per non-zero part, with a ``<title>`` tooltip, so a
test (or a person with the inspector) can read each value back. All text is escaped.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from html import escape

# Colours with at least 4.5:1 contrast against white (WCAG 1.4.11 asks 3:1 of graphics).
PALETTE = ("#1f5fa8", "#b4410c", "#15803d", "#7e22ce", "#b91c1c", "#0f766e", "#8a5a00", "#4b5563",
           "#be185d", "#3f6212")  # fmt: skip
SUCCESS, BLOCKED, OTHER = "#15803d", "#b91c1c", "#4b5563"
_INK, _GRID, _AXIS = "#1f2937", "#d1d5db", "#6b7280"
_ids = itertools.count(1)


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


@dataclass(frozen=True)
class Series:
    key: str  # data-series
    name: str  # legend text
    colour: str
    values: Sequence[int | Decimal]


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above ``value`` (1 for 0)."""
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        top = m * 10.0**exp
        if top >= value:
            return top
    return 10.0 ** (exp + 1)  # pragma: no cover


def short(value: float) -> str:
    """1,500 -> 1.5k, 2,000,000 -> 2M: axis labels."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return _num(value / div) + suffix
    return _num(value)


def _open(kind: str, width: int, height: int, title: str, desc: str) -> tuple[str, str]:
    n = next(_ids)
    t, d = f"chart{n}-title", f"chart{n}-desc"
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{_e(kind)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-labelledby="{t} {d}" font-family="system-ui, sans-serif" font-size="12">'
        f'<title id="{t}">{_e(title)}</title><desc id="{d}">{_e(desc)}</desc>'
    )
    return head, "</svg>"


def _legend(series: Sequence[Series], x: float, y: float) -> str:
    parts = ['<g class="legend">']
    for s in series:
        parts.append(
            f'<rect x="{_num(x)}" y="{_num(y - 9)}" width="10" height="10" fill="{s.colour}"/>'
            f'<text x="{_num(x + 14)}" y="{_num(y)}" fill="{_INK}">{_e(s.name)}</text>'
        )
        x += 24 + 7 * len(s.name)
    parts.append("</g>")
    return "".join(parts)


def stacked_bars(
    kind: str,
    keys: Sequence[str],
    ticks: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    desc: str,
    unit: str = "calls",
    fmt: Callable[[int | Decimal], str] = lambda v: f"{v:,}",
    width: int = 880,
    height: int = 300,
) -> str:
    """Vertical bars, one per key (a day), stacked by series (products or metrics)."""
    left, right, top, bottom = 56, 12, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(s.values[i] for s in series) for i in range(len(keys))]
    ymax = nice_max(float(max(totals, default=0)))
    head, tail = _open(kind, width, height, title, desc)
    out = [head, _legend(series, left, 14)]
    out.append('<g class="axis">')
    for k in range(5):
        v = ymax * k / 4
        y = top + plot_h - plot_h * k / 4
        out.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{_num(y)}" y2="{_num(y)}" stroke="{_GRID}"/>'
            f'<text x="{left - 6}" y="{_num(y + 4)}" text-anchor="end" fill="{_INK}">{_e(short(v))}</text>'
        )
    out.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="{_AXIS}"/></g>'
    )
    n = max(len(keys), 1)
    step = plot_w / n
    bar_w = max(1.0, step * 0.72)
    every = max(1, math.ceil(n / 12))
    out.append('<g class="bars">')
    for i, key in enumerate(keys):
        x = left + i * step + (step - bar_w) / 2
        y = top + plot_h
        parts = [f"{s.name} {fmt(s.values[i])}" for s in series if s.values[i]]
        label = f"{ticks[i]}: {fmt(totals[i])} {unit}" + (f" ({', '.join(parts)})" if len(parts) > 1 else "")
        out.append(f'<g class="bar" data-key="{_e(key)}" data-total="{_e(totals[i])}"><title>{_e(label)}</title>')
        for s in series:
            v = s.values[i]
            if not v:
                continue
            h = plot_h * float(v) / ymax
            y -= h
            out.append(
                f'<rect class="seg" data-series="{_e(s.key)}" data-value="{_e(v)}" x="{_num(x)}" y="{_num(y)}" '
                f'width="{_num(bar_w)}" height="{_num(max(h, 0.5))}" fill="{s.colour}"/>'
            )
        out.append("</g>")
    out.append("</g><g class=\"ticks\">")
    for i in range(0, len(keys), every):
        x = left + i * step + step / 2
        out.append(
            f'<text x="{_num(x)}" y="{top + plot_h + 16}" text-anchor="middle" fill="{_INK}">{_e(ticks[i])}</text>'
        )
    out.append("</g>")
    out.append(tail)
    return "".join(out)


def hbars(
    kind: str,
    rows: Sequence[tuple[str, str, Decimal | int, str]],
    *,
    title: str,
    desc: str,
    width: int = 880,
    fill: Callable[[int], str] = colour,
) -> str:
    """Horizontal bars, one per row: (key, label, value, value text). Negative values draw as 0."""
    label_w, right, row_h, top = 170, 150, 28, 8
    height = top * 2 + row_h * max(len(rows), 1)
    plot_w = width - label_w - right
    vmax = max((float(v) for _k, _l, v, _t in rows), default=0.0) or 1.0
    head, tail = _open(kind, width, height, title, desc)
    out = [head, '<g class="bars">']
    for i, (key, label, value, text) in enumerate(rows):
        y = top + i * row_h
        w = max(0.0, plot_w * float(value) / vmax)
        out.append(
            f'<g class="bar" data-key="{_e(key)}"><title>{_e(label)}: {_e(text)}</title>'
            f'<text x="{label_w - 8}" y="{_num(y + 18)}" text-anchor="end" fill="{_INK}">{_e(label)}</text>'
        )
        if w > 0:
            out.append(
                f'<rect class="seg" data-series="{_e(key)}" data-value="{_e(value)}" x="{label_w}" y="{y + 4}" '
                f'width="{_num(max(w, 1.0))}" height="{row_h - 8}" fill="{fill(i)}"/>'
            )
        out.append(f'<text x="{_num(label_w + w + 6)}" y="{_num(y + 18)}" fill="{_INK}">{_e(text)}</text></g>')
    out.append("</g>")
    out.append(tail)
    return "".join(out)


def share_bars(
    kind: str,
    rows: Sequence[tuple[str, str, Sequence[tuple[str, str, str, int]]]],
    *,
    title: str,
    desc: str,
    width: int = 880,
) -> str:
    """100 % bars, one per row: (key, label, [(series key, series name, colour, count), ...])."""
    label_w, right, row_h, top = 170, 12, 30, 28
    height = top + 8 + row_h * max(len(rows), 1)
    plot_w = width - label_w - right
    names: dict[str, tuple[str, str]] = {}
    for _k, _l, parts in rows:
        for skey, sname, col, _n in parts:
            names.setdefault(skey, (sname, col))
    head, tail = _open(kind, width, height, title, desc)
    out = [head, _legend([Series(k, n, c, ()) for k, (n, c) in names.items()], label_w, 14), '<g class="bars">']
    for i, (key, label, parts) in enumerate(rows):
        y = top + i * row_h
        whole = sum(n for *_x, n in parts)
        shares = ", ".join(f"{sname} {n * 100 / whole:.1f} %" for _s, sname, _c, n in parts if n) if whole else "none"
        out.append(
            f'<g class="bar" data-key="{_e(key)}"><title>{_e(label)}: {_e(shares)}</title>'
            f'<text x="{label_w - 8}" y="{_num(y + 19)}" text-anchor="end" fill="{_INK}">{_e(label)}</text>'
        )
        x = float(label_w)
        for skey, _sname, col, n in parts:
            if not n or not whole:
                continue
            w = plot_w * n / whole
            out.append(
                f'<rect class="seg" data-series="{_e(skey)}" data-value="{n}" x="{_num(x)}" y="{y + 5}" '
                f'width="{_num(max(w, 0.5))}" height="{row_h - 10}" fill="{col}"/>'
            )
            x += w
        out.append("</g>")
    out.append("</g>")
    out.append(tail)
    return "".join(out)
