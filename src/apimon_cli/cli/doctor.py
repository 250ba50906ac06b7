"""`apimon doctor PLAN`: is everything the plan needs in place? Read-only checks of the plan, the endpoint
rule, the gateway (credentials and their source, endpoint, permissions, quotas: ``providers.diagnose``) and
the ledger. Exit 0 when no check found a problem, else 1."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import PlanArgs, error_entry, ledger_path, make_output, print_diagnostics


def doctor(
    plans: PlanArgs,
    ledger: Annotated[Optional[str], typer.Option(
        "--ledger", help="Ledger file or postgresql:// URL (default: .apimon/ledger.db beside the plan; or "
        "APIMON_LEDGER).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
) -> None:
    """Check what the plan needs: credentials (and their source), endpoint, permissions (read-only calls),
    quotas in use vs limits, the ledger. Exit 1 on a problem."""
    from ..planfile.loader import load_plans
    from ..providers.diagnose import OK, PROBLEM, Check

    out = make_output(json_mode=json_out)
    checks: list[Check] = []
    loaded = load_plans(plans)
    out.mask.add(*loaded.secrets)
    if loaded.desired is None:
        print_diagnostics(out, loaded.diagnostics)
        n = len(loaded.errors)
        checks.append(Check("plan", PROBLEM,
                            f"{n} error{'s' if n != 1 else ''}; the plan is not valid (each on stderr)"))
    else:
        d = loaded.desired
        checks.append(Check("plan", OK, f"valid: {_count(len(d.products), 'product')}, "
                                        f"{_count(len(d.subscribers), 'subscriber')}, target {d.target.provider}"))
        checks.extend(_gateway(d))
    checks.append(_ledger(ledger_path(ledger, plans)))
    problems = [c for c in checks if c.status == PROBLEM]
    if json_out:
        # errors as every --json command gives them: the plan's located errors, then each problem check
        errors = [error_entry(d) for d in loaded.errors] + [
            error_entry(f"{c.name}: {c.detail}") for c in problems if not (c.name == "plan" and loaded.errors)]
        out.json({"checks": [c.as_dict() for c in checks], "problems": len(problems), "errors": errors})
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            out.print(f"{c.status.upper():<8} {c.name:<{width}}  {c.detail}")
        warnings = sum(c.status == "warning" for c in checks)
        out.print()
        if problems:
            out.print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found"
                      + (f", {warnings} warning{'s' if warnings != 1 else ''}" if warnings else "") + ".")
        else:
            out.print("No problems found" + (f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings
                                             else "") + ".")
    if problems:
        raise typer.Exit(1)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _gateway(desired):
    from ..providers import ProviderError, get_provider
    from ..providers.diagnose import PROBLEM, Check, provider_checks

    try:
        provider = get_provider(desired)
    except ProviderError as exc:
        return [Check("gateway", PROBLEM, str(exc))]
    try:
        return list(provider_checks(provider))
    finally:
        provider.close()


def _ledger(path: Path):
    """Where the ledger is and its schema version, read without changing it (no migration)."""
    from ..ledger.store import SCHEMA_VERSION
    from ..providers.diagnose import INFO, OK, PROBLEM, Check

    if not isinstance(path, Path):  # a postgresql:// ledger (a DatabaseURL: prints with the password masked)
        from ..ledger import pg

        try:
            conn = pg.PgConnection(path.url, timeout=5)
        except sqlite3.Error as exc:
            return Check("ledger", PROBLEM, f"cannot open ledger {path}: {exc}")
        try:
            has_tables, version = pg.read_version(conn)
        except sqlite3.Error as exc:
            return Check("ledger", PROBLEM, f"{path} is not a readable apimon ledger ({exc})")
        finally:
            conn.close()
        if version is None:
            if has_tables:
                return Check("ledger", PROBLEM, f"{path} is a PostgreSQL database but not an apimon ledger "
                                                "(no schema_version table)")
            return Check("ledger", INFO, f"no ledger yet in {path} (`apimon usage pull` creates it)")
        if version < 1:
            return Check("ledger", PROBLEM, f"ledger {path} has a damaged schema_version table")
    elif not path.exists():
        return Check("ledger", INFO, f"no ledger yet at {path} (`apimon usage pull` creates it)")
    else:
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
            try:
                version = conn.execute("SELECT version FROM schema_version").fetchone()[0]
            finally:
                conn.close()
        except (sqlite3.Error, TypeError) as exc:
            return Check("ledger", PROBLEM, f"{path} is not a readable apimon ledger ({exc})")
    if version > SCHEMA_VERSION:
        return Check("ledger", PROBLEM, f"{path}: schema version {version} is newer than this apimon knows "
                                        f"({SCHEMA_VERSION}); upgrade apimon")
    note = "" if version == SCHEMA_VERSION else f" (upgraded to {SCHEMA_VERSION} when next written)"
    return Check("ledger", OK, f"{path}, schema version {version}{note}")
