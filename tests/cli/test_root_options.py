"""`apimon --version`, `--no-color` and shell completion, through the real console entry point."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import version

from conftest import run_cli, write_plan

ANSI = re.compile(r"\x1b\[")
BAD = "apimon: 1\ntarget: {provider: local}\nproducts: {x: {}}\n"


def test_version_prints_the_installed_version():
    r = run_cli("--version")
    assert r.code == 0
    assert r.stdout.strip() == f"apimon {version('apimon-cli' if _has('apimon-cli') else 'apimon')}"
    assert r.stderr == ""


def _has(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution(dist)
        return True
    except PackageNotFoundError:
        return False


def test_no_color_removes_every_escape_code_before_or_after_the_command(tmp_path):
    bad = write_plan(tmp_path / "bad.yaml", BAD)
    coloured = run_cli("validate", str(bad), env={"NO_COLOR": "", "FORCE_COLOR": "1"})
    assert coloured.code == 1 and ANSI.search(coloured.stderr), coloured.stderr  # the control: colour is on
    for args in (("--no-color", "validate", str(bad)), ("validate", str(bad), "--no-color")):
        r = run_cli(*args, env={"NO_COLOR": "", "FORCE_COLOR": "1"})
        assert r.code == 1 and "bad.yaml:3:" in r.stderr
        assert not ANSI.search(r.output), r.output
    r = run_cli("validate", str(bad), env={"NO_COLOR": "1", "FORCE_COLOR": "1"})
    assert not ANSI.search(r.output)


def test_help_lists_the_root_options():
    r = run_cli("--help")
    for flag in ("--version", "--no-color", "--install-completion", "--show-completion"):
        assert flag in r.stdout


def _complete(words: str, cword: int) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")}
    env |= {"_APIMON_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    proc = subprocess.run([sys.executable, "-m", "apimon_cli.cli"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_completion_completes_commands_and_options():
    assert _complete("apimon pl", 1) == ["plan"]
    assert set(_complete("apimon usage ", 2)) >= {"pull", "show", "export"}
    assert "--detailed-exitcode" in _complete("apimon plan --det", 2)
    # declared choices complete too (the words after --format are empty: COMP_CWORD points past them)
    assert _complete("apimon invoice p.yaml --format ''", 4) == ["table", "csv", "jsonl"]
    assert _complete("apimon plan p.yaml --format m", 4) == ["markdown"]


def test_show_completion_prints_a_script_for_the_apimon_command():
    r = run_cli("--show-completion", "bash")
    assert r.code == 0
    assert "_APIMON_COMPLETE=complete_bash" in r.stdout and "complete " in r.stdout and "apimon" in r.stdout


def test_install_completion_writes_the_script_into_the_shell_profile(tmp_path):
    r = run_cli("--install-completion", "bash", env={"HOME": str(tmp_path), "SHELL": "/bin/bash"})
    assert r.code == 0, r.output
    script = tmp_path / ".bash_completions" / "apimon.sh"
    assert "_APIMON_COMPLETE=complete_bash" in script.read_text()
    assert str(script) in (tmp_path / ".bashrc").read_text()
