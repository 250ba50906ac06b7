"""Issue 19: a large plan is summarised (the first 20 changes of each kind and action, counts per product);
`--full` shows every change; `--json` is always complete."""

from __future__ import annotations

import json

from conftest import run_cli, write_plan

N = 1_100


def _plan(tmp_path):
    rows = "".join(f"s{i:05d},{'gold' if i % 3 else 'silver'},s{i}@example.com,true\n" for i in range(N))
    (tmp_path / "subs.csv").write_text("id,product,email,enabled\n" + rows)
    return write_plan(tmp_path / "plan.yaml", """
        apimon: 1
        target: {provider: local, local: {state_dir: state}}
        products:
          gold: {display_name: Gold, apis: [petstore], rate_limit: {rate: 10, burst: 20}, pricing: {model: free}}
          silver: {display_name: Silver, apis: [petstore], rate_limit: {rate: 5, burst: 10}, pricing: {model: free}}
        subscribers_from:
          - csv: subs.csv
        """)


def test_a_large_plan_is_summarised_and_full_shows_everything(tmp_path):
    plan = _plan(tmp_path)
    r = run_cli("plan", str(plan), cwd=tmp_path)
    assert r.code == 0, r.output
    out = r.stdout
    assert out.count("will be created") == 2 + 20  # both products, the first 20 subscribers
    assert "  + subscriber s00019 will be created\n" in out and "subscriber s00020 will" not in out
    assert f"  ... and {N - 20:,} more subscriber changes (create); `--full` shows every change\n" in out
    assert f"Changes per product ({N + 2:,} changes, summarised; `--full` for all of them):\n" in out
    assert "  gold: 734 to create\n  silver: 368 to create\n" in out  # the product itself counts once
    assert out.endswith(f"Plan: {N + 2} to add, 0 to change, 0 to destroy.\n")

    full = run_cli("plan", "--full", str(plan), cwd=tmp_path).stdout
    assert full.count("will be created") == N + 2 and "summarised" not in full
    assert "  + subscriber s01099 will be created\n" in full

    doc = json.loads(run_cli("plan", "--json", str(plan), cwd=tmp_path).stdout)
    assert doc["summary"]["total"] == N + 2
    assert len(doc["changes"]["creating"]) == N + 2  # the JSON is never summarised


def test_a_large_apply_shows_the_first_outcomes_then_a_count(tmp_path):
    plan = _plan(tmp_path)
    r = run_cli("apply", "--auto-approve", str(plan), cwd=tmp_path)
    assert r.code == 0, r.output
    assert r.stdout.count("created (key generated)") == 20
    assert f"  ... and {N - 20:,} more subscriber changes applied (create); `--full` shows each\n" in r.stdout
    assert r.stdout.endswith(f"Apply complete: {N + 2} changes applied.\n")
    assert "No changes." in run_cli("plan", str(plan), cwd=tmp_path).stdout
