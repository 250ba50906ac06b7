"""`apimon billing push|status`: the ledger's billable usage -> Stripe meters, Lago, OpenMeter."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated, Optional

import typer

from .common import fail, ledger_path, load_plan, make_output, open_ledger, parse_day

billing_app = typer.Typer(
    help="Billing platforms: push metered usage to Stripe, Lago or OpenMeter; show what is pushed.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

VENDORS = ("stripe", "lago", "openmeter")
SECRET_FIELD = {"stripe": "api_key", "lago": "api_key", "openmeter": "token"}
PlanArgs = Annotated[list[str], typer.Argument(help="Plan file(s) with a billing.push block.", metavar="PLAN")]
ToOpt = Annotated[
    Optional[list[str]],
    typer.Option("--to", metavar="VENDOR|DATE",
                 help="A vendor (stripe, lago, openmeter; repeatable; default: every one in the plan) or the "
                      "last day of the window (YYYY-MM-DD, with --from)."),
]
FromOpt = Annotated[Optional[str], typer.Option("--from", help="First day (YYYY-MM-DD, UTC); with --to DATE.")]
PeriodOpt = Annotated[Optional[str], typer.Option(help="A billing period (2026-11, or 2026-W48); default: the "
                                                       "current one.")]
LedgerOpt = Annotated[Optional[str], typer.Option("--ledger", help="Ledger file (default: .apimon/ledger.db "
                                                                   "beside the plan; or APIMON_LEDGER).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
MAX_LINES = 50


def _now() -> datetime:
    return datetime.now(UTC)


def _args(out, desired, to: list[str] | None, from_: str | None, period: str | None):
    vendors, dates = [], []
    for value in to or []:
        (vendors if value in VENDORS else dates).append(value)
    if len(dates) > 1:
        fail(out, f"error: --to: give one last day; got {', '.join(dates)}")
    configured = [s.vendor for s in desired.billing.push]
    if not configured:
        fail(out, "error: the plan has no billing.push block; add billing.push.stripe, .lago or .openmeter")
    for v in vendors:
        if v not in configured:
            fail(out, f"error: --to {v}: the plan has no billing.push.{v} block (configured: {', '.join(configured)})")
    for d in dates:
        if not d[:1].isdigit():
            fail(out, f"error: --to: {d!r} is neither a vendor ({', '.join(VENDORS)}) nor a date (YYYY-MM-DD)")
    if (from_ is None) != (not dates):
        fail(out, "error: give --from and --to DATE together (or --period)")
    if from_ is not None and period is not None:
        fail(out, "error: give either --from/--to or --period, not both")
    if from_ is not None:
        start, end = parse_day(out, from_, "--from"), parse_day(out, dates[0], "--to")
        if end < start:
            fail(out, f"error: --to ({end}) is before --from ({start})")
    else:
        from ..billing.periods import parse_period, window_of

        try:
            window = parse_period(period, desired.billing.period) if period else window_of(
                _now().date(), desired.billing.period)
        except ValueError as exc:
            fail(out, f"error: --period: {exc}")
        start, end = window.start, window.end
    sinks = [s for s in desired.billing.push if not vendors or s.vendor in vendors]
    return sinks, start, end


def _target(out, desired) -> tuple[str, str]:
    from ..providers import ProviderError, get_provider

    try:
        with get_provider(desired) as provider:
            return provider.name, provider.target_id
    except ProviderError as exc:
        fail(out, f"error: {exc}")


def _op_json(op) -> dict:
    return {"subscriber": op.subscriber, "product": op.product, "day": op.day, "destination": op.destination,
            "kind": op.kind, "count": op.count, "value": op.value, "cancel": op.cancel, "key": op.event_key,
            "resend": op.replay}


def _np_json(n) -> dict:
    return {"subscriber": n.row[3], "product": n.row[4], "day": n.row[2], "count": n.count, "reason": n.reason,
            "removed": n.removed}


@billing_app.command("push")
def push(plans: PlanArgs, to: ToOpt = None, from_: FromOpt = None, period: PeriodOpt = None,
         dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be sent; send nothing.")] = False,
         json_out: JsonOpt = False, ledger: LedgerOpt = None,
         allow_unpriced: Annotated[bool, typer.Option(
             "--allow-unpriced", help="Exit 0 even when a subscriber removed from the plan has usage that cannot "
                                      "be pushed (never pushed before: no customer known).")] = False) -> None:
    """Send the ledger's billable usage that a billing platform does not have yet; revised days as corrections."""
    from ..billing.push import PushAborted, plan_push, run_push

    out = make_output(json_mode=json_out)
    loaded = load_plan(out, plans)
    desired = loaded.desired
    sinks, start, end = _args(out, desired, to, from_, period)
    provider, target = _target(out, desired)
    results = []
    failed = False
    if not dry_run:  # every credential before anything is sent: a push never stops half-way for a missing one
        missing = [s for s in sinks if not s.secret]
        if missing:
            errors = []
            for s in missing:
                file, line, col = s.where.rsplit(":", 2) if s.where.count(":") >= 2 else (None, None, None)
                errors.append({"file": file, "line": int(line) if line else None, "column": int(col) if col else None,
                               "field": f"billing.push.{s.vendor}.{SECRET_FIELD[s.vendor]}",
                               "message": f"environment variable {s.secret_env} is not set; set it to the "
                                          f"{s.vendor} credential (nothing was sent)"})
                out.error(f"{s.where}: error: {errors[-1]['field']}: {errors[-1]['message']}")
            fail(out, "error: billing push: a credential is missing; nothing was sent", errors=errors)
    with open_ledger(out, ledger_path(ledger, plans), must_exist=True) as book:
        target = book.resolve_target(provider, target)
        for sink in sinks:
            if dry_run:
                plan = plan_push(book, desired, sink, provider, target, start, end, _now())
                results.append(("plan", sink, plan))
                continue
            from ..billing.push.vendors import make_client

            try:
                client = make_client(sink, concurrency=int(os.environ.get("APIMON_PUSH_CONCURRENCY", "4")))
            except ImportError as exc:
                fail(out, f"error: billing.push.{sink.vendor} needs the vendor SDK ({exc.name}): "
                          "pip install 'apimon-cli[billing]'")
            except PushAborted as exc:
                fail(out, f"{sink.where}: error: {exc}")
            report = run_push(book, desired, sink, provider, target, start, end, client)
            failed = failed or not report.ok
            results.append(("push", sink, report))
    if json_out:
        out.json({"window": {"from": start.isoformat(), "to": end.isoformat()}, "dry_run": dry_run,
                  "vendors": [_result_json(kind, sink, r) for kind, sink, r in results]})
    else:
        for kind, sink, r in results:
            (_render_plan if kind == "plan" else _render_report)(out, sink, r, start, end)
    unbilled = [(sink, n) for _kind, sink, r in results for n in r.not_pushable if n.removed]
    if unbilled and not allow_unpriced:
        subs = sorted({n.row[3] for _s, n in unbilled})
        rows = f"{len(unbilled):,} {'row' if len(unbilled) == 1 else 'rows'}"
        out.error(f"error: {rows} of subscribers no longer in the plan ({', '.join(subs[:20])}"
                  f"{' ...' if len(subs) > 20 else ''}) cannot be pushed: never pushed before, so no customer is "
                  "known; put them back in the plan with their billing metadata, or pass --allow-unpriced")
        failed = True
    if failed:
        raise typer.Exit(1)


