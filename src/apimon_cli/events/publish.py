"""Publishing from the commands: ``apply`` and ``usage pull`` (after their changes are committed) and
``apimon events flush``.

Events are first written to the command outbox (``.apimon/events-outbox.db`` beside the first plan file),
then delivered for up to ``APIMON_EVENTS_TIMEOUT`` seconds (default 10). A broker or webhook that cannot be
reached does not fail the command: it says so in one line and the events wait in the outbox for the next
run or ``apimon events flush PLAN``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..render.words import count
from .cloudevent import CloudEvent
from .config import EventsConfig
from .delivery import DeliveryReport, deliver, pending_bits
from .outbox import CLI_OUTBOX, GATEWAY_OUTBOX, Outbox, OutboxError, OutboxLock

TIMEOUT_ENV = "APIMON_EVENTS_TIMEOUT"
DEFAULT_TIMEOUT = 10.0


def command_timeout() -> float:
    try:
        return max(0.0, float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT)))
    except ValueError:
        return DEFAULT_TIMEOUT


def cli_outbox_path(plan_files: Sequence[str]) -> Path:
    base = Path(plan_files[0]).resolve().parent if plan_files else Path.cwd()
    return base / ".apimon" / CLI_OUTBOX


def gateway_outbox_path(state_dir: Path) -> Path:
    return Path(state_dir) / GATEWAY_OUTBOX


def _rows(events: Sequence[CloudEvent], config: EventsConfig):
    for e in events:
        yield (e.id, e.type, e.source, e.time, e.subject, e.body(), pending_bits(config, e.type))


def enqueue(path: Path, events: Sequence[CloudEvent], config: EventsConfig) -> int:
    outbox = Outbox(path)
    try:
        return outbox.add(_rows(events, config))
    finally:
        outbox.close()


def deliver_file(
    path: Path, config: EventsConfig, log: Callable[[str], None], *, timeout: float
) -> DeliveryReport | None:
    """Deliver one outbox file; None if another process holds it (a running gateway, another command)."""
    lock = OutboxLock(path)
    if not lock.acquire():
        return None
    try:
        outbox = Outbox(path)
        try:
            return deliver(outbox, config, log, timeout=timeout)
        finally:
            outbox.close()
    finally:
        lock.release()


def describe(report: DeliveryReport, path: Path, plan_hint: str) -> tuple[str, bool]:
    """One line about a delivery, and whether it is a warning (events left waiting)."""
    sent = ", ".join(f"{n} to {sink}" for sink, n in report.delivered.items() if n)
    if report.complete:
        return (f"Published events: {sent}." if sent else "", False)
    waiting = max(report.waiting.values())
    why = "; ".join(f"{sink}: {err}" for sink, err in report.errors.items()) or "not delivered in time"
    return (
        f"warning: events: {count(waiting, 'event')} not delivered ({why}); they wait in {path} for the next run or "
        f"`apimon events flush {plan_hint}`" + (f" ({sent} delivered)" if sent else ""),
        True,
    )


def publish(events: Sequence[CloudEvent], config: EventsConfig | None, plan_files: Sequence[str], out) -> None:
    """Write ``events`` to the command outbox and deliver it (with anything left from earlier runs)."""
    if config is None or not config.sinks or not events and not cli_outbox_path(plan_files).exists():
        return
    path = cli_outbox_path(plan_files)
    hint = " ".join(plan_files)
    try:
        if events:
            enqueue(path, events, config)
        report = deliver_file(path, config, out.warning, timeout=command_timeout())
    except OutboxError as exc:
        out.warning(f"warning: events: {exc}; {count(len(events), 'event')} not published")
        return
    except Exception as exc:  # a broken sink setup must not fail a command whose changes are committed
        out.warning(f"warning: events: delivery failed ({type(exc).__name__}: {exc}); the events wait in {path} "
                    f"for `apimon events flush {hint}`")
        return
    if report is None:
        out.info(f"Events: {count(len(events), 'event')} queued in {path}; another apimon process is delivering it.")
        return
    for note in report.notes:
        out.warning(f"warning: events: {note}")
    line, warn = describe(report, path, hint)
    if line:
        (out.warning if warn else out.info)(line)


# ---------------------------------------------------------------- the commands' hooks

#: a pull with events keeps every changed row in its report (one usage.daily event each)
EVERY_ROW = 10**12


def publish_applied(out, run, report) -> None:
    """After ``apply``: one event per change that took effect (and key.revoked where a key stopped working)."""
    desired = run.loaded.desired
    if desired.events is None:
        return
    from .cloudevent import apply_events

    events = apply_events(report.outcomes, provider=run.provider.name, target=run.provider.target_id, mask=out.mask)
    publish(events, desired.events, list(desired.files), out)


def publish_pulled(out, desired, report) -> None:
    """After ``usage pull`` committed: one ``usage.daily`` per new, revised or removed ledger row."""
    if desired.events is None:
        return
    from .cloudevent import usage_daily_events

    publish(list(usage_daily_events(report)), desired.events, list(desired.files), out)


def usage_source(desired, provider: str, target: str) -> tuple[str, str]:
    """Which ledger rows ``usage show`` and ``invoice`` read for a plan: for a local plan with events.kafka the
    gateway meters through the stream, so the rows ``apimon events consume`` writes (target
    ``stream:<topic>``); otherwise the pulled rows."""
    ev = desired.events
    if provider == "local" and ev is not None and ev.kafka is not None:
        from ..ledger.stream import stream_target

        return provider, stream_target(ev.kafka.topic)
    return provider, target


def unused_pull_note(book, provider: str, target: str, start, end) -> str | None:
    """A note when a plan reads stream rows (``usage_source``) but the ledger has none for the window while it
    has pulled rows: the pulled counts are not used, which a silent empty table or invoice would hide."""
    if not target.startswith("stream:"):
        return None
    rows = book.iter_rows(start, end, provider, target)
    try:
        if next(rows, None) is not None:
            return None
    finally:
        rows.close()
    rows = book.iter_rows(start, end, provider)
    try:
        pulled = next((r for r in rows if not r.target.startswith("stream:")), None)
    finally:
        rows.close()
    if pulled is None:
        return None
    return (f"note: this plan meters through events.kafka, so usage show and invoice read what `apimon events "
            f"consume` wrote (target {target}), and it holds nothing for {start} .. {end}; the pulled rows of target "
            f"{pulled.target} are not used (run `apimon events consume`, or see `apimon usage export`)")
