"""apimon's command line: parse, call, render. No provider logic lives here.

Exit codes: 0 success (no changes), 1 error, 2 changes present (plan --detailed-exitcode),
130 interrupted.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from .cli_billing import invoice as invoice_command
from .cli_billing import usage_app
from .cli_common import fail as _fail
from .cli_common import make_output as _output
from .cli_common import print_diagnostics as _print_diagnostics
from .cli_events import events_app
from .cli_push import billing_app
from .cli_report import portal_app
from .cli_report import report as report_command

app = typer.Typer(
    name="apimon",
    help="Declarative API monetization: products, limits, pricing and subscribers as code, for AWS API "
    "Gateway, Azure API Management, Apigee and a local gateway.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
keys_app = typer.Typer(help="API keys of subscribers.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(keys_app, name="keys")

PlanArgs = Annotated[list[str], typer.Argument(help="Plan file(s); several files merge.", show_default=False,
                                               metavar="PLAN")]
Strict = Annotated[bool, typer.Option("--strict", help="Treat provider capability warnings as errors.")]


app.add_typer(usage_app, name="usage")
app.add_typer(billing_app, name="billing")
app.command("invoice")(invoice_command)
app.command("report")(report_command)
app.add_typer(portal_app, name="portal")
app.add_typer(events_app, name="events")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@app.command()
def validate(plans: PlanArgs, strict: Strict = False) -> None:
    """Check plan files offline: every problem, one line each, FILE:LINE:COL. Exit 0 valid, 1 not."""
    from .planfile.loader import load_plans

    loaded = load_plans(plans, strict=strict)
    out = _output(loaded.secrets)
    _print_diagnostics(out, loaded.diagnostics)
    if loaded.desired is None:
        n = len(loaded.errors)
        _fail(out, f"{n} error{'s' if n != 1 else ''}; the plan is not valid")
    d = loaded.desired
    w = len(loaded.warnings)
    out.print(
        f"The plan is valid: {_count(len(d.products), 'product')}, {_count(len(d.subscribers), 'subscriber')}, target "
        f"{d.target.provider}" + (f" ({w} warning{'s' if w != 1 else ''})" if w else "") + "."
    )


@app.command()
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
    from .engine import make_plan, saved_plan
    from .render.changes import render_changeset

    out = _output(json_mode=json_out)
    run = _run_plan(out, lambda: make_plan(plans, strict=strict, adopt=adopt))
    out.mask.add(*run.loaded.secrets)
    try:
        _show_plan(out, run, json_out, render_changeset)
        if out_file:
            import json

            from .diff import changeset_to_json  # noqa: F401 - saved plan embeds the JSON form

            text = out.mask(json.dumps(saved_plan(run, adopt=adopt), indent=2, default=str))
            _write_private(out_file, text + "\n")
            if not json_out:
                out.info(
                    f"Saved the plan to {out_file}; apply it with `apimon apply --plan-file {out_file}`."
                )
        if run.changes.conflicts:
            raise typer.Exit(1)
        if detailed_exitcode and not run.changes.empty:
            raise typer.Exit(2)
    finally:
        run.provider.close()


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _run_plan(out, make):
    from .planfile.diagnostics import PlanError
    from .providers import ProviderError
    from .providers.base import PlanCheckError

    try:
        return make()
    except PlanError as exc:
        _print_diagnostics(out, exc.diagnostics)
        _fail(
            out,
            "the plan is not valid; nothing was read or changed",
            errors=[str(d) for d in exc.diagnostics],
        )
    except PlanCheckError as exc:
        for p in exc.problems:
            out.error(f"error: {p}")
        _fail(
            out,
            "the plan refers to things the gateway does not have; nothing was changed",
            errors=exc.problems,
        )
    except ProviderError as exc:
        _fail(out, f"error: {exc}")


def _show_plan(out, run, json_out: bool, render_changeset) -> None:
    from .diff import changeset_to_json

    if json_out:
        out.json(changeset_to_json(run.changes))
    else:
        for w in run.changes.warnings:
            out.warning(w)
        render_changeset(out, run.changes)
    for c in run.changes.conflicts:
        out.error(f"error: {c}")


@app.command()
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
    force_policy: Annotated[bool, typer.Option("--force-policy", help="azure: replace product policies that "
                                                                      "hold elements apimon did not write.")] = False,
    strict: Strict = False,
) -> None:
    """Converge the gateway to the plan, touching only what apimon owns."""
    _set_force_policy(force_policy)
    from .engine import make_plan, plan_from_saved

    out = _output(json_mode=json_out)
    if bool(plans) == bool(plan_file):
        _fail(out, "error: give plan files or --plan-file FILE (one of the two)")
    if plan_file:
        run = _run_plan(out, lambda: plan_from_saved(plan_file, strict=strict))
    else:
        run = _run_plan(out, lambda: make_plan(plans, strict=strict, adopt=adopt))
    out.mask.add(*run.loaded.secrets)
    try:
        _apply_run(
            out, run, auto_approve=auto_approve or bool(plan_file), max_deletes=max_deletes, json_out=json_out
        )
    finally:
        run.provider.close()


def _set_force_policy(force: bool) -> None:
    # read by the azure provider; an environment variable so pipelines can set it too
    if force:
        os.environ["APIMON_FORCE_POLICY"] = "1"


def _apply_run(out, run, *, auto_approve: bool, max_deletes: int | None, json_out: bool) -> None:
    from .diff import changeset_to_json
    from .render.changes import render_apply_report, render_changeset, render_outcome

    cs = run.changes
    if not json_out:
        for w in cs.warnings:
            out.warning(w)
        render_changeset(out, cs)
    for c in cs.conflicts:
        out.error(f"error: {c}")
    if cs.conflicts:
        _fail(out, "nothing was applied: resolve the conflicts above (or use --adopt)")
    if cs.empty:
        if json_out:
            out.json({"plan": changeset_to_json(cs), "applied": [], "failed": [], "not_applied": []})
        return
    deletes = cs.summary["deleting"]
    if max_deletes is not None and deletes > max_deletes:
        _fail(
            out,
            f"refusing to apply: the plan deletes {deletes} resource(s), more than --max-deletes "
            f"{max_deletes}; nothing was changed",
        )
    if not auto_approve:
        if not out.interactive:
            _fail(
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
            _fail(out, "Apply cancelled; nothing was changed.")
    report = _apply_with_progress(out, run, render_outcome, show=not json_out)
    if json_out:
        from .diff import change_to_json

        out.json(
            {
                "plan": changeset_to_json(cs),
                "applied": [
                    change_to_json(o.change) | {"outcome": o.message} for o in report.outcomes if o.ok
                ],
                "failed": [change_to_json(o.change) | {"error": o.message} for o in report.failed],
                "not_applied": [change_to_json(c) for c in report.not_applied],
            }
        )
    else:
        render_apply_report(out, report)
    from .events.publish import publish_applied

    publish_applied(out, run, report)
    if report.failed:
        raise typer.Exit(1)


def _apply_with_progress(out, run, render_outcome, *, show: bool):
    changes = run.changes.changes
    if not show:
        return run.provider.apply(changes, run.live)
    if out.err.is_terminal and len(changes) > 1:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("Applying"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=out.out,
            transient=False,
        ) as bar:
            task = bar.add_task("apply", total=len(changes))

            def progress(outcome):
                render_outcome(out, outcome)
                bar.advance(task)

            return run.provider.apply(changes, run.live, progress)
    return run.provider.apply(changes, run.live, lambda o: render_outcome(out, o))


@app.command()
def adopt(
    plans: PlanArgs,
    auto_approve: Annotated[bool, typer.Option("--auto-approve", help="Adopt without asking (CI).")] = False,
    force_policy: Annotated[bool, typer.Option("--force-policy", help="azure: replace product policies that "
                                                                      "hold elements apimon did not write.")] = False,
    strict: Strict = False,
) -> None:
    """Take over existing gateway resources whose names match the plan (apply --adopt)."""
    _set_force_policy(force_policy)
    from .engine import make_plan

    out = _output()
    run = _run_plan(out, lambda: make_plan(plans, strict=strict, adopt=True))
    out.mask.add(*run.loaded.secrets)
    try:
        _apply_run(out, run, auto_approve=auto_approve, max_deletes=0, json_out=False)
    finally:
        run.provider.close()


@app.command()
def schema() -> None:
    """Print the plan file's JSON Schema (plans/apimon-plan.schema.json)."""
    import json

    from .planfile.schema import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@keys_app.command("show")
