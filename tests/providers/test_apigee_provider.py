"""The Apigee provider against the Apigee fake, in-process: reads, writes, rate plans, keys, faults, usage."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import allow_endpoints
from fakes.apigee import ApigeeFake
from test_apigee_support import (
    MANAGED,
    ORG,
    OrgAppsFake,
    apply_plan,
    make_run,
    plan_text,
    replan,
    token_env,  # noqa: F401 - fixture
)

from apimon_cli.model import Pricing, Product, Tier
from apimon_cli.planfile.loader import load_or_raise
from apimon_cli.providers import get_provider
from apimon_cli.providers.apigee.client import ApigeeError
from apimon_cli.providers.apigee.rateplans import money_from_api, money_to_api, pricing_from_rate_plan, rate_plan_body
from apimon_cli.providers.base import PlanCheckError
from apimon_cli.reconcile.engine import apply_changes, plan_changes

pytestmark = pytest.mark.usefixtures("token_env")

PRODUCTS = """
  free:
    display_name: Free
    apis: [petstore]
    quota: {limit: 1000, period: month}
    pricing: {model: free}
  pro:
    display_name: Pro
    description: For production
    apis: [petstore, orders]
    rate_limit: {rate: 200, burst: 400}
    quota: {limit: 50000, period: week}
    pricing: {model: per_unit, fee: "199.00", unit_price: "0.001"}
"""
SUBSCRIBERS = """
  acme: {product: pro, email: billing@acme.example, metadata: {customer_id: cus_123}}
  bob: {product: free, email: bob@example.com}
