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


# ---------------------------------------------------------------- key.from_env: the old value works for key.overlap

V1, V2, V3 = "first-key-value-0123456789abcdef", "second-key-value-0123456789abcd", "third-key-value-0123456789abcde"


def from_env_plan(tmp_path, fake, overlap=""):
    key = "{from_env: ACME_KEY" + (f", overlap: {overlap}" if overlap else "") + "}"
    return write_plan(tmp_path / "plan.yaml", plan_for(tmp_path, fake).read_text().replace(
        "acme: {product: pro}", f"acme: {{product: pro, key: {key}}}"))


def env_cli(value, *args):
    return run_cli(*args, env={**ENV, "ACME_KEY": value})


def rotations(tmp_path) -> list[tuple[str, str]]:
    if not (tmp_path / ".apimon" / "ledger.db").exists():
        return []
    with sqlite3.connect(tmp_path / ".apimon" / "ledger.db") as conn:
        return conn.execute("SELECT subscriber, ends FROM key_rotations").fetchall()


def end_overlaps(tmp_path) -> None:
    with sqlite3.connect(tmp_path / ".apimon" / "ledger.db") as conn:
        conn.execute("UPDATE key_rotations SET ends = '2026-01-01T00:00:00+00:00'")


def test_a_new_from_env_value_keeps_the_old_key_working_for_the_overlap(fake, tmp_path):
    plan = from_env_plan(tmp_path, fake)
    assert env_cli(V1, "apply", str(plan), "--auto-approve").code == 0
    assert keys_of(fake)[0] == V1
    r = env_cli(V2, "apply", str(plan), "--auto-approve")
    assert r.code == 0, r.output
    assert "key replaced, the old key works until " in r.stdout and "as the secondary" in r.stdout, r.output
    assert V1 not in r.output and V2 not in r.output
    assert keys_of(fake) == (V2, V1)  # both values authenticate during the overlap
    assert [sid for sid, _ in rotations(tmp_path)] == ["acme"]
    assert env_cli(V2, "plan", str(plan), "--detailed-exitcode").code == 0  # converged at once
    listed = json.loads(env_cli(V2, "keys", "list", str(plan), "--json").stdout)["subscribers"][0]["keys"]
    assert [(k["last4"], k["state"]) for k in listed] == [(V1[-4:], "rotating-out"), (V2[-4:], "active")]
    assert listed[0]["expires"] is not None
    assert env_cli(V2, "keys", "show", "acme", "--plan", str(plan)).stdout.strip() == V2
    r = env_cli(V2, "keys", "rotate", "acme", "--plan", str(plan))
    assert r.code == 1 and "key.from_env" in r.output
    # before the end: nothing is finished; after it, keys finish regenerates the secondary (the old value)
    assert "Finished 0 rotations." in env_cli(V2, "keys", "finish", str(plan)).output
    assert keys_of(fake) == (V2, V1)
    end_overlaps(tmp_path)
    r = env_cli(V2, "keys", "finish", str(plan))
    assert r.code == 0 and "Finished 1 rotation." in r.output, r.output
    primary, secondary = keys_of(fake)
    assert primary == V2 and secondary != V1  # only the new value works
    assert rotations(tmp_path) == []
    assert env_cli(V2, "keys", "finish", str(plan)).code == 0 and keys_of(fake) == (V2, secondary)  # never twice
    listed = json.loads(env_cli(V2, "keys", "list", str(plan), "--json").stdout)["subscribers"][0]["keys"]
    assert [(k["last4"], k["state"]) for k in listed] == [(V2[-4:], "active")]
    assert env_cli(V2, "plan", str(plan), "--detailed-exitcode").code == 0
    # the next value; its overlap ended, a plain apply (no changes) ends the old one
    assert env_cli(V3, "apply", str(plan), "--auto-approve").code == 0 and keys_of(fake) == (V3, V2)
    end_overlaps(tmp_path)
    r = env_cli(V3, "apply", str(plan), "--auto-approve")
    assert r.code == 0, r.output
    assert keys_of(fake)[0] == V3 and V2 not in keys_of(fake)
    assert list(fake.subscriptions) == ["apimon-acme"]  # the same subscription: usage stays with it


