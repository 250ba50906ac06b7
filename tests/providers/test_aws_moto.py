"""The AWS provider against moto in-process (``mock_aws``): create, update, delete, move, disable, import.

Every scenario starts with resources apimon does not own (an untagged usage plan holding an untagged key,
and a loose untagged key) and checks they are exactly as before at the end. API calls are counted with a
botocore event hook on the provider's client, independent of the provider's own bookkeeping.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from apimon_cli.providers.base import PlanCheckError
from apimon_cli.reconcile import key_fingerprint
from apimon_cli.reconcile.engine import apply_changes, make_plan

REGION = "us-east-1"
IMPORTED = "imported-key-value-0123456789abcdef"
ROTATED = "rotated-key-value-9876543210fedcba"

BASE = """
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
    apis: [petstore/prod]
    rate_limit: {rate: 50, burst: 100}
    pricing: {model: per_unit, fee: "199.00", unit_price: "0.001"}
subscribers:
  acme: {product: pro, email: billing@acme.example, metadata: {customer_id: cus_123, plan_note: gold}}
  bob: {product: free}
  imported: {product: free, key: {from_env: IMPORTED_KEY}}
"""


@pytest.fixture
def aws(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("APIMON_AWS_QUOTA_SCALE", "1000")
    monkeypatch.setenv("IMPORTED_KEY", IMPORTED)
    with mock_aws():
        client = boto3.client("apigateway", region_name=REGION)
        for name, stages in (("petstore", ["prod", "beta"]), ("orders", ["prod"])):
            api = client.create_rest_api(name=name)["id"]
            root = client.get_resources(restApiId=api)["items"][0]["id"]
            client.put_method(restApiId=api, resourceId=root, httpMethod="GET", authorizationType="NONE")
            client.put_integration(restApiId=api, resourceId=root, httpMethod="GET", type="MOCK")
            for stage in stages:
                client.create_deployment(restApiId=api, stageName=stage)
        legacy = client.create_usage_plan(name="legacy", description="hand made",
                                          throttle={"rateLimit": 1.0, "burstLimit": 2})["id"]
        handmade = client.create_api_key(name="handmade", enabled=True)["id"]
        client.create_usage_plan_key(usagePlanId=legacy, keyId=handmade, keyType="API_KEY")
        client.create_api_key(name="loose", enabled=False, description="not ours")
        yield client


def unmanaged_snapshot(client) -> dict:
    plans = {p["name"]: p for p in client.get_usage_plans()["items"] if not (p.get("tags") or {})}
    keys = {k["name"]: k for k in client.get_api_keys(includeValues=True)["items"] if not (k.get("tags") or {})}
    members = {name: sorted(k["id"] for k in client.get_usage_plan_keys(usagePlanId=p["id"])["items"])
               for name, p in plans.items()}
    return {"plans": plans, "keys": keys, "members": members}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


def plan(path: str, **kw):
    run = make_plan([path], **kw)
    calls: Counter[str] = Counter()
    run.provider.client.meta.events.register(
        "before-call.apigateway", lambda model, **_: calls.update([model.name]))
    return run, calls


def apply(path: str, **kw) -> tuple[object, Counter]:
    run, calls = plan(path, **kw)
    report = apply_changes(run.provider, run.changes.changes, run.live)
    assert not report.failed, [o.message for o in report.failed]
    assert not report.not_applied
    return run, calls


def assert_converged(path: str) -> None:
    run, _ = plan(path)
    assert run.changes.empty, run.changes.changes
    assert not run.changes.conflicts


def owned(client, kind: str) -> dict[str, dict]:
    items = (client.get_usage_plans()["items"] if kind == "plans"
             else client.get_api_keys(includeValues=True)["items"])
    return {i["name"]: i for i in items if "apimon:managed" in (i.get("tags") or {})}


def members(client, plan_name: str) -> set[str]:
    plan_id = owned(client, "plans")[plan_name]["id"]
    return {k["name"] for k in client.get_usage_plan_keys(usagePlanId=plan_id)["items"]}


@pytest.fixture
def base(aws, tmp_path):
    before = unmanaged_snapshot(aws)
    path = write(tmp_path, BASE)
    yield aws, path
    assert unmanaged_snapshot(aws) == before


def test_create_complete_in_one_call_each_then_no_changes(base):
    client, path = base
    run, _ = plan(path)
    assert {(u.kind, u.name) for u in run.changes.unmanaged} == {
        ("product", "legacy"), ("subscriber", "handmade"), ("subscriber", "loose")}
    _, calls = apply(path)
    assert calls["CreateUsagePlan"] == 2 and calls["UpdateUsagePlan"] == 0 and calls["TagResource"] == 0
    assert calls["CreateApiKey"] == 3 and calls["CreateUsagePlanKey"] == 3

    plans = owned(client, "plans")
    free = plans["free"]
    assert free["description"] == "Try it"
    assert float(free["throttle"]["rateLimit"]) == 5 and int(free["throttle"]["burstLimit"]) == 10
    assert int(free["quota"]["limit"]) == 1000 and free["quota"]["period"] == "MONTH"
    petstore = next(a["id"] for a in client.get_rest_apis()["items"] if a["name"] == "petstore")
    assert free["apiStages"] == [{"apiId": petstore, "stage": "prod"}]
    keys = owned(client, "keys")
    assert keys["acme"]["customerId"] == "cus_123" and keys["acme"]["description"] == "billing@acme.example"
    assert keys["imported"]["value"] == IMPORTED
    assert members(client, "free") == {"bob", "imported"} and members(client, "pro") == {"acme"}
    assert_converged(path)


def test_reads_are_list_calls_only(base):
    _, path = base
    apply(path)
    run = make_plan([path])
    counted: Counter[str] = Counter()
    run.provider.client.meta.events.register("before-call.apigateway",
                                             lambda model, **_: counted.update([model.name]))
    run.provider._rest_apis = None
    run.provider.read_live_state()
    assert set(counted) <= {"GetRestApis", "GetUsagePlans", "GetApiKeys", "GetUsagePlanKeys"}
    assert counted["GetUsagePlanKeys"] == 2  # owned plans only
    assert counted["GetUsagePlans"] == counted["GetApiKeys"] == 1


def test_product_update_is_one_update_usage_plan_call(base, tmp_path):
    client, path = base
    apply(path)
    changed = BASE.replace("""    description: Try it
    apis: [petstore/prod]
    rate_limit: {rate: 5, burst: 10}
    quota: {limit: 1000, period: month}""", """    description: Try it for free
    apis: [petstore/beta, orders/prod]
    rate_limit: {rate: 7, burst: 14}
    quota: {limit: 500, period: week}""")
    path = write(tmp_path, changed)
    run, _ = plan(path)
    assert [(c.action, c.id) for c in run.changes.changes] == [("update", "free")]
    _, calls = apply(path)
    assert calls["UpdateUsagePlan"] == 1
    assert sum(calls.values()) - calls["UpdateUsagePlan"] == 0  # nothing else written
    free = owned(client, "plans")["free"]
    assert free["description"] == "Try it for free"
    assert float(free["throttle"]["rateLimit"]) == 7 and int(free["throttle"]["burstLimit"]) == 14
    assert int(free["quota"]["limit"]) == 500 and free["quota"]["period"] == "WEEK"
    assert {s["stage"] for s in free["apiStages"]} == {"beta", "prod"} and len(free["apiStages"]) == 2
    assert_converged(path)

    # dropping rate limit and quota entirely is one call too
    path = write(tmp_path, changed.replace("    rate_limit: {rate: 7, burst: 14}\n", "")
                 .replace("    quota: {limit: 500, period: week}\n", ""))
    _, calls = apply(path)
    assert calls["UpdateUsagePlan"] == 1
    free = owned(client, "plans")["free"]
    assert not free.get("throttle") and not free.get("quota")
    assert_converged(path)


def test_fields_aws_cannot_store_are_never_a_diff(base, tmp_path):
    _, path = base
    apply(path)
    path = write(tmp_path, BASE.replace("display_name: Pro", "display_name: Professional")
                 .replace('fee: "199.00"', 'fee: "249.00"').replace("plan_note: gold", "plan_note: silver"))
    assert_converged(path)
    path = write(tmp_path, BASE.replace("customer_id: cus_123", "customer_id: cus_999"))
    run, _ = plan(path)
    assert [(c.id, [f.field for f in c.fields]) for c in run.changes.changes] == [
        ("acme", ["metadata.customer_id"])]


def test_move_subscriber_keeps_key_and_disable(base, tmp_path):
    client, path = base
    apply(path)
    before = owned(client, "keys")
    path = write(tmp_path, BASE.replace("bob: {product: free}", "bob: {product: pro, enabled: false}"))
    run, _ = plan(path)
    assert [(c.action, c.id) for c in run.changes.changes] == [("update", "bob")]
    _, calls = apply(path)
    assert calls["DeleteUsagePlanKey"] == 1 and calls["CreateUsagePlanKey"] == 1 and calls["UpdateApiKey"] == 1
    assert calls["CreateApiKey"] == calls["DeleteApiKey"] == 0
    after = owned(client, "keys")
    assert after["bob"]["id"] == before["bob"]["id"] and after["bob"]["value"] == before["bob"]["value"]
    assert after["bob"]["enabled"] is False
    assert members(client, "free") == {"imported"} and members(client, "pro") == {"acme", "bob"}
    assert_converged(path)


def test_new_imported_value_replaces_the_key(base, tmp_path, monkeypatch):
    # with overlap 0s the old key goes at once (bare moto cannot tag API keys, which an overlap needs; the
    # overlap is tested against AwsFake in test_aws_fake.py)
    client, path = base
    Path(path).write_text(Path(path).read_text().replace("key: {from_env: IMPORTED_KEY}",
                                                         "key: {from_env: IMPORTED_KEY, overlap: 0s}"))
    apply(path)
    old = owned(client, "keys")["imported"]
    monkeypatch.setenv("IMPORTED_KEY", ROTATED)
    run, _ = plan(path)
    assert [(c.id, [f.field for f in c.fields]) for c in run.changes.changes] == [("imported", ["key"])]
    assert run.live.key_fingerprints["imported"] == key_fingerprint(IMPORTED)
    apply(path)
    new = owned(client, "keys")["imported"]
    assert new["value"] == ROTATED and new["id"] != old["id"]
    assert old["id"] not in {k["id"] for k in client.get_api_keys()["items"]}
    assert "imported" in members(client, "free")
    assert_converged(path)


def test_delete_subscribers_before_products(base, tmp_path):
    client, path = base
    apply(path)
    path = write(tmp_path, """
        apimon: 1
        target: {provider: aws, aws: {region: us-east-1}}
        products:
          pro: {display_name: Pro, apis: [petstore/prod], rate_limit: {rate: 50, burst: 100}}
        subscribers:
          acme: {product: pro, email: billing@acme.example, metadata: {customer_id: cus_123}}
        """)
    run, _ = plan(path)
    assert [(c.action, c.id) for c in run.changes.changes] == [
        ("delete", "bob"), ("delete", "imported"), ("delete", "free")]
    _, calls = apply(path)
    assert calls["DeleteApiKey"] == 2 and calls["DeleteUsagePlan"] == 1
    assert set(owned(client, "plans")) == {"pro"} and set(owned(client, "keys")) == {"acme"}
    assert_converged(path)


def test_never_deletes_a_plan_holding_foreign_keys(base, tmp_path):
    client, path = base
    apply(path)
    loose = next(k["id"] for k in client.get_api_keys()["items"] if k["name"] == "loose")
    free_id = owned(client, "plans")["free"]["id"]
    client.create_usage_plan_key(usagePlanId=free_id, keyId=loose, keyType="API_KEY")
    path = write(tmp_path, """
        apimon: 1
        target: {provider: aws, aws: {region: us-east-1}}
        products:
          pro: {display_name: Pro, apis: [petstore/prod], rate_limit: {rate: 50, burst: 100}}
        subscribers:
          acme: {product: pro, email: billing@acme.example, metadata: {customer_id: cus_123}}
        """)
    run, _ = plan(path)
    report = apply_changes(run.provider, run.changes.changes, run.live)
    assert [o.change.id for o in report.failed] == ["free"]
    assert "loose" not in report.failed[0].message and loose in report.failed[0].message
    assert "refusing to delete" in report.failed[0].message
    assert "free" in owned(client, "plans")
    client.delete_usage_plan_key(usagePlanId=free_id, keyId=loose)


def test_unknown_api_or_stage_is_a_plan_time_error_naming_the_entry(base, tmp_path):
    _, path = base
    path = write(tmp_path, BASE.replace("apis: [petstore/prod]\n    rate_limit: {rate: 5",
                                        "apis: [petstore/canary, billing/prod]\n    rate_limit: {rate: 5"))
    with pytest.raises(PlanCheckError) as err:
        make_plan([path])
    text = "\n".join(err.value.problems)
    assert "products.free.apis: 'petstore/canary'" in text and "no stage 'canary'" in text
    assert "beta, prod" in text
    assert "products.free.apis: 'billing/prod'" in text and "no REST API named or with id 'billing'" in text


def test_unmanaged_name_is_a_conflict_not_a_change(base, tmp_path):
    client, path = base
    path = write(tmp_path, BASE + "  handmade: {product: free}\n")
    run, _ = plan(path)
    assert any("subscriber handmade exists" in c for c in run.changes.conflicts)
    assert "handmade" not in {c.id for c in run.changes.changes}


def test_plan_notes_quota_bound_duration(base, tmp_path, monkeypatch):
    _, path = base
    three = BASE.replace("  pro:\n", "  team:\n    display_name: Team\n    apis: [petstore/prod]\n  pro:\n")
    path = write(tmp_path, three)
    apply(path)
    monkeypatch.setenv("APIMON_AWS_QUOTA_SCALE", "1")
    path = write(tmp_path, three.replace("description: Try it", "description: Try")
                 .replace("display_name: Team\n", "display_name: Team\n    description: Teams\n")
                 .replace("rate: 50, burst: 100", "rate: 60, burst: 100"))
    run, _ = plan(path)
    assert len(run.changes.changes) == 3
    assert "3 usage plan updates: at least 40 s under AWS's UpdateUsagePlan quota (1 request every 20 s)" \
        in run.changes.notes


def test_export_plan_round_trips(base, tmp_path):
    from apimon_cli.model import Billing, DesiredState, Target
    from apimon_cli.planfile.writer import plan_document
    from apimon_cli.providers import get_provider

    _, path = base
    apply(path)
    desired = DesiredState(Target("aws", {"region": REGION}), Billing(), {}, {})
    with get_provider(desired) as provider:
        owned = provider.export_plan(include_unmanaged=False)
        everything = provider.export_plan()
    text = plan_document(owned["target"], owned["products"], owned["subscribers"])
    assert "legacy" not in text and "handmade" not in text and IMPORTED not in text
    assert "display_name: free" in text and "petstore/prod" in text and "customer_id: cus_123" in text
    out = tmp_path / "imported.yaml"
    out.write_text(text)
    assert_converged(str(out))
    # by default import also writes what apimon does not manage yet; the plan then matches the account
    text = plan_document(everything["target"], everything["products"], everything["subscribers"])
    assert "legacy" in text and IMPORTED not in text
    out.write_text(text)
    assert_converged(str(out))


def test_target_id_and_bad_quota_scale(aws, monkeypatch):
    from apimon_cli.model import Billing, DesiredState, Target
    from apimon_cli.providers.aws.provider import AwsProvider
    from apimon_cli.providers.base import ProviderError

    desired = DesiredState(Target("aws", {"region": REGION}), Billing(), {}, {})
    assert AwsProvider(desired).target_id == f"profile:default/{REGION}"  # no network call needed
    monkeypatch.setenv("APIMON_AWS_QUOTA_SCALE", "zero")
    with pytest.raises(ProviderError, match="APIMON_AWS_QUOTA_SCALE must be a positive number"):
        AwsProvider(desired)


def test_boto3_is_imported_only_when_aws_is_used():
    import subprocess
    import sys

    code = ("import sys, apimon_cli.cli, apimon_cli.providers.aws; "
            "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'boto3 imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_duplicate_owned_key_left_by_an_interrupted_replacement_is_removed(base):
    client, path = base
    apply(path)
    # as if a replacement stopped after creating the new key: an older managed key with the same name
    stale = client.create_api_key(name="imported", enabled=True, value="an-older-value-0123456789",
                                  tags={"apimon:managed": "true"})["id"]
    run, _ = plan(path)
    assert [(c.id, [f.field for f in c.fields]) for c in run.changes.changes] == [("imported", ["key"])]
    _, calls = apply(path)
    assert calls["DeleteApiKey"] == 1 and calls["CreateApiKey"] == 0
    assert stale not in {k["id"] for k in client.get_api_keys()["items"]}
    assert owned(client, "keys")["imported"]["value"] == IMPORTED
    assert_converged(path)
