"""Key rotation on AWS, through the real CLI and boto3 against AwsFake (moto behind a faithful front).

During a rotation both keys are enabled and in the subscriber's usage plan; a rotation interrupted at any of
its calls is completed by the next run, with the old key working at every step; usage from both keys is
summed under the subscriber; `keys finish` detaches and deletes the old key after its end."""

from __future__ import annotations

import json
from datetime import UTC, date

import pytest
from conftest import run_cli, write_plan
from fakes.aws_gateway import AwsFake

PLAN = """
apimon: 1
target: {provider: aws, aws: {region: us-east-1}}
products:
  pro:
    display_name: Pro
    apis: [petstore/prod]
    rate_limit: {rate: 50, burst: 100}
subscribers:
  acme: {product: pro, email: billing@acme.example, metadata: {customer_id: cus_123}}
  bob: {product: pro}
"""


@pytest.fixture(scope="module")
def shared_fake():
    with AwsFake() as fake:
        yield fake


@pytest.fixture
def fake(shared_fake):
    shared_fake.reset()
    shared_fake.add_rest_api("petstore", ["prod"])
    yield shared_fake
    shared_fake.clear_faults()


def env(fake) -> dict:
    return {"AWS_ENDPOINT_URL": fake.endpoint_url, "APIMON_AWS_QUOTA_SCALE": "200"}


def cli(fake, *args):
    return run_cli(*args, env=env(fake))


