"""Terminal sparklines: one character per value, eight levels (U+2581..U+2588), a space for zero."""

from __future__ import annotations

from collections.abc import Sequence

BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[int]) -> str:
    """Each value scaled to the row's own maximum; any value above zero shows at least the lowest block."""
    top = max(values, default=0)
    if top <= 0:
        return " " * len(values)
    out = []
    for v in values:
        if v <= 0:
            out.append(" ")
        else:
            out.append(BLOCKS[min(len(BLOCKS) - 1, (v * len(BLOCKS) - 1) // top)])
    return "".join(out)
