"""Issue 21: the local target commits apply in batches of whole changes, one revision bump per batch; a
killed apply (kill -9) leaves whole changes and a re-run converges."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import run_cli

from apimon_cli.providers.local import provider as local_provider


def _plan(path: Path, subscribers: int) -> Path:
    lines = ["apimon: 1", "target: {provider: local, local: {state_dir: state}}", "products:"]
    for p in ("gold", "silver"):
        lines += [f"  {p}:", f"    display_name: {p.title()}", "    apis: [petstore]",
                  "    rate_limit: {rate: 10, burst: 20}", "    pricing: {model: free}"]
    lines.append("subscribers:")
    for i in range(subscribers):
        lines += [f"  s{i:06d}:", f"    product: {'gold' if i % 2 else 'silver'}", f"    email: s{i}@example.com"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _state(tmp_path: Path) -> tuple[int, int, int]:
    conn = sqlite3.connect(tmp_path / "state" / "state.db", timeout=30)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        revision = int(row[0]) if row else 0
        subs = conn.execute("SELECT count(*) FROM subscribers").fetchone()[0]
        whole = conn.execute("SELECT count(*) FROM subscribers WHERE owner = 'apimon' AND length(api_key) >= 20 "
                             "AND email LIKE 's%@example.com' AND product IN ('gold', 'silver')").fetchone()[0]
        return revision, subs, whole
    finally:
        conn.close()


def test_apply_bumps_the_revision_once_per_batch(tmp_path):
    n = 1_200
    plan = _plan(tmp_path / "plan.yaml", n)
    r = run_cli("apply", "--auto-approve", str(plan), cwd=tmp_path)
    assert r.code == 0, r.output
    assert f"Apply complete: {n + 2} changes applied." in r.stdout
    revision, subs, whole = _state(tmp_path)
    assert subs == whole == n
    # batches of at most BATCH_CHANGES changes (or 100 ms): far fewer revisions than changes, at least
    # ceil(changes / BATCH_CHANGES)
    assert -(-(n + 2) // local_provider.BATCH_CHANGES) <= revision < (n + 2) / 4
    again = run_cli("plan", str(plan), cwd=tmp_path)
    assert "No changes." in again.stdout


def test_apply_killed_mid_batch_leaves_whole_changes_and_converges(tmp_path):
    n = 20_000
    plan = _plan(tmp_path / "plan.yaml", n)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")}
    proc = subprocess.Popen([sys.executable, "-m", "apimon_cli.cli", "apply", "--auto-approve", str(plan)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            db = tmp_path / "state" / "state.db"
            if db.exists():
                try:
                    if _state(tmp_path)[1] >= 1:  # some batches are committed, the apply is still running
                        break
                except sqlite3.OperationalError:  # the schema is being created
                    pass
            time.sleep(0.01)
        assert proc.poll() is None, "the apply finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    revision, subs, whole = _state(tmp_path)
    assert 0 < subs < n, subs  # killed part way
    assert whole == subs  # every subscriber there is whole
    r = run_cli("apply", "--auto-approve", str(plan), cwd=tmp_path)
    assert r.code == 0, r.output
    assert f"Apply complete: {n - subs} changes applied." in r.stdout
    assert _state(tmp_path)[1:] == (n, n)
    assert "No changes." in run_cli("plan", str(plan), cwd=tmp_path).stdout
