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

# help shows words, not Python types: `PLAN...`, `--out FILE`, `--format [table|csv|jsonl]` (typer alone prints
# `<list[str]>`, `<str>`); options not listed here get their own name (`--region REGION`)
_OPTION_WORDS = {
    "--out": "FILE", "--ledger": "FILE", "--plan-file": "FILE", "--plan": "PLAN", "-p": "PLAN", "--compare": "PLAN",
    "--period": "PERIOD", "--from": "DATE", "--to": "DATE", "--with-metadata": "KEY", "--max-deletes": "N",
    "--listen": "HOST:PORT", "--workers": "N", "--state-dir": "DIR", "--endpoint-url": "URL", "--endpoint": "URL",
}
_ARGUMENT_WORDS = {"plans": "PLAN", "plan": "PLAN"}


def _help_words() -> None:
    from typer.core import TyperArgument, TyperOption

    def choices(param) -> str | None:
        desc = getattr(param, "type_descriptor", None)
        if desc is not None and getattr(desc, "is_choice", False) and desc.choices:
            return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices) + "]"
        return None

    def option_word(self, ctx=None):
        if self.metavar is not None:
            return self.metavar
        listed = choices(self)
        if listed:
            return listed
        for opt in self.opts:
            if opt in _OPTION_WORDS:
                return _OPTION_WORDS[opt]
        longest = max(self.opts, key=len).lstrip("-")
        kind = getattr(getattr(self, "type", None), "name", "")
        if "timeout" in longest:
            return "SECONDS"
        if kind == "integer":
            return "N"
        return longest.replace("-", "_").upper()

    def argument_word(self) -> str:
        word = self.metavar or _ARGUMENT_WORDS.get(self.name or "", (self.name or "ARG").upper())
        return word + ("..." if self.nargs != 1 and not word.endswith("...") else "")

    def argument_usage(self) -> str:
        return argument_word(self) if self.required else f"[{argument_word(self)}]"

    if hasattr(TyperOption, "display_type_rich"):
        TyperOption.display_type_rich = option_word
    if hasattr(TyperArgument, "_rich_display_name"):
        TyperArgument._rich_display_name = argument_word
        TyperArgument.display_type_rich = lambda self, ctx=None: None
        TyperArgument._usage_display_name = argument_usage


_help_words()
from .pipes import QuietPipeGroup, exit_quietly, is_broken_pipe  # noqa: E402

app = typer.Typer(
    cls=QuietPipeGroup,  # a broken pipe (`apimon plan | head`) ends quietly: see pipes.py
    name="apimon",
    help="Declarative API monetization: products, limits, pricing and subscribers as code, for AWS API "
    "Gateway, Azure API Management, Apigee and a local gateway.",
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, powershell)
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

from . import billing, commands, doctor, events, gateway, imports, keys, options, push, report, show  # noqa: E402
from .common import version_text  # noqa: E402


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(version_text() + "\n")
        raise typer.Exit(0)


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                 help="Print apimon's version and exit."),
    no_color: bool = typer.Option(False, "--no-color", help="No colours or styles in the output (also NO_COLOR=1; "
                                  "accepted after the command too, as in `apimon plan PLAN --no-color`)."),
    allow_endpoint: options.AllowEndpoint = None,
    timeout: options.Timeout = None,
    verbose: options.Verbose = False,
) -> None:
    if no_color:
        os.environ["NO_COLOR"] = "1"
    options.global_options(ctx, allow_endpoint=allow_endpoint, timeout=timeout, verbose=verbose)

app.add_typer(keys.keys_app, name="keys")
app.add_typer(billing.usage_app, name="usage")
app.add_typer(push.billing_app, name="billing")
app.command("invoice")(billing.invoice)
app.command("report")(report.report)
app.add_typer(report.portal_app, name="portal")
app.add_typer(events.events_app, name="events")
commands.register(app)
show.register(app)
imports.register(app)
app.add_typer(gateway.gateway_app, name="gateway")
app.command("doctor")(doctor.doctor)


def _no_color_anywhere(args: list[str]) -> list[str]:
    """`--no-color` before or after the command (Terraform users type `apimon plan PLAN --no-color`)."""
    stop = args.index("--") if "--" in args else len(args)
    if "--no-color" in args[:stop]:
        os.environ["NO_COLOR"] = "1"
        return [a for a in args[:stop] if a != "--no-color"] + args[stop:]
    return args


def _terminate(signum, frame) -> None:
    """SIGTERM is handled as Ctrl-C: the command stops the way it does on an interrupt (apply reports)."""
    raise KeyboardInterrupt


def _json_usage_error(args: list[str], message: str) -> None:
    """With --json, a command-line mistake (or an interrupt, or an unexpected error) is a JSON document on
    stdout too (CI parses stdout)."""
    stop = args.index("--") if "--" in args else len(args)
    given = args[:stop]
    as_json = "--json" in given or "--format=json" in given or any(
        a == "--format" and b == "json" for a, b in zip(given, given[1:], strict=False))
    if as_json:
        import json

        sys.stdout.write(json.dumps({"errors": [{"file": None, "line": None, "column": None, "field": None,
                                                 "message": message}]}, indent=2) + "\n")


def main() -> None:
    """Console entry point: no traceback reaches the user unless APIMON_DEBUG is set.

    Usage errors (a missing argument, an unknown option) exit 1, not click's 2: exit code 2 means
    "changes present" for `plan --detailed-exitcode`, and CI must never read a typo as that.
    Ctrl-C and SIGTERM exit 130 after "interrupted" (apply prints its report first)."""
    import signal

    from typer.exceptions import Abort, TyperException  # typer vendors its own click

    args = _no_color_anywhere(sys.argv[1:])
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(args=options.hoist(args), prog_name="apimon", standalone_mode=False)
        sys.stdout.flush()  # a closed pipe shows here, not as "Exception ignored" at exit
    except Abort:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except TyperException as exc:  # usage errors; `apimon` alone prints the help
        display = getattr(exc, "show", None)
        if display is not None:
            display()
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.exit(0)
        _json_usage_error(args, exc.format_message() if hasattr(exc, "format_message") else str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        _json_usage_error(args, "interrupted")
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
        _json_usage_error(args, f"unexpected error: {type(exc).__name__}: {exc}")
        sys.exit(1)
    if code == 130:  # typer turns a KeyboardInterrupt into exit code 130 without a word
        sys.stderr.write("interrupted\n")
        _json_usage_error(args, "interrupted")
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
