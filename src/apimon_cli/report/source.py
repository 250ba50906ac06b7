"""The report's inputs: the ledger's daily rows and the invoice engine's invoices for a period."""

from __future__ import annotations

from datetime import date, timedelta

from apimon_cli.billing.periods import BillingWindow, window_of

from .figures import CompareInput, Report, build_report
from .quota import lookback_start
from .usage import DailyUsage


def period_invoices(desired, window: BillingWindow, book, provider: str, target: str) -> list:
    """Exactly the invoices `apimon invoice --period` makes for ``window``: the billing library's
    ``billable_usage`` + ``invoice_accounts`` where this apimon has them, else the invoice command's own
    ``invoices_for`` (one code path with `apimon invoice` either way)."""
    try:
        from apimon_cli.billing.billable import billable_usage
        from apimon_cli.billing.invoice import invoice_accounts
    except ImportError:
        from apimon_cli.cli.billing import invoices_for

        run = invoices_for(desired, window, book, provider, target)
    else:
        run = invoice_accounts(desired, billable_usage(book, desired, window, provider, target), window)
    return list(getattr(run, "invoices", run))


def previous_window(window: BillingWindow, kind: str) -> BillingWindow:
    return window_of(window.start - timedelta(days=1), kind)


def read_usage(book, start: date, end: date, provider: str, target: str) -> DailyUsage:
    return DailyUsage.from_rows(book.iter_rows(start, end, provider, target))


def gather(
    desired,
    book,
    window: BillingWindow,
    provider: str,
    target: str,
    *,
    as_of: date,
    plan_files=(),
    compare: tuple[str, object] | None = None,
    top: int = 10,
) -> Report:
    """The report of ``window`` from the ledger ``book`` (rows of provider+target) and the plan ``desired``.
    ``compare`` is (file name, DesiredState) of a plan to compare with."""
    usage = read_usage(book, lookback_start(window.start), window.end, provider, target)
    invoices = period_invoices(desired, window, book, provider, target)
    prev = previous_window(window, desired.billing.period)
    prev_invoices = period_invoices(desired, prev, book, provider, target)
    cmp = None
    if compare is not None:
        name, other = compare
        cmp = CompareInput(name, other, period_invoices(other, window, book, provider, target))
    return build_report(desired, window, usage, invoices, prev, prev_invoices, as_of, plan_files=plan_files,
                        compare=cmp, top=top)
