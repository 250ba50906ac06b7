"""`apimon events consume|flush`: the stream into the ledger, and the outboxes out to the sinks."""

from __future__ import annotations

import signal
from typing import Annotated, Optional

import typer

from .common import fail, ledger_path, load_plan, make_output, open_ledger

events_app = typer.Typer(
    help="Usage events: consume the Kafka topic into the ledger; deliver what waits in the outboxes.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

PlanArgs = Annotated[list[str], typer.Argument(help="Plan file(s) with an events block.", metavar="PLAN")]


def _events_of(out, loaded, need_kafka: bool):
    ev = loaded.desired.events
    if ev is None or (need_kafka and ev.kafka is None):
        fail(out, "error: the plan has no events.kafka block: add events: {kafka: {bootstrap_servers: HOST:PORT, "
                  "topic: apimon.events}}" if need_kafka else "error: the plan has no events block")
    return ev


@events_app.command("consume")
def consume(
    plans: PlanArgs,
    ledger: Annotated[
        Optional[str],
        typer.Option("--ledger", help="Ledger file (default: .apimon/ledger.db beside the plan; or APIMON_LEDGER)."),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Consume what the topic holds now, then exit.")] = False,
) -> None:
    """Add the topic's com.apimon.request events to the ledger's daily counts, exactly once.

    Offsets are stored in the ledger with the counts (one transaction) and event ids drop a producer's
    duplicates, so running it again, or after a crash, never counts an event twice. Without --once it runs
    until SIGTERM or Ctrl-C."""
    from ..events.consume import ConsumeError
    from ..events.consume import consume as run_consume
    from ..ledger.stream import stream_target

    out = make_output()
    loaded = load_plan(out, plans)
    config = _events_of(out, loaded, need_kafka=True).kafka
    path = ledger_path(ledger, plans)
    stopping = {"now": False}

    def on_signal(_sig, _frame) -> None:
        stopping["now"] = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if not once else {}
    try:
        with open_ledger(out, path) as book:
            if not once:
                out.info(f"Consuming {config.topic} into {path}; Ctrl-C or SIGTERM to stop.")
            try:
                report = run_consume(config, book, once=once, stop=lambda: stopping["now"], log=out.warning)
            except ConsumeError as exc:
                fail(out, f"error: {exc}")
            except Exception as exc:
                from ..ledger.store import LedgerError

                if isinstance(exc, LedgerError):
                    fail(out, f"error: {exc}")
                raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if report.topic_missing:
        out.info(f"The topic {config.topic} does not exist (yet): nothing to consume.")
        return
    extra = []
    if report.duplicates:
        extra.append(f"{report.duplicates:,} duplicates dropped by id")
    if report.replayed:
        extra.append(f"{report.replayed:,} consumed before (skipped by offset)")
    if report.other:
        extra.append(f"{report.other:,} other events")
    if report.ignored:
        extra.append(f"{report.ignored:,} messages that are not apimon events (ignored)")
    out.info(
        f"Consumed {report.messages:,} messages from {config.topic} ({report.partitions} partitions): "
        f"{report.counted:,} request events counted into {path} (target {stream_target(config.topic)})"
        + (f"; {', '.join(extra)}" if extra else "") + "."
    )


@events_app.command("flush")
def flush(plans: PlanArgs) -> None:
    """Deliver the events waiting in the outboxes (apply's and usage pull's; the local gateway's when it is
    not running). Exit 1 if some could not be delivered."""
    from ..events.publish import cli_outbox_path, command_timeout, deliver_file, describe, gateway_outbox_path

    out = make_output()
    loaded = load_plan(out, plans)
    config = _events_of(out, loaded, need_kafka=False)
    paths = [cli_outbox_path(plans)]
    if loaded.desired.target.provider == "local":
        from ..providers.local import state_dir_of

        state = state_dir_of(loaded.desired)
        paths.append(gateway_outbox_path(state))  # and the other workers' of `gateway serve --workers N`
        paths += sorted(state.glob("events-gateway-*.db"), key=lambda p: (len(p.name), p.name))
    left = 0
    hint = " ".join(plans)
    for path in paths:
        if not path.exists():
            continue
        report = deliver_file(path, config, out.warning, timeout=max(command_timeout(), 30.0))
        if report is None:
            out.info(f"{path}: in use by a running gateway (or another apimon), which delivers it itself.")
            continue
        for note in report.notes:
            out.warning(f"warning: events: {note}")
        line, warn = describe(report, path, hint)
        if warn:
            left += max(report.waiting.values())
            out.error(line.replace("warning: ", "error: ", 1))
        else:
            out.info(f"{path}: " + (line or "nothing to deliver."))
    if left:
        raise typer.Exit(1)
