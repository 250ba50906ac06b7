"""`apply` at a terminal and under signals, through the real CLI in a subprocess: prompts and human text on
stderr, one JSON document on stdout, and Ctrl-C / SIGTERM reported like a failure with exit 130.

The terminal is a pty for stdin and stderr while stdout is a pipe, as in `apimon apply plan.yaml --json >
report.json` typed at a shell."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import ROOT, run_cli, write_plan

LOCAL = """
apimon: 1
target: {provider: local, local: {state_dir: state}}
products:
  free:
    display_name: Free
    apis: [petstore]
    rate_limit: {rate: 5, burst: 10}
    pricing: {model: free}
subscribers:
  bob: {product: free}
  ann: {product: free}
"""


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APIMON_", "AWS_"))}
    return env | {"NO_COLOR": "1", "COLUMNS": "120"}


class AtTerminal:
    """apimon with stdin and stderr on a pty, stdout on a pipe."""

    def __init__(self, *args: str, cwd, env: dict | None = None):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "apimon_cli.cli", *args], cwd=cwd, stdin=slave,
                                     stderr=slave, stdout=subprocess.PIPE, env=_env() | (env or {}))
        os.close(slave)
        self.screen = b""

    def read_until(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while text.encode() not in self.screen:
            assert time.monotonic() < deadline, f"no {text!r} on the terminal: {self.screen.decode()!r}"
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    self.screen += os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    break
        return self.screen.decode()

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        stdout = self.proc.communicate(timeout=timeout)[0].decode()
        while select.select([self.master], [], [], 0.2)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.screen += chunk
        os.close(self.master)
        return self.proc.returncode, stdout, self.screen.decode().replace("\r\n", "\n")


@pytest.fixture
def local_plan(tmp_path):
    return write_plan(tmp_path / "plan.yaml", LOCAL)


def test_apply_json_at_a_terminal_shows_the_plan_and_asks_on_stderr(local_plan, tmp_path):
    t = AtTerminal("apply", str(local_plan), "--json", cwd=tmp_path)
    screen = t.read_until("Enter a value:")
    # the reviewer sees what they approve, before the question
    assert screen.index("Plan: 3 to add, 0 to change, 0 to destroy.") < screen.index("Do you want to apply")
    assert "+ subscriber ann will be created" in screen
    os.write(t.master, b"yes\n")
    code, stdout, _screen = t.finish()
    assert code == 0
    doc = json.loads(stdout)  # exactly one JSON document: no prompt, no plan text mixed in
    assert sorted(c["id"] for c in doc["applied"]) == ["ann", "bob", "free"]
    assert doc["failed"] == [] and doc["not_applied"] == []
    assert "Enter a value" not in stdout and "Plan:" not in stdout


def test_apply_prompt_goes_to_stderr_and_no_is_a_cancel(local_plan, tmp_path):
    t = AtTerminal("apply", str(local_plan), cwd=tmp_path)
    t.read_until("Enter a value:")
    os.write(t.master, b"no\n")
    code, stdout, screen = t.finish()
    assert code == 1 and "Apply cancelled; nothing was changed." in screen
    assert "Enter a value" not in stdout and "Do you want" not in stdout
    assert "Plan: 3 to add" in stdout  # without --json the plan is the command's result: stdout


def test_apply_json_cancelled_still_prints_one_json_document(local_plan, tmp_path):
    t = AtTerminal("apply", str(local_plan), "--json", cwd=tmp_path)
    t.read_until("Enter a value:")
    os.write(t.master, b"\n")
    code, stdout, _ = t.finish()
    assert code == 1 and json.loads(stdout)["errors"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_at_the_prompt_reports_and_exits_130(local_plan, tmp_path, sig):
    t = AtTerminal("apply", str(local_plan), cwd=tmp_path)
    t.read_until("Enter a value:")
    t.proc.send_signal(sig)
    code, stdout, screen = t.finish()
    assert code == 130, screen
    assert "Traceback" not in screen
    assert "interrupted\n" in screen
    assert "Apply interrupted: 0 changes applied, 0 failed, 3 not attempted." in screen
    assert "not applied:  create subscriber ann" in screen
    r = run_cli("plan", str(local_plan), cwd=tmp_path)  # nothing changed
    assert "Plan: 3 to add" in r.stdout


def test_interrupt_at_the_prompt_with_json_prints_the_report_as_json(local_plan, tmp_path):
    t = AtTerminal("apply", str(local_plan), "--json", cwd=tmp_path)
    t.read_until("Enter a value:")
    t.proc.send_signal(signal.SIGINT)
    code, stdout, screen = t.finish()
    assert code == 130 and "interrupted" in screen
    doc = json.loads(stdout)
    assert doc["interrupted"] is True and doc["applied"] == [] and len(doc["not_applied"]) == 3


# ---------------------------------------------------------------- a long read / a long apply (Azure fake)

AZURE = """
apimon: 1
target:
  provider: azure
  azure: {{subscription_id: sub-1, resource_group: rg, service: apim, endpoint: "{url}"}}
