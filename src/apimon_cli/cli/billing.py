"""`apimon usage pull|show|export` and `apimon invoice`: gateway usage -> ledger -> money."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from typing import Annotated, Optional

import typer

from .common import fail, ledger_path, load_plan, make_output, open_ledger, parse_day

usage_app = typer.Typer(
    help="Usage: pull from the gateway into the ledger, show, export.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

LedgerOpt = Annotated[
    Optional[str],
    typer.Option(
        "--ledger", help="Ledger file (default: .apimon/ledger.db beside the plan; or APIMON_LEDGER)."
    ),
]
MAX_DETAIL_LINES = 50


@contextmanager
def _writer(out, path: str | None) -> Iterator:
    """The --out file (written atomically: a killed export leaves no half file) or stdout."""
    if not path:
        yield sys.stdout
        sys.stdout.flush()
        return
    import os
    import tempfile

    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".apimon-", dir=directory)
    except OSError as exc:
        fail(out, f"error: cannot write {path}: {exc.strerror or exc}")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@usage_app.command("pull")
def usage_pull(
    plans: Annotated[list[str], typer.Argument(help="Plan file(s) naming the target.")],
    from_: Annotated[str, typer.Option("--from", help="First day (YYYY-MM-DD, UTC).")],
    to: Annotated[str, typer.Option("--to", help="Last day, inclusive (YYYY-MM-DD, UTC).")],
    ledger: LedgerOpt = None,
) -> None:
    """Pull usage for [--from, --to] into the ledger; pulling again replaces, never adds."""
    from ..events.publish import EVERY_ROW, publish_pulled
    from ..ledger.store import LedgerError
    from ..providers import ProviderError, get_provider

    out = make_output()
    start, end = parse_day(out, from_, "--from"), parse_day(out, to, "--to")
    if end < start:
        fail(out, f"error: --to ({end}) is before --from ({start})")
    loaded = load_plan(out, plans)
    path = ledger_path(ledger, plans)
    with open_ledger(out, path) as book:
        try:
            with get_provider(loaded.desired) as provider:
                rows = _counting(out, provider.pull_usage(start, end))
                every = {"detail_limit": EVERY_ROW} if loaded.desired.events is not None else {}
                report = book.replace_window(provider.name, provider.target_id, start, end, rows, **every)
                warnings = list(getattr(provider, "usage_warnings", []))
        except ProviderError as exc:
            fail(out, f"error: {exc}; the ledger was not changed")
        except LedgerError as exc:
            fail(out, f"error: {exc}; the ledger was not changed")
        except ValueError as exc:
            fail(out, f"error: the gateway reported unusable usage: {exc}; the ledger was not changed")
    for w in warnings:
        out.warning(f"warning: {w}")
    _render_pull(out, report, path)
    publish_pulled(out, loaded.desired, report)


def _counting(out, rows):
    """Pass rows through, with a live row counter on a terminal."""
    if not out.err.is_terminal:
        yield from rows
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("Pulling usage: {task.completed:,} rows"),
        TimeElapsedColumn(),
        console=out.err,
        transient=True,
    ) as bar:
        task = bar.add_task("pull", total=None)
        for n, row in enumerate(rows, 1):
            yield row
            if n % 500 == 0:
                bar.update(task, completed=n)


def _render_pull(out, report, path) -> None:
    out.print(f"Pulled {report.provider} usage {report.start} .. {report.end} into {path}:")
    out.print(
        f"  {report.new_count} new, {report.revised_count} revised, {report.removed_count} removed, "
        f"{report.unchanged} unchanged"
    )
    for c in report.new[:MAX_DETAIL_LINES]:
        out.print(f"  + {c.day} {c.subscriber} {c.product} {c.metric}: {c.count}", style="green")
    for r in report.revised[:MAX_DETAIL_LINES]:
        out.print(f"  ~ {r.day} {r.subscriber} {r.product} {r.metric}: {r.old} -> {r.new}", style="yellow")
    for c in report.removed[:MAX_DETAIL_LINES]:
        out.print(f"  - {c.day} {c.subscriber} {c.product} {c.metric}: {c.count} -> 0", style="red")
    shown = (
        min(len(report.new), MAX_DETAIL_LINES)
        + min(len(report.revised), MAX_DETAIL_LINES)
        + min(len(report.removed), MAX_DETAIL_LINES)
    )
    total = report.new_count + report.revised_count + report.removed_count
    if total > shown:
        out.print(f"  ... and {total - shown} more changed rows (see `apimon usage show`)")


def _period_window(out, period: str | None, kind: str):
    from ..billing.periods import parse_period, window_of

    if period is None:
        return window_of(date.today(), kind)
    try:
        return parse_period(period, kind)
    except ValueError as exc:
        fail(out, f"error: --period: {exc}")


def _provider_and_target(out, desired) -> tuple[str, str]:
    from ..events.publish import usage_source
    from ..providers import ProviderError, get_provider

    try:
        with get_provider(desired) as provider:
            return usage_source(desired, provider.name, provider.target_id)
    except ProviderError as exc:
        fail(out, f"error: {exc}")


@usage_app.command("show")
def usage_show(
    plans: Annotated[list[str], typer.Argument(help="Plan file(s) naming the target.")],
    period: Annotated[
        Optional[str],
        typer.Option(help="2026-11 (or 2026-W48 with weekly billing); default: the current period."),
    ] = None,
    by: Annotated[str, typer.Option(help="subscriber | product | day")] = "subscriber",
    ledger: LedgerOpt = None,
) -> None:
    """A table of the ledger's counts for a period."""
    from rich.table import Table

    out = make_output()
    if by not in ("subscriber", "product", "day"):
        fail(out, f"error: --by must be subscriber, product or day; got {by!r}")
    loaded = load_plan(out, plans)
    window = _period_window(out, period, loaded.desired.billing.period)
    provider, target = _provider_and_target(out, loaded.desired)
    from ..events.publish import unused_pull_note

    with open_ledger(out, ledger_path(ledger, plans), must_exist=True) as book:
        rows = book.summary(window.start, window.end, by=by, provider=provider, target=target)
        spark = None
        if by != "day":  # calls per day of the period, one character a day
            from ..report.usage import daily_series

            spark = daily_series(book.iter_rows(window.start, window.end, provider, target), window.start, window.end,
                                 by)
        note = unused_pull_note(book, provider, target, window.start, window.end)
    if note:
        out.warning(note)
    from ..model import METRICS
    from ..render.sparkline import sparkline

    table = Table(title=f"Usage {window.label} ({window.start} .. {window.end}), by {by}")
    table.add_column(by)
    for m in METRICS:
        table.add_column(m, justify="right")
    if spark is not None:
        table.add_column("calls per day", no_wrap=True)
    days = (window.end - window.start).days + 1
    sums = dict.fromkeys(METRICS, 0)
    for key, counts in rows:
        cells = [f"{counts.get(m, 0):,}" for m in METRICS]
        if spark is not None:
            cells.append(sparkline(spark.get(key, [0] * days)))
        table.add_row(out.mask(str(key)), *cells)
        for m in METRICS:
            sums[m] += counts.get(m, 0)
    table.add_section()
    table.add_row("total", *(f"{sums[m]:,}" for m in METRICS), style="bold")
    out.rich(table)


