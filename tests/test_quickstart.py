"""The README's first command: the whole loop on the local target, run from a copy of the project."""

from __future__ import annotations

import csv
import re
import shutil
import socket
import subprocess
import sys

from conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_quickstart_runs_the_whole_loop(tmp_path):
    # The quick start's upstream listens where the plan says (9000 in the shipped plan). Other test runs on
    # this machine run the quick start too: on a shared fixed port, one run's traffic went to the other's
    # upstream, which then stopped (acme got 0 of 150 answers). The copy gets a port of its own.
    for part in ("examples", "plans"):
        shutil.copytree(ROOT / part, tmp_path / part)
    plan = tmp_path / "plans" / "local.yaml"
    assert "http://127.0.0.1:9000" in plan.read_text()
    plan.write_text(plan.read_text().replace("http://127.0.0.1:9000", f"http://127.0.0.1:{free_port()}"))
    proc = subprocess.run([sys.executable, str(tmp_path / "examples" / "quickstart.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=240, env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    # the traffic table: subscriber, product, sent, 200 ok, 429 rate limit, 429 quota, story
    table = re.compile(r"^(acme|initech|hooli)\s+\w+ \(.*?\)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+\w")
    rows = {m.group(1): [int(x) for x in m.groups()[1:]] for m in map(table.match, out.splitlines()) if m}
    assert rows["acme"] == [150, 150, 0, 0]  # within its limits
    sent, ok, rate_limited, quota = rows["initech"]  # a burst of 40 against burst 10
    assert sent == 40 and rate_limited >= 20 and ok + rate_limited == 40 and quota == 0
    assert rows["hooli"] == [70, 50, 0, 20]  # stopped by its quota of 50 a day
    # one subscriber calls with an OAuth 2.0 token from the gateway's token endpoint; its secret is not shown
    assert re.search(r"^with a token: globex sent 10 calls, 10 answered 200", out, re.M), out
    assert "a Bearer token for globex, expires in 3600 s" in out
    invoice = list(csv.DictReader((tmp_path / "out").glob("invoice-*.csv").__next__().open()))
    assert {r["subscriber"] for r in invoice} == {"acme", "globex", "hooli", "initech"}
    assert any(r["subscriber"] == "acme" and r["line_type"] == "minimum" for r in invoice)
    # one .apimon folder beside the plan holds the state and the ledger (README, Quick start)
    assert not (tmp_path / ".apimon").exists()
    assert sorted(p.name for p in (tmp_path / "plans" / ".apimon").glob("*.db")) >= ["ledger.db", "state.db"]
    assert "plans/.apimon/ (state.db, ledger.db)" in out
    databases = [tmp_path / "plans" / ".apimon" / "state.db", tmp_path / "plans" / ".apimon" / "ledger.db"]
    for db in databases:  # the gateway state (keys) and the ledger (customer usage): owner-only
        assert db.stat().st_mode & 0o077 == 0, db