"""


@pytest.fixture
def fake(monkeypatch):
    with ApigeeFake(org=ORG, environments=["prod"], proxies=["petstore", "orders"]) as f:
        monkeypatch.setenv("APIMON_ALLOW_ENDPOINTS", allow_endpoints(f.endpoint)["APIMON_ALLOW_ENDPOINTS"])
        yield f


@pytest.fixture
def org_fake(monkeypatch):
    with OrgAppsFake(org=ORG, environments=["prod"], proxies=["petstore", "orders"]) as f:
        monkeypatch.setenv("APIMON_ALLOW_ENDPOINTS", allow_endpoints(f.endpoint)["APIMON_ALLOW_ENDPOINTS"])
        yield f


def write(tmp_path: Path, fake, products: str = PRODUCTS, subscribers: str = SUBSCRIBERS, **kw) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(plan_text(fake.endpoint, products, subscribers, **kw))
    return path


def provider_for(path: Path):
    loaded = load_or_raise([str(path)])
    return get_provider(loaded.desired), loaded.desired


def plan_with(provider, desired):
    live = provider.read_live_state()
    return live, plan_changes(provider, desired, live)


def rate_plans(fake, product: str) -> list[dict]:
    return sorted(fake.rate_plans[product].values(), key=lambda p: int(p.get("startTime", "0")))


def creds(fake, email: str, app: str) -> list[dict]:
    return fake.apps[email][app]["credentials"]


# ---------------------------------------------------------------- money and rate plan mapping (pure)


def test_money_is_exact_units_and_nanos():
    assert money_to_api(Decimal("199.00"), "USD") == {"currencyCode": "USD", "units": "199"}
    assert money_to_api(Decimal("0.001"), "EUR") == {"currencyCode": "EUR", "units": "0", "nanos": 1_000_000}
    assert money_to_api(Decimal("12345678901.123456789"), "USD") == {
        "currencyCode": "USD", "units": "12345678901", "nanos": 123456789}
    with pytest.raises(ValueError, match="9 decimal places"):
        money_to_api(Decimal("0.0000000001"), "USD")
    assert money_from_api({"units": "12345678901", "nanos": 123456789}) == Decimal("12345678901.123456789")
    assert money_from_api({"nanos": 1_000_000}) == Decimal("0.001")
    assert str(money_from_api({"currencyCode": "USD", "units": "100"})) == "100"
    assert money_from_api(None) == 0


def test_rate_plan_mapping_round_trips():
    graduated = Pricing(model="graduated", fee=Decimal("199"), setup_fee=Decimal("25"), tiers=(
        Tier(1000, unit_price=Decimal("0.0008")), Tier(5000, unit_price=Decimal("0.0005")),
        Tier(None, unit_price=Decimal("0.0003"))))
    body = rate_plan_body(Product("pro", "Pro", pricing=graduated), "USD", "week")
    assert body["billingPeriod"] == "WEEKLY" and body["consumptionPricingType"] == "BANDED"
    assert [(r.get("start"), r.get("end")) for r in body["consumptionPricingRates"]] == [
        (None, "1000"), ("1000", "5000"), ("5000", None)]
    assert pricing_from_rate_plan(body) == graduated
    stair = Pricing(model="stairstep", tiers=(Tier(10, flat_fee=Decimal("5")), Tier(None, flat_fee=Decimal("9"))))
    body = rate_plan_body(Product("s", "S", pricing=stair), "USD", "month")
    assert body["consumptionPricingType"] == "STAIRSTEP" and pricing_from_rate_plan(body) == stair
    per_unit = Pricing(model="per_unit", unit_price=Decimal("0.001"))
    assert pricing_from_rate_plan(rate_plan_body(Product("p", "P", pricing=per_unit), "USD", "month")) == per_unit
    flat = Pricing(model="flat", fee=Decimal("29.5"))
    assert pricing_from_rate_plan(rate_plan_body(Product("f", "F", pricing=flat), "USD", "month")) == flat
    for model in ("free", "volume", "package"):
        assert rate_plan_body(Product("x", "X", pricing=Pricing(model=model)), "USD", "month") is None


# ---------------------------------------------------------------- reads: paging, no per-resource GET


def test_paging_with_inclusive_start_key_reads_every_item_once(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("APIMON_APIGEE_PAGE_SIZE", "3")
    for i in range(8):
        fake.add_product(f"p{i}", environments=["prod"], attributes=MANAGED)
        fake.add_developer(f"d{i}@example.com", attributes=MANAGED)
        fake.add_app(f"d{i}@example.com", f"s{i}", api_products=[f"p{i}"], attributes=MANAGED)
    products = "".join(f"  p{i}: {{display_name: p{i}}}\n" for i in range(8))
    subs = "".join(f"  s{i}: {{product: p{i}, email: d{i}@example.com}}\n" for i in range(8))
    path = write(tmp_path, fake, products, subs)
    fake.reset_requests()
    run = replan(path)
    assert sorted(run.live.products) == [f"p{i}" for i in range(8)]
    assert sorted(run.live.subscribers) == [f"s{i}" for i in range(8)]
    assert run.changes.empty, run.changes.changes
    product_pages = [q for m, p, q in fake.requests if p.endswith("/apiproducts")]
    # 8 items, 3 per page, each page repeating the previous page's last item: 3 + 2 + 2 + 1
    assert [q.get("startKey") for q in product_pages] == [None, "p2", "p4", "p6"]
    assert all(q["count"] == "3" and q["expand"] == "true" for q in product_pages)
    dev_pages = [q for m, p, q in fake.requests if p.endswith("/developers")]
    assert [q.get("startKey") for q in dev_pages] == [None, "d2@example.com", "d4@example.com", "d6@example.com"]
    # the stock fake has no organization-level app list: apps are listed per developer (lists only)
    assert all(m == "GET" for m, _, _ in fake.requests)
    per_resource = [p for m, p, q in fake.requests if "/apps/" in p or p.count("/apiproducts/") and
                    "/rateplans" not in p]
    assert per_resource == []


def test_organization_level_app_list_is_preferred(org_fake, tmp_path, monkeypatch):
    monkeypatch.setenv("APIMON_APIGEE_PAGE_SIZE", "4")
    org_fake.add_product("gold", environments=["prod"], attributes=MANAGED)
    for i in range(10):
        org_fake.add_app(f"d{i}@example.com", f"s{i}", api_products=["gold"], attributes=MANAGED)
    org_fake.apps["d3@example.com"]["s3"]["credentials"][0]["status"] = "revoked"
    org_fake.apps["d4@example.com"]["s4"]["status"] = "revoked"
    subs = "".join(f"  s{i}: {{product: gold, email: d{i}@example.com{', enabled: false' if i in (3, 4) else ''}}}\n"
                   for i in range(10))
    path = write(tmp_path, org_fake, "  gold: {display_name: gold}\n", subs)
    org_fake.reset_requests()
    run = replan(path)
    assert len(run.live.subscribers) == 10 and run.changes.empty, run.changes.changes
    assert not run.provider.apps_listed_per_developer
    paths = [p for _, p, _ in org_fake.requests]
    assert not any("/developers" in p for p in paths)
    app_pages = [q for _, p, q in org_fake.requests if p.endswith("/apps")]
    assert [(q.get("pageToken"), q.get("keyStatus"), q.get("status")) for q in app_pages] == [
        (None, None, None), ("4", None, None), (None, "revoked", None), (None, None, "revoked")]


# ---------------------------------------------------------------- products


def test_create_then_no_changes_and_product_shape(fake, tmp_path):
    path = write(tmp_path, fake)
    run, report = apply_plan(path)
    assert [o.change.label for o in report.outcomes] == ["product free", "product pro", "subscriber acme",
                                                         "subscriber bob"]
    pro = fake.products["pro"]
    assert pro["approvalType"] == "auto" and pro["environments"] == ["prod"]
    assert pro["proxies"] == ["petstore", "orders"] and pro["description"] == "For production"
    assert (pro["quota"], pro["quotaInterval"], pro["quotaTimeUnit"]) == ("50000", "7", "day")
    assert {a["name"]: a["value"] for a in pro["attributes"]} == {
        "apimon-managed": "true", "apimon-rate": "200", "apimon-burst": "400"}
    (plan,) = fake.rate_plans["pro"].values()
    assert plan["state"] == "PUBLISHED" and plan["fixedRecurringFee"] == {"currencyCode": "USD", "units": "199"}
    assert plan["consumptionPricingRates"] == [{"fee": {"currencyCode": "USD", "nanos": 1_000_000}}]
    assert fake.rate_plans["free"] == {}
    again = replan(path)
    assert again.changes.empty, again.changes.changes


def test_put_is_read_modify_write_and_keeps_unmanaged_fields(fake, tmp_path):
    path = write(tmp_path, fake)
    apply_plan(path)
    pro = fake.products["pro"]
    pro["operationGroup"] = {"operationConfigs": [{"apiSource": "petstore", "operations": [{"resource": "/pets"}]}],
                             "operationConfigType": "proxy"}
    pro["scopes"] = ["read"]
    pro["attributes"].append({"name": "access", "value": "public"})
    pro["quotaCounterScope"] = "PROXY"
    path.write_text(path.read_text().replace("display_name: Pro", "display_name: Pro Plus")
                    .replace("rate: 200, burst: 400", "rate: 100, burst: 100"))
    run, report = apply_plan(path)
    (change,) = [c for c in run.changes.changes]
    assert {f.field for f in change.fields} == {"display_name", "rate_limit.rate", "rate_limit.burst"}
    pro = fake.products["pro"]
    assert pro["displayName"] == "Pro Plus" and pro["scopes"] == ["read"] and pro["quotaCounterScope"] == "PROXY"
    assert pro["operationGroup"]["operationConfigs"][0]["apiSource"] == "petstore"
    assert {a["name"]: a["value"] for a in pro["attributes"]} == {
        "access": "public", "apimon-managed": "true", "apimon-rate": "100", "apimon-burst": "100"}
    assert len(fake.rate_plans["pro"]) == 1  # a product-only change leaves the rate plan alone
    assert replan(path).changes.empty


def test_unowned_products_developers_and_apps_are_untouched(fake, tmp_path):
    import copy

    fake.add_product("legacy", environments=["prod"], quota="5")
    fake.add_rate_plan("legacy", state="PUBLISHED", startTime="1000", currencyCode="USD")
    fake.add_developer("old@example.com")
    fake.add_app("old@example.com", "acme", api_products=["legacy"], consumer_key="legacykey")  # same name!
    before = copy.deepcopy((fake.products["legacy"], fake.rate_plans["legacy"], fake.developers,
                            fake.apps["old@example.com"]))
    path = write(tmp_path, fake)
    run, _ = apply_plan(path)
    assert {(u.kind, u.name) for u in run.live.unmanaged} == {("product", "legacy"),
                                                              ("subscriber", "old@example.com/acme")}
    after = (fake.products["legacy"], fake.rate_plans["legacy"], {"old@example.com": fake.developers[
        "old@example.com"]}, fake.apps["old@example.com"])
    assert after == (before[0], before[1], {"old@example.com": before[2]["old@example.com"]}, before[3])
    # and removing everything from the plan deletes only what apimon made
    path.write_text(plan_text(fake.endpoint, "  {}", "{}").replace("products:\n  {}", "products: {}"))
    apply_plan(path)
    assert set(fake.products) == {"legacy"} and set(fake.developers) == {"old@example.com"}
    assert fake.find_key("legacykey") is not None


def test_unknown_environment_is_a_plan_error_and_unknown_proxy_a_warning(fake, tmp_path):
    path = write(tmp_path, fake, environments="[prod, staging]")
    with pytest.raises(PlanCheckError, match="staging"):
        make_run(path)
    path = write(tmp_path, fake, "  x: {display_name: X, apis: [nope]}\n", "{}")
    run = replan(path)
    assert any("no API proxy named nope" in w for w in run.changes.warnings)
    # one form for every provider's plan-time warnings (defect 4): `warning: <provider>: ...`
    assert "warning: apigee: products.x.apis: no API proxy named nope in organization" in run.changes.warnings[-1]


def test_adopt_product(fake, tmp_path):
    fake.add_product("pro", environments=["prod"], displayName="Old", scopes=["s"])
    path = write(tmp_path, fake, subscribers="{}")
    run = replan(path)
    assert any("pro exists on the gateway" in c for c in run.changes.conflicts)
    apply_plan(path, adopt=True)
    assert fake.products["pro"]["displayName"] == "Pro" and fake.products["pro"]["scopes"] == ["s"]
    assert replan(path).changes.empty


def test_environment_drift_is_corrected(fake, tmp_path):
    path = write(tmp_path, fake, subscribers="{}")
    apply_plan(path)
    fake.add_environment("test")
    fake.products["free"]["environments"] = ["prod", "test"]
    run = replan(path)
    (change,) = run.changes.changes
    assert change.id == "free" and change.fields[0].field == "apigee.environments"
    apply_plan(path)
    assert fake.products["free"]["environments"] == ["prod"]


# ---------------------------------------------------------------- rate plans


def _open(plans: list[dict], at: int) -> list[dict]:
    out = []
    for p in plans:
        s, e = int(p.get("startTime", "0")), int(p.get("endTime", "0")) or float("inf")
        if p["state"] == "PUBLISHED" and s <= at < e:
            out.append(p)
    return out


def test_pricing_change_switches_rate_plans_at_one_instant(fake, tmp_path):
    path = write(tmp_path, fake, subscribers="{}")
    apply_plan(path)
    (first,) = fake.rate_plans["pro"].values()
    path.write_text(path.read_text().replace('unit_price: "0.001"', 'unit_price: "0.002"'))
    run = replan(path)
    (change,) = run.changes.changes
    assert [(f.field, f.before, f.after) for f in change.fields] == [("pricing.unit_price", "0.001", "0.002")]
    _, report = apply_plan(path)
    assert "previous plan ended at the same instant" in report.outcomes[0].message
    plans = rate_plans(fake, "pro")
    published = [p for p in plans if p["state"] == "PUBLISHED"]
    assert len(plans) == len(published) == 2  # no draft left behind
    old, new = published
    assert old["name"] == first["name"] and old["endTime"] == new["startTime"]  # no gap, no overlap
    assert "endTime" not in new
    switch = int(new["startTime"])
    assert _open(plans, switch - 1) == [old] and _open(plans, switch) == [new]
    assert new["consumptionPricingRates"][0]["fee"]["nanos"] == 2_000_000
    assert replan(path).changes.empty


def test_interrupted_switch_is_finished_without_a_gap(fake, tmp_path):
    path = write(tmp_path, fake, subscribers="{}")
    apply_plan(path)
    path.write_text(path.read_text().replace('fee: "199.00"', 'fee: "249.00"'))
    provider, desired = provider_for(path)
    live, cs = plan_with(provider, desired)
    real_put = provider.api.put

    def failing_put(p, body):  # the publish of the new plan fails after the old one was ended
        if body.get("state") == "PUBLISHED" and "endTime" not in body:
            raise ApigeeError("injected: publish failed", 503)
        return real_put(p, body)

    provider.api.put = failing_put
    report = apply_changes(provider, cs.changes, live)
    provider.close()
    assert report.failed and "publish failed" in report.failed[0].message
    plans = rate_plans(fake, "pro")
    ended = [p for p in plans if p["state"] == "PUBLISHED"][0]
    draft = [p for p in plans if p["state"] == "DRAFT"][0]
    assert draft["startTime"] == ended["endTime"]
    run = replan(path)
    assert run.changes.changes[0].changed("pricing")  # no active plan now: the diff shows it
    apply_plan(path)
    plans = rate_plans(fake, "pro")
    assert [p["state"] for p in plans] == ["PUBLISHED", "PUBLISHED"]
    assert plans[0]["endTime"] == plans[1]["startTime"] == draft["startTime"]  # the gap is closed
    assert plans[1]["fixedRecurringFee"]["units"] == "249"
    assert replan(path).changes.empty


def test_unexpressible_model_ends_the_rate_plan(fake, tmp_path):
    path = write(tmp_path, fake, subscribers="{}")
    apply_plan(path)
    path.write_text(path.read_text().replace(
        'pricing: {model: per_unit, fee: "199.00", unit_price: "0.001"}',
        'pricing: {model: package, package: {size: 1000, price: "0.50"}}'))
    run = replan(path)
    assert any("cannot express model package" in w for w in run.changes.warnings)
    apply_plan(path)
    (plan,) = fake.rate_plans["pro"].values()
    assert "endTime" in plan and _open([plan], int(plan["endTime"])) == []
    assert replan(path).changes.empty


def test_included_minimum_and_tier_flat_fees_are_not_compared(fake, tmp_path):
    products = """
  pro:
    display_name: Pro
    pricing:
      model: graduated
      included: 100
      minimum: "10"
      tiers: [{up_to: 1000, unit_price: "0.01", flat_fee: "1"}, {up_to: inf, unit_price: "0.005"}]