@usage_app.command("export")
def usage_export(
    from_: Annotated[Optional[str], typer.Option("--from", help="First day (YYYY-MM-DD).")] = None,
    to: Annotated[Optional[str], typer.Option("--to", help="Last day, inclusive.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv | jsonl | parquet")] = "csv",
    out_file: Annotated[
        Optional[str],
        typer.Option("--out", help="File to write (default: stdout); with --format parquet, a directory."),
    ] = None,
    plan: Annotated[Optional[str], typer.Option("--plan", help="Locate the ledger beside this plan.")] = None,
    ledger: LedgerOpt = None,
) -> None:
    """Stream the ledger's rows as CSV, JSON Lines or a Parquet dataset (constant memory)."""
    from ..export.writers import (
        USAGE_COLUMNS,
        USAGE_NUMERIC_COLUMNS,
        usage_mappings,
        usage_records,
        write_csv,
        write_jsonl,
    )

    out = make_output()
    if fmt not in ("csv", "jsonl", "parquet"):
        fail(out, f"error: --format must be csv, jsonl or parquet; got {fmt!r}")
    start = parse_day(out, from_, "--from") if from_ else None
    end = parse_day(out, to, "--to") if to else None
    path = ledger_path(ledger, [plan] if plan else None)
    if fmt == "parquet":
        _export_parquet(out, path, start, end, out_file)
        return
    with open_ledger(out, path, must_exist=True) as book, _writer(out, out_file) as fh:
        rows = book.iter_rows(start, end)
        if fmt == "csv":
            n = write_csv(usage_records(rows), USAGE_COLUMNS, fh, USAGE_NUMERIC_COLUMNS)
        else:
            n = write_jsonl(usage_mappings(rows), fh)
    if out_file:
        out.info(f"Wrote {n:,} usage rows to {out_file}.")


