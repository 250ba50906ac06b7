"""The whole loop on the local target, through the real CLI: validate -> plan -> apply -> plan."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli, write_plan

PLAN = """
apimon: 1
target: {provider: local, local: {state_dir: state}}
products:
  free:
    display_name: Free
    apis: [petstore]
    rate_limit: {rate: 5, burst: 10}
    quota: {limit: 1000, period: month}
    pricing: {model: free}
  pro:
    display_name: Pro
    apis: [petstore, orders]
    rate_limit: {rate: 200, burst: 400}
    pricing: {model: per_unit, fee: "199.00", unit_price: "0.001"}
subscribers:
  acme: {product: pro, email: billing@acme.example, metadata: {customer_id: cus_123}}
  bob: {product: free}
  imported: {product: free, key: {from_env: IMPORTED_KEY}}
"""
IMPORTED = "imported-key-value-0123456789abcdef"
ENV = {"IMPORTED_KEY": IMPORTED}


def db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "state" / "state.db")


def keys(tmp_path: Path) -> list[str]:
    with db(tmp_path) as conn:
        return [r[0] for r in conn.execute("SELECT api_key FROM subscribers")]


@pytest.fixture
def plan(tmp_path):
    return write_plan(tmp_path / "plan.yaml", PLAN)


def test_validate_plan_apply_then_no_changes(plan, tmp_path):
    outputs = []
    r = run_cli("validate", str(plan), env=ENV)
    outputs.append(r.output)
    assert r.code == 0 and "valid: 2 products, 3 subscribers" in r.stdout

    r = run_cli("plan", str(plan), "--detailed-exitcode", env=ENV)
    outputs.append(r.output)
    assert r.code == 2
    assert "+ product pro will be created" in r.stdout
    assert "Plan: 5 to add, 0 to change, 0 to destroy." in r.stdout

    r = run_cli("apply", str(plan), "--auto-approve", env=ENV)
    outputs.append(r.output)
    assert r.code == 0, r.output
    assert "Apply complete: 5 changes applied." in r.stdout

    r = run_cli("plan", str(plan), "--detailed-exitcode", env=ENV)
    outputs.append(r.output)
    assert r.code == 0 and "No changes." in r.stdout

    # the state file is private, keys exist, and no output ever contained one
    state = tmp_path / "state" / "state.db"
    assert (state.stat().st_mode & 0o777) == 0o600
    all_keys = keys(tmp_path)
    assert len(all_keys) == 3 and IMPORTED in all_keys
    for text in outputs:
        for k in all_keys:
            assert k not in text

    # keys show reveals exactly one key on request
    r = run_cli("keys", "show", "imported", "--plan", str(plan), env=ENV)
    assert r.code == 0 and r.stdout.strip() == IMPORTED


def test_plan_json_and_exit_codes(plan, tmp_path):
    r = run_cli("plan", str(plan), "--json", "--detailed-exitcode", env=ENV)
    assert r.code == 2
    doc = json.loads(r.stdout)
    assert doc["summary"] == {"creating": 5, "updating": 0, "deleting": 0, "replacing": 0, "total": 5}
    assert set(doc["changes"]) == {"creating", "updating", "deleting", "replacing"}
    assert [c["id"] for c in doc["changes"]["creating"]] == ["free", "pro", "acme", "bob", "imported"]
    assert doc["changes"]["creating"][4]["fields"]["key"] == {"before": None, "after": "(sensitive)"}
    assert IMPORTED not in r.output

    r = run_cli("plan", str(plan), "--json", env=ENV)
    assert r.code == 0 and json.loads(r.stdout)["summary"]["total"] == 5

    run_cli("apply", str(plan), "--auto-approve", env=ENV)
    r = run_cli("plan", str(plan), "--json", "--detailed-exitcode", env=ENV)
    assert r.code == 0 and json.loads(r.stdout)["summary"]["total"] == 0

    bad = write_plan(tmp_path / "bad.yaml", "apimon: 1\ntarget: {provider: local}\nproducts: {x: {}}\n")
    r = run_cli("plan", str(bad), "--json", "--detailed-exitcode")
    assert r.code == 1
    assert "bad.yaml:3:" in r.stderr and "display_name" in r.stderr
    errors = json.loads(r.stdout)["errors"]
    assert [(e["file"], e["line"], e["field"]) for e in errors] == [(str(bad), 3, "products.x.display_name")]
    assert "required field is missing" in errors[0]["message"] and errors[0]["column"] > 0


def test_update_and_delete_with_max_deletes(plan, tmp_path):
    assert run_cli("apply", str(plan), "--auto-approve", env=ENV).code == 0
    acme_key = [k for k in keys(tmp_path)]
    changed = PLAN.replace("rate: 200, burst: 400", "rate: 200, burst: 800").replace(
        "  bob: {product: free}\n", "").replace("acme: {product: pro", "acme: {product: free")
    changed = changed.replace("""  pro:
    display_name: Pro
    apis: [petstore, orders]
    rate_limit: {rate: 200, burst: 800}
    pricing: {model: per_unit, fee: "199.00", unit_price: "0.001"}
