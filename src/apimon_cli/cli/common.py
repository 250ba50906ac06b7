"""Pieces every CLI module shares: output, failing with one clear line, loading a plan, planning."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

PlanArgs = Annotated[list[str], typer.Argument(help="Plan file(s); several files merge.", show_default=False,
                                               metavar="PLAN")]
Strict = Annotated[bool, typer.Option("--strict", help="Treat provider capability warnings as errors.")]


def make_output(secrets=(), json_mode: bool = False):
    from ..render.output import Masker, Output

    return Output(Masker(secrets), json_mode=json_mode)


def fail(out, message: str, code: int = 1, errors: list[str] | None = None):
    """Report and exit. In --json mode stdout still gets a JSON document, so CI always has a report."""
    out.error(message)
    if out.json_mode:
        out.json({"errors": [*(errors or []), message]})
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
        fail(out, "the plan is not valid", errors=[str(d) for d in exc.diagnostics])
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


def write_private(path: str, text: str) -> None:
    """Write a file only its owner can read (saved plans)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def run_plan(out, make):
    """Run ``make`` (an engine call that plans), or print why it could not and exit 1."""
    from ..planfile.diagnostics import PlanError
    from ..providers import ProviderError
    from ..providers.base import PlanCheckError

    try:
        return make()
    except PlanError as exc:
        print_diagnostics(out, exc.diagnostics)
        fail(out, "the plan is not valid; nothing was read or changed", errors=[str(d) for d in exc.diagnostics])
    except PlanCheckError as exc:
        for p in exc.problems:
            out.error(f"error: {p}")
        fail(out, "the plan refers to things the gateway does not have; nothing was changed", errors=exc.problems)
    except ProviderError as exc:
        fail(out, f"error: {exc}")