"""
    path = write(tmp_path, fake, products, "{}")
    run, _ = apply_plan(path)
    assert any("no per-tier flat fee" in w for w in run.changes.warnings)
    assert replan(path).changes.empty


def test_currency_change_rewrites_the_rate_plan(fake, tmp_path):
    path = write(tmp_path, fake, subscribers="{}")
    apply_plan(path)
    path = write(tmp_path, fake, subscribers="{}", billing="{currency: EUR}")
    run = replan(path)
    (change,) = run.changes.changes
    assert change.fields[0].field == "pricing.rate_plan" and "EUR" in change.fields[0].after
    apply_plan(path)
    assert len(_open(list(fake.rate_plans["pro"].values()), 2**62)) == 1
    assert replan(path).changes.empty


def test_foreign_rate_plan_on_owned_product_is_a_conflict(fake, tmp_path):
    path = write(tmp_path, fake, subscribers="{}")
    apply_plan(path)
    for plan in fake.rate_plans["pro"].values():
        plan["description"] = "made by hand"
    path.write_text(path.read_text().replace('unit_price: "0.001"', 'unit_price: "0.002"'))
    run = replan(path)
    assert any("rate plans apimon does not manage" in c for c in run.changes.conflicts)


def test_money_beyond_nanos_is_a_plan_error(fake, tmp_path):
    path = write(tmp_path, fake, '  p: {display_name: P, pricing: {model: per_unit, unit_price: "0.0000000001"}}\n',
                 "{}")
    with pytest.raises(PlanCheckError, match="9 decimal places"):
        make_run(path)


def test_monetization_disabled_one_warning_and_no_rate_plan_calls(tmp_path, monkeypatch):
    with ApigeeFake(org=ORG, proxies=["petstore", "orders"], monetization=False) as fake:
        monkeypatch.setenv("APIMON_ALLOW_ENDPOINTS", allow_endpoints(fake.endpoint)["APIMON_ALLOW_ENDPOINTS"])
        products = PRODUCTS + '  gold: {display_name: Gold, pricing: {model: flat, fee: "5"}}\n'
        path = write(tmp_path, fake, products)
        run, _ = apply_plan(path)
        warnings = [w for w in run.changes.warnings if "monetization is not enabled" in w]
        assert len(warnings) == 1 and "2 priced products" in warnings[0]
        assert not any("rateplans" in p for _, p, _ in fake.requests)
        assert all(v == {} for v in fake.rate_plans.values())
        path.write_text(path.read_text().replace('unit_price: "0.001"', 'unit_price: "0.5"'))
        assert replan(path).changes.empty  # pricing is not compared
        assert not any("rateplans" in p for _, p, _ in fake.requests)


# ---------------------------------------------------------------- subscribers: developers, apps, keys


def test_developer_app_and_generated_key(fake, tmp_path):
    path = write(tmp_path, fake, subscribers="""
  acme: {product: pro, email: Billing@Acme.example, metadata: {customer_id: cus_123, first_name: Ada}}
