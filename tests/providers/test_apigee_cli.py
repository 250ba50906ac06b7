"""End to end through the real CLI against the standalone Apigee fake (a separate process over HTTP)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, allow_endpoints, run_cli, write_plan

ORG = "acme"
IMPORTED = "imported-key_0123456789abcdef"
ENV = {"APIMON_APIGEE_TOKEN": "test-token", "ACME_KEY": IMPORTED}

PLAN = """
apimon: 1
target:
  provider: apigee
  apigee: {{organization: acme, environments: [prod], endpoint: "{endpoint}"}}
billing: {{currency: EUR, period: month}}
products:
  free:
    display_name: Free
    apis: [petstore]
    quota: {{limit: 1000, period: day}}
    pricing: {{model: free}}
  starter:
    display_name: Starter
    description: Small teams
    apis: [petstore]
    rate_limit: {{rate: 50, burst: 100}}
    quota: {{limit: 100000, period: month}}
    pricing: {{model: per_unit, fee: "29.00", setup_fee: "10", unit_price: "0.001"}}
  pro:
    display_name: Pro
    apis: [petstore, orders]
    pricing:
      fee: "199.00"
      model: graduated
      tiers:
        - {{up_to: 1000000, unit_price: "0.0008"}}
        - {{up_to: inf, unit_price: "0.0003"}}
  steps:
    display_name: Steps
    apis: [orders]
    pricing:
      model: stairstep
      tiers: [{{up_to: 100, flat_fee: "5"}}, {{up_to: inf, flat_fee: "20"}}]
subscribers:
  acme: {{product: pro, email: billing@acme.example, key: {{from_env: ACME_KEY}}, metadata: {{customer_id: cus_1}}}}
  bob: {{product: free, email: bob@example.com}}
  carol: {{product: starter, email: carol@example.com, enabled: false, metadata: {{first_name: Carol}}}}
