"""The invoice and usage tables, sized to the terminal: CI logs render at 80 columns, so a table is laid out
wide only when it fits, and compact otherwise. No identifier or number is ever broken: invoice ids,
subscribers, products, line types and amounts never wrap; only descriptions fold (at spaces), and in the
compact invoice layout the invoice and product move onto a line of their own. The usage table's
calls-per-day sparklines move below the counts when both do not fit side by side.

The width is the console's (``COLUMNS`` or the terminal; 80 when output is not a terminal)."""

from __future__ import annotations

from decimal import Decimal

from .output import Output

#: a description column narrower than this reads badly: the wide invoice layout needs at least this much
MIN_DESCRIPTION = 24


def _fits(out: Output, table) -> bool:
    from rich.measure import Measurement

    width = out.out.width
    # measured without the console's limit (a measurement is clamped to the width it is given)
    return Measurement.get(out.out, out.out.options.update(width=10_000, max_width=10_000), table).minimum <= width


class _Whole:
    """A cell that is never wrapped, measured at its full width. rich measures text by its longest word, also
    in a ``no_wrap`` column, so a sparkline with idle days (spaces) looked narrow: the table "fitted" at 80
    columns and was then cut short (headers and sparklines ending in an ellipsis)."""

    def __init__(self, text: str) -> None:
        from rich.text import Text

        self.text = Text(text, no_wrap=True)

    def __rich_console__(self, console, options):
        yield self.text

    def __rich_measure__(self, console, options):
        from rich.measure import Measurement

        return Measurement(self.text.cell_len, self.text.cell_len)


def _quantity(q) -> str:
    return "" if q is None else f"{q:,}"


def _unit(p) -> str:
    return "" if p is None else str(p)


def invoice_table(out: Output, invoices, window):
    """The wide table (invoice, product, line, description, quantity, unit price, amount) when it fits,
    else the compact one: each invoice headed by a row "INVOICE  product PRODUCT", then its lines."""
    from rich import box
    from rich.table import Table

    currency = invoices[0].currency if invoices else ""
    title = f"Invoices {window.label} ({window.start} .. {window.end}), amounts in {currency}"
    total = Decimal(0)
    for inv in invoices:
        total += inv.total

    wide = Table(title=title)
    for col in ("invoice", "product", "line"):
        wide.add_column(col, no_wrap=True)
    wide.add_column("description", overflow="fold", min_width=MIN_DESCRIPTION, ratio=1)
    for col in ("quantity", "unit price", "amount"):
        wide.add_column(col, justify="right", no_wrap=True)
    for inv in invoices:
        for i, line in enumerate(inv.lines):
            wide.add_row(inv.invoice_id if i == 0 else "", inv.product if i == 0 else "", line.line_type,
                         out.mask(line.description), _quantity(line.quantity), _unit(line.unit_price),
                         f"{line.amount:,}")
        wide.add_row("", "", "", "invoice total", "", "", f"{inv.total:,}", style="bold")
        wide.add_section()
    wide.add_row("TOTAL", f"{len(invoices)} invoices", "", "", "", "", f"{total:,} {currency}", style="bold green")
    if _fits(out, wide):
        return wide

    compact = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False)
    compact.add_column("invoice / line", no_wrap=True)
    compact.add_column("description", overflow="fold", ratio=1)
    for col in ("quantity", "unit price", "amount"):
        compact.add_column(col, justify="right", no_wrap=True)
    for inv in invoices:
        # the invoice id heads its lines in the first column (never wrapped), the product beside it
        compact.add_row(inv.invoice_id, f"product {inv.product}", "", "", "", style="bold")
        for line in inv.lines:
            compact.add_row(f"  {line.line_type}", out.mask(line.description), _quantity(line.quantity),
                            _unit(line.unit_price), f"{line.amount:,}")
        compact.add_row("", "invoice total", "", "", f"{inv.total:,}", style="bold")
        compact.add_section()
    compact.add_row("TOTAL", f"{len(invoices)} invoices", "", "", f"{total:,} {currency}", style="bold green")
    return compact


def usage_tables(out: Output, title: str, by: str, metrics, rows, spark: dict | None, days: int,
                 sparkline) -> list:
    """The counts with a calls-per-day column when it fits; else the counts, then the sparklines in a
    table of their own below (one line per key). ``rows``: (key, counts) with the total row last."""
    from rich import box
    from rich.table import Table

    def counts_table(with_spark: bool, **style) -> Table:
        table = Table(title=title, **style)
        table.add_column(by, no_wrap=True)
        for m in metrics:
            table.add_column(m, justify="right", no_wrap=True)
        if with_spark:
            table.add_column("calls per day", no_wrap=True)
        for key, counts, is_total in rows:
            cells = [f"{counts.get(m, 0):,}" for m in metrics]
            if with_spark:
                cells.append("" if is_total else _Whole(sparkline(spark.get(key, [0] * days))))
            if is_total:
                table.add_section()
                table.add_row("total", *cells, style="bold")
            else:
                table.add_row(out.mask(str(key)), *cells)
        return table

    if spark is None:
        table = counts_table(False)
        return [table if _fits(out, table) else counts_table(False, box=box.SIMPLE_HEAD, show_edge=False)]
    wide = counts_table(True)
    if _fits(out, wide):
        return [wide]
    counts = counts_table(False)
    if not _fits(out, counts):
        counts = counts_table(False, box=box.SIMPLE_HEAD, show_edge=False)
    daily = Table(title=f"Calls per day ({days} days), by {by}")
    daily.add_column(by, no_wrap=True)
    daily.add_column("calls per day", no_wrap=True)
    for key, _counts, is_total in rows:
        if not is_total:
            daily.add_row(out.mask(str(key)), _Whole(sparkline(spark.get(key, [0] * days))))
    return [counts, daily]