def keys_show(
    subscriber: Annotated[str, typer.Argument(help="Subscriber id.")],
    plans: Annotated[list[str], typer.Option("--plan", "-p", help="Plan file(s) naming the target.")],
) -> None:
    """Reveal one subscriber's API key, read from the gateway that holds it."""
    from .planfile.diagnostics import PlanError
    from .planfile.loader import load_or_raise
    from .providers import ProviderError, get_provider

    out = _output()
    try:
        loaded = load_or_raise(plans)
        with get_provider(loaded.desired) as provider:
            key = provider.reveal_key(subscriber)
    except PlanError as exc:
        _print_diagnostics(out, exc.diagnostics)
        _fail(out, "the plan is not valid")
    except ProviderError as exc:
        _fail(out, f"error: {exc}")
    if key is None:
        _fail(out, f"error: subscriber {subscriber} has no key on the gateway (apply the plan first?)")
    sys.stdout.write(key + "\n")


@app.command("import")
def import_(
    provider: Annotated[str, typer.Option("--provider", help="aws | azure | apigee | local")],
    out_file: Annotated[
        Optional[str], typer.Option("--out", help="Write the plan here (default: stdout).")
    ] = None,
    region: Annotated[Optional[str], typer.Option(help="aws: region")] = None,
    profile: Annotated[Optional[str], typer.Option(help="aws: credentials profile")] = None,
    endpoint_url: Annotated[
        Optional[str], typer.Option("--endpoint-url", help="aws: endpoint override")
    ] = None,
    subscription_id: Annotated[Optional[str], typer.Option("--subscription-id", help="azure")] = None,
    resource_group: Annotated[Optional[str], typer.Option("--resource-group", help="azure")] = None,
    service: Annotated[Optional[str], typer.Option(help="azure: API Management service name")] = None,
    cloud: Annotated[str, typer.Option(help="azure: public | china | usgovernment")] = "public",
    organization: Annotated[Optional[str], typer.Option(help="apigee: organization")] = None,
    environment: Annotated[
        Optional[list[str]], typer.Option("--environment", help="apigee (repeatable)")
    ] = None,
    endpoint: Annotated[Optional[str], typer.Option(help="azure/apigee: API base URL override")] = None,
    state_dir: Annotated[Optional[str], typer.Option("--state-dir", help="local: state directory")] = None,
    managed_only: Annotated[bool, typer.Option("--managed-only", help="Only resources apimon already manages "
                                                                      "(default: everything, to adopt)")] = False,
) -> None:
    """Write a plan file (format 1) from what a live gateway holds; key values are never written.

    Resources apimon does not manage yet are included: `apimon plan` on the file shows no changes, and
    `apimon adopt` on it lets apimon manage them."""
    from .model import Billing, DesiredState, Target
    from .planfile.writer import plan_document
    from .providers import ProviderError, get_provider

    out = _output()
    settings_by_provider = {
        "aws": {"region": region, "profile": profile, "endpoint_url": endpoint_url},
        "azure": {
            "subscription_id": subscription_id,
            "resource_group": resource_group,
            "service": service,
            "cloud": cloud,
            "endpoint": endpoint,
        },
        "apigee": {
            "organization": organization,
            "environments": environment or [],
            "endpoint": endpoint or "https://apigee.googleapis.com",
        },
        "local": {"state_dir": state_dir or ".apimon"},
    }
    if provider not in settings_by_provider:
        _fail(out, f"error: --provider must be one of aws, azure, apigee, local; got {provider!r}")
    settings = {k: v for k, v in settings_by_provider[provider].items() if v not in (None, [])}
    required = {
        "aws": ["region"],
        "azure": ["subscription_id", "resource_group", "service"],
        "apigee": ["organization", "environments"],
        "local": [],
    }[provider]
    missing = [f"--{r.replace('_', '-')}" for r in required if r not in settings]
    if missing:
        _fail(out, f"error: import from {provider} needs {', '.join(missing)}")
    desired = DesiredState(Target(provider, settings, base_dir=os.getcwd()), Billing(), {}, {})
    try:
        with get_provider(desired) as p:
            exported = p.export_plan(include_unmanaged=not managed_only)
    except ProviderError as exc:
        _fail(out, f"error: {exc}")
    products, subscribers, skipped = _importable(exported["products"], exported["subscribers"])
    header = (
        f"# Imported by `apimon import --provider {provider}`. Pricing is not stored on every gateway:\n"
        "# review `pricing` before billing from this plan. Key values are never exported.\n"
        "# Run `apimon adopt` on this file to let apimon manage what it does not manage yet.\n"
        + "".join(f"# not imported: {line}\n" for line in skipped)
    )
    text = plan_document(exported["target"], products, subscribers, billing=exported.get("billing"), header=header)
    if out_file:
        with open(out_file, "w") as fh:
            fh.write(text)
        out.info(f"Wrote {len(products)} products and {len(subscribers)} subscribers to {out_file}.")
    for line in skipped:
        out.warning(f"warning: not imported: {line}")
    else:
        sys.stdout.write(text)


