"""Issue 20 item 10: a reader that stops early (`| head -1`) ends apimon quietly, and errors never hide errors."""

from __future__ import annotations

import resource
import sqlite3
import subprocess
import sys

import pytest
from conftest import run_cli, write_plan

PLAN_HEAD = """
apimon: 1
target: {provider: local, local: {state_dir: state}}
products:
  pro: {display_name: Pro, pricing: {model: per_unit, unit_price: "0.001"}}
subscribers:
"""


def big_plan(tmp_path, n=1500):
    subs = "".join(f"  customer-{i:05d}: {{product: pro, email: c{i}@example.com}}\n" for i in range(n))
    return write_plan(tmp_path / "plan.yaml", PLAN_HEAD + subs)


def head_1(*args, cwd):
    """`apimon ARGS | head -1`: read one line, close the pipe, wait."""
    env = {"NO_COLOR": "1", "COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen([sys.executable, "-m", "apimon_cli.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return first.decode(), proc.wait(timeout=120), err


def test_plan_and_usage_export_piped_into_head_end_quietly(tmp_path):
    plan = big_plan(tmp_path)  # far more output than a pipe buffers (64 KiB)
    first, code, err = head_1("plan", str(plan), cwd=tmp_path)
    assert first.strip() and code in (0, 141), (code, err)
    assert "Traceback" not in err and "Exception ignored" not in err and "unexpected error" not in err, err

    assert run_cli("apply", str(plan), "--auto-approve").code == 0
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        conn.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?)",
                         [(f"customer-{i:05d}", "pro", f"2026-11-{d:02d}", "success", i + d)
                          for i in range(1500) for d in range(1, 4)])
    assert run_cli("usage", "pull", str(plan), "--from", "2026-11-01", "--to", "2026-11-30").code == 0
    first, code, err = head_1("usage", "export", "--plan", str(plan), cwd=tmp_path)
    assert first.startswith("provider,target,day") and code in (0, 141), (code, err)
    assert "Traceback" not in err and "Exception ignored" not in err and "unexpected error" not in err, err
    first, code, err = head_1("invoice", str(plan), "--period", "2026-11", "--format", "csv", cwd=tmp_path)
    assert first.startswith("invoice_id") and code in (0, 141) and not err.strip(), (code, err)


def _limit_file_size(limit: int):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # writes beyond it fail (EFBIG): a full disk
    return set_limit


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no RLIMIT_FSIZE on this platform")
def test_a_full_disk_is_reported_not_hidden_by_a_failed_rollback(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", PLAN_HEAD + "  first: {product: pro}\n")
    assert run_cli("apply", str(plan), "--auto-approve").code == 0
    state = tmp_path / "state" / "state.db"
    size = max(p.stat().st_size for p in state.parent.iterdir() if p.is_file())
    big = big_plan(tmp_path, 3000)
    proc = subprocess.run([sys.executable, "-m", "apimon_cli.cli", "apply", str(big), "--auto-approve"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"NO_COLOR": "1", "COLUMNS": "200", "PATH": "/usr/bin:/bin"},
                          preexec_fn=_limit_file_size(size + 64 * 1024))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # SQLite rolled the transaction back itself: the error is the write that failed, not the ROLLBACK after it
    assert "cannot rollback" not in proc.stderr and "no transaction is active" not in proc.stderr, proc.stderr
    assert "disk I/O error" in proc.stderr or "full" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no RLIMIT_FSIZE on this platform")
def test_a_pull_onto_a_full_disk_names_the_write_error_and_keeps_the_ledger(tmp_path):
    plan = big_plan(tmp_path, 2000)
    assert run_cli("apply", str(plan), "--auto-approve").code == 0
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        conn.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?)",
                         [(f"customer-{i:05d}", "pro", f"2026-11-{d:02d}", "success", i + d)
                          for i in range(2000) for d in range(1, 31)])
    ledger = tmp_path / "l.db"
    assert run_cli("usage", "pull", str(plan), "--from", "2026-11-01", "--to", "2026-11-01",
                   "--ledger", str(ledger)).code == 0
    with sqlite3.connect(ledger) as conn:
        before = list(conn.iterdump())
    size = max(p.stat().st_size for p in tmp_path.iterdir() if p.is_file())
    proc = subprocess.run([sys.executable, "-m", "apimon_cli.cli", "usage", "pull", str(plan), "--from", "2026-11-01",
                           "--to", "2026-11-30", "--ledger", str(ledger)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"NO_COLOR": "1", "COLUMNS": "200", "PATH": "/usr/bin:/bin"},
                          preexec_fn=_limit_file_size(size + 256 * 1024))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "cannot rollback" not in proc.stderr, proc.stderr
    assert "the ledger was not changed" in proc.stderr and ("disk" in proc.stderr or "full" in proc.stderr)
    with sqlite3.connect(ledger) as conn:
        assert list(conn.iterdump()) == before
