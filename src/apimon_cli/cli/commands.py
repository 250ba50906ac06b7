"""`apimon validate | plan | apply | adopt | schema`: the reconcile loop's commands over the engine."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from .common import PlanArgs, Strict, fail, make_output, print_diagnostics, run_plan, write_private


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def validate(plans: PlanArgs, strict: Strict = False) -> None:
    """Check plan files offline: every problem, one line each, FILE:LINE:COL. Exit 0 valid, 1 not."""
    from ..planfile.loader import load_plans

    loaded = load_plans(plans, strict=strict)
    out = make_output(loaded.secrets)
    print_diagnostics(out, loaded.diagnostics)
    if loaded.desired is None:
        n = len(loaded.errors)
        fail(out, f"{n} error{'s' if n != 1 else ''}; the plan is not valid")
    d = loaded.desired
    w = len(loaded.warnings)
    out.print(
        f"The plan is valid: {_count(len(d.products), 'product')}, {_count(len(d.subscribers), 'subscriber')}, target "
        f"{d.target.provider}" + (f" ({w} warning{'s' if w != 1 else ''})" if w else "") + "."
    )


def plan(
    plans: PlanArgs,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the plan as JSON (always printed, also with --detailed-exitcode)."
        ),
    ] = False,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 0 no changes, 2 changes, 1 error.")
    ] = False,
    out_file: Annotated[
        Optional[str], typer.Option("--out", help="Save the plan for `apply --plan-file`.")
    ] = None,
    adopt: Annotated[
        bool, typer.Option("--adopt", help="Plan to take over existing resources whose names match the plan.")
    ] = False,
    strict: Strict = False,
) -> None:
    """Show what apply would change on the gateway."""
    from ..reconcile.engine import make_plan
    from ..reconcile.saved import saved_plan
    from ..render.changes import render_plan

    out = make_output(json_mode=json_out)
    run = run_plan(out, lambda: make_plan(plans, strict=strict, adopt=adopt))
    out.mask.add(*run.loaded.secrets)
    try:
        from .keys import print_rotations_due, rotations_due

        render_plan(out, run.changes, json_out=json_out)
        due = rotations_due(run)
        if not json_out:
            print_rotations_due(out, run, due)
        if out_file:
            import json

            text = out.mask(json.dumps(saved_plan(run, adopt=adopt), indent=2, default=str))
            write_private(out_file, text + "\n")
            if not json_out:
                out.info(
                    f"Saved the plan to {out_file}; apply it with `apimon apply --plan-file {out_file}`."
                )
        if run.changes.conflicts:
            raise typer.Exit(1)
        if detailed_exitcode and (not run.changes.empty or due):
            raise typer.Exit(2)
    finally:
        run.provider.close()


ForcePolicy = Annotated[bool, typer.Option("--force-policy", help="azure: replace product policies that hold "
                                                                  "elements apimon did not write.")]


def apply(
    plans: Annotated[Optional[list[str]], typer.Argument(help="Plan file(s).", show_default=False)] = None,
    plan_file: Annotated[
        Optional[str],
        typer.Option(
            "--plan-file", help="Apply a plan saved with `plan --out`; refused if anything moved since."
        ),
    ] = None,
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Apply without asking (CI).")] = False,
    max_deletes: Annotated[
        Optional[int], typer.Option("--max-deletes", min=0, help="Refuse a plan that deletes more.")
    ] = None,
    adopt: Annotated[
        bool,
        typer.Option(
            "--adopt", help="Take over existing resources whose names match the plan (shown before applying)."
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan and the outcome as JSON.")] = False,
    force_policy: ForcePolicy = False,
    strict: Strict = False,
) -> None:
    """Converge the gateway to the plan, touching only what apimon owns."""
    _set_force_policy(force_policy)
    from ..reconcile.engine import make_plan
    from ..reconcile.saved import plan_from_saved

    out = make_output(json_mode=json_out)
    if bool(plans) == bool(plan_file):
        fail(out, "error: give plan files or --plan-file FILE (one of the two)")
    if plan_file:
        run = run_plan(out, lambda: plan_from_saved(plan_file, strict=strict, lock=True))
    else:  # the apply lock is taken before the gateway is read: a concurrent apply waits, then plans afresh
        run = run_plan(out, lambda: make_plan(plans, strict=strict, adopt=adopt, lock=True))
    out.mask.add(*run.loaded.secrets)
    try:
        _apply_run(out, run, auto_approve=auto_approve or bool(plan_file), max_deletes=max_deletes, json_out=json_out)
    finally:
        run.close()


def _set_force_policy(force: bool) -> None:
    # read by the azure provider; an environment variable so pipelines can set it too
    if force:
        os.environ["APIMON_FORCE_POLICY"] = "1"


def _apply_run(out, run, *, auto_approve: bool, max_deletes: int | None, json_out: bool) -> None:
    from ..render.changes import render_apply_json, render_conflicts, render_plan

    cs = run.changes
    if json_out:  # the JSON comes once apply is done
        render_conflicts(out, cs)
    else:
        render_plan(out, cs, json_out=False)
    if cs.conflicts:
        fail(out, "nothing was applied: resolve the conflicts above (or use --adopt)")
    from .keys import apply_key_lifecycle, print_rotations_due, rotations_due

    due = rotations_due(run)
    if not json_out:
        print_rotations_due(out, run, due)
    if cs.empty:
        if due and not auto_approve:
            _confirm(out, 0)
        ok = apply_key_lifecycle(out, run, due, show=not json_out)
        if json_out:
            render_apply_json(out, cs, None)
        if not ok:
            raise typer.Exit(1)
        return
    deletes = cs.summary["deleting"]
    if max_deletes is not None and deletes > max_deletes:
        fail(
            out,
            f"refusing to apply: the plan deletes {deletes} resource(s), more than --max-deletes "
            f"{max_deletes}; nothing was changed",
        )
    if not auto_approve:
        _confirm(out, deletes)
    report = _apply_with_progress(out, run, show=not json_out)
    if json_out:
        render_apply_json(out, cs, report)
    else:
        from ..render.changes import render_apply_report

        render_apply_report(out, report)
    from ..events.publish import publish_applied

    publish_applied(out, run, report)
    if report.failed:
        raise typer.Exit(1)
    if not apply_key_lifecycle(out, run, due, show=not json_out):
        raise typer.Exit(1)


def _confirm(out, deletes: int) -> None:
    if not out.interactive:
        fail(
            out,
            "refusing to apply without confirmation: there is no terminal to ask on; "
            "pass --auto-approve (CI) or apply a reviewed plan with --plan-file",
        )
    warn = f" {deletes} resource(s) will be DESTROYED." if deletes else ""
    out.info(f"Do you want to apply these changes?{warn} Only 'yes' will be accepted.", style="bold")
    try:
        answer = input("  Enter a value: ")
    except EOFError:
        answer = ""
    if answer.strip() != "yes":
        fail(out, "Apply cancelled; nothing was changed.")


def _apply_with_progress(out, run, *, show: bool):
    from ..providers import ProviderError
    from ..reconcile.engine import apply_plan
    from ..render.changes import apply_progress

    try:
        if not show:
            return apply_plan(run)
        with apply_progress(out, len(run.changes.changes)) as progress:
            return apply_plan(run, progress=progress)
    except ProviderError as exc:  # the lock, or a gateway that moved while planning: nothing was applied
        fail(out, f"error: {exc}")


def adopt(
    plans: PlanArgs,
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Adopt without asking (CI).")] = False,
    force_policy: ForcePolicy = False,
    strict: Strict = False,
) -> None:
    """Take over existing gateway resources whose names match the plan (apply --adopt)."""
    _set_force_policy(force_policy)
    from ..reconcile.engine import make_plan

    out = make_output()
    run = run_plan(out, lambda: make_plan(plans, strict=strict, adopt=True, lock=True))
    out.mask.add(*run.loaded.secrets)
    try:
        _apply_run(out, run, auto_approve=auto_approve, max_deletes=0, json_out=False)
    finally:
        run.close()


def schema() -> None:
    """Print the plan file's JSON Schema (plans/apimon-plan.schema.json)."""
    import json

    from ..planfile.schema import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


def register(app: typer.Typer) -> None:
    for command in (validate, plan, apply, adopt, schema):
        app.command()(command)
