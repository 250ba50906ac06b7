"""`apimon usage pull|show|export` and `apimon invoice`: gateway usage -> ledger -> money."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import date
from typing import Annotated, Literal, Optional

import typer

from .common import JsonOpt, fail, ledger_path, load_plan, make_output, open_ledger, out_stream, parse_day

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


def _writer(out, path: str | None):
    """The --out file (atomic, owner-only: a killed or disk-full export leaves the previous file) or stdout."""
    return out_stream(out, path, newline="")


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
    with _new_ledger_removed_on_failure(path), open_ledger(out, path) as book:
        try:
            with get_provider(loaded.desired) as provider:
                # the gateway's own record of earlier usage, on a ledger that knows nothing of this target yet
                # (read before the pull's write transaction: it may be network calls)
                # rows go under the gateway's own name for the target (AWS: the account id); the plan's
                # offline name maps to it, and rows stored under that name before are moved to it
                target = provider.ledger_target()
                book.learn_target(provider.name, provider.target_id, target)
                history = [] if book.knows(provider.name, target) else list(provider.usage_history(start))
                rows = _counting(out, provider.pull_usage(start, end))
                every = {"detail_limit": EVERY_ROW} if loaded.desired.events is not None else {}
                report = book.replace_window(provider.name, target, start, end, rows, history=history, **every)
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


@contextmanager
def _new_ledger_removed_on_failure(path) -> Iterator[None]:
    """A pull that fails (gateway error, bad rows, Ctrl-C) leaves no new ledger file behind: an empty ledger
    would later read as "no usage" (issue 11). An existing ledger is left to its transaction (unchanged)."""
    from pathlib import Path

    from ..ledger.pg import is_database_url

    if is_database_url(path):  # a PostgreSQL ledger: the pull's transaction is all there is to undo
        yield
        return
    path = Path(path)
    if path.exists() or path.is_symlink():
        yield
        return
    made = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    try:
        yield
    except BaseException:
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(f"{path}{suffix}")
            except OSError:
                pass
        for d in made:  # innermost first; only the directories this pull created, and only if empty
            try:
                d.rmdir()
            except OSError:
                break
        raise


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
    by: Annotated[Literal["subscriber", "product", "day"],
                  typer.Option(help="One row per subscriber, product or day.")] = "subscriber",
    ledger: LedgerOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A table of the ledger's counts for a period."""

    out = make_output(json_mode=json_out)
    if by not in ("subscriber", "product", "day"):
        fail(out, f"error: --by must be subscriber, product or day; got {by!r}")
    loaded = load_plan(out, plans)
    window = _period_window(out, period, loaded.desired.billing.period)
    provider, target = _provider_and_target(out, loaded.desired)
    from ..events.publish import unused_pull_note

    with open_ledger(out, ledger_path(ledger, plans), must_exist=True) as book:
        target = book.resolve_target(provider, target)
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

    if json_out:
        days_n = (window.end - window.start).days + 1
        records = [{by: str(key), **{m: counts.get(m, 0) for m in METRICS},
                    **({"calls_per_day": list(spark.get(key, [0] * days_n))} if spark is not None else {})}
                   for key, counts in rows]
        out.json({"period": window.label, "start": window.start.isoformat(), "end": window.end.isoformat(),
                  "by": by, "rows": records,
                  "total": {m: sum(counts.get(m, 0) for _k, counts in rows) for m in METRICS}})
        return

    from ..render.tables import usage_tables

    days = (window.end - window.start).days + 1
    sums = dict.fromkeys(METRICS, 0)
    for _key, counts in rows:
        for m in METRICS:
            sums[m] += counts.get(m, 0)
    lines = [(key, counts, False) for key, counts in rows] + [("total", sums, True)]
    for table in usage_tables(out, f"Usage {window.label} ({window.start} .. {window.end}), by {by}", by, METRICS,
                              lines, spark, days, sparkline):
        out.rich(table)