def _importable(products: list, subscribers: list) -> tuple[list, list, list[str]]:
    """What a plan file can hold: ids a plan accepts, subscribers of imported products."""
    import re

    from .planfile.schema import ID_PATTERN

    ok = re.compile(ID_PATTERN).match
    skipped = [f"product {p.id!r}: not a valid plan id ([a-z0-9][a-z0-9-]{{0,62}})" for p in products if not ok(p.id)]
    kept = [p for p in products if ok(p.id)]
    ids = {p.id for p in kept}
    subs = []
    for s in subscribers:
        if not ok(s.id):
            skipped.append(f"subscriber {s.id!r}: not a valid plan id")
        elif s.product not in ids:
            skipped.append(f"subscriber {s.id!r}: its product {s.product!r} is not imported")
        else:
            subs.append(s)
    return kept, subs, skipped


gateway_app = typer.Typer(
    help="The local gateway: serve the local target's products, keys and limits.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(gateway_app, name="gateway")


@gateway_app.command("serve")
def gateway_serve(
    plans: PlanArgs,
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT to listen on (port 0: any free port).")
    ] = "127.0.0.1:8080",
    connect_timeout: Annotated[
        float, typer.Option("--connect-timeout", help="Seconds to get a connection to an upstream; then 504.")
    ] = 5.0,
    upstream_timeout: Annotated[
        float,
        typer.Option(
            "--upstream-timeout",
            help="Seconds to wait for an upstream's response headers or next body chunk; then 504.",
        ),
    ] = 30.0,
    total_timeout: Annotated[
        float,
        typer.Option(
            "--total-timeout",
            help="Seconds one request may take from its arrival to its response's last byte; then 504 "
            "(or the body is cut).",
        ),
    ] = 300.0,
) -> None:
    """Run the local gateway in front of the plan's upstreams.

    Proxies /API/PATH to target.local.upstreams[API] with key checks (x-api-key), rate limits, quotas and
    usage metering from the local target's state; applies take effect within a second. Stop with Ctrl-C or
    SIGTERM: pending usage counts are written first."""
    from .gateway import GatewayError, config_from_plan, serve
    from .planfile.diagnostics import PlanError
    from .planfile.loader import load_or_raise

    out = _output()
    try:
        loaded = load_or_raise(plans)
    except PlanError as exc:
        _print_diagnostics(out, exc.diagnostics)
        _fail(out, "the plan is not valid")
    out.mask.add(*loaded.secrets)

    def ready(gw) -> None:
        apis = ", ".join(f"{a} -> {u}" for a, u in sorted(gw.upstreams.items())) or "none"
        out.info(
            f"apimon gateway listening on {gw.url} ({len(gw.keys)} keys; upstreams: {apis}; "
            f"event loop: {gw.loop_name}); Ctrl-C to stop"
        )

    try:
        summary = serve(
            config_from_plan(
                loaded.desired,
                listen=listen,
                connect_timeout=connect_timeout,
                upstream_timeout=upstream_timeout,
                total_timeout=total_timeout,
            ),
            on_ready=ready,
        )
    except GatewayError as exc:
        _fail(out, f"error: {exc}")
    written = (
        f"{summary.requests} metered requests written to the usage table"
        if not summary.unwritten
        else f"{summary.requests} metered requests, {summary.written} written to the usage table and "
        f"{summary.unwritten} NOT written"
    )
    out.info(
        f"apimon gateway stopped after {summary.seconds:.0f} s: {written}, "
        f"{summary.unauthenticated} without a valid key (not metered)."
    )
    if summary.lost or summary.lost_quota:
        out.json({"unwritten_usage": summary.lost, "unwritten_quota": summary.lost_quota})
        _fail(out, "error: some usage counts could not be written to the state (printed above as JSON)")


def main() -> None:
    """Console entry point: no traceback reaches the user unless APIMON_DEBUG is set.

    Usage errors (a missing argument, an unknown option) exit 1, not click's 2: exit code 2 means
    "changes present" for `plan --detailed-exitcode`, and CI must never read a typo as that."""
    from typer.exceptions import Abort, TyperException  # typer vendors its own click

    try:
        code = app(standalone_mode=False)
    except Abort:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except TyperException as exc:  # usage errors; `apimon` alone prints the help
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        sys.exit(0 if type(exc).__name__ == "NoArgsIsHelpError" else 1)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except Exception as exc:  # last resort: one line, not a traceback
        if os.environ.get("APIMON_DEBUG"):
            raise
        sys.stderr.write(
            f"apimon: unexpected error: {type(exc).__name__}: {exc}\n"
            "(set APIMON_DEBUG=1 for details, and please report it)\n"
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
