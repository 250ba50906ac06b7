"""Key rotation on Apigee through the real CLI and google-auth's AuthorizedSession against the Apigee fake:
a second credential on the subscriber's app holding the same API product; the old one carries its end and is
revoked and deleted by `keys finish`; an interrupted rotation is completed by the next run."""

from __future__ import annotations

import json

import pytest
from conftest import allow_endpoints, run_cli, write_plan
from fakes.apigee import ApigeeFake

ORG = "acme"
ENV = {"APIMON_APIGEE_TOKEN": "test-token"}


@pytest.fixture
def fake(monkeypatch):
    with ApigeeFake(org=ORG, environments=["prod"], proxies=["petstore"]) as f:
        monkeypatch.setitem(ENV, "APIMON_ALLOW_ENDPOINTS", allow_endpoints(f.endpoint)["APIMON_ALLOW_ENDPOINTS"])
        yield f


def plan_for(tmp_path, fake):
    return write_plan(tmp_path / "plan.yaml", f"""
apimon: 1
target: {{provider: apigee, apigee: {{organization: {ORG}, environments: [prod], endpoint: '{fake.endpoint}'}}}}
products:
  pro: {{display_name: Pro, apis: [petstore]}}
subscribers:
  acme: {{product: pro, email: dev@acme.example}}
""")


def cli(*args):
    return run_cli(*args, env=ENV)


def creds(fake) -> list[dict]:
    return list(fake.apps["dev@acme.example"]["acme"]["credentials"])


def working(fake) -> list[dict]:
    return [c for c in creds(fake) if c["status"] == "approved" and any(r["apiproduct"] == "pro"
                                                                         for r in c["apiProducts"])]


def attr(cred, name):
    return next((a["value"] for a in cred.get("attributes", []) if a["name"] == name), None)


def test_rotation_adds_a_credential_then_finish_removes_the_old(fake, tmp_path):
    plan = plan_for(tmp_path, fake)
    assert cli("apply", str(plan), "--auto-approve").code == 0
    [old] = creds(fake)
    r = cli("keys", "rotate", "acme", "--plan", str(plan), "--overlap", "1h")
    assert r.code == 0, r.output
    assert len(working(fake)) == 2
    new = next(c for c in creds(fake) if c["consumerKey"] != old["consumerKey"])
    assert attr(next(c for c in creds(fake) if c["consumerKey"] == old["consumerKey"]), "apimon_expires")
    assert old["consumerKey"] not in r.output and new["consumerKey"] not in r.output
    assert cli("keys", "show", "acme", "--plan", str(plan)).stdout.strip() == new["consumerKey"]
    assert cli("plan", str(plan), "--detailed-exitcode").code == 0
    listed = json.loads(cli("keys", "list", str(plan), "--json").stdout)["subscribers"][0]["keys"]
    assert [k["state"] for k in listed] == ["rotating-out", "active"]
    # the end passes (moved to the past on the gateway): finish revokes and deletes the old credential
    for c in fake.apps["dev@acme.example"]["acme"]["credentials"]:
        for a in c["attributes"]:
            if a["name"] == "apimon_expires":
                a["value"] = "2026-01-01T00:00:00+00:00"
    r = cli("keys", "finish", str(plan))
    assert r.code == 0 and "Finished 1 rotation." in r.output, r.output
    assert [c["consumerKey"] for c in creds(fake)] == [new["consumerKey"]]
    assert cli("plan", str(plan), "--detailed-exitcode").code == 0


def test_an_interrupted_rotation_is_completed(fake, tmp_path):
    plan = plan_for(tmp_path, fake)
    assert cli("apply", str(plan), "--auto-approve").code == 0
    [old] = creds(fake)
    # the product association of the new credential fails
    fake.inject("POST", r"/keys/[^/]+$", status=400, times=1, message="injected")
    r = cli("keys", "rotate", "acme", "--plan", str(plan))
    assert r.code == 1 and "Traceback" not in r.output, r.output
    assert old["consumerKey"] in [c["consumerKey"] for c in working(fake)]
    assert cli("plan", str(plan), "--detailed-exitcode").code == 0
    fake._faults.clear()
    r = cli("keys", "rotate", "acme", "--plan", str(plan))
    assert r.code == 0 and "interrupted" in r.output, r.output
    assert len(working(fake)) == 2 and len(creds(fake)) == 2
    assert attr(next(c for c in creds(fake) if c["consumerKey"] == old["consumerKey"]), "apimon_expires")
