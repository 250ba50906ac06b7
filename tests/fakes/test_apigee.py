"""Tests of the Apigee X fake, driven through google-auth's AuthorizedSession like apimon will be."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from .apigee import ApigeeFake, java_double

ORG = "acme"
T0 = 1_798_761_600_000  # 2027-01-01T00:00:00Z in ms
T1 = 1_801_440_000_000  # 2027-02-01T00:00:00Z in ms


@pytest.fixture
def fake():
    with ApigeeFake(org=ORG, environments=["prod"]) as f:
        yield f


@pytest.fixture
def s(fake):
    session = fake.session()
    yield session
    session.close()


@pytest.fixture
def url(fake):
    def build(path: str = "") -> str:
        return f"{fake.endpoint}/v1/organizations/{ORG}{path}"

    return build


def _product(s, url, name, **extra):
    body = {"name": name, "displayName": name, "approvalType": "auto", "environments": ["prod"], **extra}
    r = s.post(url("/apiproducts"), json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _developer(s, url, email="ada@example.com", **extra):
    body = {"email": email, "firstName": "Ada", "lastName": "Lovelace", "userName": "ada", **extra}
    r = s.post(url("/developers"), json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _error(r, code, status):
    assert r.status_code == code, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["status"] == status
    return err["message"]


# --------------------------------------------------------------------------- organization, auth


def test_org_get_reports_monetization(fake, s, url):
    org = s.get(url()).json()
    assert org["name"] == ORG
    assert org["addonsConfig"]["monetizationConfig"]["enabled"] is True
    assert org["environments"] == ["prod"]
    assert isinstance(org["createdAt"], str)
    fake.monetization = False
    org = s.get(url()).json()
    assert "addonsConfig" not in org  # proto3: a false flag (and its empty parents) are omitted


def test_bearer_token_required(fake, url):
    r = requests.get(url("/apiproducts"), timeout=5)
    _error(r, 401, "UNAUTHENTICATED")
    r = requests.get(url("/apiproducts"), headers={"Authorization": "Basic abc"}, timeout=5)
    _error(r, 401, "UNAUTHENTICATED")


def test_unknown_org_is_permission_denied(fake, s):
    r = s.get(f"{fake.endpoint}/v1/organizations/nope/apiproducts")
    msg = _error(r, 403, "PERMISSION_DENIED")
    assert msg == 'Permission denied on resource "organizations/nope" (or it may not exist).'


def test_unknown_query_parameter_and_bad_bool(s, url):
    r = s.get(url("/apiproducts"), params={"start_key": "a", "pageSize": "3"})
    msg = _error(r, 400, "INVALID_ARGUMENT")
    assert 'Unknown name "pageSize": Cannot bind query parameter' in msg
    r = s.get(url("/apiproducts"), params={"expand": "yes"})
    assert "(TYPE_BOOL)" in _error(r, 400, "INVALID_ARGUMENT")


# --------------------------------------------------------------------------- API products


def test_products_startkey_is_inclusive_and_pages_overlap(fake, s, url):
    for i in range(25):
        _product(s, url, f"p{i:02d}")
    pages, start = [], None
    while True:
        params = {"count": "10"}
        if start:
            params["startKey"] = start
        body = s.get(url("/apiproducts"), params=params).json()
        assert "nextPageToken" not in body and "nextStartKey" not in body
        names = [p["name"] for p in body.get("apiProduct", [])]
        pages.append(names)
        if len(names) < 10:
            break
        start = names[-1]
    assert [len(p) for p in pages] == [10, 10, 7]
    assert pages[1][0] == pages[0][-1] and pages[2][0] == pages[1][-1]  # each page repeats the last item
    unique = list(dict.fromkeys(n for page in pages for n in page))
    assert unique == [f"p{i:02d}" for i in range(25)]


def test_products_expand(s, url):
    _product(s, url, "gold", quota="100", quotaInterval="1", quotaTimeUnit="day")
    plain = s.get(url("/apiproducts")).json()
    assert plain == {"apiProduct": [{"name": "gold"}]}
    full = s.get(url("/apiproducts"), params={"expand": "true"}).json()["apiProduct"][0]
    assert full["quota"] == "100" and full["quotaTimeUnit"] == "day" and full["environments"] == ["prod"]
    assert isinstance(full["createdAt"], str) and full["createdAt"].isdigit()


def test_empty_list_is_empty_object(s, url):
    assert s.get(url("/apiproducts")).json() == {}
    assert s.get(url("/developers")).json() == {}


def test_unknown_field_in_body_is_rejected_like_google(s, url):
    r = s.post(url("/apiproducts"), json={"name": "gold", "bogus": 1})
    msg = _error(r, 400, "INVALID_ARGUMENT")
    assert msg == "Invalid JSON payload received. Unknown name \"bogus\" at 'api_product': Cannot find field."
    r = s.post(url("/apiproducts"), json={"name": "gold", "attributes": [{"key": "a", "value": "b"}]})
    msg = _error(r, 400, "INVALID_ARGUMENT")
    assert "Unknown name \"key\" at 'api_product.attributes[0]': Cannot find field." in msg
    assert s.get(url("/apiproducts/gold")).status_code == 404


def test_wrong_json_type_is_rejected(s, url):
    r = s.post(url("/apiproducts"), json={"name": "gold", "quota": 100})
    assert _error(r, 400, "INVALID_ARGUMENT") == "Invalid value at 'api_product.quota' (TYPE_STRING), 100"
    r = s.post(url("/apiproducts"), json={"name": "gold", "environments": "prod"})
    _error(r, 400, "INVALID_ARGUMENT")
    r = s.post(url("/developers"), json={"email": "a@b.c", "attributes": {"a": "b"}})
    _error(r, 400, "INVALID_ARGUMENT")


def test_product_crud(fake, s, url):
    created = _product(s, url, "gold", proxies=["not-deployed-proxy"], description="d")
    assert created["proxies"] == ["not-deployed-proxy"]  # unknown proxies are accepted
    r = s.post(url("/apiproducts"), json={"name": "gold"})
    _error(r, 409, "ALREADY_EXISTS")
    r = s.post(url("/apiproducts"), json={"name": "silver", "environments": ["nope"]})
    _error(r, 400, "INVALID_ARGUMENT")
    fake.add_environment("test")
    # PUT replaces the whole product: omitted fields disappear
    r = s.put(
        url("/apiproducts/gold"), json={"name": "gold", "displayName": "Gold", "environments": ["test"]}
    )
    assert r.status_code == 200, r.text
    got = s.get(url("/apiproducts/gold")).json()
    assert got["environments"] == ["test"] and "description" not in got and "proxies" not in got
    assert got["createdAt"] == created["createdAt"]
    attrs = {"attribute": [{"name": "apimon-managed", "value": "true"}]}
    assert s.post(url("/apiproducts/gold/attributes"), json=attrs).json() == attrs
    assert s.get(url("/apiproducts/gold")).json()["attributes"] == attrs["attribute"]
    deleted = s.delete(url("/apiproducts/gold"))
    assert deleted.status_code == 200 and deleted.json()["name"] == "gold"
    _error(s.get(url("/apiproducts/gold")), 404, "NOT_FOUND")


# --------------------------------------------------------------------------- developers, apps, keys


def test_developer_rules(s, url):
    dev = _developer(s, url)
    assert dev["status"] == "active" and dev["developerId"] and dev["organizationName"] == ORG
    r = s.post(
        url("/developers"),
        json={"email": "ada@example.com", "firstName": "A", "lastName": "L", "userName": "a"},
    )
    _error(r, 409, "ALREADY_EXISTS")
    r = s.post(url("/developers"), json={"email": "bob@example.com", "lastName": "L", "userName": "b"})
    assert "firstName" in _error(r, 400, "INVALID_ARGUMENT")
    assert s.get(url("/developers")).json() == {"developer": [{"email": "ada@example.com"}]}
    _error(s.get(url("/developers"), params={"expand": "true", "count": "10"}), 400, "INVALID_ARGUMENT")
    full = s.get(url("/developers"), params={"expand": "true"}).json()["developer"][0]
    assert full["firstName"] == "Ada"
    assert s.get(url(f"/developers/{dev['developerId']}")).json()["email"] == "ada@example.com"


def test_app_creation_generates_a_credential(s, url):
    _product(s, url, "gold")
    _developer(s, url)
    r = s.post(
        url("/developers/ada@example.com/apps"),
        json={
            "name": "ada-app",
            "apiProducts": ["gold"],
            "attributes": [{"name": "apimon-managed", "value": "true"}],
        },
    )
    assert r.status_code == 200, r.text
    app = r.json()
    assert app["status"] == "approved" and app["appId"]
    (cred,) = app["credentials"]
    assert cred["consumerKey"] and cred["consumerSecret"] and cred["status"] == "approved"
    assert cred["apiProducts"] == [{"apiproduct": "gold", "status": "approved"}]
    assert cred["expiresAt"] == "-1" and isinstance(cred["issuedAt"], str)
    listing = s.get(url("/developers/ada@example.com/apps")).json()
    assert listing == {"app": [{"appId": app["appId"]}]}
    expanded = s.get(url("/developers/ada@example.com/apps"), params={"expand": "true"}).json()["app"][0]
    assert expanded["credentials"][0]["consumerKey"] == cred["consumerKey"]
    r = s.post(url("/developers/ada@example.com/apps"), json={"name": "x", "apiProducts": ["missing"]})
    _error(r, 400, "INVALID_ARGUMENT")


def test_key_import_duplicate_move_and_revoke(s, url, fake):
    _product(s, url, "gold")
    _product(s, url, "silver")
    _developer(s, url)
    _developer(s, url, email="bob@example.com")
    apps = "/developers/ada@example.com/apps"
    s.post(url(apps), json={"name": "ada-app"}).raise_for_status()
    s.post(url("/developers/bob@example.com/apps"), json={"name": "bob-app"}).raise_for_status()

    # import: keys/create takes the key and secret; products are NOT attached by this call
    r = s.post(
        url(f"{apps}/ada-app/keys"), json={"consumerKey": "imported-key_1", "consumerSecret": "s3cr3t"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved" and "apiProducts" not in r.json()
    # a duplicate consumer key anywhere in the org is 409
    r = s.post(
        url("/developers/bob@example.com/apps/bob-app/keys/create"),
        json={"consumerKey": "imported-key_1", "consumerSecret": "other"},
    )
    assert _error(r, 409, "ABORTED") == "ConsumerKey already exists"
    r = s.post(url(f"{apps}/ada-app/keys"), json={"consumerKey": "bad key!", "consumerSecret": "x"})
    _error(r, 400, "INVALID_ARGUMENT")

    key = f"{apps}/ada-app/keys/imported-key_1"
    r = s.post(url(key), json={"apiProducts": ["gold"]})
    assert r.json()["apiProducts"] == [{"apiproduct": "gold", "status": "approved"}]
    # move to silver: add the new product, then remove the old one
    s.post(url(key), json={"apiProducts": ["silver"]}).raise_for_status()
    r = s.delete(url(f"{key}/apiproducts/gold"))
    assert r.json()["apiProducts"] == [{"apiproduct": "silver", "status": "approved"}]
    # revoke the key for one product, then the whole key
    r = s.post(
        url(f"{key}/apiproducts/silver"),
        params={"action": "revoke"},
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 204
    assert s.get(url(key)).json()["apiProducts"] == [{"apiproduct": "silver", "status": "revoked"}]
    r = s.post(url(key), params={"action": "revoke"}, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 204
    assert s.get(url(key)).json()["status"] == "revoked"
    assert fake.find_key("imported-key_1")[:2] == ("ada@example.com", "ada-app")
    # deleting the developer frees the key
    s.delete(url("/developers/ada@example.com")).raise_for_status()
    assert fake.find_key("imported-key_1") is None


# --------------------------------------------------------------------------- rate plans


def _plan(**extra):
    body = {
        "displayName": "standard",
        "currencyCode": "USD",
        "billingPeriod": "MONTHLY",
        "setupFee": {"currencyCode": "USD", "units": "25"},
        "fixedRecurringFee": {"currencyCode": "USD", "units": 10, "nanos": 500_000_000},
        "fixedFeeFrequency": 1,
        "consumptionPricingType": "BANDED",
        "consumptionPricingRates": [
            {"start": "0", "end": "1000", "fee": {"currencyCode": "USD", "nanos": 0}},
            {"start": "1000", "fee": {"currencyCode": "USD", "nanos": 2_000_000}},
        ],
        "state": "DRAFT",
    }
    body.update(extra)
    return body


def test_rate_plan_money_and_int64_shape(s, url):
    _product(s, url, "gold")
    r = s.post(url("/apiproducts/gold/rateplans"), json=_plan(state="PUBLISHED", startTime=T0))
    assert r.status_code == 200, r.text
    plan = r.json()
    assert len(plan["name"]) == 36 and plan["apiproduct"] == "gold"
    assert plan["setupFee"] == {"currencyCode": "USD", "units": "25"}
    assert plan["fixedRecurringFee"] == {"currencyCode": "USD", "units": "10", "nanos": 500000000}
    assert plan["consumptionPricingRates"] == [
        {"end": "1000", "fee": {"currencyCode": "USD"}},  # zero start and zero fee omitted
        {"start": "1000", "fee": {"currencyCode": "USD", "nanos": 2000000}},
    ]
    assert plan["startTime"] == str(T0) and "endTime" not in plan
    assert s.get(url(f"/apiproducts/gold/rateplans/{plan['name']}")).json() == plan
    r = s.post(url("/apiproducts/gold/rateplans"), json=_plan(state="LIVE"))
    assert "(TYPE_ENUM)" in _error(r, 400, "INVALID_ARGUMENT")
    r = s.post(url("/apiproducts/gold/rateplans"), json=_plan(setupFee={"currencyCode": "USD", "units": 1.5}))
    _error(r, 400, "INVALID_ARGUMENT")


def test_only_one_published_rate_plan_active_at_a_time(s, url):
    _product(s, url, "gold")
    base = url("/apiproducts/gold/rateplans")
    old = s.post(base, json=_plan(state="PUBLISHED", startTime=str(T0))).json()
    r = s.post(base, json=_plan(state="PUBLISHED", startTime=str(T1)))
    assert "only one rate plan can be active" in _error(r, 400, "FAILED_PRECONDITION")
    new = s.post(base, json=_plan(startTime=str(T1))).json()  # a draft may overlap
    # price change at T1 with no gap and no overlap: end the old plan at T1, publish the new one from T1
    r = s.put(
        f"{base}/{old['name']}", json={**_plan(state="PUBLISHED", startTime=str(T0)), "endTime": str(T1)}
    )
    assert r.status_code == 200, r.text
    r = s.put(f"{base}/{new['name']}", json=_plan(state="PUBLISHED", startTime=str(T1 - 1)))
    _error(r, 400, "FAILED_PRECONDITION")  # overlaps the old plan by one millisecond
    r = s.put(f"{base}/{new['name']}", json=_plan(state="PUBLISHED", startTime=str(T1)))
    assert r.status_code == 200, r.text
    listed = s.get(base, params={"state": "PUBLISHED", "expand": "true"}).json()["ratePlans"]
    assert sorted((p["startTime"], p.get("endTime")) for p in listed) == [(str(T0), str(T1)), (str(T1), None)]


def test_rate_plan_list_pages_with_next_start_key(s, url):
    _product(s, url, "gold")
    made = [s.post(url("/apiproducts/gold/rateplans"), json=_plan()).json()["name"] for _ in range(5)]
    seen, start = [], None
    while True:
        params = {"count": 2, **({"startKey": start} if start else {})}
        body = s.get(url("/apiproducts/gold/rateplans"), params=params).json()
        seen += [p["name"] for p in body["ratePlans"]]
        start = body.get("nextStartKey")
        if not start:
            break
    assert seen == made  # nextStartKey is the first item of the next page: no overlap


def test_rate_plans_need_monetization(fake, s, url):
    _product(s, url, "gold")
    fake.monetization = False
    r = s.post(url("/apiproducts/gold/rateplans"), json=_plan())
    assert "onetization" in _error(r, 400, "FAILED_PRECONDITION")
    _error(s.get(url("/apiproducts/gold/rateplans")), 400, "FAILED_PRECONDITION")


# --------------------------------------------------------------------------- stats


def test_stats_shape(fake, s, url):
    fake.record_traffic("prod", "gold", "ada-app", dt.date(2027, 1, 2), 39)
    fake.record_traffic("prod", "gold", "bob-app", dt.date(2027, 1, 3), 252_056_245)
    fake.record_traffic("prod", "gold", "bob-app", dt.date(2027, 3, 3), 5)  # outside the range
    params = {
        "select": "sum(message_count)",
        "timeRange": "01/01/2027 00:00~01/04/2027 00:00",
        "timeUnit": "day",
        "tsAscending": "true",
    }
    r = s.get(url("/environments/prod/stats/api_product,developer_app"), params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    (env,) = body["environments"]
    assert env["name"] == "prod" and "notices" in body["metaData"]
    rows = {tuple(d["individualNames"]): d for d in env["dimensions"]}
    assert set(rows) == {("gold", "ada-app"), ("gold", "bob-app")}
    assert rows[("gold", "ada-app")]["name"] == "gold,ada-app"
    (metric,) = rows[("gold", "bob-app")]["metrics"]
    assert metric["name"] == "sum(message_count)"
    day_ms = 86_400_000
    jan1 = 1_798_761_600_000
    assert metric["values"] == [
        {"timestamp": jan1, "value": "0.0"},
        {"timestamp": jan1 + day_ms, "value": "0.0"},
        {"timestamp": jan1 + 2 * day_ms, "value": "2.52056245E8"},
    ]
    assert rows[("gold", "ada-app")]["metrics"][0]["values"][1]["value"] == "39.0"
    # without timeUnit: one aggregated string per metric
    params.pop("timeUnit")
    body = s.get(url("/environments/prod/stats/api_product"), params=params).json()
    assert body["environments"][0]["dimensions"] == [
        {"metrics": [{"name": "sum(message_count)", "values": ["2.52056284E8"]}], "name": "gold"}
    ]


def test_stats_time_range_limit(s, url):
    ok = {"select": "sum(message_count)", "timeRange": "01/01/2027 00:00~04/03/2027 00:00", "timeUnit": "day"}
    assert s.get(url("/environments/prod/stats/api_product,developer_app"), params=ok).status_code == 200
    too_long = {**ok, "timeRange": "01/01/2027 00:00~04/03/2027 00:01"}
    r = s.get(url("/environments/prod/stats/api_product,developer_app"), params=too_long)
    assert "92 days" in _error(r, 400, "INVALID_ARGUMENT")
    r = s.get(
        url("/environments/prod/stats/api_product"), params={**ok, "timeRange": "2027-01-01~2027-01-02"}
    )
    _error(r, 400, "INVALID_ARGUMENT")


def test_java_double():
    assert [java_double(v) for v in (0, 39, 9_999_999, 10_000_000, 252_056_245)] == [
        "0.0",
        "39.0",
        "9999999.0",
        "1.0E7",
        "2.52056245E8",
    ]


# --------------------------------------------------------------------------- faults, request log, CLI


def test_fault_injection_and_request_log(fake, s, url):
    fake.inject(method="GET", path_regex=r"/apiproducts$", status=429, times=1, retry_after=3)
    r = s.get(url("/apiproducts"))
    _error(r, 429, "RESOURCE_EXHAUSTED")
    assert r.headers["Retry-After"] == "3"
    assert s.get(url("/apiproducts")).status_code == 200
    fake.inject(status=503, times=2)
    assert s.get(url()).status_code == 503 and s.post(url("/apiproducts"), json={}).status_code == 503
    assert s.get(url()).status_code == 200
    assert fake.requests[0] == ("GET", f"/v1/organizations/{ORG}/apiproducts", {})
    assert len(fake.requests) == 5
    fake.reset_requests()
    s.get(url("/apiproducts"), params={"count": "5"})
    assert fake.requests == [("GET", f"/v1/organizations/{ORG}/apiproducts", {"count": "5"})]


def test_seeded_foreign_objects_are_visible(fake, s, url):
    fake.add_product("legacy", environments=["prod"])
    fake.add_app("old@example.com", "old-app", api_products=["legacy"], consumer_key="legacykey")
    names = [p["name"] for p in s.get(url("/apiproducts")).json()["apiProduct"]]
    assert names == ["legacy"]
    key = s.get(url("/developers/old@example.com/apps/old-app/keys/legacykey")).json()
    assert key["apiProducts"] == [{"apiproduct": "legacy", "status": "approved"}]


def test_standalone_server_prints_url():
    script = Path(__file__).with_name("apigee.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--org", ORG, "--env", "prod"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        endpoint = proc.stdout.readline().strip()
        assert endpoint.startswith("http://127.0.0.1:")
        r = requests.get(
            f"{endpoint}/v1/organizations/{ORG}", headers={"Authorization": "Bearer t"}, timeout=5
        )
        assert r.status_code == 200 and r.json()["environments"] == ["prod"]
    finally:
        proc.terminate()
        proc.wait(timeout=5)
