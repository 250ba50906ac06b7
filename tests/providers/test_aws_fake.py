"""The AWS provider end to end: the real CLI as a subprocess against AwsFake (moto + a faithful front).

Covers the whole loop (validate -> plan -> apply -> plan -> import -> plan on the import), plan-time
errors, adopt, fault injection (429 + Retry-After, 409, 500, dropped connections), an interrupted apply
that resumes, quota enforcement, and usage pulls across pages and 90-day windows.
"""

from __future__ import annotations

import json
import time
from datetime import date, timedelta

import pytest
from conftest import run_cli, write_plan
from fakes.aws_gateway import AwsFake

from apimon_cli.model import Billing, DesiredState, Target
from apimon_cli.providers.aws.provider import AwsProvider
from apimon_cli.providers.base import ProviderError
from apimon_cli.reconcile.engine import apply_changes, make_plan

SCALE = "200"
IMPORTED = "imported-key-value-0123456789abcdef"

PLAN = """
apimon: 1
target: {provider: aws, aws: {region: us-east-1}}
products:
  free:
    display_name: Free
    description: Try it
    apis: [petstore/prod]
    rate_limit: {rate: 5, burst: 10}
    quota: {limit: 1000, period: month}
  pro:
    display_name: Pro
    apis: [petstore/prod, petstore/beta]
    rate_limit: {rate: 50, burst: 100}
    pricing: {model: flat, fee: "99.00"}
subscribers:
  acme: {product: pro, email: billing@acme.example, metadata: {customer_id: cus_123}}
  bob: {product: free, enabled: false}
  imported: {product: free, key: {from_env: IMPORTED_KEY}}
"""


@pytest.fixture(scope="module")
def shared_fake():
    with AwsFake() as fake:
        yield fake


@pytest.fixture
def fake(shared_fake):
    f = shared_fake
    f.reset()
    f.add_rest_api("petstore", ["prod", "beta"])
    mc = f.moto_client()
    legacy = mc.create_usage_plan(name="legacy", description="hand made")["id"]
    handmade = mc.create_api_key(name="handmade", enabled=True)["id"]
    mc.create_usage_plan_key(usagePlanId=legacy, keyId=handmade, keyType="API_KEY")
    mc.create_api_key(name="loose", enabled=True)
    f.reset_counts()
    yield f
    f.clear_faults()
    f.disable_quotas()


class Engine:
    """make_plan + provider.apply in this process, against the fake."""

    def plan(self, path):
        run = make_plan([str(path)])
        run.provider.close()
        return run

    def apply(self, path, check: bool = True):
        run = make_plan([str(path)])
        report = apply_changes(run.provider, run.changes.changes, run.live)
        if check:
            assert not report.failed, [o.message for o in report.failed]
            assert not report.not_applied
        return run, report


@pytest.fixture
def engine(fake, monkeypatch):
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env_for(fake).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return Engine()


def env_for(fake, **extra) -> dict:
    return {"AWS_ENDPOINT_URL": fake.endpoint_url, "APIMON_AWS_QUOTA_SCALE": SCALE, "IMPORTED_KEY": IMPORTED,
            **extra}


def snapshot(fake, names=("legacy", "handmade", "loose")) -> dict:
    mc = fake.moto_client()
    plans = {p["name"]: p for p in mc.get_usage_plans()["items"] if p["name"] in names}
    keys = {k["name"]: k for k in mc.get_api_keys(includeValues=True)["items"] if k["name"] in names}
    fronted = fake.client(max_attempts=1)
    tags = {n: fronted.get_tags(resourceArn=f"arn:aws:apigateway:us-east-1::/usageplans/{p['id']}")["tags"]
            for n, p in plans.items()}
    tags |= {n: fronted.get_tags(resourceArn=f"arn:aws:apigateway:us-east-1::/apikeys/{k['id']}")["tags"]
             for n, k in keys.items()}
    members = {n: sorted(k["id"] for k in mc.get_usage_plan_keys(usagePlanId=p["id"])["items"])
               for n, p in plans.items()}
    fake.reset_counts()
    return {"plans": plans, "keys": keys, "tags": tags, "members": members}


def key_values(fake) -> list[str]:
    return [k["value"] for k in fake.moto_client().get_api_keys(includeValues=True)["items"]]