def applied(fake, tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    r = cli(fake, "apply", str(plan), "--auto-approve")
    assert r.code == 0, r.output
    return plan


def acme_keys(fake) -> list[dict]:
    """acme's keys on AWS with their tags and plan membership (straight from moto)."""
    mc = fake.moto_client()
    plan_id = next(p["id"] for p in mc.get_usage_plans()["items"] if p["name"] == "pro")
    members = {k["id"] for k in mc.get_usage_plan_keys(usagePlanId=plan_id)["items"]}
    front = fake.client(max_attempts=1)
    out = []
    for k in mc.get_api_keys(includeValues=True)["items"]:
        tags = front.get_tags(resourceArn=f"arn:aws:apigateway:us-east-1::/apikeys/{k['id']}")["tags"]
        if k["name"] == "acme" or tags.get("apimon:subscriber") == "acme":
            out.append({**k, "tags": tags, "in_plan": k["id"] in members})
    return sorted(out, key=lambda k: (str(k["createdDate"]), k["name"]))  # createdDate is to the second


def working(keys: list[dict]) -> list[dict]:
    return [k for k in keys if k["enabled"] and k["in_plan"]]


def test_rotation_keeps_both_keys_then_finish_leaves_the_new_one(fake, tmp_path):
    plan = applied(fake, tmp_path)
    [old] = acme_keys(fake)
    r = cli(fake, "keys", "rotate", "acme", "--plan", str(plan), "--overlap", "1h")
    assert r.code == 0, r.output
    keys = acme_keys(fake)
    assert len(working(keys)) == 2
    new = next(k for k in keys if k["id"] != old["id"])
    assert new["name"].startswith("acme.rotated-") and new["customerId"] == "cus_123"
    assert new["description"] == "billing@acme.example" and new["tags"]["apimon:managed"]
    assert "apimon:expires" in next(k for k in keys if k["id"] == old["id"])["tags"]
    assert old["value"] not in r.output and new["value"] not in r.output
    # the plan still sees one subscriber, converged; keys show gives the new key
    assert cli(fake, "plan", str(plan), "--detailed-exitcode").code == 0
    assert cli(fake, "keys", "show", "acme", "--plan", str(plan)).stdout.strip() == new["value"]
    listed = json.loads(cli(fake, "keys", "list", str(plan), "--json", "--subscriber", "acme").stdout)
    states = [(k["last4"], k["state"]) for k in listed["subscribers"][0]["keys"]]
    assert states == [(old["value"][-4:], "rotating-out"), (new["value"][-4:], "active")]
    # usage from both keys is acme's
    plan_id = next(p["id"] for p in fake.moto_client().get_usage_plans()["items"] if p["name"] == "pro")
    today = date.today()
    fake.set_usage(plan_id, old["id"], today, 30, 0)
    fake.set_usage(plan_id, new["id"], today, 12, 0)
    r = cli(fake, "usage", "pull", str(plan), "--from", today.isoformat(), "--to", today.isoformat())
    assert r.code == 0, r.output
    r = cli(fake, "usage", "show", str(plan), "--period", today.strftime("%Y-%m"))
    assert r.code == 0, r.output
    [row] = [line for line in r.stdout.splitlines() if "acme" in line]
    assert "42" in row and "30" not in row and "12" not in row
    # after the overlap (its end moved to the past on AWS): finish removes the old key
    fake.client(max_attempts=1).tag_resource(resourceArn=f"arn:aws:apigateway:us-east-1::/apikeys/{old['id']}",
                                             tags={"apimon:expires": "2026-01-01T00:00:00+00:00"})
    r = cli(fake, "keys", "finish", str(plan))
    assert r.code == 0 and "Finished 1 rotation." in r.output, r.output
    assert [k["id"] for k in acme_keys(fake)] == [new["id"]]
    assert cli(fake, "plan", str(plan), "--detailed-exitcode").code == 0


@pytest.mark.parametrize("step", ["CreateApiKey", "CreateUsagePlanKey", "TagResource"])
def test_an_interrupted_rotation_converges_and_never_leaves_no_key(fake, tmp_path, step):
    plan = applied(fake, tmp_path)
    [old] = acme_keys(fake)
    # the call fails after it took effect (a lost response) for the create, before it for the others
    fake.inject(step, status=400, times=1, message="injected", after_forward=step == "CreateApiKey")
    r = cli(fake, "keys", "rotate", "acme", "--plan", str(plan), "--overlap", "1h")
    assert r.code == 1 and "Traceback" not in r.output, r.output
    keys = acme_keys(fake)
    assert old["id"] in [k["id"] for k in working(keys)]  # the old key never stopped working
    r = cli(fake, "keys", "rotate", "acme", "--plan", str(plan), "--overlap", "1h")
    assert r.code == 0, r.output
    keys = acme_keys(fake)
    assert len(keys) == 2 and len(working(keys)) == 2, keys
    assert ["apimon:expires" in k["tags"] for k in keys] == [True, False]
    assert cli(fake, "plan", str(plan), "--detailed-exitcode").code == 0


def test_apply_completes_an_interrupted_rotation(fake, tmp_path):
    plan = applied(fake, tmp_path)
    fake.inject("TagResource", status=400, times=1, message="injected")
    assert cli(fake, "keys", "rotate", "acme", "--plan", str(plan)).code == 1
    r = cli(fake, "apply", str(plan), "--auto-approve")
    assert r.code == 0, r.output
    keys = acme_keys(fake)
    assert len(working(keys)) == 2 and ["apimon:expires" in k["tags"] for k in keys] == [True, False]


def test_revoke_on_aws(fake, tmp_path):
    plan = applied(fake, tmp_path)
    assert cli(fake, "keys", "revoke", "acme", "--plan", str(plan)).code == 1
    assert cli(fake, "keys", "rotate", "acme", "--plan", str(plan)).code == 0
    old, new = acme_keys(fake)
    r = cli(fake, "keys", "revoke", "acme", "--plan", str(plan), "--key", old["value"][-4:])
    assert r.code == 0, r.output
    assert [k["id"] for k in acme_keys(fake)] == [new["id"]]
    r = cli(fake, "keys", "revoke", "acme", "--plan", str(plan), "--all")
    assert r.code == 0 and f"no working key now; `apimon apply {plan}` issues a new one" in r.output, r.output
    assert acme_keys(fake) == []
    assert cli(fake, "apply", str(plan), "--auto-approve").code == 0  # as the warning says
    assert len(working(acme_keys(fake))) == 1


def test_a_rotation_key_created_in_the_same_second_is_the_newer():
    """AWS gives createdDate to the second: a rotation key that ties with the key it rotates still sorts after
    it whatever the ids, so an interrupted rotation is completed rather than the new key taken as a duplicate."""
    from datetime import datetime

    from apimon_cli.providers.aws.read import key_age

    at = datetime(2026, 12, 4, 19, 21, 3, tzinfo=UTC)
    old = {"id": "zzzz", "name": "acme", "createdDate": at, "tags": {"apimon:managed": "true"}}
    new = {"id": "aaaa", "name": "acme.rotated-20261204T192103Z", "createdDate": at,
           "tags": {"apimon:managed": "true", "apimon:subscriber": "acme"}}
    assert [k["id"] for k in sorted([new, old], key=key_age)] == ["zzzz", "aaaa"]
