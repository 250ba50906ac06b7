"""Issue 11 `-v` / APIMON_LOG=debug: one line per HTTP call to the gateway on stderr (provider, method, path,
status, ms, retry count); credentials and key values never appear in it."""

from __future__ import annotations

import re

import pytest
from conftest import run_cli, write_plan
from contract import harnesses

KEY = "imported-key-0123456789abcdef"
LINE = re.compile(r"^apimon: (AWS|Azure|Apigee) (GET|POST|PUT|PATCH|DELETE|HEAD) (https?://127\.0\.0\.1:\d+)(/\S*) "
                  r"-> (\d{3}) (\d+) ms, (\d+) retr(y|ies)$")
TOKENS = ("test-token", "testing")
NAMES = {"aws": "AWS", "azure": "Azure", "apigee": "Apigee"}


@pytest.fixture(params=["aws", "azure", "apigee"])
def gateway(request, tmp_path):
    h = harnesses()[request.param]
    h.start()
    h.tmp_path = tmp_path
    yield h
    h.stop()


def plan(h, tmp_path):
    api = h.apis[0]
    return write_plan(tmp_path / "plan.yaml", f"apimon: 1\ntarget: {h.target(tmp_path)}\nproducts:\n"
                      f"  free: {{display_name: Free, apis: [{api}], pricing: {{model: free}}}}\n"
                      "subscribers:\n  acme: {product: free, email: billing@acme.example, key: {from_env: ACME_KEY}}\n")


@pytest.mark.parametrize("how", ["-v", "APIMON_LOG"])
def test_one_line_per_call_and_no_secret(gateway, tmp_path, how):
    path = plan(gateway, tmp_path)
    env = {**gateway.env(), "ACME_KEY": KEY, **({"APIMON_LOG": "debug"} if how == "APIMON_LOG" else {})}
    args = ["-v"] if how == "-v" else []
    r = run_cli("apply", str(path), "--auto-approve", *args, env=env)
    assert r.code == 0, r.output
    lines = [line for line in r.stderr.splitlines() if line.startswith(f"apimon: {NAMES[gateway.name]} ")]
    assert lines, r.stderr
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), [line for line, m in zip(lines, parsed, strict=True) if not m]
    methods = {m.group(2) for m in parsed}
    assert "GET" in methods and methods - {"GET"}, methods  # the reads and the writes
    assert any(m.group(5).startswith("2") for m in parsed)
    for secret in (KEY, *TOKENS):
        assert secret not in r.output
    # without -v: no such lines
    r = run_cli("plan", str(path), env={**gateway.env(), "ACME_KEY": KEY})
    assert r.code == 0 and f"apimon: {NAMES[gateway.name]} " not in r.stderr, r.output