def owned_names(fake, kind: str) -> list[str]:
    c = fake.client(max_attempts=1)
    items = c.get_usage_plans(limit=500)["items"] if kind == "plans" else c.get_api_keys(limit=500)["items"]
    return sorted(i["name"] for i in items if "apimon:managed" in (i.get("tags") or {}))


def test_cli_loop_validate_plan_apply_import(fake, tmp_path):
    before = snapshot(fake)
    env = env_for(fake)
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    outputs = []

    def cli(*args, code=0):
        r = run_cli(*args, cwd=tmp_path, env=env)
        outputs.append(r.output)
        assert r.code == code, r.output
        return r

    assert "valid: 2 products, 3 subscribers" in cli("validate", str(plan)).stdout
    r = cli("plan", str(plan), "--detailed-exitcode", code=2)
    assert "Plan: 5 to add, 0 to change, 0 to destroy." in r.stdout
    assert "product legacy: unmanaged, left alone" in r.stdout and "subscriber loose: unmanaged" in r.stdout
    assert "display_name" not in r.stdout and "pricing" not in r.stdout  # AWS does not keep them
    assert "Apply complete: 5 changes applied." in cli("apply", str(plan), "--auto-approve").stdout
    assert "No changes." in cli("plan", str(plan), "--detailed-exitcode").stdout
    assert fake.throttled == 0

    fake.reset_counts()
    cli("import", "--provider", "aws", "--region", "us-east-1", "--out", "imported.yaml")
    assert set(fake.counts) <= {"GetRestApis", "GetUsagePlans", "GetApiKeys", "GetUsagePlanKeys"}
    imported = (tmp_path / "imported.yaml").read_text()
    assert "legacy:" in imported, imported  # unmanaged resources are imported, to adopt
    assert "customer_id: cus_123" in imported and "enabled: false" in imported
    cli("validate", "imported.yaml")
    r = cli("plan", "imported.yaml", "--detailed-exitcode")
    assert "No changes." in r.stdout and "product legacy matches the plan but is not managed by apimon" in r.stdout
    cli("import", "--provider", "aws", "--region", "us-east-1", "--managed-only", "--out", "owned.yaml")
    owned = (tmp_path / "owned.yaml").read_text()
    assert "legacy" not in owned and "loose" not in owned
    assert "No changes." in cli("plan", "owned.yaml", "--detailed-exitcode").stdout

    values = key_values(fake)
    assert IMPORTED in values
    for text in outputs + [imported, owned]:
        for value in values:
            assert value not in text
    assert snapshot(fake) == before


