"""A change set in the style of `terraform plan`: + create, ~ update, - destroy, field before -> after."""

from __future__ import annotations

from ..diff import Change, ChangeSet
from ..providers.base import ApplyReport, ChangeOutcome
from .output import Output

_SYMBOL = {"create": ("+", "green"), "update": ("~", "yellow"), "delete": ("-", "red")}


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
    verb = {"create": "will be created", "update": "will be updated in place",
            "delete": "will be destroyed"}[c.action]
    if c.adopt:
        verb = "will be adopted (apimon takes ownership)"
    out.print(f"  {sym} {c.kind} {c.id} {verb}", style=f"bold {style}")
    for f in c.fields:
        if c.action == "create":
            out.print(f"      + {f.field} = {_value(f.after)}", style=style)
        elif c.action == "delete":
            out.print(f"      - {f.field} = {_value(f.before)}", style=style)
        else:
            out.print(f"      ~ {f.field}: {_value(f.before)} -> {_value(f.after)}", style=style)


def render_changeset(out: Output, cs: ChangeSet) -> None:
    for u in cs.unmanaged:
        detail = f" ({u.detail})" if u.detail else ""
        out.print(f"  = {u.kind} {u.name}: unmanaged, left alone{detail}", style="dim")
    for c in cs.changes:
        render_change(out, c)
    for note in cs.notes:
        out.print(f"  note: {note}", style="cyan")
    s = cs.summary
    if cs.empty:
        out.print("No changes. The gateway matches the plan.", style="bold green")
    else:
        out.print("")
        out.print(f"Plan: {s['creating']} to add, {s['updating']} to change, {s['deleting']} to destroy.",
                  style="bold red" if s["deleting"] else "bold")


def render_outcome(out: Output, o: ChangeOutcome) -> None:
    sym, style = _SYMBOL[o.change.action]
    if o.ok:
        out.print(f"  {sym} {o.change.kind} {o.change.id}: {o.message}", style=style)
    else:
        out.error(f"  ! {o.change.kind} {o.change.id}: FAILED: {o.message}")


def render_apply_report(out: Output, report: ApplyReport) -> None:
    done = [o for o in report.outcomes if o.ok]
    if not report.failed:
        out.print(f"Apply complete: {len(done)} change(s) applied.", style="bold green")
        return
    out.error(f"Apply stopped: {len(done)} change(s) applied, {len(report.failed)} failed, "
              f"{len(report.not_applied)} not attempted.")
    for o in done:
        out.error(f"  applied:      {o.change.action} {o.change.kind} {o.change.id}")
    for o in report.failed:
        out.error(f"  failed:       {o.change.action} {o.change.kind} {o.change.id}: {o.message}")
    for c in report.not_applied:
        out.error(f"  not applied:  {c.action} {c.kind} {c.id}")
    out.error("Fix the cause and run `apimon apply` again: it continues from what is live.")