""", "")
    p2 = write_plan(tmp_path / "plan.yaml", changed)
    r = run_cli("plan", str(p2), env=ENV)
    assert "~ subscriber acme will be updated in place" in r.stdout
    assert '~ product: "pro" -> "free"' in r.stdout
    assert "- subscriber bob will be destroyed" in r.stdout
    assert "- product pro will be destroyed" in r.stdout
    assert "Plan: 0 to add, 1 to change, 2 to destroy." in r.stdout

    r = run_cli("apply", str(p2), "--auto-approve", "--max-deletes", "1", env=ENV)
    assert r.code == 1 and "more than --max-deletes 1" in r.stderr
    assert run_cli("plan", str(p2), "--detailed-exitcode", env=ENV).code == 2  # nothing changed

    r = run_cli("apply", str(p2), "--auto-approve", "--max-deletes", "2", env=ENV)
    assert r.code == 0, r.output
    with db(tmp_path) as conn:
        assert conn.execute("SELECT product FROM subscribers WHERE id='acme'").fetchone() == ("free",)
        assert [r[0] for r in conn.execute("SELECT id FROM products")] == ["free"]
    # moving product kept the key
    assert set(keys(tmp_path)) <= set(acme_key)


def test_apply_without_terminal_or_flag_refuses(plan, tmp_path):
    r = run_cli("apply", str(plan), env=ENV)
    assert r.code == 1 and "--auto-approve" in r.stderr
    assert not (tmp_path / "state" / "state.db").exists() or keys(tmp_path) == []


def _insert_unmanaged(tmp_path: Path) -> None:
    with db(tmp_path) as conn:
        conn.execute("INSERT INTO products VALUES ('legacy', NULL, ?, '2026-01-01')",
                      (json.dumps({"display_name": "Legacy", "apis": [], "pricing": {"model": "free"}}),))
        conn.execute("INSERT INTO subscribers VALUES ('ops', 'ops-team', 'legacy', NULL, 1, 'ops-secret-key-123456',"
                     " '{}', '2026-01-01')")


def test_unmanaged_resources_are_left_alone_and_adopt_takes_over(plan, tmp_path):
    run_cli("apply", str(plan), "--auto-approve", env=ENV)
    _insert_unmanaged(tmp_path)
    r = run_cli("plan", str(plan), env=ENV)
    assert "= product legacy: unmanaged, left alone" in r.stdout
    assert "= subscriber ops: unmanaged, left alone" in r.stdout
    assert "No changes." in r.stdout
    assert "ops-secret-key-123456" not in r.output

    # a plan naming the unmanaged product is refused unless adopting
    claims = PLAN + "  ops: {product: free}\n"
    p2 = write_plan(tmp_path / "claims.yaml", claims)
    r = run_cli("apply", str(p2), "--auto-approve", env=ENV)
    assert r.code == 1 and "subscriber ops exists on the gateway but apimon does not manage it" in r.stderr
    r = run_cli("apply", str(p2), "--auto-approve", "--adopt", env=ENV)
    assert r.code == 0, r.output
    assert "subscriber ops will be adopted" in r.stdout
    with db(tmp_path) as conn:
        assert conn.execute("SELECT owner, product, api_key FROM subscribers WHERE id='ops'").fetchone() == (
            "apimon", "free", "ops-secret-key-123456")
        assert conn.execute("SELECT owner FROM products WHERE id='legacy'").fetchone() == (None,)


def test_saved_plan_applies_and_refuses_when_the_world_moved(plan, tmp_path):
    saved = tmp_path / "saved.json"
    r = run_cli("plan", str(plan), "--out", str(saved), env=ENV)
    assert r.code == 0 and saved.exists()
    assert (saved.stat().st_mode & 0o777) == 0o600
    assert IMPORTED not in saved.read_text()

    # someone else changes the gateway after the plan was saved
    other = write_plan(tmp_path / "other.yaml", PLAN.replace("  bob: {product: free}\n", ""))
    assert run_cli("apply", str(other), "--auto-approve", env=ENV).code == 0
    before = keys(tmp_path)
    r = run_cli("apply", "--plan-file", str(saved), env=ENV)
    assert r.code == 1 and "the gateway changed while you were planning" in r.stderr
    assert keys(tmp_path) == before  # nothing applied

    # a fresh saved plan applies, without a prompt
    r = run_cli("plan", str(plan), "--out", str(saved), env=ENV)
    r = run_cli("apply", "--plan-file", str(saved), env=ENV)
    assert r.code == 0, r.output
    assert run_cli("plan", str(plan), "--detailed-exitcode", env=ENV).code == 0

    # editing the plan file after saving also makes the saved plan stale
    run_cli("plan", str(plan), "--out", str(saved), env=ENV)
    plan.write_text(plan.read_text().replace("display_name: Free", "display_name: Free tier"))
    r = run_cli("apply", "--plan-file", str(saved), env=ENV)
    assert r.code == 1 and "changed since the plan was saved" in r.stderr


def _big_plan(n: int) -> str:
    subs = "".join(f"  s{i:05d}: {{product: free}}\n" for i in range(n))
    return ("apimon: 1\ntarget: {provider: local, local: {state_dir: state}}\n"
            "products:\n  free: {display_name: Free, pricing: {model: free}}\nsubscribers:\n" + subs)


def test_interrupted_apply_converges_on_rerun(tmp_path):
    n = 1500
    plan = write_plan(tmp_path / "big.yaml", _big_plan(n))
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")} | {"NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "apimon_cli.cli", "apply", str(plan), "--auto-approve"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "state" / "state.db"
    deadline = time.monotonic() + 60
    applied = 0
    while time.monotonic() < deadline:
        if state.exists():
            try:
                with sqlite3.connect(state, timeout=5) as conn:
                    applied = conn.execute("SELECT count(*) FROM subscribers").fetchone()[0]
            except sqlite3.OperationalError:
                applied = 0
            if applied >= 50:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(state) as conn:
        applied = conn.execute("SELECT count(*) FROM subscribers").fetchone()[0]
    assert 0 < applied < n, "the apply was not interrupted mid-way"

    r = run_cli("plan", str(plan), "--json")
    assert json.loads(r.stdout)["summary"]["creating"] == n - applied
    r = run_cli("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.output
    assert run_cli("plan", str(plan), "--detailed-exitcode").code == 0


def test_concurrent_apply_waits_for_the_lock(plan, tmp_path):
    (tmp_path / "state").mkdir()
    fd = os.open(tmp_path / "state" / "apply.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    timer = threading.Timer(1.0, lambda: os.close(fd))  # the "other apply" finishes after a second
    timer.start()
    started = time.monotonic()
    r = run_cli("apply", str(plan), "--auto-approve", env=ENV)
    timer.join()
    assert r.code == 0, r.output
    assert time.monotonic() - started >= 1.0
    assert len(keys(tmp_path)) == 3


def test_two_applies_at_once_leave_a_consistent_state(tmp_path):
    plan = write_plan(tmp_path / "big.yaml", _big_plan(300))
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")} | {"NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "apimon_cli.cli", "apply", str(plan), "--auto-approve"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert all("Traceback" not in err for _, err in results)
    assert run_cli("plan", str(plan), "--detailed-exitcode").code == 0
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT api_key) FROM subscribers").fetchone() == (300, 300)


def test_shipped_local_plan_validates():
    r = run_cli("validate", str(ROOT / "plans" / "local.yaml"))
    assert r.code == 0, r.output


def test_import_then_plan_shows_no_changes_and_adopt_takes_ownership(plan, tmp_path):
    run_cli("apply", str(plan), "--auto-approve", env=ENV)
    _insert_unmanaged(tmp_path)
    imported = tmp_path / "imported.yaml"
    r = run_cli("import", "--provider", "local", "--state-dir", str(tmp_path / "state"), "--out", str(imported))
    assert r.code == 0, r.output
    text = imported.read_text()
    assert "legacy:" in text and "ops:" in text  # resources apimon does not manage yet are included
    for k in keys(tmp_path):
        assert k not in text
    assert run_cli("validate", str(imported)).code == 0
    r = run_cli("plan", str(imported), "--detailed-exitcode")
    assert r.code == 0, r.output
    assert "No changes." in r.stdout and "product legacy matches the plan but is not managed by apimon yet" in r.stdout
    r = run_cli("adopt", str(imported), "--auto-approve")
    assert r.code == 0, r.output
    with db(tmp_path) as conn:
        assert conn.execute("SELECT owner FROM products WHERE id='legacy'").fetchone() == ("apimon",)
        assert conn.execute("SELECT owner FROM subscribers WHERE id='ops'").fetchone() == ("apimon",)
    assert run_cli("plan", str(imported), "--detailed-exitcode").code == 0


def test_import_out_writes_the_file_only_and_stdout_without_out(plan, tmp_path):
    # defect 1: `--out FILE` also printed the whole plan to stdout (a for/else whose else ran after the loop)
    run_cli("apply", str(plan), "--auto-approve", env=ENV)
    out = tmp_path / "out.yaml"
    r = run_cli("import", "--provider", "local", "--state-dir", str(tmp_path / "state"), "--out", str(out))
    assert r.code == 0, r.output
    assert r.stdout == "" and "Wrote 2 products and 3 subscribers" in r.stderr
    assert "apimon: 1" in out.read_text()
    r = run_cli("import", "--provider", "local", "--state-dir", str(tmp_path / "state"))
    assert r.code == 0 and r.stdout == out.read_text()


def test_usage_errors_exit_1_never_2(plan):
    # exit code 2 means "changes present" for plan --detailed-exitcode: a typo must not look like that
    r = run_cli("plan", "--detailed-exitcode")
    assert r.code == 1 and "Missing argument" in r.stderr
    r = run_cli("plan", str(plan), "--detailed-exitcod")
    assert r.code == 1 and "No such option" in r.stderr
    assert run_cli("plan", str(plan), "--detailed-exitcode", env=ENV).code == 2


def test_saved_plan_applies_in_another_checkout(tmp_path):
    import shutil

    first = tmp_path / "checkout-a"
    write_plan(first / "plans" / "plan.yaml", PLAN)
    r = run_cli("plan", "plans/plan.yaml", "--out", "saved.json", cwd=first, env=ENV)
    assert r.code == 0, r.output
    second = tmp_path / "checkout-b"  # e.g. the CI job that downloads the saved plan as an artifact
    shutil.copytree(first, second)
    r = run_cli("apply", "--plan-file", "saved.json", cwd=second, env=ENV)
    assert r.code == 0, r.output
    assert (second / "plans" / "state" / "state.db").exists() and not (first / "plans" / "state").exists()