"""


def _start_fake(*extra: str):
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fakes" / "apigee.py"), "--port", "0", "--org", ORG, "--env", "prod",
         "--proxy", "petstore", "--proxy", "orders", *extra],
        stdout=subprocess.PIPE, text=True)
    endpoint = proc.stdout.readline().strip()
    assert endpoint.startswith("http://127.0.0.1:"), endpoint
    return proc, endpoint


@pytest.fixture
def endpoint(monkeypatch):
    proc, url = _start_fake()
    monkeypatch.setitem(ENV, "APIMON_ALLOW_ENDPOINTS", allow_endpoints(url)["APIMON_ALLOW_ENDPOINTS"])
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_validate_plan_apply_import_round_trip(endpoint, tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", PLAN.format(endpoint=endpoint))
    outputs = []

    r = run_cli("validate", str(plan), env=ENV)
    outputs.append(r.output)
    assert r.code == 0 and "valid: 4 products, 3 subscribers" in r.stdout, r.output

    r = run_cli("plan", str(plan), "--detailed-exitcode", env=ENV)
    outputs.append(r.output)
    assert r.code == 2, r.output
    assert "Plan: 7 to add, 0 to change, 0 to destroy." in r.stdout

    r = run_cli("apply", str(plan), "--auto-approve", env=ENV)
    outputs.append(r.output)
    assert r.code == 0, r.output
    assert "Apply complete: 7 changes applied." in r.stdout

    r = run_cli("plan", str(plan), "--detailed-exitcode", env=ENV)
    outputs.append(r.output)
    assert r.code == 0 and "No changes." in r.stdout, r.output

    imported = tmp_path / "imported.yaml"
    r = run_cli("import", "--provider", "apigee", "--organization", ORG, "--environment", "prod",
                "--endpoint", endpoint, "--out", str(imported), env=ENV)
    outputs.append(r.output)
    assert r.code == 0, r.output
    doc = yaml.safe_load(imported.read_text())
    assert doc["target"] == {"provider": "apigee", "apigee": {"organization": ORG, "environments": ["prod"],
                                                              "endpoint": endpoint}}
    assert doc["billing"] == {"currency": "EUR", "period": "month"}
    assert doc["products"]["starter"]["pricing"] == {"model": "per_unit", "fee": "29", "setup_fee": "10",
                                                     "unit_price": "0.001"}
    assert doc["products"]["starter"]["rate_limit"] == {"rate": 50, "burst": 100}
    assert doc["products"]["pro"]["pricing"]["tiers"][1] == {"up_to": "inf", "unit_price": "0.0003"}
    assert doc["subscribers"]["carol"] == {"product": "starter", "email": "carol@example.com", "enabled": False,
                                           "metadata": {"first_name": "Carol"}}
    assert IMPORTED not in imported.read_text()

    r = run_cli("validate", str(imported), env=ENV)
    assert r.code == 0, r.output
    r = run_cli("plan", str(imported), "--detailed-exitcode", env=ENV)
    outputs.append(r.output)
    assert r.code == 0 and "No changes." in r.stdout, r.output

    r = run_cli("keys", "show", "acme", "--plan", str(plan), env=ENV)
    assert r.code == 0 and r.stdout.strip() == IMPORTED
    assert not any(IMPORTED in o for o in outputs)

    # a pricing change: one update, applied as a rate plan switch
    plan.write_text(plan.read_text().replace('fee: "199.00"', 'fee: "249.00"'))
    r = run_cli("plan", str(plan), "--json", env=ENV)
    body = json.loads(r.stdout)
    assert body["summary"] == {"creating": 0, "updating": 1, "deleting": 0, "replacing": 0, "total": 1}
    assert body["changes"]["updating"][0]["fields"] == {"pricing.fee": {"before": "199", "after": "249.00"}}
    r = run_cli("apply", str(plan), "--auto-approve", env=ENV)
    assert r.code == 0 and "previous plan ended at the same instant" in r.output, r.output
    r = run_cli("plan", str(plan), "--detailed-exitcode", env=ENV)
    assert r.code == 0, r.output


def test_monetization_disabled_warns_once(tmp_path, monkeypatch):
    proc, url = _start_fake("--no-monetization")
    monkeypatch.setitem(ENV, "APIMON_ALLOW_ENDPOINTS", allow_endpoints(url)["APIMON_ALLOW_ENDPOINTS"])
    try:
        plan = write_plan(tmp_path / "plan.yaml", PLAN.format(endpoint=url))
        r = run_cli("apply", str(plan), "--auto-approve", env=ENV)
        assert r.code == 0, r.output
        assert r.output.count("monetization is not enabled in organization acme") == 1
        r = run_cli("plan", str(plan), "--detailed-exitcode", env=ENV)
        assert r.code == 0 and r.output.count("monetization is not enabled") == 1, r.output
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_shipped_example_plan_is_valid():
    r = run_cli("validate", str(ROOT / "plans" / "apigee.yaml"))
    assert r.code == 0, r.output
    assert "target apigee" in r.stdout


def test_usage_pull_into_the_ledger(tmp_path, monkeypatch):
    """The fake runs in this process (traffic is seeded through its Python API); the CLI is a subprocess."""
    import datetime as dt

    from fakes.apigee import ApigeeFake

    with ApigeeFake(org=ORG, environments=["prod"], proxies=["petstore", "orders"]) as fake:
        monkeypatch.setitem(ENV, "APIMON_ALLOW_ENDPOINTS", allow_endpoints(fake.endpoint)["APIMON_ALLOW_ENDPOINTS"])
        plan = write_plan(tmp_path / "plan.yaml", PLAN.format(endpoint=fake.endpoint))
        r = run_cli("apply", str(plan), "--auto-approve", env=ENV)
        assert r.code == 0, r.output
        fake.add_app("x@example.com", "stranger", api_products=["pro"])  # not apimon's: never pulled
        fake.record_traffic("prod", "pro", "acme", dt.date(2027, 1, 31), 252_056_245)
        fake.record_traffic("prod", "free", "bob", dt.date(2027, 1, 1), 39)
        fake.record_traffic("prod", "free", "bob", dt.date(2027, 2, 1), 1000)  # the day after the window
        fake.record_traffic("prod", "pro", "stranger", dt.date(2027, 1, 15), 5)
        ledger = tmp_path / "ledger.db"
        args = ("usage", "pull", str(plan), "--from", "2027-01-01", "--to", "2027-01-31", "--ledger", str(ledger))
        r = run_cli(*args, env=ENV)
        assert r.code == 0, r.output
        assert "4 new" in r.stdout, r.stdout
        assert "2027-01-31 acme pro total: 252056245" in r.stdout
        assert "2027-01-01 bob free success: 39" in r.stdout
        assert "stranger" not in r.stdout and "2027-02-01" not in r.stdout
        r = run_cli(*args, env=ENV)  # pulling again replaces: nothing new
        assert r.code == 0 and "0 new, 0 revised, 0 removed, 4 unchanged" in r.stdout, r.stdout
