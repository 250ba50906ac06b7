"""Pieces every CLI module shares: output, failing with one clear line, loading a plan, planning."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

PlanArgs = Annotated[list[str], typer.Argument(help="Plan file(s); several files merge.", show_default=False,
                                               metavar="PLAN")]
Strict = Annotated[bool, typer.Option("--strict", help="Treat provider capability warnings as errors.")]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (errors too: "
                                                    "{\"errors\": [{file, line, column, field, message}]}).")]


def make_output(secrets=(), json_mode: bool = False):
    from ..render.output import Masker, Output

    return Output(Masker(secrets), json_mode=json_mode)


_LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<column>\d+): (?:error|warning): (?P<message>.*)$", re.S)


def error_entry(error) -> dict:
    """One entry of `{"errors": [...]}`: ``{"file", "line", "column", "field", "message"}``; what is not known
    (a gateway error has no file) is null. ``error``: a Diagnostic, a dict, or a message line."""
    if isinstance(error, dict):
        return {k: error.get(k) for k in ("file", "line", "column", "field", "message")}
    if hasattr(error, "severity") and hasattr(error, "col"):  # planfile.diagnostics.Diagnostic
        return {"file": error.file, "line": error.line, "column": error.col, "field": error.path or None,
                "message": error.message}
    text = str(error)
    m = _LOCATED.match(text)
    if m:
        return {"file": m["file"], "line": int(m["line"]), "column": int(m["column"]), "field": None,
                "message": m["message"]}
    return {"file": None, "line": None, "column": None, "field": None,
            "message": text[len("error: "):] if text.startswith("error: ") else text}


def json_errors(errors) -> dict:
    return {"errors": [error_entry(e) for e in errors]}


def fail(out, message: str, code: int = 1, errors: list | None = None):
    """Report and exit. In --json mode stdout still gets a JSON document, so CI always has a report:
    ``{"errors": [{"file", "line", "column", "field", "message"}]}`` with each located problem in
    ``errors`` (Diagnostics or lines), else ``message`` alone."""
    out.error(message)
    if out.json_mode:
        out.json(json_errors(errors or [message]))
    raise typer.Exit(code)


def print_diagnostics(out, diagnostics) -> None:
    for d in diagnostics:
        (out.error if d.severity == "error" else out.warning)(str(d))


def load_plan(out, plans: list[str], *, strict: bool = False):
    """Load and validate, or print every problem and exit 1."""
    from ..planfile.diagnostics import PlanError
    from ..planfile.loader import load_or_raise

    try:
        loaded = load_or_raise(plans, strict=strict)
    except PlanError as exc:
        print_diagnostics(out, exc.diagnostics)
        fail(out, "the plan is not valid", errors=[d for d in exc.diagnostics if d.severity == "error"])
    out.mask.add(*loaded.secrets)
    return loaded


def parse_day(out, text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        fail(out, f"error: {option}: not a date: {text!r}; use YYYY-MM-DD")


def ledger_path(explicit: str | None, plan_files: list[str] | tuple[str, ...] | None) -> Path:
    """--ledger, else APIMON_LEDGER, else .apimon/ledger.db beside the (first) plan file, else in cwd.

    A ``postgresql://`` URL gives a ``DatabaseURL`` (prints with the password masked) instead of a path."""
    from ..ledger.pg import DatabaseURL, is_database_url

    given = explicit or os.environ.get("APIMON_LEDGER")
    if given and is_database_url(given):
        return DatabaseURL(given)
    if given:
        return Path(given)
    base = Path(plan_files[0]).resolve().parent if plan_files else Path.cwd()
    return base / ".apimon" / "ledger.db"


def open_ledger(out, path: Path, *, must_exist: bool = False):
    """Open the ledger; with ``must_exist`` (commands that only read it) a missing one is an error, not a
    new empty file."""
    from ..ledger.store import Ledger, LedgerError

    database = not isinstance(path, Path)
    if must_exist and not database and not path.exists():
        fail(out, f"error: no ledger at {path}; run `apimon usage pull` first (or give --ledger)")
    try:
        return Ledger.open(path, create=not must_exist) if database else Ledger.open(path)
    except LedgerError as exc:
        fail(out, f"error: {exc}")
    except OSError as exc:
        fail(out, f"error: cannot open ledger {path}: {exc.strerror or exc}")


def write_private(out, path: str, text: str) -> None:
    """Write an --out file by the rules of :mod:`apimon_cli.outfile` (atomic, owner-only, FIFOs and devices
    written into, symlinks written through), or fail with one line naming the path."""
    from ..outfile import OutFileError, write_out

    try:
        write_out(path, text)
    except OutFileError as exc:
        fail(out, f"error: {exc}")


@contextmanager
def out_stream(out, path: str | None, *, newline: str | None = None) -> Iterator:
    """The --out file as a stream (same rules as :func:`write_private`), or stdout without one."""
    if not path:
        yield sys.stdout
        sys.stdout.flush()
        return
    from ..outfile import OutFileError, open_out

    try:
        with open_out(path, newline=newline) as fh:
            yield fh
    except OutFileError as exc:
        fail(out, f"error: {exc}")


def run_plan(out, make):
    """Run ``make`` (an engine call that plans), or print why it could not and exit 1."""
    from ..planfile.diagnostics import PlanError
    from ..providers import ProviderError
    from ..providers.base import PlanCheckError

    try:
        return make()
    except PlanError as exc:
        print_diagnostics(out, exc.diagnostics)
        fail(out, "the plan is not valid; nothing was read or changed",
             errors=[d for d in exc.diagnostics if d.severity == "error"])
    except PlanCheckError as exc:
        for p in exc.problems:
            out.error(f"error: {p}")
        fail(out, "the plan refers to things the gateway does not have; nothing was changed",
             errors=list(exc.problems))
    except ProviderError as exc:
        fail(out, f"error: {exc}")


def version_text() -> str:
    """`apimon --version`: the version of the distribution that installed apimon_cli."""
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    for dist in packages_distributions().get("apimon_cli", []) or ["apimon-cli", "apimon"]:
        try:
            return f"apimon {version(dist)}"
        except PackageNotFoundError:
            continue
    return "apimon (version unknown: not installed as a distribution)"