@usage_app.command("export")
def usage_export(
    plans: Annotated[Optional[list[str]], typer.Argument(
        help="Plan file: the ledger is the one beside it (like every command; --plan works too).",
        show_default=False)] = None,
    from_: Annotated[Optional[str], typer.Option("--from", help="First day (YYYY-MM-DD).")] = None,
    to: Annotated[Optional[str], typer.Option("--to", help="Last day, inclusive.")] = None,
    fmt: Annotated[Literal["csv", "jsonl", "parquet"], typer.Option(
        "--format", help="CSV, JSON Lines or Parquet (a Hive-partitioned directory).")] = "csv",
    out_file: Annotated[
        Optional[str],
        typer.Option("--out", help="File to write (default: stdout); with --format parquet, a directory."),
    ] = None,
    plan: Annotated[Optional[str], typer.Option("--plan", help="The same as the PLAN argument.")] = None,
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
    if plan and plans and plan not in plans:
        fail(out, f"error: the plan is given twice ({plans[0]} and --plan {plan}); give one")
    plan_files = plans or ([plan] if plan else None)
    path = ledger_path(ledger, plan_files)
    if plan_files:  # the plan's values from the environment (an Azure subscription id in the target) are masked
        from ..planfile.loader import load_plans

        out.mask.add(*load_plans(list(plan_files)).secrets)
    if fmt == "parquet":
        _export_parquet(out, path, start, end, out_file)
        return
    with open_ledger(out, path, must_exist=True) as book, _writer(out, out_file) as fh, \
            closing(book.iter_rows(start, end)) as raw:  # the rows end before the ledger closes, error or not
        rows = _masked_targets(raw, out.mask)
        if fmt == "csv":
            n = write_csv(usage_records(rows), USAGE_COLUMNS, fh, USAGE_NUMERIC_COLUMNS)
        else:
            n = write_jsonl(usage_mappings(rows), fh)
    if out_file:
        out.info(f"Wrote {n:,} usage rows to {out_file}.")


def _masked_targets(rows, mask):
    """Ledger rows with the target masked (one masking per distinct target: exports stream millions of rows).
    The other columns hold ids, days and counts, never a value from the environment."""
    if not mask.secrets:
        yield from rows
        return
    seen: dict[str, str] = {}
    for row in rows:
        target = seen.get(row.target)
        if target is None:
            target = seen[row.target] = mask(row.target)
        yield row if target == row.target else row._replace(target=target)


def _export_parquet(out, path, start, end, out_dir: str | None) -> None:
    """A Hive-partitioned Parquet dataset (export/parquet.py): needs --out DIR and pyarrow."""
    if not out_dir:
        fail(out, "error: --format parquet writes a directory: give --out DIR")
    from ..export.parquet import ParquetExportError, write_dataset

    with open_ledger(out, path, must_exist=True) as book:
        try:
            with closing(book.iter_rows(start, end)) as raw:
                n = write_dataset(_masked_targets(raw, out.mask), out_dir)
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
    gone = {sid for (sid, _pid), n in usage.items() if n > 0 and sid not in desired.subscribers}
    recorded = book.latest_products(window.start, window.end, gone, provider, target) if gone else {}
    return build_invoices(desired, usage, window, first, recorded)


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


USAGE_PRICED_MODELS = frozenset({"per_unit", "package", "graduated", "volume", "stairstep"})


def check_usage_present(out, desired, window, book, provider: str, target: str, allow: bool) -> None:
    """Refuse to invoice a period the ledger holds no usage for at all while products are priced by usage: the
    usual cause is a pull that was not run (or a new, empty ledger), and the invoices would be fees only."""
    usage_priced = sorted(pid for pid, p in desired.products.items() if p.pricing.model in USAGE_PRICED_MODELS)
    if not usage_priced or book.has_usage(window.start, window.end, provider, target):
        return
    names = ", ".join(usage_priced[:10]) + (" ..." if len(usage_priced) > 10 else "")
    where = f"{provider} target {target}"
    if allow:
        out.warning(f"warning: the ledger {book.path} has no usage at all for {window.label} ({where}); "
                    f"products priced by usage ({names}) are invoiced for 0 units (--allow-no-usage)")
        return
    fail(out, f"error: the ledger {book.path} has no usage at all for {window.label} ({window.start} .. "
              f"{window.end}, {where}) while products are priced by usage ({names}): was `apimon usage pull "
              f"PLAN --from {window.start} --to {window.end}` run with this ledger? Pull the period first, or pass "
              "--allow-no-usage if it really had no calls")


def warn_fresh_ledger(out, invoices, window, book, provider: str, target: str) -> None:
    """Setup fees charged while the ledger knows nothing before the period: a new ledger makes every customer
    look new, so say so loudly (keep the ledger between runs: README, Usage, ledger and invoices)."""
    charged = [inv.subscriber for inv in invoices if any(x.line_type == "setup_fee" for x in inv.lines)]
    if not charged:
        return
    from datetime import timedelta

    if book.has_history(provider, target) or book.has_usage(
        None, window.start - timedelta(days=1), provider, target, first_seen=True
    ):
        return  # the gateway's history was recorded, or the ledger knows earlier usage: first usage is known
    out.warning(f"warning: {_n(len(charged), 'setup fee')} charged in {window.label} ({', '.join(charged[:10])}"
                f"{' ...' if len(charged) > 10 else ''}) while the ledger {book.path} holds no usage before "
                f"{window.start}: if it is a new ledger, these customers may not be new. Keep the ledger between "
                "runs (it records each customer's first usage), or pull the earlier periods first")


def check_unpriced(out, invoices, window, allow: bool, flag: str = "--allow-unpriced") -> None:
    """Say which removed subscribers are invoiced; warn about unpriced usage, and fail on it unless allowed."""
    removed = [inv for inv in invoices if not inv.in_plan]
    priced = [inv for inv in removed if not inv.unpriced]
    if priced:
        names = ", ".join(f"{inv.subscriber} ({inv.product})" for inv in priced[:20])
        more = f" and {len(priced) - 20} more" if len(priced) > 20 else ""
        one = len(priced) == 1
        out.warning(f"note: {_n(len(priced), 'subscriber')} no longer in the plan {'has' if one else 'have'} "
                    f"billable usage in {window.label} and {'is' if one else 'are'} invoiced by the product "
                    f"recorded with it: {names}{more}")
    unpriced = [(inv, line) for inv in removed for line in inv.unpriced]
    if not unpriced:
        return
    for inv, line in unpriced[:50]:
        why = line.description.removeprefix("Unpriced usage: ")
        out.warning(f"warning: unpriced usage: subscriber {inv.subscriber} (no longer in the plan): "
                    f"{line.quantity:,} billable units in {window.label}; {why}")
    if len(unpriced) > 50:
        out.warning(f"warning: ... and {len(unpriced) - 50} more unpriced usage lines")
    if not allow:
        fail(out, f"error: {_n(len(unpriced), 'unpriced usage line')} in {window.label}: no product of the plan prices "
                  f"them; nothing was written. Put the product back in the plan (or the subscriber, on a product "
                  f"of the plan), or pass {flag} to invoice without them (listed as unpriced, amount 0)")


def invoice(
    plans: Annotated[list[str], typer.Argument(help="Plan file(s): products' pricing and subscribers.")],
    period: Annotated[str, typer.Option(help="2026-11 (monthly billing) or 2026-W48 (weekly).")],
    fmt: Annotated[Literal["table", "csv", "jsonl"],
                   typer.Option("--format", help="A table, CSV or JSON Lines (--json: one document).")] = "table",
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
    allow_unpriced: Annotated[
        bool,
        typer.Option(
            "--allow-unpriced",
            help="Invoice even when a removed subscriber's usage is on a product no longer in the plan "
            "(listed as unpriced usage, amount 0).",
        ),
    ] = False,
    allow_no_usage: Annotated[
        bool,
        typer.Option(
            "--allow-no-usage",
            help="Invoice even when the ledger has no usage at all for the period while products are priced "
            "by usage (a period without a single call).",
        ),
    ] = False,
    ledger: LedgerOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Invoices for a period: the ledger's usage priced by the plan; one invoice per subscriber, plus one per
    subscriber removed from the plan that has billable usage in the period."""
    from ..billing.invoice import compare_invoices

    out = make_output(json_mode=json_out)
    if fmt not in ("table", "csv", "jsonl"):
        fail(out, f"error: --format must be table, csv or jsonl; got {fmt!r}")
    loaded = load_plan(out, plans)
    desired = loaded.desired
    window = _period_window(out, period, desired.billing.period)
    provider, target = _provider_and_target(out, desired)
    from ..events.publish import unused_pull_note

    with open_ledger(out, ledger_path(ledger, plans), must_exist=True) as book:
        target = book.resolve_target(provider, target)
        if note := unused_pull_note(book, provider, target, window.start, window.end):
            out.warning(note)
        check_usage_present(out, desired, window, book, provider, target, allow_no_usage)
        invoices = invoices_for(desired, window, book, provider, target)
        warn_fresh_ledger(out, invoices, window, book, provider, target)
        if compare:
            other = load_plan(out, [compare]).desired
            if other.billing.currency != desired.billing.currency:
                fail(
                    out,
                    f"error: --compare: {compare} bills in {other.billing.currency}, the plan in "
                    f"{desired.billing.currency}; compare plans of one currency",
                )
            other_invoices = invoices_for(other, window, book, provider, target)
    check_unpriced(out, invoices, window, allow_unpriced)
    if compare:
        try:
            rows = compare_invoices(invoices, other_invoices)
        except ValueError as exc:
            fail(out, f"error: --compare: {exc}")
        if json_out:
            out.json({"period": window.label, "compared_with": compare, "subscribers": [
                {"subscriber": r.subscriber, "current_total": str(r.old_total), "compared_total": str(r.new_total),
                 "difference": str(r.difference), "currency": r.currency} for r in rows]})
            return
        _render_comparison(out, rows, fmt, out_file, window, compare)
        return
    metadata_keys = list(with_metadata or [])
    if json_out:
        out.json(_invoices_json(invoices, window, metadata_keys, desired.secret_fields))
        return
    if fmt == "table":
        _render_invoice_table(out, invoices, window)
        if out_file:
            out.info("note: --out writes csv or jsonl; add --format csv")
        return
    with _writer(out, out_file) as fh:
        n = _write_invoices(invoices, fmt, fh, metadata_keys, desired.secret_fields)
    if out_file:
        out.info(f"Wrote {len(invoices)} invoices ({n} lines) to {out_file}.")


def _secret_meta(inv, key: str, secret_fields) -> bool:
    """A metadata value from the environment (${env:...}) is a secret: exports carry *** in its place."""
    return ("subscribers", inv.subscriber, f"metadata.{key}") in secret_fields and bool(inv.metadata.get(key))


def _invoices_json(invoices, window, metadata_keys: list[str], secret_fields=frozenset()) -> dict:
    """`invoice --json`: one document; amounts as decimal strings, each with its currency."""
    from decimal import Decimal

    def text(v):
        return None if v is None else str(v)

    totals: dict[str, Decimal] = {}
    for inv in invoices:
        totals[inv.currency] = totals.get(inv.currency, Decimal(0)) + inv.total
    return {
        "period": window.label, "start": window.start.isoformat(), "end": window.end.isoformat(),
        "invoices": [{
            "invoice_id": inv.invoice_id, "subscriber": inv.subscriber, "product": inv.product,
            "period_start": inv.period_start.isoformat(), "period_end": inv.period_end.isoformat(),
            "currency": inv.currency, "total": str(inv.total),
            **({"metadata": {k: "***" if _secret_meta(inv, k, secret_fields) else inv.metadata.get(k, "")
                             for k in metadata_keys}} if metadata_keys else {}),
            "lines": [{"line_type": line.line_type, "description": line.description, "quantity": line.quantity,
                       "unit_price": text(line.unit_price), "amount": str(line.amount), "currency": line.currency}
                      for line in inv.lines],
        } for inv in invoices],
        "totals": [{"amount": str(v), "currency": c} for c, v in sorted(totals.items())],
    }


def _invoice_rows(invoices, metadata_keys, secret_fields=frozenset()):
    for inv in invoices:
        meta = ["***" if _secret_meta(inv, k, secret_fields) else inv.metadata.get(k, "") for k in metadata_keys]
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


def _write_invoices(invoices, fmt: str, fh, metadata_keys: list[str], secret_fields=frozenset()) -> int:
    from ..export.writers import write_csv, write_jsonl

    # one column per metadata key, named by the key (prefixed only where it would clash with a standard column)
    columns = list(INVOICE_COLUMNS) + [f"metadata.{k}" if k in INVOICE_COLUMNS else k for k in metadata_keys]
    rows = _invoice_rows(invoices, metadata_keys, secret_fields)
    if fmt == "csv":
        return write_csv(rows, columns, fh, set(INVOICE_NUMERIC))
    return write_jsonl((dict(zip(columns, r, strict=True)) for r in rows), fh)


def _money(amount, currency: str) -> str:
    return f"{amount:,} {currency}"


def _render_invoice_table(out, invoices, window) -> None:
    from ..render.tables import invoice_table

    out.rich(invoice_table(out, invoices, window))


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