def _result_json(kind: str, sink, r) -> dict:
    if kind == "plan":
        return {"vendor": sink.vendor, "sink": r.sink, "would_send": [_op_json(o) for o in r.replays + r.ops],
                "not_pushable": [_np_json(n) for n in r.not_pushable],
                "in_doubt": [{**_op_json(o), "reason": why} for o, why in r.in_doubt]}
    return {"vendor": sink.vendor, "sink": r.sink, "ok": r.ok, "sent": r.sent, "corrected": r.corrected,
            "already_there": r.already, "skipped": r.skipped, "requests": r.requests, "aborted": r.aborted,
            "not_attempted": r.not_attempted, "failed": [{**_op_json(o), "error": e} for o, e in r.failed],
            "not_pushable": [_np_json(n) for n in r.not_pushable],
            "in_doubt": [{**_op_json(o), "reason": why} for o, why in r.in_doubt]}


def _render_plan(out, sink, plan, start, end) -> None:
    from rich.table import Table

    ops = plan.replays + plan.ops
    table = Table(title=f"{sink.vendor}: would send {len(ops)} events for {start} .. {end} (dry run)")
    for col, j in (("subscriber", "left"), ("customer", "left"), ("day", "left"), ("count", "right"),
                   ("event", "right"), ("kind", "left")):
        table.add_column(col, justify=j, overflow="fold")
    for op in ops[:500]:
        kind = op.kind + (" (cancel + replace)" if op.cancel else "") + (" (resend)" if op.replay else "")
        table.add_row(op.subscriber, out.mask(op.destination), op.day, f"{op.count:,}", f"{op.value:+,}", kind)
    if len(ops) > 500:
        table.add_row(f"... {len(ops) - 500} more", "", "", "", "", "")
    out.rich(table)
    _render_np(out, sink, plan.not_pushable)
    out.print(f"{sink.vendor}: {len(plan.ops)} to send, {len(plan.replays)} to resend, "
              f"{len(plan.not_pushable)} not pushable; nothing was sent (--dry-run)")