products:
{products}
subscribers:
{subscribers}
"""
AZURE_ENV = {"APIMON_AZURE_TOKEN": "test-token", "APIMON_AZURE_RETRY_BACKOFF": "0.01",
             "APIMON_ALLOW_ENDPOINTS": "127.0.0.1"}  # the ARM fake on a loopback port (README "Security")


@pytest.fixture
def azure():
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fakes" / "azure_apim.py"), "--port", "0",
                             "--seed-apis", "petstore"], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _control(url: str, path: str, body: dict | None = None, method: str = "POST") -> dict:
    req = urllib.request.Request(url + path, data=json.dumps(body or {}).encode() if method == "POST" else None,
                                 method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")


def _azure_plan(tmp_path, url: str, n: int = 6):
    products = "\n".join(f"  p{i}: {{display_name: P{i}, apis: [petstore], pricing: {{model: free}}}}"
                         for i in range(n))
    subscribers = "\n".join(f"  s{i}: {{product: p{i}}}" for i in range(n))
    return write_plan(tmp_path / "plan.yaml", AZURE.format(url=url, products=products, subscribers=subscribers))


def _apimon(*args: str, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "apimon_cli.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=_env() | AZURE_ENV)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_during_apply_reports_applied_and_not_attempted(azure, tmp_path, sig):
    plan = _azure_plan(tmp_path, azure)
    _control(azure, "/_fake/latency", {"seconds": 0.15})
    proc = _apimon("apply", str(plan), "--auto-approve", cwd=tmp_path)
    applied_line = re.compile(r"^\s+\+ (product|subscriber) \S+: ")
    seen = []
    for line in proc.stdout:  # wait until something was applied, then interrupt
        seen.append(line)
        if applied_line.match(line):
            break
    proc.send_signal(sig)
    rest, stderr = proc.communicate(timeout=120)
    out = "".join(seen) + rest
    assert proc.returncode == 130, out + stderr
    assert "Traceback" not in stderr
    assert stderr.startswith("interrupted\n") or "\ninterrupted\n" in stderr
    m = re.search(r"Apply interrupted: (\d+) changes? applied, 0 failed, (\d+) not attempted\.", stderr)
    assert m, stderr
    applied, not_attempted = int(m.group(1)), int(m.group(2))
    assert applied >= 1 and not_attempted >= 1 and applied + not_attempted <= 12
    assert len(re.findall(r"^  applied: ", stderr, re.M)) == applied
    assert len(re.findall(r"^  not applied: ", stderr, re.M)) == not_attempted
    # it converges when run again
    _control(azure, "/_fake/latency", {"seconds": 0})
    r = run_cli("apply", str(plan), "--auto-approve", env=AZURE_ENV, cwd=tmp_path)
    assert r.code == 0, r.output
    r = run_cli("plan", str(plan), "--detailed-exitcode", env=AZURE_ENV, cwd=tmp_path)
    assert r.code == 0, r.output


def test_interrupt_while_reading_the_gateway_changes_nothing(azure, tmp_path):
    plan = _azure_plan(tmp_path, azure, n=2)
    _control(azure, "/_fake/latency", {"seconds": 3})
    proc = _apimon("apply", str(plan), "--auto-approve", "--json", cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not _control(azure, "/_fake/requests", method="GET")["requests"]:  # the read has begun
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr and "Nothing was applied" in stderr
    assert json.loads(stdout) == {"interrupted": True, "applied": [], "failed": [], "not_applied": []}
    writes = [r for r in _control(azure, "/_fake/requests", method="GET")["requests"] if r[0] != "GET"]
    assert writes == []


def test_interrupt_during_a_local_apply_reports_exactly_what_the_state_holds(tmp_path):
    """The report is the truth: every change it lists as applied is in the local state, and nothing else."""
    import sqlite3

    n = 20000  # batched commits make a local apply fast: enough changes to still be applying at the signal
    subs = "".join(f"  s{i:05d}: {{product: free}}\n" for i in range(n))
    plan = write_plan(tmp_path / "big.yaml", "apimon: 1\ntarget: {provider: local, local: {state_dir: state}}\n"
                      "products:\n  free: {display_name: Free, pricing: {model: free}}\nsubscribers:\n" + subs)
    proc = subprocess.Popen([sys.executable, "-m", "apimon_cli.cli", "apply", str(plan), "--auto-approve"],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outcome = re.compile(r"^\s+\+ subscriber s\d+: ")
    seen = 0
    for line in proc.stdout:
        if outcome.match(line):
            seen += 1
            if seen >= 20:
                break
    proc.send_signal(signal.SIGINT)
    _rest, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    # the signal is held until the change in flight is recorded: the report is never behind the state
    assert "Interrupt received: finishing the change in flight" in stderr
    m = re.search(r"Apply interrupted: (\d+) changes? applied, 0 failed, (\d+) not attempted\.", stderr)
    assert m, stderr
    applied = int(m.group(1))
    assert int(m.group(1)) + int(m.group(2)) == n + 1 and 0 < applied < n + 1
    reported = set(re.findall(r"^  applied:      create subscriber (s\d+)$", stderr, re.M))
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        held = {sid for (sid,) in conn.execute("SELECT id FROM subscribers")}
    assert reported == held and len(held) == applied - 1  # and the product
    r = run_cli("apply", str(plan), "--auto-approve", cwd=tmp_path)
    assert r.code == 0 and f"Apply complete: {n + 1 - applied} changes applied." in r.stdout


def test_interrupting_plan_json_exits_130_with_a_json_document(azure, tmp_path):
    plan = _azure_plan(tmp_path, azure, n=2)
    _control(azure, "/_fake/latency", {"seconds": 3})
    proc = _apimon("plan", str(plan), "--json", cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not _control(azure, "/_fake/requests", method="GET")["requests"]:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
    (err,) = json.loads(stdout)["errors"]
    assert err["message"] == "interrupted" and err["file"] is None