def test_a_from_env_value_with_no_overlap_replaces_the_old_key_at_once(fake, tmp_path):
    plan = from_env_plan(tmp_path, fake, overlap="0s")
    assert env_cli(V1, "apply", str(plan), "--auto-approve").code == 0
    secondary = keys_of(fake)[1]
    r = env_cli(V2, "apply", str(plan), "--auto-approve")
    assert r.code == 0 and "(key replaced)" in r.stdout, r.output
    assert keys_of(fake) == (V2, secondary)  # the old value stops at once; the secondary is untouched
    assert rotations(tmp_path) == []
    assert env_cli(V2, "plan", str(plan), "--detailed-exitcode").code == 0


def test_a_from_env_value_interrupted_before_the_patch_converges_with_the_recorded_end(fake, tmp_path):
    plan = from_env_plan(tmp_path, fake)
    assert env_cli(V1, "apply", str(plan), "--auto-approve").code == 0
    before = keys_of(fake)
    fake.inject("PATCH", r"subscriptions/apimon-acme", status=400, times=1, code="ValidationError",
                message="injected")
    r = env_cli(V2, "apply", str(plan), "--auto-approve")
    assert r.code == 1 and "Traceback" not in r.output
    assert keys_of(fake) == before  # nothing changed on the gateway; the journal holds the intent
    [(_, ends)] = rotations(tmp_path)
    listed = json.loads(env_cli(V2, "keys", "list", str(plan), "--json").stdout)["subscribers"][0]["keys"]
    assert [(k["last4"], k["state"]) for k in listed] == [(V1[-4:], "active")]
    assert env_cli(V2, "plan", str(plan), "--detailed-exitcode").code == 2
    r = env_cli(V2, "apply", str(plan), "--auto-approve")
    assert r.code == 0 and f"the old key works until {ends}" in r.stdout, r.output
    assert keys_of(fake) == (V2, V1) and rotations(tmp_path) == [("acme", ends)]
    assert env_cli(V2, "plan", str(plan), "--detailed-exitcode").code == 0


def test_a_from_env_rotation_that_never_got_its_patch_leaves_the_keys_alone_at_its_end(fake, tmp_path):
    plan = from_env_plan(tmp_path, fake)
    assert env_cli(V1, "apply", str(plan), "--auto-approve").code == 0
    before = keys_of(fake)
    fake.inject("PATCH", r"subscriptions/apimon-acme", status=400, times=1, code="ValidationError",
                message="injected")
    assert env_cli(V2, "apply", str(plan), "--auto-approve").code == 1
    end_overlaps(tmp_path)
    r = env_cli(V1, "keys", "finish", str(plan))  # the variable back to the old value: nothing to end
    assert r.code == 0 and "Finished 0 rotations." in r.output, r.output
    assert keys_of(fake) == before and rotations(tmp_path) == []


def test_revoke_ends_a_from_env_overlap_now(fake, tmp_path):
    plan = from_env_plan(tmp_path, fake)
    assert env_cli(V1, "apply", str(plan), "--auto-approve").code == 0
    assert env_cli(V2, "apply", str(plan), "--auto-approve").code == 0
    r = env_cli(V2, "keys", "revoke", "acme", "--plan", str(plan), "--key", V2[-4:])
    assert r.code == 1 and "without a working key" in r.output  # the plan's value stays
    r = env_cli(V2, "keys", "revoke", "acme", "--plan", str(plan), "--key", V1[-4:])
    assert r.code == 0, r.output
    assert keys_of(fake)[0] == V2 and V1 not in keys_of(fake) and rotations(tmp_path) == []
    assert env_cli(V2, "plan", str(plan), "--detailed-exitcode").code == 0
