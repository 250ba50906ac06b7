"""`apimon validate | plan | apply | adopt | schema`: the reconcile loop's commands over the engine."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Literal, Optional

import typer

from .common import (
    JsonOpt,
    PlanArgs,
    Strict,
    error_entry,
    fail,
    json_errors,
    make_output,
    print_diagnostics,
    run_plan,
    write_private,
)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def validate(plans: PlanArgs, strict: Strict = False, json_out: JsonOpt = False) -> None:
    """Check plan files offline: every problem, one line each, FILE:LINE:COL. Exit 0 valid, 1 not."""
    from ..planfile.loader import load_plans

    loaded = load_plans(plans, strict=strict)
    out = make_output(loaded.secrets, json_mode=json_out)
    print_diagnostics(out, loaded.diagnostics)
    if loaded.desired is None:
        n = len(loaded.errors)
        if json_out:
            out.json({"valid": False, **json_errors(loaded.errors),
                      "warnings": [error_entry(w) for w in loaded.warnings]})
            raise typer.Exit(1)
        fail(out, f"{_count(n, 'error')}; the plan is not valid")
    d = loaded.desired
    w = len(loaded.warnings)
    if json_out:
        out.json({"valid": True, "target": d.target.provider, "products": len(d.products),
                  "subscribers": len(d.subscribers), "errors": [],
                  "warnings": [error_entry(x) for x in loaded.warnings]})
        return
    out.print(
        f"The plan is valid: {_count(len(d.products), 'product')}, {_count(len(d.subscribers), 'subscriber')}, target "
        f"{d.target.provider}" + (f" ({_count(w, 'warning')})" if w else "") + "."
    )


PlanFormat = Annotated[Optional[Literal["text", "json", "markdown"]], typer.Option(
    "--format", help="text (default), json (the same as --json) or markdown (a pull-request comment: the summary "
                     "line, then each resource in a <details> block; key values never).", show_default=False)]
Full = Annotated[bool, typer.Option("--full", help="Show every change of a large plan (more than 1,000 "
                                                   "changes are summarised: per-product counts, the first 20 "
                                                   "of each kind).")]


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
    fmt: PlanFormat = None,
    full: Full = False,
) -> None:
    """Show what apply would change on the gateway."""
    from ..reconcile.engine import make_plan
    from ..reconcile.saved import saved_plan
    from ..render.changes import render_plan

    if fmt == "json":
        json_out = True
    elif fmt in ("text", "markdown") and json_out:
        out = make_output(json_mode=True)
        fail(out, f"error: --json and --format {fmt} contradict each other; give one")
    out = make_output(json_mode=json_out)
    run = run_plan(out, lambda: make_plan(plans, strict=strict, adopt=adopt))
    out.mask.add(*run.loaded.secrets)
    try:
        from .keys import print_rotations_due, rotations_due, rotations_json

        due = rotations_due(run)
        if fmt == "markdown":
            from ..reconcile.changes import changeset_to_json
            from ..render.changes import render_conflicts
            from ..render.markdown import render_markdown

            doc = changeset_to_json(run.changes)
            doc["key_rotations"] = rotations_json(run, due)
            sys.stdout.write(out.mask(render_markdown(doc)))
            sys.stdout.flush()
            render_conflicts(out, run.changes)
        else:
            render_plan(out, run.changes, json_out=json_out, full=full, key_rotations=rotations_json(run, due))
        if not json_out and fmt != "markdown":
            print_rotations_due(out, run, due)
        if out_file:
            import json

            from ..reconcile.saved import SavedPlanError

            try:
                doc = saved_plan(run, adopt=adopt, saved_path=out_file)
            except SavedPlanError as exc:
                fail(out, f"error: {exc}")
            text = out.mask(json.dumps(doc, indent=2, default=str))
            write_private(out, out_file, text + "\n")
            if not json_out and fmt != "markdown":
                out.info(
                    f"Saved the plan to {out_file}; apply it with `apimon apply --plan-file {out_file}`."
                )
        if run.changes.conflicts:
            raise typer.Exit(1)
        if detailed_exitcode and (not run.changes.empty or due):
            raise typer.Exit(2)
    finally:
        run.close()


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
    full: Full = False,
) -> None:
    """Converge the gateway to the plan, touching only what apimon owns."""
    _set_force_policy(force_policy)
    from ..reconcile.engine import make_plan
    from ..reconcile.saved import plan_from_saved

    out = make_output(json_mode=json_out)
    if bool(plans) == bool(plan_file):
        fail(out, "error: give plan files or --plan-file FILE (one of the two)")
    try:
        if plan_file:
            run = run_plan(out, lambda: plan_from_saved(plan_file, strict=strict, lock=True))
        else:  # the apply lock is taken before the gateway is read: a concurrent apply waits, then plans afresh
            run = run_plan(out, lambda: make_plan(plans, strict=strict, adopt=adopt, lock=True))
    except KeyboardInterrupt:  # while reading the gateway: nothing was changed
        _interrupted(out, None, None, json_out=json_out)
    out.mask.add(*run.loaded.secrets)
    try:
        _apply_run(out, run, auto_approve=auto_approve or bool(plan_file), max_deletes=max_deletes, json_out=json_out,
                   full=full)
    finally:
        run.close()


def _set_force_policy(force: bool) -> None:
    # read by the azure provider; an environment variable so pipelines can set it too
    if force:
        os.environ["APIMON_FORCE_POLICY"] = "1"


def _apply_run(out, run, *, auto_approve: bool, max_deletes: int | None, json_out: bool,
               command: str = "apply", full: bool = False) -> None:
    from ..render.changes import render_apply_json, render_conflicts, render_plan
    from .keys import apply_key_lifecycle, print_rotations_due, rotations_due, rotations_json

    cs = run.changes
    due = rotations_due(run) if not cs.conflicts else []
    rotations = rotations_json(run, due)
    if json_out and not auto_approve and out.interactive:
        # someone at a terminal is asked to approve: they see the plan (on stderr, like the prompt);
        # stdout gets only the JSON document, once apply is done
        render_plan(out.to_stderr(), cs, json_out=False, key_rotations=rotations)
        print_rotations_due(out.to_stderr(), run, due)
    elif json_out:  # the JSON comes once apply is done
        render_conflicts(out, cs)
    else:
        render_plan(out, cs, json_out=False, full=full, key_rotations=rotations)
    if cs.conflicts:
        fail(out, "nothing was applied: resolve the conflicts above" + (" (or use --adopt)" if command == "apply"
                                                                         else ""))
    if not json_out:
        print_rotations_due(out, run, due)
    if cs.empty:
        if due and not auto_approve:
            _confirm(out, 0, command)
        ok = apply_key_lifecycle(out, run, due, show=not json_out)
        if json_out:
            render_apply_json(out, cs, None, key_rotations=rotations)
        if not ok:
            raise typer.Exit(1)
        return
    deletes = cs.summary["deleting"]
    if max_deletes is not None and deletes > max_deletes:
        if command == "adopt":
            fail(out, f"refusing to adopt: the plan also deletes {_count(deletes, 'resource')}; adopt never deletes. "
                      "Run `apimon apply` to review deletions; nothing was changed")
        fail(
            out,
            f"refusing to apply: the plan deletes {_count(deletes, 'resource')}, more than --max-deletes "
            f"{max_deletes}; nothing was changed",
        )
    outcomes: list = []
    # Azure keeps the end of a key.from_env value's overlap in the ledger's rotation journal, written as it applies
    from .keys import attach_journal

    attach_journal(run.provider, list(run.loaded.desired.files), None)
    try:
        if not auto_approve:
            _confirm(out, deletes, command)
        report = _apply_with_progress(out, run, show=not json_out, outcomes=outcomes, full=full)
    except KeyboardInterrupt:
        _interrupted(out, run, outcomes, json_out=json_out)
    if json_out:
        render_apply_json(out, cs, report, key_rotations=rotations)
    else:
        from ..render.changes import render_apply_report

        render_apply_report(out, report)
    from ..events.publish import publish_applied

    publish_applied(out, run, report)
    if report.failed:
        raise typer.Exit(1)
    if not apply_key_lifecycle(out, run, due, show=not json_out):
        raise typer.Exit(1)


def _interrupted(out, run, outcomes: list | None, *, json_out: bool):
    """Ctrl-C or SIGTERM: say so, report like a failure (applied / failed / not attempted), exit 130."""
    from ..reconcile.engine import ApplyReport
    from ..render.changes import render_apply_json, render_apply_report

    out.error("interrupted")
    if run is None:  # before the plan was made: the gateway was only read
        out.error("Nothing was applied: apimon was still reading the gateway.")
        if json_out:
            out.json({"interrupted": True, "applied": [], "failed": [], "not_applied": []})
        raise SystemExit(130)
    done = {id(o.change) for o in outcomes or []}
    report = ApplyReport(outcomes=list(outcomes or []),
                         not_applied=[c for c in run.changes.changes if id(c) not in done])
    render_apply_report(out, report, interrupted=True)
    if json_out:
        render_apply_json(out, run.changes, report, interrupted=True)
    try:
        from ..events.publish import publish_applied

        if report.outcomes:
            publish_applied(out, run, report)
    except Exception as exc:  # the report above is what matters now: say it, and still exit 130
        out.warning(f"warning: events: the applied changes' events were not published: {exc}")
    raise SystemExit(130)


def _confirm(out, deletes: int, command: str = "apply") -> None:
    if not out.interactive:
        fail(
            out,
            f"refusing to {command} without confirmation: there is no terminal to ask on; pass --auto-approve (CI)"
            + (" or apply a reviewed plan with --plan-file" if command == "apply" else ""),
        )
    warn = f" {_count(deletes, 'resource')} will be DESTROYED." if deletes else ""
    out.info(f"Do you want to apply these changes?{warn} Only 'yes' will be accepted.", style="bold")
    # the prompt goes to stderr, like every message: stdout is for results (`apply --json > report.json`)
    sys.stderr.write("  Enter a value: ")
    sys.stderr.flush()
    answer = sys.stdin.readline()  # "" at end of input
    if answer.strip() != "yes":
        fail(out, f"{command.capitalize()} cancelled; nothing was changed.")


def _apply_with_progress(out, run, *, show: bool, outcomes: list, full: bool = False):
    """Apply; every outcome is also collected in ``outcomes``, so an interrupt can still report them."""
    from ..providers import ProviderError
    from ..reconcile.engine import apply_plan
    from ..render.changes import apply_progress

    try:
        if not show:
            return apply_plan(run, progress=outcomes.append)
        with apply_progress(out, len(run.changes.changes), full=full) as progress:
            def both(outcome) -> None:
                outcomes.append(outcome)
                progress(outcome)

            return apply_plan(run, progress=both)
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
        _apply_run(out, run, auto_approve=auto_approve, max_deletes=0, json_out=False, command="adopt")
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
