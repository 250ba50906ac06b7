"""Issue 21: the diff is plain text when stdout is not a terminal, byte-identical to what rich printed there
line by line, and written in batches."""

from __future__ import annotations

import pytest
from conftest import run_cli, write_plan

from apimon_cli.render.changes import Lines
from apimon_cli.render.output import Masker, Output

TRICKY = [
    "  + subscriber acme will be created",
    "      + email = \"ops@acme.example\"",
    "      ~ metadata.tier: \"gold\" -> \"silver\"",
    "      + metadata.note = \"[bold]not markup[/bold] :smile: :not_an_emoji:\"",
    "      + metadata.path = \"C:\\\\temp\\\\[x]\"",
    "tab\there and a bell\x07 and a carriage\rreturn",
    "trailing spaces   ",
    "",
    "unicode: Zürich 東京 ✓",
    "secret s3cr3t-value inside",
]


@pytest.fixture(autouse=True)
def _no_forced_terminal(monkeypatch):
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)


def test_batched_plain_lines_are_byte_identical_to_rich(capsys):
    masker = Masker(["s3cr3t-value"])
    out = Output(masker)
    for line in TRICKY:
        out.print(line, style="bold green")
    expected = capsys.readouterr().out

    lines = Lines(Output(masker), size=3)
    assert lines.plain
    for line in TRICKY:
        lines.add(line, "bold green")
    lines.flush()
    got = capsys.readouterr().out
    assert got == expected
    assert "s3cr3t-value" not in got and "***" in got
    assert ":smile:" not in got  # rich's emoji code, kept as rich prints it


def test_piped_plan_is_plain_text(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", """
        apimon: 1
        target: {provider: local}
        products:
          gold:
            display_name: Gold
            apis: [petstore]
            rate_limit: {rate: 10, burst: 20}
            pricing: {model: free}
        subscribers:
          acme:
            product: gold
            email: ops@acme.example
            metadata: {note: "[bold red]loud[/bold red]"}
        """)
    # colours allowed: nothing but the missing terminal keeps them out
    r = run_cli("plan", str(plan), cwd=tmp_path, env={"NO_COLOR": ""})
    assert r.code == 0, r.output
    assert "\x1b" not in r.stdout
    assert '+ metadata.note = "[bold red]loud[/bold red]"' in r.stdout  # markup shown as written, not applied
    assert "  + subscriber acme will be created\n" in r.stdout
    assert r.stdout.endswith("Plan: 2 to add, 0 to change, 0 to destroy.\n")


def test_apply_progress_lines_are_written_within_the_interval_without_a_further_line(capsys):
    import time

    lines = Lines(Output(Masker()), interval=0.05)
    lines.add("  + subscriber acme: created (key generated)", "green")
    deadline = time.monotonic() + 10
    seen = ""
    while time.monotonic() < deadline and not seen:
        time.sleep(0.02)
        seen = capsys.readouterr().out
    assert seen == "  + subscriber acme: created (key generated)\n"  # while the apply waits for the next change
    lines.flush()
    assert capsys.readouterr().out == ""
