"""A change set in the style of `terraform plan`: + create, ~ update, - destroy, -/+ replace, field
before -> after; apply progress and the apply report."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..reconcile.changes import Change, ChangeSet, change_to_json, changeset_to_json
from ..reconcile.engine import ApplyReport, ChangeOutcome
from .output import Output

_SYMBOL = {"create": ("+", "green"), "update": ("~", "yellow"), "delete": ("-", "red"), "replace": ("-/+", "red")}
_VERB = {"create": "will be created", "update": "will be updated in place", "delete": "will be destroyed",
         "replace": "will be replaced"}


def _value(v: object) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v if v == "(sensitive)" else f'"{v}"'
    return str(v)


def render_change(out: Output, c: Change) -> None:
    sym, style = _SYMBOL[c.action]
    verb = "will be adopted (apimon takes ownership)" if c.adopt else _VERB[c.action]
    out.print(f"  {sym} {c.kind} {c.id} {verb}", style=f"bold {style}")
    if c.action == "replace":
        order = "the new one is made before the old one is removed" if c.create_before_delete else \
            "the old one is removed before the new one is made"
        out.print(f"      # {c.reason}; {order}", style=style)
    for f in c.fields:
        if c.action == "create":
            out.print(f"      + {f.field} = {_value(f.after)}", style=style)
        elif c.action == "delete":
            out.print(f"      - {f.field} = {_value(f.before)}", style=style)
        else:
            out.print(f"      ~ {f.field}: {_value(f.before)} -> {_value(f.after)}", style=style)


def summary_line(cs: ChangeSet) -> str:
    """Terraform's summary: a replacement counts once as an add and once as a destroy."""
    s = cs.summary
    return (f"Plan: {s['creating'] + s['replacing']} to add, {s['updating']} to change, "
            f"{s['deleting'] + s['replacing']} to destroy.")


def render_changeset(out: Output, cs: ChangeSet) -> None:
    for u in cs.unmanaged:
        detail = f" ({u.detail})" if u.detail else ""
        out.print(f"  = {u.kind} {u.name}: unmanaged, left alone{detail}", style="dim")
    for c in cs.changes:
        render_change(out, c)
    for note in cs.notes:
        out.print(f"  note: {note}", style="cyan")
    if cs.empty:
        out.print("No changes. The gateway matches the plan.", style="bold green")
    else:
        out.print("")
        out.print(summary_line(cs), style="bold red" if cs.summary["deleting"] or cs.summary["replacing"]
                  else "bold")


def render_plan(out: Output, cs: ChangeSet, *, json_out: bool) -> None:
    """What `plan` and `apply` show before acting: warnings and the diff (or the JSON), then conflicts."""
    if json_out:
        out.json(changeset_to_json(cs))
    else:
        for w in cs.warnings:
            out.warning(w)
        render_changeset(out, cs)
    render_conflicts(out, cs)


def render_conflicts(out: Output, cs: ChangeSet) -> None:
    for c in cs.conflicts:
        out.error(f"error: {c}")


def render_apply_json(out: Output, cs: ChangeSet, report: ApplyReport | None, *, interrupted: bool = False) -> None:
    """`apply --json`: the plan and what became of each change (``interrupted``: Ctrl-C or SIGTERM)."""
    report = report or ApplyReport()
    out.json({
        "plan": changeset_to_json(cs),
        "applied": [change_to_json(o.change) | {"outcome": o.message} for o in report.applied],
        "failed": [change_to_json(o.change) | {"error": o.message} for o in report.failed],
        "not_applied": [change_to_json(c) for c in report.not_applied],
        **({"interrupted": True} if interrupted else {}),
    })


@contextmanager
def apply_progress(out: Output, total: int) -> Iterator[Callable[[ChangeOutcome], None]]:
    """A progress callback for the engine: each outcome as a line, and a bar on a terminal."""
    if not (out.err.is_terminal and total > 1):
        yield lambda o: render_outcome(out, o)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("Applying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=out.out,
                  transient=False) as bar:
        task = bar.add_task("apply", total=total)

        def progress(outcome: ChangeOutcome) -> None:
            render_outcome(out, outcome)
            bar.advance(task)

        yield progress


def render_outcome(out: Output, o: ChangeOutcome) -> None:
    sym, style = _SYMBOL[o.change.action]
    if o.ok:
        out.print(f"  {sym} {o.change.kind} {o.change.id}: {o.message}", style=style)
    else:
        out.error(f"  ! {o.change.kind} {o.change.id}: FAILED: {o.message}")


def _changes(n: int) -> str:
    return f"{n} change{'' if n == 1 else 's'}"


def render_apply_report(out: Output, report: ApplyReport, *, interrupted: bool = False) -> None:
    """The apply's outcome; a failure (or an interrupt) lists what was applied, failed, not attempted."""
    done = report.applied
    if not report.failed and not interrupted:
        out.print(f"Apply complete: {_changes(len(done))} applied.", style="bold green")
        return
    out.error(f"Apply {'interrupted' if interrupted else 'stopped'}: {_changes(len(done))} applied, "
              f"{len(report.failed)} failed, {len(report.not_applied)} not attempted.")
    for o in done:
        out.error(f"  applied:      {o.change.action} {o.change.kind} {o.change.id}")
    for o in report.failed:
        out.error(f"  failed:       {o.change.action} {o.change.kind} {o.change.id}: {o.message}")
    for c in report.not_applied:
        out.error(f"  not applied:  {c.action} {c.kind} {c.id}")
    out.error("Run `apimon apply` again: it continues from what is live." if interrupted else
              "Fix the cause and run `apimon apply` again: it continues from what is live.")
