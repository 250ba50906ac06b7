"""apimon's command line: parse, call the engine, render. No provider logic lives here.

Exit codes: 0 success (no changes), 1 error, 2 changes present (plan --detailed-exitcode),
130 interrupted, 141 stdout closed by its reader (`apimon plan | head`).

Commands live in ``commands`` (validate, plan, apply, adopt, schema), ``keys``, ``imports`` (import),
``gateway``, ``billing`` (usage, invoice), ``push`` (billing push), ``report`` (report, portal) and
``events``; ``common`` holds what they share.
"""

from __future__ import annotations

import os
import sys

import typer

from .pipes import QuietPipeGroup, exit_quietly, is_broken_pipe

app = typer.Typer(
    cls=QuietPipeGroup,  # a broken pipe (`apimon plan | head`) ends quietly: see pipes.py
    name="apimon",
    help="Declarative API monetization: products, limits, pricing and subscribers as code, for AWS API "
    "Gateway, Azure API Management, Apigee and a local gateway.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

from . import billing, commands, events, gateway, imports, keys, push, report  # noqa: E402 - they add to ``app``

app.add_typer(keys.keys_app, name="keys")
app.add_typer(billing.usage_app, name="usage")
app.add_typer(push.billing_app, name="billing")
app.command("invoice")(billing.invoice)
app.command("report")(report.report)
app.add_typer(report.portal_app, name="portal")
app.add_typer(events.events_app, name="events")
commands.register(app)
imports.register(app)
app.add_typer(gateway.gateway_app, name="gateway")


def main() -> None:
    """Console entry point: no traceback reaches the user unless APIMON_DEBUG is set.

    Usage errors (a missing argument, an unknown option) exit 1, not click's 2: exit code 2 means
    "changes present" for `plan --detailed-exitcode`, and CI must never read a typo as that."""
    from typer.exceptions import Abort, TyperException  # typer vendors its own click

    try:
        code = app(standalone_mode=False)
        sys.stdout.flush()  # a closed pipe shows here, not as "Exception ignored" at exit
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
        if is_broken_pipe(exc):  # the reader of stdout stopped early (`| head`): not an error, exit 141
            exit_quietly()
        if os.environ.get("APIMON_DEBUG"):
            raise
        sys.stderr.write(
            f"apimon: unexpected error: {type(exc).__name__}: {exc}\n"
            "(set APIMON_DEBUG=1 for details, and please report it)\n"
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