def _export_parquet(out, path, start, end, out_dir: str | None) -> None:
    """A Hive-partitioned Parquet dataset (export/parquet.py): needs --out DIR and pyarrow."""
    if not out_dir:
        fail(out, "error: --format parquet writes a directory: give --out DIR")
    from ..export.parquet import ParquetExportError, write_dataset

    with open_ledger(out, path, must_exist=True) as book:
        try:
            n = write_dataset(book.iter_rows(start, end), out_dir)
        except ParquetExportError as exc:
            fail(out, f"error: {exc}")
    out.info(f"Wrote {n:,} usage rows to {out_dir} (Parquet, partitioned by day).")


# ---------------------------------------------------------------- invoices

INVOICE_COLUMNS = (
    "invoice_id",
    "period_start",
    "period_end",
    "subscriber",
    "product",
    "line_type",
    "description",
    "quantity",
    "unit_price",
    "amount",
    "currency",
)
INVOICE_NUMERIC = frozenset({"quantity", "unit_price", "amount"})


def invoices_for(desired, window, book, provider: str, target: str):
    """The ledger's usage for the window, priced by the plan (also what benchmarks/billing.py times)."""
    from datetime import timedelta

    from ..billing.invoice import build_invoices

    usage = book.totals(window.start, window.end, desired.billing.metric, provider, target)
    if desired.billing.metric == "total":
        # `total` is every call the gateway saw, but calls it blocked (throttled, over quota, bad key) are
        # never billed (README, Usage, ledger and invoices): bill total - blocked
        blocked = book.totals(window.start, window.end, "blocked", provider, target)
        usage = {k: max(0, n - blocked.get(k, 0)) for k, n in usage.items()}
    # the setup fee only needs "was the first usage in this window?": no scan of all history
    earlier = book.seen_before(window.start, provider, target)
    first = {sid: window.start for (sid, _pid), n in usage.items() if n > 0 and sid not in earlier}
    first.update(dict.fromkeys(earlier, window.start - timedelta(days=1)))
    return build_invoices(desired, usage, window, first)


def invoice(
    plans: Annotated[list[str], typer.Argument(help="Plan file(s): products' pricing and subscribers.")],
    period: Annotated[str, typer.Option(help="2026-11 (monthly billing) or 2026-W48 (weekly).")],
    fmt: Annotated[str, typer.Option("--format", help="table | csv | jsonl")] = "table",
    out_file: Annotated[Optional[str], typer.Option("--out", help="File to write (default: stdout).")] = None,
    with_metadata: Annotated[
        Optional[list[str]],
        typer.Option("--with-metadata", help="Add a column with this subscriber metadata key (repeatable)."),
    ] = None,
    compare: Annotated[
        Optional[str],
        typer.Option(
            "--compare", help="Another plan file: what the same usage would cost under its pricing."
        ),
    ] = None,
    ledger: LedgerOpt = None,
) -> None:
    """Invoices for a period: the ledger's usage priced by the plan; one invoice per subscriber."""
    from ..billing.invoice import compare_invoices

    out = make_output()
    if fmt not in ("table", "csv", "jsonl"):
        fail(out, f"error: --format must be table, csv or jsonl; got {fmt!r}")
    loaded = load_plan(out, plans)
    desired = loaded.desired
    window = _period_window(out, period, desired.billing.period)
    provider, target = _provider_and_target(out, desired)
    from ..events.publish import unused_pull_note

    with open_ledger(out, ledger_path(ledger, plans), must_exist=True) as book:
        invoices = invoices_for(desired, window, book, provider, target)
        if note := unused_pull_note(book, provider, target, window.start, window.end):
            out.warning(note)
        if compare:
            other = load_plan(out, [compare]).desired
            if other.billing.currency != desired.billing.currency:
                fail(
                    out,
                    f"error: --compare: {compare} bills in {other.billing.currency}, the plan in "
                    f"{desired.billing.currency}; compare plans of one currency",
                )
            other_invoices = invoices_for(other, window, book, provider, target)
    if compare:
        try:
            rows = compare_invoices(invoices, other_invoices)
        except ValueError as exc:
            fail(out, f"error: --compare: {exc}")
        _render_comparison(out, rows, fmt, out_file, window, compare)
        return
    metadata_keys = list(with_metadata or [])
    if fmt == "table":
        _render_invoice_table(out, invoices, window)
        if out_file:
            out.info("note: --out writes csv or jsonl; add --format csv")
        return
    with _writer(out, out_file) as fh:
        n = _write_invoices(invoices, fmt, fh, metadata_keys)
    if out_file:
        out.info(f"Wrote {len(invoices)} invoices ({n} lines) to {out_file}.")


