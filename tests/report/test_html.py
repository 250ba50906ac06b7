"""The pages' HTML and SVG: escaping, contrast, chart structure."""

from __future__ import annotations

import re

from apimon_cli.report import svg
from apimon_cli.report.page import CSS, Html, page


def contrast(hex_colour: str, background: str = "#ffffff") -> float:
    def lum(h: str) -> float:
        rgb = [int(h[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    a, b = sorted((lum(hex_colour), lum(background)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def test_every_colour_has_aa_contrast_on_white():
    colours = set(svg.PALETTE) | {svg.SUCCESS, svg.BLOCKED, svg.OTHER}
    colours |= {c for c in re.findall(r"(?<![\w-])color:\s*(#[0-9a-f]{6})", CSS)}
    assert len(colours) > 10
    low = {c: round(contrast(c), 2) for c in colours if contrast(c) < 4.5}
    assert not low, low
    assert contrast("#1f2937") > 14 and contrast("#4b5563") > 7  # body and muted text


def test_text_is_escaped_and_masked_everywhere():
    h = Html(lambda s: s.replace("hunter2-secret", "***"))
    table = h.table("<caption>", ["<h>"], [["<b>x</b> & hunter2-secret"]])
    assert "&lt;b&gt;x&lt;/b&gt; &amp; ***" in table and "<b>" not in table
    chart = svg.hbars("k", [("<k>", '<img src=x onerror="1">', 3, "3 & more")], title="<t>", desc="d")
    assert "<img" not in chart and "&lt;img src=x onerror=&quot;1&quot;&gt;" in chart
    doc = page("t", "<p>hunter2-secret</p>", h=h)
    assert "hunter2-secret" not in doc  # the whole page is masked once more


def test_stacked_bars_have_one_group_per_key_and_a_segment_per_nonzero_value():
    chart = svg.stacked_bars("c", ["d1", "d2", "d3"], ["1", "2", "3"],
                             [svg.Series("a", "A", "#000000", [1, 0, 2]), svg.Series("b", "B", "#111111", [0, 0, 5])],
                             title="t", desc="d")
    assert chart.count('<g class="bar"') == 3
    assert re.findall(r'data-series="(\w)" data-value="(\d+)"', chart) == [("a", "1"), ("a", "2"), ("b", "5")]
    assert 'role="img"' in chart and "<title id=" in chart and "<desc id=" in chart
    assert svg.nice_max(7) == 10 and svg.nice_max(1_234) == 2_000 and svg.nice_max(0) == 1
