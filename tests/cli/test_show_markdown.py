"""`apimon show SAVED_PLAN` and `plan --format markdown`, and the GitHub Actions example that posts the
Markdown as a pull-request comment, through the real CLI on the local target."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli, write_plan

KEY = "imported-key-value-0123456789abcdef"
ENV = {"IMPORTED_KEY": KEY}
PLAN = """
apimon: 1
target: {provider: local, local: {state_dir: state}}
products:
  free:
    display_name: Free <beta> | R&D
    apis: [petstore]
    rate_limit: {rate: 5, burst: 10}
    pricing: {model: free}
  pro:
    display_name: Pro
    apis: [petstore]
    pricing: {model: per_unit, fee: "199.00", unit_price: "0.001"}
subscribers:
  bob: {product: free}
  imported: {product: pro, key: {from_env: IMPORTED_KEY}}
"""


@pytest.fixture
def plan(tmp_path):
    return write_plan(tmp_path / "plan.yaml", PLAN)


def _details(md: str) -> list[tuple[str, str]]:
    return re.findall(r"<details>\n<summary><code>(.*?)</code></summary>\n\n(```diff\n.*?\n```)\n\n</details>", md,
                      re.S)


def test_plan_markdown_summary_first_details_per_resource_no_key_values(plan, tmp_path):
    r = run_cli("plan", str(plan), "--format", "markdown", env=ENV, cwd=tmp_path)
    assert r.code == 0, r.output
    md = r.stdout
    assert md.splitlines()[0] == "**Plan: 4 to add, 0 to change, 0 to destroy.**"
    blocks = _details(md)
    assert [head for head, _ in blocks] == [
        "+ product free will be created", "+ product pro will be created", "+ subscriber bob will be created",
        "+ subscriber imported will be created"]
    assert '+ key = (sensitive)' in blocks[3][1]
    assert '+ display_name = "Free <beta> | R&D"' in blocks[0][1]  # code blocks keep text as it is
    assert KEY not in r.output
    # changes after an apply: an update with before and after
    assert run_cli("apply", str(plan), "--auto-approve", env=ENV, cwd=tmp_path).code == 0
    plan.write_text(plan.read_text().replace('fee: "199.00"', 'fee: "249.00"'))
    r = run_cli("plan", str(plan), "--format", "markdown", "--detailed-exitcode", env=ENV, cwd=tmp_path)
    assert r.code == 2
    assert r.stdout.splitlines()[0] == "**Plan: 0 to add, 1 to change, 0 to destroy.**"
    ((head, body),) = _details(r.stdout)
    assert head == "~ product pro will be updated in place"
    assert '- pricing.fee = "199.00"\n+ pricing.fee = "249.00"' in body


def test_plan_markdown_with_no_changes(plan, tmp_path):
    run_cli("apply", str(plan), "--auto-approve", env=ENV, cwd=tmp_path)
    r = run_cli("plan", str(plan), "--format", "markdown", env=ENV, cwd=tmp_path)
    assert r.stdout.splitlines()[0] == "**No changes. The gateway matches the plan.**"
    assert "<details>" not in r.stdout


def test_show_prints_a_saved_plan_as_text_json_and_markdown(plan, tmp_path):
    saved = tmp_path / "saved.json"
    r = run_cli("plan", str(plan), "--out", str(saved), env=ENV, cwd=tmp_path)
    assert r.code == 0
    planned = r.stdout
    md = run_cli("plan", str(plan), "--format", "markdown", env=ENV, cwd=tmp_path).stdout
    # show reads only the file: no plan, no environment, no gateway
    plan.rename(tmp_path / "moved.yaml")
    text = run_cli("show", str(saved), cwd=tmp_path)
    assert text.code == 0, text.output
    assert "+ subscriber imported will be created" in text.stdout
    assert "Plan: 4 to add, 0 to change, 0 to destroy." in text.stdout
    assert text.stdout.strip().splitlines()[-1] == planned.strip().splitlines()[-1]
    doc = json.loads(run_cli("show", str(saved), "--json").stdout)
    assert doc == json.loads(saved.read_text())
    assert json.loads(run_cli("show", str(saved), "--format", "json").stdout) == doc
    shown_md = run_cli("show", str(saved), "--format", "markdown").stdout
    assert shown_md == md
    for out in (text.output, shown_md, json.dumps(doc)):
        assert KEY not in out


def test_show_refuses_what_is_not_a_saved_plan(tmp_path, plan):
    r = run_cli("show", str(tmp_path / "missing.json"))
    assert r.code == 1 and "no such saved plan" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("show", str(plan), "--json")  # a plan file, not a saved plan
    assert r.code == 1 and "not a saved plan" in json.loads(r.stdout)["errors"][0]["message"]
    r = run_cli("show", str(plan), "--format", "xml")
    assert r.code == 1 and "'xml' is not one of 'text', 'json', 'markdown'" in r.stderr


def test_github_actions_example_comments_the_markdown_plan(plan, tmp_path):
    """The example's plan job, step by step in a directory that holds only the plan (gh and the cloud
    steps are GitHub's own and are not run)."""
    workflow = yaml.safe_load((ROOT / "examples" / "ci" / "github-actions.yml").read_text())
    steps = workflow["jobs"]["plan"]["steps"]
    scripts = [s["run"] for s in steps if "run" in s and "apimon " in s["run"] and "pip install" not in s["run"]]
    comment = [s for s in steps if "gh pr comment" in s.get("run", "")]
    assert comment and "plan.md" in comment[0]["run"] and comment[0]["if"] == "github.event_name == 'pull_request'"
    assert any("--format markdown > plan.md" in s for s in scripts)
    work = tmp_path / "repo"
    (work / "plans").mkdir(parents=True)
    (work / "plans" / "aws.yaml").write_text(plan.read_text().replace("state_dir: state", "state_dir: ../state"))
    bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")} | ENV | {
        "PLAN": "plans/aws.yaml", "GITHUB_OUTPUT": str(tmp_path / "github_output"), "NO_COLOR": "1",
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    for script in scripts:
        if script.startswith("jq ") and not _has("jq"):
            continue
        proc = subprocess.run(["bash", "-e", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, (script, proc.stdout, proc.stderr)
    assert "exitcode=2" in (tmp_path / "github_output").read_text()
    md = (work / "plan.md").read_text()
    assert md.splitlines()[0] == "**Plan: 4 to add, 0 to change, 0 to destroy.**" and "<details>" in md
    assert KEY not in md


def _has(program: str) -> bool:
    import shutil

    return shutil.which(program) is not None