def _invoice_rows(invoices, metadata_keys):
    for inv in invoices:
        meta = [inv.metadata.get(k, "") for k in metadata_keys]
        for line in inv.lines:
            yield [
                inv.invoice_id,
                inv.period_start.isoformat(),
                inv.period_end.isoformat(),
                inv.subscriber,
                inv.product,
                line.line_type,
                line.description,
                line.quantity,
                line.unit_price,
                line.amount,
                line.currency,
                *meta,
            ]


def _write_invoices(invoices, fmt: str, fh, metadata_keys: list[str]) -> int:
    from ..export.writers import write_csv, write_jsonl

    # one column per metadata key, named by the key (prefixed only where it would clash with a standard column)
    columns = list(INVOICE_COLUMNS) + [f"metadata.{k}" if k in INVOICE_COLUMNS else k for k in metadata_keys]
    rows = _invoice_rows(invoices, metadata_keys)
    if fmt == "csv":
        return write_csv(rows, columns, fh, set(INVOICE_NUMERIC))
    return write_jsonl((dict(zip(columns, r, strict=True)) for r in rows), fh)


def _money(amount, currency: str) -> str:
    return f"{amount:,} {currency}"


def _render_invoice_table(out, invoices, window) -> None:
    from decimal import Decimal

    from rich.table import Table

    currency = invoices[0].currency if invoices else ""
    table = Table(title=f"Invoices {window.label} ({window.start} .. {window.end}), amounts in {currency}")
    for col, justify in (("invoice", "left"), ("product", "left"), ("line", "left"), ("description", "left"),
                         ("quantity", "right"), ("unit price", "right"), ("amount", "right")):
        table.add_column(col, justify=justify, overflow="fold")
    total = Decimal(0)
    for inv in invoices:
        for i, line in enumerate(inv.lines):
            table.add_row(inv.invoice_id if i == 0 else "", inv.product if i == 0 else "", line.line_type,
                          out.mask(line.description), "" if line.quantity is None else f"{line.quantity:,}",
                          "" if line.unit_price is None else str(line.unit_price), f"{line.amount:,}")
        table.add_row("", "", "", "invoice total", "", "", f"{inv.total:,}", style="bold")
        table.add_section()
        total += inv.total
    table.add_row("TOTAL", f"{len(invoices)} invoices", "", "", "", "", f"{total:,} {currency}",
                  style="bold green")
    out.rich(table)


def _render_comparison(out, rows, fmt: str, out_file: str | None, window, other: str) -> None:
    from ..export.writers import write_csv, write_jsonl

    columns = ["subscriber", "current_total", "compared_total", "difference", "currency"]
    records = [[r.subscriber, r.old_total, r.new_total, r.difference, r.currency] for r in rows]
    sums: dict[str, list] = {}
    for r in rows:
        s = sums.setdefault(r.currency, [0, 0, 0])
        s[0] += r.old_total
        s[1] += r.new_total
        s[2] += r.difference
    if fmt == "table":
        from rich.table import Table

        table = Table(title=f"Revenue impact {window.label}: current plan vs {other}")
        for c in ("subscriber", "current", "compared", "difference"):
            table.add_column(c, justify="left" if c == "subscriber" else "right")
        for r in rows:
            style = "red" if r.difference < 0 else ("green" if r.difference > 0 else None)
            table.add_row(
                r.subscriber,
                _money(r.old_total, r.currency),
                _money(r.new_total, r.currency),
                f"{r.difference:+,} {r.currency}",
                style=style,
            )
        table.add_section()
        for currency, (a, b, d) in sorted(sums.items()):
            table.add_row(
                "TOTAL", _money(a, currency), _money(b, currency), f"{d:+,} {currency}", style="bold"
            )
        out.rich(table)
        return
    with _writer(out, out_file) as fh:
        if fmt == "csv":
            write_csv(records, columns, fh, {"current_total", "compared_total", "difference"})
        else:
            write_jsonl((dict(zip(columns, r, strict=True)) for r in records), fh)
