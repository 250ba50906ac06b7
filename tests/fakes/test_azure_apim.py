"""Tests of the Azure APIM fake, driven through the real azure-mgmt-apimanagement SDK client."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.mgmt.apimanagement.models import (
    PolicyContract,
    ProductContract,
    ProductUpdateParameters,
    SubscriptionCreateParameters,
    SubscriptionUpdateParameters,
    TagCreateUpdateParameters,
)

from .azure_apim import AzureApimFake, format_policy_xml, parse_duration

RG, SVC = "rg", "apim"
SERVICE_ID = "/subscriptions/sub-1/resourceGroups/rg/providers/Microsoft.ApiManagement/service/apim"


def with_etag(response, model, headers):
    return model, headers["ETag"]


def with_status(response, model, headers):
    return response.http_response.status_code, model


def canon(xml: str) -> str:
    return ET.canonicalize(xml, strip_text=True)


@pytest.fixture
def fake():
    with AzureApimFake(subscription_id="sub-1", resource_group=RG, service=SVC) as f:
        f.add_api("petstore", "Petstore", "petstore")
        f.add_api("orders", "Orders", "orders")
        yield f


@pytest.fixture
def client(fake):
    c = fake.client()
    yield c
    c.close()


def make_product(client, pid="gold", **kw):
    params = ProductContract(display_name=kw.pop("display_name", pid.title()), subscription_required=True,
                             approval_required=False, state="published", **kw)
    return client.product.create_or_update(RG, SVC, pid, params)


def make_subscription(client, sid="alice-gold", pid="gold", cls=None, **kw):
    params = SubscriptionCreateParameters(scope=f"/products/{pid}", display_name=kw.pop("display_name", sid),
                                          state=kw.pop("state", "active"), **kw)
    if cls is not None:
        return client.subscription.create_or_update(RG, SVC, sid, params, cls=cls)
    return client.subscription.create_or_update(RG, SVC, sid, params)


# ------------------------------------------------------------------------------------------------ products


def test_product_crud_with_etags(client):
    status, created = client.product.create_or_update(
        RG, SVC, "gold", ProductContract(display_name="Gold", subscription_required=True, state="published"),
        cls=with_status,
    )
    assert status == 201
    assert created.id == f"{SERVICE_ID}/products/gold"
    assert created.approval_required is False

    _product, etag = client.product.get(RG, SVC, "gold", cls=with_etag)
    assert etag.startswith('"') and etag.endswith('"')
    assert client.product.get_entity_tag(RG, SVC, "gold") is True

    updated, etag2 = client.product.update(
        RG, SVC, "gold", if_match=etag, parameters=ProductUpdateParameters(description="Gold tier"),
        cls=with_etag,
    )
    assert updated.description == "Gold tier" and updated.display_name == "Gold"
    assert etag2 != etag

    with pytest.raises(HttpResponseError) as exc:
        client.product.update(RG, SVC, "gold", if_match=etag, parameters=ProductUpdateParameters(terms="x"))
    assert exc.value.status_code == 412
    assert exc.value.error.code == "PreconditionFailed"

    with pytest.raises(HttpResponseError) as exc:
        client.product.create_or_update(RG, SVC, "gold", ProductContract(display_name="G"), if_match=etag)
    assert exc.value.status_code == 412

    status, _ = client.product.create_or_update(
        RG, SVC, "gold", ProductContract(display_name="Gold 2", state="published"), if_match=etag2, cls=with_status
    )
    assert status == 200

    client.product.update(RG, SVC, "gold", if_match="*", parameters=ProductUpdateParameters(state="notPublished"))

    with pytest.raises(HttpResponseError) as exc:
        client.product.delete(RG, SVC, "gold", if_match=etag2)
    assert exc.value.status_code == 412
    client.product.delete(RG, SVC, "gold", if_match="*")
    with pytest.raises(ResourceNotFoundError):
        client.product.get(RG, SVC, "gold")
    client.product.delete(RG, SVC, "gold", if_match="*")  # missing: 204, no error


def test_product_validation(client):
    with pytest.raises(HttpResponseError) as exc:
        client.product.create_or_update(RG, SVC, "bad", ProductContract(state="published"))
    assert exc.value.status_code == 400 and exc.value.error.code == "ValidationError"


def test_delete_product_with_subscriptions_requires_flag(client, fake):
    make_product(client)
    make_subscription(client)
    with pytest.raises(HttpResponseError) as exc:
        client.product.delete(RG, SVC, "gold", if_match="*")
    assert exc.value.status_code == 400
    assert exc.value.error.code == "ValidationError"
    assert "existing subscriptions" in exc.value.error.message
    client.product.delete(RG, SVC, "gold", if_match="*", delete_subscriptions=True)
    assert fake.subscriptions == {} and fake.products == {}


def test_paging_with_next_link(client, fake):
    for i in range(30):
        make_product(client, f"p{i:02d}")
    fake.reset_requests()
    names = [p.name for p in client.product.list_by_service(RG, SVC, top=10)]
    assert names == [f"p{i:02d}" for i in range(30)]
    gets = [q for (m, path, q) in fake.requests if m == "GET" and path.endswith("/products")]
    assert [(q["$top"], q.get("$skip", "0")) for q in gets] == [("10", "0"), ("10", "10"), ("10", "20")]
    assert all(q["api-version"] == "2024-05-01" for q in gets)

    filtered = list(client.product.list_by_service(RG, SVC, filter="startswith(name,'p1')", top=4))
    assert [p.name for p in filtered] == [f"p1{i}" for i in range(10)]


# ------------------------------------------------------------------------------------------------ policy


def test_policy_round_trip_is_reformatted(client):
    make_product(client)
    sent = (
        '<?xml version="1.0" encoding="utf-8"?>\n<policies>\n  <inbound>\n    <base></base>\n'
        '    <!-- apimon:managed -->\n'
        '    <rate-limit calls="100" renewal-period="60"></rate-limit>\n'
        '    <quota calls="10000" renewal-period="604800" />\n  </inbound>\n'
        "  <backend><base/></backend>\n  <outbound><base/></outbound>\n</policies>\n"
    )
    status, _created = client.product_policy.create_or_update(
        RG, SVC, "gold", policy_id="policy", parameters=PolicyContract(value=sent, format="rawxml"), cls=with_status
    )
    assert status == 201

    got, etag = client.product_policy.get(RG, SVC, "gold", policy_id="policy", format="rawxml", cls=with_etag)
    assert got.value != sent
    assert "<?xml" not in got.value
    assert "\r\n\t\t<rate-limit calls=\"100\" renewal-period=\"60\" />" in got.value
    assert "<!-- apimon:managed -->" in got.value
    assert canon(got.value) == canon(sent.split("?>", 1)[1])
    assert got.value == format_policy_xml(got.value)  # formatting is idempotent

    with pytest.raises(HttpResponseError) as exc:
        client.product_policy.create_or_update(
            RG, SVC, "gold", "policy", PolicyContract(value="<policies><inbound></policies>", format="rawxml")
        )
    assert exc.value.status_code == 400 and exc.value.error.code == "ValidationError"

    status, _ = client.product_policy.create_or_update(
        RG, SVC, "gold", "policy", PolicyContract(value=sent, format="xml"), if_match=etag, cls=with_status
    )
    assert status == 200
    with pytest.raises(HttpResponseError) as exc:
        client.product_policy.delete(RG, SVC, "gold", "policy", if_match=etag)
    assert exc.value.status_code == 412
    client.product_policy.delete(RG, SVC, "gold", "policy", if_match="*")
    with pytest.raises(ResourceNotFoundError):
        client.product_policy.get(RG, SVC, "gold", "policy")


# ------------------------------------------------------------------------------------------------ links, tags


def test_product_api_links(client):
    make_product(client)
    with pytest.raises(ResourceNotFoundError):
        client.product_api.create_or_update(RG, SVC, "gold", "nope")
    status, api = client.product_api.create_or_update(RG, SVC, "gold", "petstore", cls=with_status)
    assert status == 201 and api.name == "petstore" and api.path == "petstore"
    assert client.product_api.check_entity_exists(RG, SVC, "gold", "petstore") is True
    assert [a.name for a in client.product_api.list_by_product(RG, SVC, "gold")] == ["petstore"]
    client.product_api.delete(RG, SVC, "gold", "petstore")
    with pytest.raises(ResourceNotFoundError):
        client.product_api.check_entity_exists(RG, SVC, "gold", "petstore")
    assert [a.name for a in client.api.list_by_service(RG, SVC)] == ["petstore", "orders"]


def test_tags_on_products(client):
    make_product(client)
    make_product(client, "silver")
    tag = client.tag.create_or_update(RG, SVC, "apimon-managed", TagCreateUpdateParameters(display_name="apimon"))
    assert tag.display_name == "apimon"
    with pytest.raises(ResourceNotFoundError):
        client.tag.assign_to_product(RG, SVC, "gold", "unknown-tag")
    client.tag.assign_to_product(RG, SVC, "gold", "apimon-managed")
    assert [t.name for t in client.tag.list_by_product(RG, SVC, "gold")] == ["apimon-managed"]
    assert [p.name for p in client.product.list_by_service(RG, SVC, tags="apimon-managed")] == ["gold"]
    assert client.tag.get_entity_state_by_product(RG, SVC, "gold", "apimon-managed") is True
    client.tag.detach_from_product(RG, SVC, "gold", "apimon-managed")
    assert list(client.tag.list_by_product(RG, SVC, "gold")) == []


# ------------------------------------------------------------------------------------------------ subscriptions


def test_subscription_keys_scope_and_etags(client):
    make_product(client)
    status, created = make_subscription(client, owner_id="/users/alice", cls=with_status)
    assert status == 201
    assert created.scope == f"{SERVICE_ID}/products/gold"
    assert created.owner_id == f"{SERVICE_ID}/users/alice"
    assert created.primary_key and created.secondary_key and created.primary_key != created.secondary_key
    assert created.state == "active"

    got, etag = client.subscription.get(RG, SVC, "alice-gold", cls=with_etag)
    assert got.primary_key is None and got.secondary_key is None
    assert got.scope == f"{SERVICE_ID}/products/gold"
    listed = list(client.subscription.list(RG, SVC))
    assert [s.name for s in listed] == ["alice-gold"] and listed[0].primary_key is None

    keys = client.subscription.list_secrets(RG, SVC, "alice-gold")
    assert (keys.primary_key, keys.secondary_key) == (created.primary_key, created.secondary_key)
    client.subscription.regenerate_primary_key(RG, SVC, "alice-gold")
    keys2 = client.subscription.list_secrets(RG, SVC, "alice-gold")
    assert keys2.primary_key != keys.primary_key and keys2.secondary_key == keys.secondary_key

    with pytest.raises(HttpResponseError) as exc:  # regenerate changed the ETag
        client.subscription.update(RG, SVC, "alice-gold", if_match=etag,
                                   parameters=SubscriptionUpdateParameters(state="suspended"))
    assert exc.value.status_code == 412
    _, etag = client.subscription.get(RG, SVC, "alice-gold", cls=with_etag)
    patched = client.subscription.update(RG, SVC, "alice-gold", if_match=etag,
                                         parameters=SubscriptionUpdateParameters(state="suspended"))
    assert patched.state == "suspended" and patched.primary_key == keys2.primary_key

    full_scope = SubscriptionCreateParameters(scope=f"{SERVICE_ID}/products/gold", display_name="Bob")
    bob = client.subscription.create_or_update(RG, SVC, "bob-gold", full_scope)
    assert bob.state == "submitted" and bob.scope == f"{SERVICE_ID}/products/gold"

    by_state = list(client.subscription.list(RG, SVC, filter="state eq 'suspended'"))
    assert [s.name for s in by_state] == ["alice-gold"]
    by_scope = list(client.subscription.list(RG, SVC, filter=f"properties/scope eq '{SERVICE_ID}/products/gold'"))
    assert sorted(s.name for s in by_scope) == ["alice-gold", "bob-gold"]
    assert [s.name for s in client.subscription.list(RG, SVC, filter="displayName eq 'Bob'")] == ["bob-gold"]
    assert len(list(client.product_subscriptions.list(RG, SVC, "gold"))) == 2

    with pytest.raises(HttpResponseError) as exc:
        make_subscription(client, "x", pid="no-such-product")
    assert exc.value.status_code == 400
    client.subscription.delete(RG, SVC, "bob-gold", if_match="*")
    with pytest.raises(ResourceNotFoundError):
        client.subscription.get(RG, SVC, "bob-gold")


# ------------------------------------------------------------------------------------------------ reports


def _report_filter(start: dt.datetime, end: dt.datetime) -> str:
    fmt = "%Y-%m-%dT%H:%M:%S"
    return f"timestamp ge datetime'{start.strftime(fmt)}' and timestamp le datetime'{end.strftime(fmt)}'"


def test_reports_by_subscription_and_time(client, fake):
    make_product(client)
    make_subscription(client, "alice-gold")
    make_subscription(client, "bob-gold")
    day = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    fake.record_calls("alice-gold", "gold", day + dt.timedelta(minutes=1), success=5, blocked=1)
    fake.record_calls("alice-gold", "gold", day + dt.timedelta(minutes=14), success=2)
    fake.record_calls("alice-gold", "gold", day + dt.timedelta(hours=2), failed=3)
    fake.record_calls("bob-gold", "gold", day + dt.timedelta(minutes=20), success=7, other=1)
    fake.record_calls("alice-gold", "gold", day + dt.timedelta(days=3), success=100)  # out of range

    window = _report_filter(day, day + dt.timedelta(days=1))
    rows = {r.subscription_id: r for r in client.reports.list_by_subscription(RG, SVC, filter=window)}
    assert set(rows) == {"/subscriptions/alice-gold", "/subscriptions/bob-gold"}
    alice = rows["/subscriptions/alice-gold"]
    assert (alice.call_count_success, alice.call_count_blocked, alice.call_count_failed) == (7, 1, 3)
    assert alice.call_count_total == 11 and alice.product_id == "/products/gold"

    only_bob = list(client.reports.list_by_subscription(
        RG, SVC, filter=window + " and subscriptionId eq '/subscriptions/bob-gold'"))
    assert [(r.subscription_id, r.call_count_total) for r in only_bob] == [("/subscriptions/bob-gold", 8)]

    buckets = list(client.reports.list_by_time(RG, SVC, filter=window, interval=dt.timedelta(minutes=15)))
    assert [(b.timestamp, b.call_count_total) for b in buckets] == [
        (day, 8), (day + dt.timedelta(minutes=15), 8), (day + dt.timedelta(hours=2), 3)
    ]
    assert buckets[0].interval == "PT15M"
    hourly = list(client.reports.list_by_time(RG, SVC, filter=window, interval=dt.timedelta(hours=1)))
    assert [(b.timestamp, b.call_count_total) for b in hourly] == [(day, 16), (day + dt.timedelta(hours=2), 3)]

    for bad in (dt.timedelta(minutes=20), dt.timedelta(0)):
        with pytest.raises(HttpResponseError) as exc:
            list(client.reports.list_by_time(RG, SVC, filter=window, interval=bad))
        assert exc.value.status_code == 400
    with pytest.raises(HttpResponseError) as exc:
        list(client.reports.list_by_subscription(RG, SVC, filter="subscriptionId eq 'alice-gold'"))
    assert exc.value.status_code == 400


def test_parse_duration():
    assert parse_duration("PT15M") == dt.timedelta(minutes=15)
    assert parse_duration("P1DT1H") == dt.timedelta(days=1, hours=1)
    for bad in ("", "P", "PT", "15M", "P1DT"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# ------------------------------------------------------------------------------------------------ protocol


def _raw(fake, path: str, *, token: str | None = "t") -> tuple[int, dict]:
    req = urllib.request.Request(fake.base_url + path)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_api_version_and_auth_are_enforced(fake):
    status, body = _raw(fake, f"{SERVICE_ID}/products")
    assert status == 400 and body["error"]["code"] == "MissingApiVersionParameter"
    status, body = _raw(fake, f"{SERVICE_ID}/products?api-version=1999-01-01")
    assert status == 400 and body["error"]["code"] == "InvalidApiVersionParameter"
    status, body = _raw(fake, f"{SERVICE_ID}/products?api-version=2024-05-01", token=None)
    assert status == 401 and body["error"]["code"] == "AuthenticationFailed"
    status, body = _raw(fake, f"{SERVICE_ID}/products?api-version=2024-05-01")
    assert status == 200 and body["value"] == []

    anonymous = fake.client(token=None)
    with pytest.raises(ClientAuthenticationError):
        list(anonymous.product.list_by_service(RG, SVC))
    wrong_version = fake.client(api_version="1999-01-01")
    with pytest.raises(HttpResponseError) as exc:
        wrong_version.product.get(RG, SVC, "gold")
    assert exc.value.status_code == 400


def test_injected_faults_surface_through_sdk(client, fake):
    make_product(client)
    fake.inject(method="GET", path_regex=r"/products/gold$", status=429, times=1, retry_after=7)
    with pytest.raises(HttpResponseError) as exc:
        client.product.get(RG, SVC, "gold")
    assert exc.value.status_code == 429
    assert exc.value.response.headers["Retry-After"] == "7"
    assert client.product.get(RG, SVC, "gold").name == "gold"  # only once

    fake.inject(status=503, times=2)
    for _ in range(2):
        with pytest.raises(HttpResponseError) as exc:
            client.product.get(RG, SVC, "gold")
        assert exc.value.status_code == 503
    assert client.product.get(RG, SVC, "gold").name == "gold"


def test_latency_allows_concurrent_requests(fake):
    fake.latency = 0.2
    c = fake.client()
    started = time.monotonic()
    threads = [threading.Thread(target=lambda: list(c.api.list_by_service(RG, SVC))) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started < 0.8


def test_standalone_mode_prints_url_and_serves():
    script = Path(__file__).with_name("azure_apim.py")
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0", "--seed-apis", "petstore,orders"],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        req = urllib.request.Request(f"{url}{SERVICE_ID}/apis?api-version=2024-05-01",
                                     headers={"Authorization": "Bearer t"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert [a["name"] for a in json.loads(resp.read())["value"]] == ["petstore", "orders"]
    finally:
        proc.terminate()
        proc.wait(timeout=5)