def _render_np(out, sink, rows) -> None:
    for n in rows[:MAX_LINES]:
        out.warning(f"warning: {sink.vendor}: not pushable: {n.row[2]} {n.row[3]} {n.row[4]} ({n.count:+,}): "
                    f"{n.reason}")
    if len(rows) > MAX_LINES:
        out.warning(f"warning: {sink.vendor}: ... and {len(rows) - MAX_LINES} more not pushable rows")


def _render_report(out, sink, r, start, end) -> None:
    _render_np(out, sink, r.not_pushable)
    for op, why in r.in_doubt[:MAX_LINES]:
        out.error(f"error: {sink.vendor}: in doubt: {op.day} {op.subscriber} {op.product}: {why}")
    for op, err in r.failed[:MAX_LINES]:
        out.error(f"error: {sink.vendor}: failed: {op.day} {op.subscriber} {op.product} ({op.kind}, "
                  f"{op.value:+,}): {err}")
    if len(r.failed) > MAX_LINES:
        out.error(f"error: {sink.vendor}: ... and {len(r.failed) - MAX_LINES} more failed rows")
    if r.aborted:
        out.error(f"error: {sink.vendor}: stopped: {r.aborted}; {r.not_attempted} rows not attempted (they stay "
                  "pending and are resent by the next push)")
    reasons = sorted({n.reason.split(";")[0] for n in r.not_pushable})
    np = f"{len(r.not_pushable)} not pushable" + (f" ({'; '.join(reasons)})" if reasons else "")
    extra = f", {r.skipped} left to another push running now" if r.skipped else ""
    bad = f", {len(r.failed)} failed" if r.failed else ""
    doubt = f", {len(r.in_doubt)} in doubt" if r.in_doubt else ""
    out.print(f"{sink.vendor}: {r.sent} sent, {r.corrected} corrected, {r.already} already there, {np}{bad}{doubt}"
              f"{extra} ({start} .. {end}, {r.requests} requests)")


@billing_app.command("status")
def status(plans: PlanArgs, to: ToOpt = None, from_: FromOpt = None, period: PeriodOpt = None,
           json_out: JsonOpt = False, ledger: LedgerOpt = None) -> None:
    """Per vendor: what is pushed and what is pending (reads the ledger only; no network)."""
    from ..billing.push import plan_push

    out = make_output(json_mode=json_out)
    loaded = load_plan(out, plans)
    desired = loaded.desired
    sinks, start, end = _args(out, desired, to, from_, period)
    provider, target = _target(out, desired)
    rows = []
    with open_ledger(out, ledger_path(ledger, plans), must_exist=True) as book:
        target = book.resolve_target(provider, target)
        for sink in sinks:
            p = plan_push(book, desired, sink, provider, target, start, end, _now())
            rows.append((sink, p))
    if json_out:
        out.json({"window": {"from": start.isoformat(), "to": end.isoformat()}, "vendors": [
            {"vendor": s.vendor, "sink": p.sink, "pushed_rows": p.pushed_rows, "pushed_total": p.pushed_total,
             "pending": [_op_json(o) for o in p.ops], "resend": [_op_json(o) for o in p.replays],
             "in_doubt": [_op_json(o) for o, _ in p.in_doubt], "not_pushable": [_np_json(n) for n in p.not_pushable]}
            for s, p in rows]})
        return
    from rich.table import Table

    table = Table(title=f"Billing push status {start} .. {end}")
    for col in ("vendor", "meter", "pushed rows", "pushed units", "pending new", "pending corrections",
                "to resend", "in doubt", "not pushable"):
        table.add_column(col, justify="left" if col in ("vendor", "meter") else "right", overflow="fold")
    for s, p in rows:
        new = sum(1 for o in p.ops if o.kind == "new")
        table.add_row(s.vendor, p.sink, f"{p.pushed_rows:,}", f"{p.pushed_total:,}", f"{new:,}",
                      f"{len(p.ops) - new:,}", f"{len(p.replays):,}", f"{len(p.in_doubt):,}",
                      f"{len(p.not_pushable):,}")
    out.rich(table)
    for s, p in rows:
        _render_np(out, s, p.not_pushable)


__all__ = ["billing_app"]