""")
    apply_plan(path)
    dev = fake.developers["billing@acme.example"]
    assert (dev["firstName"], dev["lastName"], dev["userName"]) == ("Ada", "acme", "acme")
    assert {"name": "apimon-managed", "value": "true"} in dev["attributes"]
    app = fake.apps["billing@acme.example"]["acme"]
    assert {a["name"]: a["value"] for a in app["attributes"]} == {
        "apimon-managed": "true", "apimon-meta-customer_id": "cus_123", "apimon-meta-first_name": "Ada"}
    (cred,) = app["credentials"]
    assert cred["apiProducts"] == [{"apiproduct": "pro", "status": "approved"}]
    provider, _ = provider_for(path)
    assert provider.reveal_key("acme") == cred["consumerKey"]
    provider.close()
    assert replan(path).changes.empty  # the upper-case email is kept lower-case by Apigee: no change


def test_key_import_leaves_exactly_one_key(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("ACME_KEY", "imported-key_0123456789")
    path = write(tmp_path, fake, subscribers="""
  acme: {product: pro, email: billing@acme.example, key: {from_env: ACME_KEY}}
""")
    _, report = apply_plan(path)
    assert report.outcomes[-1].message == "created (key imported)"
    (cred,) = creds(fake, "billing@acme.example", "acme")
    assert cred["consumerKey"] == "imported-key_0123456789"
    assert cred["apiProducts"] == [{"apiproduct": "pro", "status": "approved"}]
    assert replan(path).changes.empty
    # a different value in the environment is added; the old key keeps working for key.overlap (24h)
    monkeypatch.setenv("ACME_KEY", "rotated-key_9876543210")
    run = replan(path)
    assert [f.field for f in run.changes.changes[0].fields] == ["key"]
    _, report = apply_plan(path)
    assert report.outcomes[-1].message.startswith("key replaced (the old key works until ")
    old, new = creds(fake, "billing@acme.example", "acme")
    assert old["consumerKey"] == "imported-key_0123456789" and old["status"] == "approved"
    assert any(a["name"] == "apimon_expires" for a in old["attributes"])
    assert new["consumerKey"] == "rotated-key_9876543210"
    assert new["apiProducts"] == [{"apiproduct": "pro", "status": "approved"}]
    assert replan(path).changes.empty


def test_key_import_with_no_overlap_leaves_exactly_one_key(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("ACME_KEY", "imported-key_0123456789")
    path = write(tmp_path, fake, subscribers="""
  acme: {product: pro, email: billing@acme.example, key: {from_env: ACME_KEY, overlap: 0s}}
