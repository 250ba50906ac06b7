"""Tests of the AWS API Gateway fake itself, through real boto3."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import botocore.exceptions
import pytest
import requests

from .aws_gateway import AwsFake, RequestRecord

START = date(2026, 3, 1)


@pytest.fixture(scope="module")
def shared_fake():
    with AwsFake() as fake:
        yield fake


@pytest.fixture
def fake(shared_fake):
    shared_fake.reset()
    shared_fake.plan_key_hold = 0.0
    shared_fake.plan_key_conflict_scope = "region"
    yield shared_fake
    shared_fake.reset()


@pytest.fixture
def client(fake):
    return fake.client(max_attempts=1)


def code(exc_info) -> str:
    return exc_info.value.response["Error"]["Code"]


def make_keys(client, n, prefix="key", **kwargs):
    return [client.create_api_key(name=f"{prefix}-{i:03d}", enabled=True, **kwargs)["id"] for i in range(n)]


def attach(client, plan_id, key_ids):
    for key_id in key_ids:
        client.create_usage_plan_key(usagePlanId=plan_id, keyId=key_id, keyType="API_KEY")


# ------------------------------------------------------------------ lifecycle


def test_context_manager_starts_fast_and_stops_clean():
    t0 = time.monotonic()
    with AwsFake() as fake:
        started = time.monotonic() - t0
        assert fake.endpoint_url.startswith("http://127.0.0.1:")
        assert fake.moto_url.startswith("http://127.0.0.1:")
        assert fake.region == "us-east-1"
        assert fake.client().get_usage_plans()["items"] == []
        t1 = time.monotonic()
    assert started < 1.0
    assert time.monotonic() - t1 < 1.0
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(fake.endpoint_url + "/usageplans", timeout=2)


def test_two_fakes_do_not_share_state():
    with AwsFake() as a, AwsFake() as b:
        a.client().create_usage_plan(name="only-in-a")
        assert [p["name"] for p in a.client().get_usage_plans()["items"]] == ["only-in-a"]
        assert b.client().get_usage_plans()["items"] == []


# ------------------------------------------------------------------ pagination


def test_api_keys_paginator_walks_every_page(fake, client):
    created = make_keys(client, 60)
    fake.reset_counts()
    pages = list(client.get_paginator("get_api_keys").paginate(PaginationConfig={"PageSize": 25}))
    assert [len(p["items"]) for p in pages] == [25, 25, 10]
    assert "position" not in pages[-1]
    assert sorted(i["id"] for p in pages for i in p["items"]) == sorted(created)
    assert fake.count("GetApiKeys") == 3
    assert [r.query.get("limit") for r in fake.requests] == ["25"] * 3
    assert "position" not in fake.requests[0].query and "position" in fake.requests[1].query


def test_default_page_is_25_and_max_is_500(fake, client):
    make_keys(client, 30)
    first = client.get_api_keys()
    assert len(first["items"]) == 25 and first["position"]
    second = client.get_api_keys(position=first["position"])
    assert len(second["items"]) == 5 and "position" not in second
    assert len(client.get_api_keys(limit=500)["items"]) == 30
    with pytest.raises(client.exceptions.BadRequestException):
        client.get_api_keys(limit=501)
    with pytest.raises(client.exceptions.BadRequestException):
        client.get_api_keys(position="not-a-token!")


def test_usage_plans_and_plan_keys_paginators(fake, client):
    plans = [client.create_usage_plan(name=f"plan-{i}")["id"] for i in range(30)]
    got = [p["id"] for page in client.get_paginator("get_usage_plans").paginate(
        PaginationConfig={"PageSize": 10}) for p in page["items"]]
    assert sorted(got) == sorted(plans)
    keys = make_keys(client, 27)
    attach(client, plans[0], keys)
    pages = list(client.get_paginator("get_usage_plan_keys").paginate(
        usagePlanId=plans[0], PaginationConfig={"PageSize": 10}))
    assert [len(p["items"]) for p in pages] == [10, 10, 7]
    assert sorted(k["id"] for p in pages for k in p["items"]) == sorted(keys)
    with pytest.raises(client.exceptions.NotFoundException):
        client.get_usage_plan_keys(usagePlanId="nope")


def test_rest_apis_paginate(fake, client):
    for i in range(4):
        client.create_rest_api(name=f"api-{i}")
    pages = list(client.get_paginator("get_rest_apis").paginate(PaginationConfig={"PageSize": 3}))
    assert [len(p["items"]) for p in pages] == [3, 1]


def test_list_filters_still_work(fake, client):
    gold = make_keys(client, 3, prefix="gold", customerId="acme")
    make_keys(client, 2, prefix="free", customerId="other")
    assert sorted(k["id"] for k in client.get_api_keys(nameQuery="gold")["items"]) == sorted(gold)
    assert sorted(k["id"] for k in client.get_api_keys(customerId="acme")["items"]) == sorted(gold)
    assert all("value" not in k for k in client.get_api_keys()["items"])
    assert all(k["value"] for k in client.get_api_keys(includeValues=True)["items"])
    plan = client.create_usage_plan(name="p")["id"]
    client.create_usage_plan(name="other")
    attach(client, plan, gold[:1])
    assert [p["id"] for p in client.get_usage_plans(keyId=gold[0])["items"]] == [plan]


# ------------------------------------------------------------------ GetUsage


def test_get_usage_wire_shape(fake, client):
    plan = client.create_usage_plan(name="p", quota={"limit": 1000, "period": "DAY"})["id"]
    (key,) = make_keys(client, 1)
    attach(client, plan, [key])
    fake.set_usage(plan, key, START + timedelta(days=1), 7, 993)
    raw = requests.get(f"{fake.endpoint_url}/usageplans/{plan}/usage",
                       params={"startDate": "2026-03-01", "endDate": "2026-03-03"}, timeout=5).json()
    assert raw == {"usagePlanId": plan, "startDate": "2026-03-01", "endDate": "2026-03-03",
                   "values": {key: [[0, 1000], [7, 993], [0, 1000]]}}
    parsed = client.get_usage(usagePlanId=plan, startDate="2026-03-01", endDate="2026-03-03")
    assert parsed["items"] == {key: [[0, 1000], [7, 993], [0, 1000]]}
    assert "position" not in parsed


def test_get_usage_pages_by_key_and_merges(fake, client):
    plan = client.create_usage_plan(name="p")["id"]
    keys = make_keys(client, 30)
    attach(client, plan, keys)
    for n, key in enumerate(keys):
        fake.set_usage(plan, key, START, n, 100 - n)
    fake.set_usage(plan, "seeded-only-key", START, 1, 1)  # usage for a key no longer in the plan
    pages = list(client.get_paginator("get_usage").paginate(
        usagePlanId=plan, startDate="2026-03-01", endDate="2026-03-02", PaginationConfig={"PageSize": 10}))
    assert [len(p["items"]) for p in pages] == [10, 10, 10, 1]
    assert all(p["position"] for p in pages[:-1]) and "position" not in pages[-1]
    merged = {}
    for page in pages:
        merged.update(page["items"])
    assert len(merged) == 31
    assert merged[keys[7]] == [[7, 93], [0, 0]]
    # botocore's build_full_result keeps only the first page of a map result: callers must merge
    full = client.get_paginator("get_usage").paginate(
        usagePlanId=plan, startDate="2026-03-01", endDate="2026-03-02",
        PaginationConfig={"PageSize": 10}).build_full_result()
    assert len(full["items"]) == 10
    default = client.get_usage(usagePlanId=plan, startDate="2026-03-01", endDate="2026-03-01")
    assert len(default["items"]) == 25 and default["position"]
    only = client.get_usage(usagePlanId=plan, keyId=keys[3], startDate="2026-03-01", endDate="2026-03-01")
    assert only["items"] == {keys[3]: [[3, 97]]}


def test_get_usage_errors(fake, client):
    plan = client.create_usage_plan(name="p")["id"]
    ok = client.get_usage(usagePlanId=plan, startDate="2026-01-01",
                          endDate=(date(2026, 1, 1) + timedelta(days=89)).isoformat())
    assert ok["items"] == {}
    with pytest.raises(client.exceptions.BadRequestException):
        client.get_usage(usagePlanId=plan, startDate="2026-01-01",
                         endDate=(date(2026, 1, 1) + timedelta(days=90)).isoformat())
    with pytest.raises(client.exceptions.BadRequestException):
        client.get_usage(usagePlanId=plan, startDate="2026-01-02", endDate="2026-01-01")
    with pytest.raises(client.exceptions.BadRequestException):
        client.get_usage(usagePlanId=plan, startDate="01/02/2026", endDate="2026-01-03")
    with pytest.raises(client.exceptions.NotFoundException) as exc:
        client.get_usage(usagePlanId="nope", startDate="2026-01-01", endDate="2026-01-02")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(client.exceptions.NotFoundException):
        client.get_usage(usagePlanId=plan, keyId="nokey", startDate="2026-01-01", endDate="2026-01-02")


# ------------------------------------------------------------------ apiStage validation


def test_api_stage_validation(fake, client):
    api = fake.add_rest_api("shop", stages=["prod"])
    with pytest.raises(client.exceptions.BadRequestException) as exc:
        client.create_usage_plan(name="bad-api", apiStages=[{"apiId": "nope", "stage": "prod"}])
    assert "Invalid API Stage" in exc.value.response["Error"]["Message"]
    with pytest.raises(client.exceptions.BadRequestException):
        client.create_usage_plan(name="bad-stage", apiStages=[{"apiId": api, "stage": "dev"}])
    assert client.get_usage_plans()["items"] == []
    plan = client.create_usage_plan(name="good", apiStages=[{"apiId": api, "stage": "prod"}])
    assert plan["apiStages"] == [{"apiId": api, "stage": "prod"}]
    other = client.create_usage_plan(name="later")["id"]
    with pytest.raises(client.exceptions.BadRequestException):
        client.update_usage_plan(usagePlanId=other, patchOperations=[
            {"op": "replace", "path": "/description", "value": "x"},
            {"op": "add", "path": "/apiStages", "value": f"{api}:dev"}])
    assert "description" not in client.get_usage_plan(usagePlanId=other)  # nothing applied
    updated = client.update_usage_plan(usagePlanId=other, patchOperations=[
        {"op": "add", "path": "/apiStages", "value": f"{api}:prod"}])
    assert updated["apiStages"] == [{"apiId": api, "stage": "prod"}]


# ------------------------------------------------------------------ tags


def test_tags_round_trip(fake, client):
    plan = client.create_usage_plan(name="p", tags={"apimon:managed": "true"})["id"]
    key = client.create_api_key(name="k", tags={"apimon:managed": "true"})["id"]
    assert client.get_usage_plans()["items"][0]["tags"] == {"apimon:managed": "true"}
    assert client.get_api_keys()["items"][0]["tags"] == {"apimon:managed": "true"}
    plan_arn = f"arn:aws:apigateway:us-east-1::/usageplans/{plan}"
    key_arn = f"arn:aws:apigateway:us-east-1::/apikeys/{key}"
    client.tag_resource(resourceArn=plan_arn, tags={"apimon:plan": "gold"})
    client.tag_resource(resourceArn=key_arn, tags={"apimon:subscriber": "acme"})
    both = {"apimon:managed": "true", "apimon:plan": "gold"}
    assert client.get_tags(resourceArn=plan_arn)["tags"] == both
    assert client.get_usage_plan(usagePlanId=plan)["tags"] == both
    assert client.get_usage_plans()["items"][0]["tags"] == both
    assert client.get_api_key(apiKey=key)["tags"] == {"apimon:managed": "true", "apimon:subscriber": "acme"}
    assert client.get_api_keys()["items"][0]["tags"]["apimon:subscriber"] == "acme"
    client.untag_resource(resourceArn=plan_arn, tagKeys=["apimon:managed"])
    assert client.get_usage_plans()["items"][0]["tags"] == {"apimon:plan": "gold"}
    updated = client.update_usage_plan(usagePlanId=plan, patchOperations=[
        {"op": "replace", "path": "/description", "value": "d"}])
    assert updated["tags"] == {"apimon:plan": "gold"}
    with pytest.raises(client.exceptions.NotFoundException):
        client.tag_resource(resourceArn="arn:aws:apigateway:us-east-1::/usageplans/nope", tags={"a": "b"})
    with pytest.raises(client.exceptions.BadRequestException):
        client.tag_resource(resourceArn=plan_arn, tags={"aws:x": "y"})


def test_delete_missing_resources_is_404_not_500(fake, client):
    with pytest.raises(client.exceptions.NotFoundException):
        client.delete_usage_plan(usagePlanId="nope")
    with pytest.raises(client.exceptions.NotFoundException):
        client.delete_api_key(apiKey="nope")


# ------------------------------------------------------------------ request log, faults


def test_request_log_and_counters(fake, client):
    plan = client.create_usage_plan(name="p")["id"]
    client.get_usage_plans(limit=5)
    client.get_usage(usagePlanId=plan, startDate="2026-01-01", endDate="2026-01-01")
    assert fake.requests[0] == RequestRecord("POST", "/usageplans", {})
    assert fake.requests[1] == ("GET", "/usageplans", {"limit": "5"})
    assert fake.requests[2].path == f"/usageplans/{plan}/usage"
    assert fake.counts == {"CreateUsagePlan": 1, "GetUsagePlans": 1, "GetUsage": 1}
    fake.reset_counts()
    assert fake.requests == [] and not fake.counts and fake.throttled == 0


def test_injected_429_with_retry_after(fake, client):
    fault = fake.inject("CreateApiKey", status=429, retry_after=2.5)
    with pytest.raises(client.exceptions.TooManyRequestsException) as exc:
        client.create_api_key(name="k")
    assert exc.value.response["retryAfterSeconds"] == "2.5"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert fault.remaining == 0 and fake.throttled == 1
    client.create_api_key(name="k")  # times=1: the next one goes through


def test_injected_409_500_and_matchers(fake, client):
    fake.inject(r"^POST /usageplans$", status=409, times=2)
    for _ in range(2):
        with pytest.raises(client.exceptions.ConflictException):
            client.create_usage_plan(name="p")
    client.create_usage_plan(name="p")
    fake.inject(lambda method, path: method == "GET" and path == "/apikeys", status=500)
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        client.get_api_keys()
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    fake.inject("GetApiKeys", status=503)
    with pytest.raises(client.exceptions.ServiceUnavailableException):
        client.get_api_keys()
    fake.inject("GetApiKeys", status=400, body_error_type="BadRequestException", message="nope")
    with pytest.raises(client.exceptions.BadRequestException) as exc:
        client.get_api_keys()
    assert exc.value.response["Error"]["Message"] == "nope"
    assert client.get_api_keys()["items"] == []
    fake.inject("GET", status=404, times=3)  # not an operation name: a regex on "METHOD /path"
    for call in (client.get_api_keys, client.get_usage_plans, client.get_rest_apis):
        with pytest.raises(client.exceptions.NotFoundException):
            call()
    client.create_api_key(name="k")


def test_injected_dropped_connection(fake, client):
    fake.inject("GetUsagePlans", drop_connection=True)
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        client.get_usage_plans()
    assert client.get_usage_plans()["items"] == []
    # a retrying client gets through on its second attempt
    fake.inject("GetUsagePlans", drop_connection=True)
    assert fake.client(max_attempts=2).get_usage_plans()["items"] == []


# ------------------------------------------------------------------ quotas and conflicts


def test_quota_update_usage_plan_one_per_interval(fake, client):
    plan = client.create_usage_plan(name="p")["id"]
    fake.enforce_quotas(scale=0.01)  # UpdateUsagePlan: one every 0.2 s
    patch = [{"op": "replace", "path": "/description", "value": "x"}]
    client.update_usage_plan(usagePlanId=plan, patchOperations=patch)
    with pytest.raises(client.exceptions.TooManyRequestsException) as exc:
        client.update_usage_plan(usagePlanId=plan, patchOperations=patch)
    retry_after = float(exc.value.response["retryAfterSeconds"])
    assert 0 < retry_after <= 0.2
    assert fake.throttled == 1
    time.sleep(retry_after + 0.01)
    client.update_usage_plan(usagePlanId=plan, patchOperations=patch)


def test_quota_create_api_key_and_global_burst(fake, client):
    fake.enforce_quotas()  # AWS numbers: CreateApiKey 5/s, all calls 10/s burst 40
    results = []
    for i in range(10):
        try:
            client.create_api_key(name=f"k{i}")
            results.append("ok")
        except client.exceptions.TooManyRequestsException:
            results.append("429")
    assert results[:5] == ["ok"] * 5 and "429" in results[5:]
    fake.enforce_quotas(create_api_key_per_s=1000)
    ok = throttled = 0
    for _ in range(60):
        try:
            client.get_usage_plans()
            ok += 1
        except client.exceptions.TooManyRequestsException:
            throttled += 1
    assert ok >= 40 and throttled > 0  # 40 burst + 10/s refill while the loop runs
    assert fake.throttled == results.count("429") + throttled
    fake.disable_quotas()
    client.get_usage_plans()


def _concurrent_plan_key_creates(client, pairs):
    outcomes = []

    def run(plan_id, key_id):
        try:
            client.create_usage_plan_key(usagePlanId=plan_id, keyId=key_id, keyType="API_KEY")
            outcomes.append("ok")
        except client.exceptions.ConflictException:
            outcomes.append("409")

    threads = [threading.Thread(target=run, args=pair) for pair in pairs]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    return sorted(outcomes)


def test_concurrent_plan_key_creates_conflict(fake, client):
    plan_a = client.create_usage_plan(name="a")["id"]
    plan_b = client.create_usage_plan(name="b")["id"]
    keys = make_keys(client, 4)
    fake.plan_key_hold = 0.3
    assert _concurrent_plan_key_creates(client, [(plan_a, keys[0]), (plan_a, keys[1])]) == ["409", "ok"]
    fake.plan_key_conflict_scope = "plan"
    assert _concurrent_plan_key_creates(client, [(plan_a, keys[2]), (plan_b, keys[3])]) == ["ok", "ok"]
    fake.plan_key_hold = 0.0
    attach(client, plan_b, keys[:2])  # one after the other: no conflict
    assert len(client.get_usage_plan_keys(usagePlanId=plan_a)["items"]) == 2


# ------------------------------------------------------------------ standalone


def test_standalone_process():
    script = Path(__file__).with_name("aws_gateway.py")
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        fake = AwsFake()
        fake.endpoint_url = url  # only used to build a client on the running process
        client = fake.client(max_attempts=1)
        plan = client.create_usage_plan(name="p")["id"]
        requests.post(f"{url}/__fake__/usage", timeout=5, data=json.dumps(
            {"usagePlanId": plan, "keyId": "k1", "day": "2026-03-01", "used": 4, "remaining": 6}))
        usage = client.get_usage(usagePlanId=plan, startDate="2026-03-01", endDate="2026-03-01")
        assert usage["items"] == {"k1": [[4, 6]]}
        requests.post(f"{url}/__fake__/inject", timeout=5,
                      data=json.dumps({"match": "GetUsagePlans", "status": 429, "retryAfter": 1}))
        with pytest.raises(client.exceptions.TooManyRequestsException):
            client.get_usage_plans()
        log = requests.get(f"{url}/__fake__/requests", timeout=5).json()
        assert log["counts"] == {"CreateUsagePlan": 1, "GetUsage": 1, "GetUsagePlans": 1}
        assert log["throttled"] == 1
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0
