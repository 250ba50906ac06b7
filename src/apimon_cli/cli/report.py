"""`apimon report` and `apimon portal build`: pictures of the ledger for the business and its customers."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import fail, ledger_path, load_plan, make_output, open_ledger, parse_day, write_private

LedgerOpt = Annotated[
    Optional[str],
    typer.Option("--ledger", help="Ledger file (default: .apimon/ledger.db beside the plan; or APIMON_LEDGER)."),
]
AsOfOpt = Annotated[
    Optional[str],
    typer.Option("--as-of", help="Headroom and burn rates as of this day (YYYY-MM-DD, UTC); default: today, "
                                 "or the period's last day for a past period."),
]

portal_app = typer.Typer(
    help="A static site from the plan and the ledger: public pricing page, subscriber statements.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _window(out, period: str | None, kind: str):
    from ..billing.periods import parse_period, window_of

    if period is None:
        return window_of(datetime.now(UTC).date(), kind)
    try:
        return parse_period(period, kind)
    except ValueError as exc:
        fail(out, f"error: --period: {exc}")


def _as_of(out, text: str | None, window) -> date:
    day = parse_day(out, text, "--as-of") if text else datetime.now(UTC).date()
    if text and not window.start <= day <= window.end:
        fail(out, f"error: --as-of {day} is outside the period {window.label} ({window.start} .. {window.end})")
    return min(max(day, window.start), window.end)


def _target(out, desired) -> tuple[str, str]:
    """(provider, target) naming the plan's rows in the ledger, as `usage show` and `invoice` name them."""
    from .billing import _provider_and_target

    return _provider_and_target(out, desired)


def _write_atomic(out, path: str, text: str) -> None:
    write_private(out, path, text)  # the report holds revenue per subscriber: owner-only, like every --out


def report(
    plans: Annotated[list[str], typer.Argument(help="Plan file(s): products, pricing and subscribers.")],
    period: Annotated[str, typer.Option(help="2026-11 (monthly billing) or 2026-W48 (weekly).")],
    out_file: Annotated[
        Optional[str], typer.Option("--out", help="The HTML file (default: report-PERIOD.html; not with --json alone).")
    ] = None,
    compare: Annotated[
        Optional[str],
        typer.Option("--compare", help="Another plan file: revenue impact of its pricing, calls its quotas refuse."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the figures as JSON (amounts as decimal strings).")]
    = False,
    as_of: AsOfOpt = None,
    top: Annotated[int, typer.Option("--top", min=1, help="How many top subscribers to list.")] = 10,
    ledger: LedgerOpt = None,
) -> None:
    """A self-contained HTML report of a period: usage, revenue, headroom, candidates, leakage."""
    from ..report.figures import report_data
    from ..report.source import gather

    out = make_output(json_mode=json_out)
    loaded = load_plan(out, plans)
    desired = loaded.desired
    window = _window(out, period, desired.billing.period)
    day = _as_of(out, as_of, window)
    provider, target = _target(out, desired)
    other = None
    if compare:
        other = load_plan(out, [compare]).desired
        if other.billing.currency != desired.billing.currency:
            fail(out, f"error: --compare: {compare} bills in {other.billing.currency}, the plan in "
                      f"{desired.billing.currency}; compare plans of one currency")
        if other.billing.period != desired.billing.period:
            fail(out, f"error: --compare: {compare} bills per {other.billing.period}, the plan per "
                      f"{desired.billing.period}; compare plans of one billing period")
    with open_ledger(out, ledger_path(ledger, plans), must_exist=True) as book:
        target = book.resolve_target(provider, target)
        try:
            figures = gather(desired, book, window, provider, target, as_of=day, plan_files=list(plans),
                             compare=(os.path.basename(compare), other) if compare else None, top=top)
        except ValueError as exc:
            fail(out, f"error: {exc}")
    if json_out:
        out.json(report_data(figures))
    if out_file or not json_out:
        from ..report.html import render_report

        path = out_file or f"report-{window.label}.html"
        _write_atomic(out, path, render_report(figures, mask=out.mask))
        out.info(f"Wrote the {window.label} report to {path}.")


@portal_app.command("build")
def portal_build(
    plans: Annotated[list[str], typer.Argument(help="Plan file(s): products, pricing and subscribers.")],
    out_dir: Annotated[str, typer.Option("--out", help="The site's directory (replaced whole on each build).")]
    = "site",
    period: Annotated[
        Optional[str], typer.Option(help="Statements of this period (default: the current one).")
    ] = None,
    as_of: AsOfOpt = None,
    title: Annotated[str, typer.Option(help="The pricing page's heading.")] = "API pricing",
    example: Annotated[
        Optional[list[int]], typer.Option("--example", help="Calls per period for the worked examples (repeatable).")
    ] = None,
    rotate: Annotated[
        Optional[list[str]], typer.Option("--rotate", help="Give this subscriber's statement a new address.")
    ] = None,
    show_links: Annotated[
        bool, typer.Option("--show-links", help="Print each subscriber's statement path (they are private).")
    ] = False,
    ledger: LedgerOpt = None,
) -> None:
    """Write the static site: index.html (public pricing) and s/TOKEN/ statements with usage.json."""
    from ..portal import build
    from ..portal.tokens import TokenError, tokens_path
    from ..portal.writer import SiteError, write_site

    out = make_output()
    loaded = load_plan(out, plans)
    desired = loaded.desired
    window = _window(out, period, desired.billing.period)
    day = _as_of(out, as_of, window)
    for sid in rotate or []:
        if sid not in desired.subscribers:
            fail(out, f"error: --rotate: {sid!r} is not a subscriber of the plan")
    if any(n < 0 for n in example or []):
        fail(out, "error: --example: calls must be >= 0")
    provider, target = _target(out, desired)
    path = ledger_path(ledger, plans)
    # the tokens file lives beside a ledger file; with a PostgreSQL ledger, in .apimon/ beside the plan
    beside = path if isinstance(path, Path) else Path(plans[0]).resolve().parent / ".apimon" / "ledger.db"
    with open_ledger(out, path, must_exist=True) as book:
        target = book.resolve_target(provider, target)
        try:
            files, tokens = build(desired, book, window, provider, target, tokens_file=tokens_path(beside), as_of=day,
                                  title=title, quantities=example, rotate=rotate or (), mask=out.mask)
        except TokenError as exc:
            fail(out, f"error: {exc}")
        except ValueError as exc:
            fail(out, f"error: {exc}")
    try:
        write_site(Path(out_dir), files)
    except SiteError as exc:
        fail(out, f"error: {exc}")
    public = sum(1 for p in desired.products.values() if p.public)
    out.print(f"Wrote {out_dir}: index.html ({public} public products) and {len(tokens)} statements for "
              f"{window.label} (s/TOKEN/; tokens kept in {tokens_path(beside)}).")
    if show_links:
        for sid in sorted(tokens):
            out.print(f"  {sid}: s/{tokens[sid]}/")