""")
    apply_plan(path)
    monkeypatch.setenv("ACME_KEY", "rotated-key_9876543210")
    apply_plan(path)
    (cred,) = creds(fake, "billing@acme.example", "acme")
    assert cred["consumerKey"] == "rotated-key_9876543210" and fake.find_key("imported-key_0123456789") is None
    assert replan(path).changes.empty


def test_duplicate_imported_key_is_a_clear_409(fake, tmp_path, monkeypatch):
    fake.add_app("other@example.com", "other", consumer_key="taken-key_0123456789")
    monkeypatch.setenv("ACME_KEY", "taken-key_0123456789")
    path = write(tmp_path, fake, subscribers="""
  acme: {product: pro, email: billing@acme.example, key: {from_env: ACME_KEY}}
""")
    run = make_run(path)
    report = apply_changes(run.provider, run.changes.changes, run.live)
    run.provider.close()
    (failed,) = report.failed
    assert "already used by another app" in failed.message and "taken-key" not in failed.message


def test_product_move_keeps_the_key(fake, tmp_path):
    path = write(tmp_path, fake)
    apply_plan(path)
    (before,) = creds(fake, "bob@example.com", "bob")
    fake.apps["bob@example.com"]["bob"]["credentials"][0]["attributes"] = [{"name": "note", "value": "x"}]
    path.write_text(path.read_text().replace("bob: {product: free", "bob: {product: pro"))
    _, report = apply_plan(path)
    assert "moved to product pro" in report.outcomes[0].message
    (after,) = creds(fake, "bob@example.com", "bob")
    assert after["consumerKey"] == before["consumerKey"]
    assert after["apiProducts"] == [{"apiproduct": "pro", "status": "approved"}]
    assert after["attributes"] == [{"name": "note", "value": "x"}]  # the key's own attributes survive
    assert replan(path).changes.empty


def test_enabled_false_revokes_and_true_approves_again(fake, tmp_path):
    path = write(tmp_path, fake)
    apply_plan(path)
    path.write_text(path.read_text().replace("bob: {product: free, email: bob@example.com}",
                                             "bob: {product: free, email: bob@example.com, enabled: false}"))
    _, report = apply_plan(path)
    assert report.outcomes[0].message == "key revoked"
    (cred,) = creds(fake, "bob@example.com", "bob")
    assert cred["status"] == "revoked" and fake.apps["bob@example.com"]["bob"]["status"] == "approved"
    assert "bob" in fake.apps["bob@example.com"]  # nothing deleted
    assert replan(path).changes.empty
    path.write_text(path.read_text().replace(", enabled: false", ""))
    apply_plan(path)
    assert creds(fake, "bob@example.com", "bob")[0]["status"] == "approved"
    assert replan(path).changes.empty


def test_metadata_change_and_email_change(fake, tmp_path):
    path = write(tmp_path, fake)
    apply_plan(path)
    fake.apps["billing@acme.example"]["acme"]["attributes"].append({"name": "DisplayName", "value": "ACME"})
    (key,) = [c["consumerKey"] for c in creds(fake, "billing@acme.example", "acme")]
    text = path.read_text().replace("cus_123", "cus_456").replace("billing@acme.example", "ap@acme.example")
    path.write_text(text)
    _, report = apply_plan(path)
    assert "moved to developer ap@acme.example (key kept)" in report.outcomes[0].message
    assert "billing@acme.example" not in fake.developers  # apimon's developer, now empty, is removed
    app = fake.apps["ap@acme.example"]["acme"]
    assert [c["consumerKey"] for c in app["credentials"]] == [key]
    attrs = {a["name"]: a["value"] for a in app["attributes"]}
    assert attrs["DisplayName"] == "ACME" and attrs["apimon-meta-customer_id"] == "cus_456"
    assert replan(path).changes.empty


def test_subscriber_on_an_unmanaged_developer_is_refused(fake, tmp_path):
    fake.add_developer("bob@example.com")
    path = write(tmp_path, fake)
    run = make_run(path)
    report = apply_changes(run.provider, run.changes.changes, run.live)
    run.provider.close()
    (failed,) = report.failed
    assert "developer bob@example.com exists on Apigee and apimon does not manage it" in failed.message
    assert fake.apps["bob@example.com"] == {}


def test_deleting_a_subscriber_removes_its_app_and_empty_developer(fake, tmp_path):
    path = write(tmp_path, fake)
    apply_plan(path)
    path.write_text(path.read_text().replace("  bob: {product: free, email: bob@example.com}\n", ""))
    _, report = apply_plan(path)
    assert report.outcomes[0].message == "deleted (app and key), developer bob@example.com removed"
    assert "bob@example.com" not in fake.developers


# ---------------------------------------------------------------- faults


def test_429_is_retried_honouring_retry_after(fake, tmp_path):
    path = write(tmp_path, fake)
    provider, desired = provider_for(path)
    waits: list[float] = []
    provider.api.sleep = waits.append
    fake.inject(method="GET", path_regex=r"/apiproducts$", status=429, times=2, retry_after=7)
    live, cs = plan_with(provider, desired)
    assert waits == [7.0, 7.0] and len(cs.of("create")) == 4
    fake.inject(method="POST", path_regex=r"/developers$", status=503, times=1)
    report = apply_changes(provider, cs.changes, live)
    provider.close()
    assert not report.failed and waits[2] == provider.api.backoff


def test_5xx_retries_are_bounded(fake, tmp_path):
    path = write(tmp_path, fake)
    provider, desired = provider_for(path)
    waits: list[float] = []
    provider.api.sleep = waits.append
    fake.inject(method="GET", path_regex=r"/apiproducts$", status=500, times=100)
    with pytest.raises(ApigeeError, match="still failed after 5 retries: 500 INTERNAL"):
        provider.read_live_state()
    provider.close()
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_409_on_create_is_surfaced(fake, tmp_path):
    path = write(tmp_path, fake, subscribers="{}")
    provider, desired = provider_for(path)
    live, cs = plan_with(provider, desired)
    fake.add_product("pro", environments=["prod"])  # someone created it after the plan was read
    report = apply_changes(provider, cs.changes, live)
    provider.close()
    (failed,) = report.failed
    assert failed.change.id == "pro" and "already exists on Apigee" in failed.message


def test_bad_token_is_a_clear_error(tmp_path, monkeypatch):
    with ApigeeFake(org=ORG, valid_tokens={"good"}) as fake:
        monkeypatch.setenv("APIMON_ALLOW_ENDPOINTS", allow_endpoints(fake.endpoint)["APIMON_ALLOW_ENDPOINTS"])
        path = write(tmp_path, fake, subscribers="{}")
        with pytest.raises(ApigeeError, match="refused the credentials"):
            make_run(path)


# ---------------------------------------------------------------- usage


class StatsWithErrorsFake(ApigeeFake):
    """Answers sum(message_count),sum(is_error) from ``errors`` (the shared fake knows message_count only)."""

    errors: dict = {}

    def _handler_table(self):
        table = super()._handler_table()
        plain = table["apigee.organizations.environments.stats.get"]

        def stats(ctx):
            select = ctx.query.get("select", "")
            if "sum(is_error)" not in select:
                return plain(ctx)
            ctx.query["select"] = "sum(message_count)"
            status, body = plain(ctx)
            for env in body.get("environments", []):
                for row in env.get("dimensions", []):
                    names = tuple(row["individualNames"])
                    errs = [{"timestamp": v["timestamp"],
                             "value": repr(float(self.errors.get((names, v["timestamp"]), 0)))}
                            for v in row["metrics"][0]["values"]]
                    row["metrics"].append({"name": "sum(is_error)", "values": errs})
            return status, body

        table["apigee.organizations.environments.stats.get"] = stats
        return table


def test_usage_pull_maps_apps_sums_environments_and_counts_each_day_once(tmp_path, monkeypatch):
    with ApigeeFake(org=ORG, environments=["prod", "test"], proxies=["petstore", "orders"]) as fake:
        monkeypatch.setenv("APIMON_ALLOW_ENDPOINTS", allow_endpoints(fake.endpoint)["APIMON_ALLOW_ENDPOINTS"])
        path = write(tmp_path, fake, environments="[prod, test]")
        apply_plan(path)
        fake.add_app("x@example.com", "stranger", api_products=["pro"])
        d = dt.date(2027, 1, 31)
        fake.record_traffic("prod", "pro", "acme", d, 252_056_245)  # "2.52056245E8" on the wire
        fake.record_traffic("test", "pro", "acme", d, 39)
        fake.record_traffic("prod", "pro", "acme", d + dt.timedelta(days=1), 5)  # outside the window
        fake.record_traffic("prod", "free", "bob", d - dt.timedelta(days=100), 7)  # needs a second window
        fake.record_traffic("prod", "pro", "stranger", d, 1000)  # not apimon's app
        provider, _ = provider_for(path)
        fake.reset_requests()
        rows = list(provider.pull_usage(d - dt.timedelta(days=120), d))
        provider.close()
    got = {(r.subscriber, r.product, r.day, r.metric): r.count for r in rows if r.count}
    assert got == {("acme", "pro", "2027-01-31", "total"): 252_056_284,
                   ("acme", "pro", "2027-01-31", "success"): 252_056_284,
                   ("bob", "free", "2026-10-23", "total"): 7, ("bob", "free", "2026-10-23", "success"): 7}
    assert any("sum(is_error)" in w for w in provider.usage_warnings)
    ranges = [q["timeRange"] for _, p, q in fake.requests if "/stats/" in p and q["select"] == "sum(message_count)"]
    assert ranges[:2] == ["10/03/2026 00:00~01/03/2027 00:00", "01/03/2027 00:00~02/01/2027 00:00"]


def test_usage_success_is_total_minus_proxy_errors(tmp_path, monkeypatch):
    with StatsWithErrorsFake(org=ORG, proxies=["petstore", "orders"]) as fake:
        monkeypatch.setenv("APIMON_ALLOW_ENDPOINTS", allow_endpoints(fake.endpoint)["APIMON_ALLOW_ENDPOINTS"])
        path = write(tmp_path, fake)
        apply_plan(path)
        d = dt.date(2027, 3, 1)
        fake.record_traffic("prod", "pro", "acme", d, 100)
        fake.errors = {(("pro", "acme"), int(dt.datetime(2027, 3, 1, tzinfo=dt.UTC).timestamp() * 1000)): 12}
        provider, _ = provider_for(path)
        rows = {(r.metric, r.count) for r in provider.pull_usage(d, d) if r.subscriber == "acme"}
        provider.close()
    assert rows == {("total", 100), ("success", 88)} and provider.usage_warnings == []


def test_every_call_has_connect_and_read_timeouts(fake, tmp_path):
    from apimon_cli.providers.transport import TIMEOUTS

    path = write(tmp_path, fake)
    provider, desired = provider_for(path)
    seen = []
    real = provider.api.session.request

    def request(*args, **kwargs):
        seen.append(kwargs.get("timeout"))
        return real(*args, **kwargs)

    provider.api.session.request = request
    plan_with(provider, desired)
    provider.close()
    assert seen and set(seen) == {(TIMEOUTS.connect, TIMEOUTS.read)}
