"""Saved plans name their plan files relative to their own directory and only inside it (issue 18 item 4,
issue 11 item 6): applies from any working directory, never reads a file elsewhere, never quotes a file
that is not a plan."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import run_cli, write_plan

PLAN = """
apimon: 1
target: {provider: local, local: {state_dir: state}}
products:
  free: {display_name: Free, pricing: {model: free}}
subscribers:
  acme: {product: free}
"""
SECRET = "sk_live_0123456789abcdefSECRET"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _crafted(where: Path, files: list[dict]) -> Path:
    """A saved plan as an attacker would write one: valid in every other respect."""
    doc = {"apimon_saved_plan": 1, "created_at": "2026-11-01T00:00:00+00:00", "files": files,
           "provider": "local", "adopt": False, "live_fingerprint": "x", "plan": {}}
    where.write_text(json.dumps(doc))
    return where


def test_a_saved_plan_made_in_one_directory_applies_from_another(tmp_path):
    repo = tmp_path / "repo"
    write_plan(repo / "plan.yaml", PLAN)
    r = run_cli("plan", "plan.yaml", "--out", "saved.json", cwd=repo)
    assert r.code == 0, r.output
    assert json.loads((repo / "saved.json").read_text())["files"][0]["path"] == "plan.yaml"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # before: "plan file plan.yaml no longer exists" (resolved against the working directory)
    r = run_cli("apply", "--plan-file", "../repo/saved.json", cwd=elsewhere)
    assert r.code == 0, r.output
    assert (repo / "state" / "state.db").exists() and not (elsewhere / "state").exists()


def test_a_saved_plan_below_the_plans_directory_names_them_relative_to_itself(tmp_path):
    write_plan(tmp_path / "plans" / "prod.yaml", PLAN)
    r = run_cli("plan", "plans/prod.yaml", "--out", "out/saved.json", cwd=tmp_path)
    # the saved plan is not above the plan files: refused with the reason, nothing written
    assert r.code == 1 and "the plan file plans/prod.yaml is not inside" in r.stderr
    assert not (tmp_path / "out").exists() or not (tmp_path / "out" / "saved.json").exists()
    r = run_cli("plan", "plans/prod.yaml", "--out", "saved.json", cwd=tmp_path)
    assert r.code == 0, r.output
    assert json.loads((tmp_path / "saved.json").read_text())["files"][0]["path"] == "plans/prod.yaml"


def test_a_missing_plan_file_error_says_which_path_was_tried(tmp_path):
    repo = tmp_path / "repo"
    write_plan(repo / "plan.yaml", PLAN)
    assert run_cli("plan", "plan.yaml", "--out", "saved.json", cwd=repo).code == 0
    (repo / "plan.yaml").unlink()
    r = run_cli("apply", "--plan-file", str(repo / "saved.json"), cwd=tmp_path)
    assert r.code == 1 and f"plan file {repo / 'plan.yaml'} (from {repo / 'saved.json'}) no longer exists" in r.stderr


def test_an_absolute_path_in_a_saved_plan_is_refused_and_never_read(tmp_path):
    passwd = Path("/etc/passwd")
    saved = _crafted(tmp_path / "saved.json", [{"path": str(passwd), "sha256": _sha(passwd)}])
    r = run_cli("apply", "--plan-file", str(saved), cwd=tmp_path)
    assert r.code == 1
    assert "refusing plan file path '/etc/passwd': it is absolute" in r.stderr
    first = passwd.read_text().split(":", 1)[0]
    assert f"{first}:" not in r.output.replace("'/etc/passwd'", "")  # before: "got the string 'root:x:0:0..."


def test_dot_dot_and_symlinks_out_of_the_directory_are_refused(tmp_path):
    outside = write_plan(tmp_path / "outside" / "plan.yaml", PLAN)
    inner = tmp_path / "inner"
    inner.mkdir()
    saved = _crafted(inner / "saved.json", [{"path": "../outside/plan.yaml", "sha256": _sha(outside)}])
    r = run_cli("apply", "--plan-file", "saved.json", cwd=inner)
    assert r.code == 1 and "refusing plan file path '../outside/plan.yaml'" in r.stderr and "(..)" in r.stderr
    (inner / "link.yaml").symlink_to(outside)
    _crafted(saved, [{"path": "link.yaml", "sha256": _sha(outside)}])
    r = run_cli("apply", "--plan-file", str(saved), cwd=tmp_path)
    assert r.code == 1 and "refusing plan file path 'link.yaml'" in r.stderr and "through a symlink" in r.stderr
    assert not (tmp_path / "outside" / "state").exists()  # nothing was applied


def test_a_file_that_is_not_a_plan_is_never_quoted(tmp_path):
    token = tmp_path / "token.txt"  # inside the directory, named by a crafted saved plan
    token.write_text(SECRET + "\n")
    saved = _crafted(tmp_path / "saved.json", [{"path": "token.txt", "sha256": _sha(token)}])
    r = run_cli("apply", "--plan-file", str(saved), cwd=tmp_path)
    assert r.code == 1 and "token.txt:1:1" in r.stderr
    assert SECRET[:12] not in r.output  # before: "got the string 'sk_live_0123456789abc...'"
    for content in (SECRET, json.dumps({"apimon_saved_plan": 1, "files": SECRET}), json.dumps([SECRET]),
                    json.dumps({"apimon_saved_plan": 1, "files": [{"path": SECRET}]}), SECRET + "{"):
        saved.write_text(content)
        r = run_cli("apply", "--plan-file", str(saved), cwd=tmp_path)
        assert r.code == 1 and "not an apimon saved plan" in r.stderr, r.stderr
        assert SECRET[:12] not in r.output


def test_a_fifo_as_plan_file_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "saved.json"
    os.mkfifo(fifo)
    r = run_cli("apply", "--plan-file", str(fifo), timeout=30)
    assert r.code == 1 and "not a regular file" in r.stderr


@pytest.mark.parametrize("path", ["", "a\x00b", "C:\\plans\\x.yaml", "\\\\server\\share\\p.yaml", "a/../../p.yaml"])
def test_other_escapes_are_refused(tmp_path, path):
    from apimon_cli.reconcile.saved import SavedPlanError, _saved_files

    doc = {"apimon_saved_plan": 1, "files": [{"path": path, "sha256": "0" * 64}]}
    with pytest.raises(SavedPlanError, match="refusing plan file path"):
        _saved_files(doc, str(tmp_path / "saved.json"))
