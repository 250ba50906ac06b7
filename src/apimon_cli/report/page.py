"""HTML building blocks shared by the report and the portal: one page with its stylesheet inline, tables
with header semantics, every text escaped (and masked: values that came from the environment never appear).

No JavaScript, no external fonts, images or stylesheets: a page reads the same offline, printed, or on a
phone (tables and charts scroll inside their own box; the page never scrolls sideways).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from html import escape

Mask = Callable[[str], str]

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2937;
  background: #ffffff; }
header, main, footer { max-width: 1100px; margin: 0 auto; padding: 0 16px; }
header { padding-top: 24px; }
h1 { font-size: 1.75rem; line-height: 1.2; margin: 0 0 8px; }
h2 { font-size: 1.35rem; margin: 32px 0 8px; padding-top: 8px; border-top: 1px solid #d1d5db; }
h3 { font-size: 1.1rem; margin: 20px 0 6px; }
p { margin: 6px 0; }
.muted { color: #4b5563; }
a { color: #1d4ed8; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 12px; margin: 12px 0;
  padding: 0; }
.card { border: 1px solid #d1d5db; border-radius: 6px; padding: 10px 12px; margin: 0; }
.card dt { color: #4b5563; font-size: .9rem; }
.card dd { margin: 2px 0 0; font-size: 1.3rem; font-weight: 600; font-variant-numeric: tabular-nums; }
.card dd small { display: block; font-size: .85rem; font-weight: 400; color: #4b5563; }
.scroll { overflow-x: auto; max-width: 100%; }
.chart svg { display: block; width: 100%; height: auto; min-width: 560px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-variant-numeric: tabular-nums; min-width: 100%; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border-bottom: 1px solid #e5e7eb; padding: 5px 10px; text-align: left; vertical-align: top;
  white-space: nowrap; }
thead th { border-bottom: 2px solid #9ca3af; background: #f3f4f6; }
td.num, th.num { text-align: right; white-space: nowrap; }
tfoot td, tfoot th { font-weight: 700; border-top: 2px solid #9ca3af; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 16px; }
.neg { color: #b91c1c; }
.pos { color: #15803d; }
.status { font-weight: 600; }
.note { font-size: .9rem; color: #4b5563; }
details { margin: 4px 0 12px; }
summary { cursor: pointer; color: #1d4ed8; }
footer { margin-top: 32px; padding-bottom: 32px; font-size: .9rem; color: #4b5563; }
@media (max-width: 600px) {
  body { font-size: 15px; }
  h1 { font-size: 1.4rem; }
  th, td { padding: 4px 6px; }
}
@media print {
  body { font-size: 11pt; }
  .scroll { overflow: visible; }
  .chart svg { min-width: 0; }
  table, svg, .card { break-inside: avoid; }
  h2 { break-after: avoid; }
  a { color: inherit; text-decoration: none; }
}
@page { margin: 14mm; }
"""


class Html:
    """Text helpers bound to a masker: ``h.t(value)`` is escaped, masked text."""

    def __init__(self, mask: Mask | None = None):
        self._mask = mask or (lambda s: s)

    def mask(self, value: object) -> str:
        """Masked, not escaped: for text handed to the SVG builders (which escape it)."""
        return self._mask(str(value))

    def t(self, value: object) -> str:
        return escape(self._mask(str(value)), quote=True)

    def table(
        self,
        caption: str,
        headers: Sequence[str],
        rows: Iterable[Sequence[object]],
        *,
        numeric: Iterable[int] = (),
        row_header: bool = True,
        foot: Sequence[object] | None = None,
        attrs: str = "",
        row_attrs: Callable[[Sequence[object]], str] | None = None,
        raw: Iterable[int] = (),
    ) -> str:
        """A table with a caption, ``<th scope=col>`` headers and (``row_header``) the first cell of each row
        as ``<th scope=row>``. Columns in ``numeric`` align right; cells of columns in ``raw`` are already HTML."""
        num = set(numeric)
        raw_cols = set(raw)

        def cell(i: int, value: object, tag: str = "td") -> str:
            cls = ' class="num"' if i in num else ""
            text = value if i in raw_cols else self.t("" if value is None else value)
            if tag == "th" or (row_header and i == 0 and tag == "td"):
                return f'<th scope="row"{cls}>{text}</th>'
            return f"<td{cls}>{text}</td>"

        out = [f'<div class="scroll"><table{attrs}><caption>{self.t(caption)}</caption><thead><tr>']
        out.extend(
            f'<th scope="col"{" class=" + chr(34) + "num" + chr(34) if i in num else ""}>{self.t(h)}</th>'
            for i, h in enumerate(headers)
        )
        out.append("</tr></thead><tbody>")
        empty = True
        for row in rows:
            empty = False
            extra = row_attrs(row) if row_attrs else ""
            out.append(f"<tr{extra}>" + "".join(cell(i, v) for i, v in enumerate(row)) + "</tr>")
        if empty:
            out.append(f'<tr><td colspan="{len(headers)}" class="muted">none</td></tr>')
        out.append("</tbody>")
        if foot is not None:
            out.append("<tfoot><tr>" + "".join(cell(i, v) for i, v in enumerate(foot)) + "</tr></tfoot>")
        out.append("</table></div>")
        return "".join(out)


def page(title: str, body: str, *, h: Html, lang: str = "en", noindex: bool = False, description: str = "",
         css: str = "") -> str:
    """A complete HTML document: ``body`` is HTML, ``title`` text."""
    meta = '<meta name="robots" content="noindex, nofollow">' if noindex else ""
    if description:
        meta += f'<meta name="description" content="{h.t(description)}">'
    doc = (
        f'<!DOCTYPE html>\n<html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # belt and braces: the page loads nothing, and says so to the browser
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
        "img-src data:\">"
        f"{meta}<title>{h.t(title)}</title><style>{CSS}{css}</style></head><body>{body}</body></html>\n"
    )
    return h.mask(doc)  # and once more over the whole page: nothing from the environment gets through
