"""Help shows words, choices are the parser's, `usage export PLAN`, adopt cites only its own flags, and
counts read `1 change` / `6 changes`: through the real CLI."""

from __future__ import annotations

import re

import pytest
from conftest import run_cli, write_plan

PYTHON_TYPE = re.compile(r"<(str|int|float|bool|list|tuple|path|int range|float range|[a-z]+\[[^>]*\])>")


def _commands() -> list[list[str]]:
    import typer

    from apimon_cli.cli import app

    root = typer.main.get_command(app)
    found = []

    def walk(group, path):
        for name, cmd in sorted(getattr(group, "commands", {}).items()):
            found.append([*path, name])
            walk(cmd, [*path, name])

    walk(root, [])
    return found


COMMANDS = _commands()


def test_every_command_is_covered():
    names = {" ".join(c) for c in COMMANDS}
    assert {"plan", "apply", "show", "invoice", "usage export", "keys show", "import", "gateway serve"} <= names


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_shows_words_not_python_types(command):
    r = run_cli(*command, "--help")
    assert r.code == 0, r.output
    assert not PYTHON_TYPE.search(r.stdout), r.stdout
    assert "{" not in r.stdout.splitlines()[0], r.stdout  # the usage line: `PLAN...`, not `{PLAN}...`


def test_help_words_for_plans_files_and_choices():
    r = run_cli("plan", "--help")
    assert r.stdout.startswith("Usage: apimon plan [OPTIONS] PLAN...")
    assert re.search(r"^  PLAN\.\.\.\s+Plan file", r.stdout, re.M)
    assert "--out FILE" in r.stdout and "--format [text|json|markdown]" in r.stdout
    r = run_cli("invoice", "--help")
    assert "--format [table|csv|jsonl]" in r.stdout and "--period PERIOD" in r.stdout and "--ledger FILE" in r.stdout
    assert "--max-deletes N" in run_cli("apply", "--help").stdout
    assert "--workers N " in run_cli("gateway", "serve", "--help").stdout  # as the README and issue 13 write it
    assert "--provider [aws|azure|apigee|local]" in run_cli("import", "--help").stdout


@pytest.mark.parametrize("args, allowed", [
    (["invoice", "p.yaml", "--period", "2026-11", "--format", "xml"], "'table', 'csv', 'jsonl'"),
    (["usage", "export", "--format", "xml"], "'csv', 'jsonl'"),
    (["usage", "show", "p.yaml", "--by", "xml"], "'subscriber', 'product', 'day'"),
    (["plan", "p.yaml", "--format", "xml"], "'text', 'json', 'markdown'"),
    (["show", "saved.json", "--format", "xml"], "'text', 'json', 'markdown'"),
    (["import", "--provider", "xml"], "'aws', 'azure', 'apigee', 'local'"),
    (["import", "--provider", "azure", "--cloud", "xml"], "'public', 'china', 'usgovernment'"),
])
def test_choices_are_rejected_by_the_parser_with_the_allowed_list(args, allowed, tmp_path):
    r = run_cli(*args, cwd=tmp_path)  # p.yaml does not exist: the parser refuses before anything is read
    assert r.code == 1
    assert f"'xml' is not one of {allowed}" in r.stderr, r.stderr
    assert "no such" not in r.stderr.lower()


PLAN = """
apimon: 1
target: {provider: local, local: {state_dir: state}}
products:
  free: {display_name: Free, apis: [petstore], pricing: {model: free}}
subscribers:
  bob: {product: free}
"""


def test_usage_export_takes_the_plan_as_an_argument_and_keeps_plan(tmp_path):
    plan = write_plan(tmp_path / "plans" / "plan.yaml", PLAN)
    assert run_cli("apply", str(plan), "--auto-approve").code == 0
    r = run_cli("usage", "pull", str(plan), "--from", "2026-11-01", "--to", "2026-11-30")
    assert r.code == 0, r.output
    as_argument = run_cli("usage", "export", str(plan), cwd=tmp_path)
    as_option = run_cli("usage", "export", "--plan", str(plan), cwd=tmp_path)
    assert as_argument.code == as_option.code == 0, as_argument.output
    assert as_argument.stdout == as_option.stdout and as_argument.stdout.startswith("provider,target,day,")
    r = run_cli("usage", "export", cwd=tmp_path)  # no plan: the ledger in the working directory, which is not there
    assert r.code == 1 and "no ledger at" in r.stderr


def _flags(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", help_text))


def test_adopt_cites_only_flags_it_has(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    adopt_flags = _flags(run_cli("adopt", "--help").stdout)
    r = run_cli("adopt", str(plan), cwd=tmp_path)  # no terminal, no --auto-approve: refused
    assert r.code == 1 and "refusing to adopt without confirmation" in r.stderr
    assert _flags(r.stderr) <= adopt_flags, r.stderr
    # a plan that would also delete: adopt refuses, and says so without --max-deletes (apply's flag)
    assert run_cli("apply", str(plan), "--auto-approve", cwd=tmp_path).code == 0
    plan.write_text(PLAN.replace("  bob: {product: free}\n", "  {}\n").replace("subscribers:\n  {}\n",
                                                                                  "subscribers: {}\n"))
    r = run_cli("adopt", str(plan), "--auto-approve", cwd=tmp_path)
    assert r.code == 1 and "refusing to adopt" in r.stderr and "deletes 1 resource;" in r.stderr
    assert _flags(r.stderr) <= adopt_flags, r.stderr


def test_counts_are_singular_or_plural(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    r = run_cli("apply", str(plan), "--auto-approve", cwd=tmp_path)
    assert "Apply complete: 2 changes applied." in r.stdout
    plan.write_text(PLAN.replace("bob: {product: free}", "bob: {product: free, enabled: false}"))
    r = run_cli("apply", str(plan), "--auto-approve", cwd=tmp_path)
    assert "Apply complete: 1 change applied." in r.stdout
    r = run_cli("validate", str(plan))
    assert "The plan is valid: 1 product, 1 subscriber, target local." in r.stdout
    assert "(s)" not in r.output