def test_unknown_api_stage_is_a_plan_time_error(fake, tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", PLAN.replace("petstore/beta", "petstore/canary"))
    r = run_cli("plan", str(plan), env=env_for(fake))
    assert r.code == 1
    assert "products.pro.apis: 'petstore/canary'" in r.stderr and "no stage 'canary'" in r.stderr
    assert "nothing was changed" in r.stderr
    assert not any(op.startswith(("Create", "Update", "Delete", "Tag")) for op in fake.counts)


def test_adopt_takes_over_resources_whose_names_match(fake, tmp_path, engine):
    before = snapshot(fake, names=("loose",))
    env = env_for(fake)
    text = PLAN + "  handmade: {product: legacy}\n"
    text = text.replace("products:\n", "products:\n  legacy:\n    display_name: Legacy\n"
                                       "    description: hand made\n    apis: [petstore/prod]\n")
    plan = write_plan(tmp_path / "plan.yaml", text)
    run = engine.plan(plan)
    assert any("product legacy exists on the gateway but apimon does not manage it" in c
               for c in run.changes.conflicts)
    r = run_cli("adopt", str(plan), "--auto-approve", env=env)
    assert r.code == 0, r.output
    assert "legacy: adopted (tagged apimon:managed)" in r.stdout
    assert fake.count("TagResource") == 2 and fake.count("UpdateUsagePlan") == 1  # legacy gains its stage
    run = engine.plan(plan)
    assert run.changes.empty and not run.changes.conflicts
    assert {"legacy", "free", "pro"} <= set(owned_names(fake, "plans"))
    assert "handmade" in owned_names(fake, "keys")
    assert snapshot(fake, names=("loose",)) == before


def test_faults_are_retried_and_apply_converges(fake, tmp_path, engine):
    before = snapshot(fake)
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    fake.inject("GetApiKeys", drop_connection=True)
    fake.inject("CreateUsagePlan", status=500)
    fake.inject("CreateApiKey", status=429, retry_after=0.3, times=2)
    fake.inject("CreateApiKey", drop_connection=True)
    fake.inject("CreateUsagePlanKey", status=409, times=2)
    fake.inject("CreateUsagePlanKey", status=503)
    t0 = time.monotonic()
    run, report = engine.apply(plan)
    assert not report.failed and not report.not_applied and len(report.outcomes) == 5
    assert time.monotonic() - t0 >= 0.3  # Retry-After honoured
    assert run.provider.throttle_errors == 2
    assert owned_names(fake, "plans") == ["free", "pro"]
    assert owned_names(fake, "keys") == ["acme", "bob", "imported"]  # no duplicate from a retried create
    assert engine.plan(plan).changes.empty
    assert snapshot(fake) == before


def test_lost_responses_of_creates_that_took_effect_are_not_duplicated(fake, tmp_path, engine):
    # the request reaches AWS and takes effect, but the answer never arrives (network drop, gateway 5xx)
    before = snapshot(fake)
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    faults = [fake.inject("CreateUsagePlan", status=500, after_forward=True),
              fake.inject("CreateApiKey", drop_connection=True, after_forward=True),
              fake.inject("CreateUsagePlanKey", status=503, after_forward=True)]
    run, report = engine.apply(plan)
    assert not report.failed and not report.not_applied, [o.message for o in report.failed]
    assert [f.hits for f in faults] == [1, 1, 1]
    plans = [p["name"] for p in fake.moto_client().get_usage_plans()["items"]]
    keys = [k["name"] for k in fake.moto_client().get_api_keys()["items"]]
    assert sorted(plans) == ["free", "legacy", "pro"] and sorted(keys) == ["acme", "bob", "handmade", "imported",
                                                                            "loose"]
    assert engine.plan(plan).changes.empty
    assert snapshot(fake) == before


def test_bounded_retries_then_a_clear_failure(fake, tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    fake.inject("CreateApiKey", status=429, retry_after=0.01, times=1000)
    r = run_cli("apply", str(plan), "--auto-approve", env=env_for(fake))
    assert r.code == 1
    assert "TooManyRequestsException: Too Many Requests (gave up after 8 attempts)" in r.stderr
    assert "Apply stopped:" in r.stderr and "applied:      create product free" in r.stderr
    assert "not applied:" in r.stderr or "failed:       create subscriber" in r.stderr


def test_interrupted_apply_resumes_with_only_the_remaining_changes(fake, tmp_path, engine):
    before = snapshot(fake)
    text = PLAN + "".join(f"  user{i}: {{product: free}}\n" for i in range(40))
    plan = write_plan(tmp_path / "plan.yaml", text)
    created = []

    def after_four_keys(method: str, path: str) -> bool:
        if method == "POST" and path == "/apikeys":
            created.append(1)
            return len(created) > 4
        return False

    fake.inject(after_four_keys, status=400, message="Injected: the account is being closed", times=10_000)
    _, report = engine.apply(plan, check=False)
    failed = report.failed
    assert failed and "BadRequestException: Injected: the account is being closed" in failed[0].message
    applied = {o.change.id for o in report.outcomes if o.ok}
    assert {"free", "pro"} <= applied and report.not_applied
    fake.clear_faults()
    remaining = {c.id for c in engine.plan(plan).changes.changes}
    assert remaining == ({f"user{i}" for i in range(40)} | {"acme", "bob", "imported"}) - applied
    assert {c.id for c in report.not_applied} <= remaining
    _, report = engine.apply(plan)
    assert {o.change.id for o in report.outcomes} == remaining
    assert engine.plan(plan).changes.empty
    assert snapshot(fake) == before


def test_scaled_quotas_enforced_by_the_fake_are_never_exceeded(fake, tmp_path, engine, monkeypatch):
    monkeypatch.setenv("APIMON_AWS_QUOTA_SCALE", "50")  # UpdateUsagePlan every 0.4 s
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    engine.apply(plan)
    changed = PLAN.replace("rate: 5, burst: 10", "rate: 6, burst: 12").replace("rate: 50,", "rate: 60,") \
        .replace("description: Try it", "description: Try it now")
    plan = write_plan(tmp_path / "plan.yaml", changed + "".join(f"  u{i}: {{product: pro}}\n" for i in range(60)))
    time.sleep(0.1)
    fake.enforce_quotas(scale=1 / 50)
    fake.reset_counts()
    t0 = time.monotonic()
    run, report = engine.apply(plan)
    assert len(report.outcomes) == 62
    assert fake.throttled == 0 and run.provider.throttle_errors == 0
    assert fake.count("UpdateUsagePlan") == 2 and fake.count("CreateApiKey") == 60
    assert time.monotonic() - t0 >= 0.4


def test_usage_pull_merges_every_page_and_90_day_window(fake, tmp_path, engine):
    engine.apply(write_plan(tmp_path / "plan.yaml", PLAN))
    c = fake.client(max_attempts=1)
    plans = {p["name"]: p["id"] for p in c.get_usage_plans(limit=500)["items"]}
    keys = {k["name"]: k["id"] for k in c.get_api_keys(limit=500)["items"]}
    free, pro = plans["free"], plans["pro"]
    first_key, second_key = sorted([keys["bob"], keys["imported"]])
    start, end = date(2026, 1, 1), date(2026, 4, 30)  # 120 days: two windows
    expected = {}
    for i in range(0, 120, 7):
        day = start + timedelta(days=i)
        for name, plan_id, key_id in (("bob", free, keys["bob"]), ("imported", free, keys["imported"]),
                                      ("acme", pro, keys["acme"])):
            used = 10 + i + len(name)
            fake.set_usage(plan_id, key_id, day, used, 1000 - used)
            expected[(name, "free" if plan_id == free else "pro", day.isoformat())] = used
    # 600 keys apimon does not own sort between bob's and imported's keys: they land on different pages
    for n in range(600):
        fake.set_usage(free, f"{first_key}-{n:03d}", start + timedelta(days=100), 5, 5)
    fake.set_usage(plans["legacy"], "someone", start, 50, 0)
    fake.reset_counts()

    desired = DesiredState(Target("aws", {"region": "us-east-1", "endpoint_url": fake.endpoint_url}), Billing(),
                           {}, {})
    with AwsProvider(desired) as provider:
        rows = list(provider.pull_usage(start, end))
        assert provider.target_id == f"{fake.endpoint_url}/us-east-1"
    got = {(r.subscriber, r.product, r.day): r.count for r in rows if r.metric == "success"}
    assert got == expected
    assert sorted((r.subscriber, r.product, r.day, r.count) for r in rows if r.metric == "total") == \
        sorted((*k, v) for k, v in expected.items())
    usage_calls = [r for r in fake.requests if r.path.endswith("/usage")]
    assert all(r.path.split("/")[2] in (free, pro) for r in usage_calls)  # never the unmanaged plan
    windows = {(r.query["startDate"], r.query["endDate"]) for r in usage_calls}
    assert windows == {("2026-01-01", "2026-03-31"), ("2026-04-01", "2026-04-30")}
    assert sum(1 for r in usage_calls if r.path.split("/")[2] == free) == 4  # 2 windows x 2 pages
    assert second_key > f"{first_key}-599"


def test_plan_reads_only_pages_and_reveal_key(fake, tmp_path, engine):
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    run, _ = engine.apply(plan)
    assert run.provider.reveal_key("imported") == IMPORTED
    assert run.provider.reveal_key("bob") in key_values(fake)
    with pytest.raises(ProviderError, match="loose is not managed by apimon; apimon shows only the keys it owns"):
        run.provider.reveal_key("loose")  # not ours: refused, not revealed
    fake.reset_counts()
    assert engine.plan(plan).changes.empty
    assert dict(fake.counts) == {"GetRestApis": 1, "GetUsagePlans": 1, "GetApiKeys": 1, "GetUsagePlanKeys": 2,
                                 "GetStages": 1}
    lists = [r for r in fake.requests if r.path in ("/restapis", "/usageplans", "/apikeys")
             or r.path.endswith("/keys")]
    assert len(lists) == 5 and all(r.query.get("limit") == "500" for r in lists)
    assert next(r for r in fake.requests if r.path == "/apikeys").query.get("includeValues") == "true"


def test_a_new_key_value_is_a_replacement_plan_shows_and_apply_makes_before_deleting(fake, tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    rotated = "rotated-key-value-9876543210fedcba"
    assert run_cli("apply", str(plan), "--auto-approve", env=env_for(fake)).code == 0
    env = env_for(fake, IMPORTED_KEY=rotated)
    r = run_cli("plan", str(plan), "--detailed-exitcode", env=env)
    assert r.code == 2, r.output
    assert "-/+ subscriber imported will be replaced" in r.stdout
    assert "# AWS cannot change an imported key value; the new one is made before the old one is removed" in r.stdout
    assert '~ key: (sensitive) -> (sensitive)' in r.stdout
    assert "Plan: 1 to add, 0 to change, 1 to destroy." in r.stdout  # Terraform counts a replacement twice
    doc = json.loads(run_cli("plan", str(plan), "--json", env=env).stdout)
    assert doc["summary"] == {"creating": 0, "updating": 0, "deleting": 0, "replacing": 1, "total": 1}
    [replacing] = doc["changes"]["replacing"]
    assert replacing["id"] == "imported" and replacing["reason"] == "AWS cannot change an imported key value"
    assert replacing["create_before_delete"] is True
    fake.reset_counts()
    r = run_cli("apply", str(plan), "--auto-approve", env=env)
    assert r.code == 0 and "subscriber imported: key replaced (new value imported; the old key works until" \
        in r.stdout, r.output
    creates = [i for i, req in enumerate(fake.requests) if req.method == "POST" and req.path == "/apikeys"]
    deletes = [i for i, req in enumerate(fake.requests) if req.method == "DELETE" and req.path.startswith("/apikeys/")]
    assert len(creates) == 1 and deletes == []  # a new value in key.from_env: the old one works for key.overlap
    assert rotated in key_values(fake) and IMPORTED in key_values(fake) and rotated not in r.output
    assert "No changes." in run_cli("plan", str(plan), env=env).stdout
    r = run_cli("keys", "list", str(plan), "--subscriber", "imported", "--json", env=env)
    keys = json.loads(r.stdout)["subscribers"][0]["keys"]
    assert [(k["last4"], k["state"]) for k in keys] == [(IMPORTED[-4:], "rotating-out"), (rotated[-4:], "active")]
    r = run_cli("keys", "revoke", "imported", "--plan", str(plan), "--key", IMPORTED[-4:], env=env)
    assert r.code == 0, r.output
    assert rotated in key_values(fake) and IMPORTED not in key_values(fake)
    assert "No changes." in run_cli("plan", str(plan), env=env).stdout


def test_a_new_key_value_with_no_overlap_replaces_the_old_one_at_once(fake, tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", PLAN.replace("key: {from_env: IMPORTED_KEY}",
                                                           "key: {from_env: IMPORTED_KEY, overlap: 0s}"))
    rotated = "rotated-key-value-9876543210fedcba"
    assert run_cli("apply", str(plan), "--auto-approve", env=env_for(fake)).code == 0
    env = env_for(fake, IMPORTED_KEY=rotated)
    r = run_cli("apply", str(plan), "--auto-approve", env=env)
    assert r.code == 0 and "subscriber imported: key replaced (new value imported)\n" in r.stdout, r.output
    assert rotated in key_values(fake) and IMPORTED not in key_values(fake)


def test_a_new_key_value_interrupted_before_the_old_key_got_its_end_converges(fake, tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    rotated = "rotated-key-value-9876543210fedcba"
    assert run_cli("apply", str(plan), "--auto-approve", env=env_for(fake)).code == 0
    env = env_for(fake, IMPORTED_KEY=rotated)
    fake.inject("TagResource", status=400, times=1, message="injected")
    assert run_cli("apply", str(plan), "--auto-approve", env=env).code == 1
    assert rotated in key_values(fake) and IMPORTED in key_values(fake)  # both work: never none
    r = run_cli("apply", str(plan), "--auto-approve", env=env)
    assert r.code == 0, r.output
    r = run_cli("keys", "list", str(plan), "--subscriber", "imported", "--json", env=env)
    keys = json.loads(r.stdout)["subscribers"][0]["keys"]
    assert [(k["last4"], k["state"]) for k in keys] == [(IMPORTED[-4:], "rotating-out"), (rotated[-4:], "active")]
    assert keys[0]["expires"] is not None
