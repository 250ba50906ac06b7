"""Key rotation on Azure through the real CLI and azure-mgmt-apimanagement against the ARM fake: the
subscription (and its usage) stays the same; during the overlap the old primary and the new key (the
regenerated secondary) both hold; after finish the new key is the primary and the old one is gone."""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import allow_endpoints, run_cli, write_plan
from fakes.azure_apim import AzureApimFake

RG, SVC = "rg", "apim"


@pytest.fixture
def fake(monkeypatch):
    with AzureApimFake(subscription_id="sub-1", resource_group=RG, service=SVC) as f:
        f.add_api("petstore", "Petstore", "petstore")
        monkeypatch.setitem(ENV, "APIMON_ALLOW_ENDPOINTS", allow_endpoints(f.base_url)["APIMON_ALLOW_ENDPOINTS"])
        yield f


def plan_for(tmp_path, fake):
    return write_plan(tmp_path / "plan.yaml", f"""
apimon: 1
target: {{provider: azure, azure: {{subscription_id: sub-1, resource_group: {RG}, service: {SVC},
          endpoint: '{fake.base_url}'}}}}
products:
  pro: {{display_name: Pro, apis: [petstore]}}
subscribers:
  acme: {{product: pro}}
""")


ENV = {"APIMON_AZURE_TOKEN": "test-token", "APIMON_AZURE_RETRY_BACKOFF": "0.01"}


def cli(*args):
    return run_cli(*args, env=ENV)


def keys_of(fake) -> tuple[str, str]:
    return tuple(fake.subscriptions["apimon-acme"]["keys"])


def test_rotation_keeps_the_subscription_and_swaps_after_the_overlap(fake, tmp_path):
    plan = plan_for(tmp_path, fake)
    assert cli("apply", str(plan), "--auto-approve").code == 0
    primary, secondary = keys_of(fake)
    r = cli("keys", "rotate", "acme", "--plan", str(plan), "--overlap", "1h")
    assert r.code == 0, r.output
    old, new = keys_of(fake)
    assert old == primary and new != secondary  # the old key still holds; the new one is the fresh secondary
    assert old not in r.output and new not in r.output
    assert cli("keys", "show", "acme", "--plan", str(plan)).stdout.strip() == new
    listed = json.loads(cli("keys", "list", str(plan), "--json").stdout)["subscribers"][0]["keys"]
    assert [(k["last4"], k["state"]) for k in listed] == [(old[-4:], "rotating-out"), (new[-4:], "active")]
    assert cli("keys", "rotate", "acme", "--plan", str(plan)).code == 1  # already rotating
    # finish before the end: nothing; after it (the recorded end moved to the past): the swap
    assert "Finished 0 rotations." in cli("keys", "finish", str(plan)).output
    ledger = tmp_path / ".apimon" / "ledger.db"
    with sqlite3.connect(ledger) as conn:
        conn.execute("UPDATE key_rotations SET ends = '2026-01-01T00:00:00+00:00'")
    r = cli("keys", "finish", str(plan))
    assert r.code == 0 and "Finished 1 rotation." in r.output, r.output
    primary2, secondary2 = keys_of(fake)
    assert primary2 == new and old not in (primary2, secondary2)
    assert list(fake.subscriptions) == ["apimon-acme"]  # the same subscription: usage stays with it
    # a repeated finish does not swap again
    assert cli("keys", "finish", str(plan)).code == 0 and keys_of(fake)[0] == new
    assert cli("keys", "show", "acme", "--plan", str(plan)).stdout.strip() == new
    assert cli("plan", str(plan), "--detailed-exitcode").code == 0


def test_a_failed_regeneration_is_redone_by_the_next_rotate(fake, tmp_path):
    plan = plan_for(tmp_path, fake)
    assert cli("apply", str(plan), "--auto-approve").code == 0
    primary, _ = keys_of(fake)
    fake.inject("POST", r"regenerateSecondaryKey", status=400, times=1, code="ValidationError", message="injected")
    r = cli("keys", "rotate", "acme", "--plan", str(plan))
    assert r.code == 1 and "Traceback" not in r.output
    assert keys_of(fake)[0] == primary  # the old key never stopped working
    r = cli("keys", "rotate", "acme", "--plan", str(plan))
    assert r.code == 0 and "interrupted" in r.output, r.output
    assert keys_of(fake)[0] == primary
    assert cli("keys", "show", "acme", "--plan", str(plan)).stdout.strip() == keys_of(fake)[1]


def test_revoke_ends_the_overlap_now(fake, tmp_path):
    plan = plan_for(tmp_path, fake)
    assert cli("apply", str(plan), "--auto-approve").code == 0
    assert cli("keys", "revoke", "acme", "--plan", str(plan)).code == 1  # the only key
    assert cli("keys", "rotate", "acme", "--plan", str(plan)).code == 0
    old, new = keys_of(fake)
    r = cli("keys", "revoke", "acme", "--plan", str(plan))
    assert r.code == 0, r.output
    assert keys_of(fake)[0] == new and old not in keys_of(fake)
