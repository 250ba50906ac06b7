"""The Azure provider through the real azure-mgmt-apimanagement SDK against the local ARM fake, in process.

Every scenario starts with resources apimon does not own (a product with a hand-written policy and its
subscription, an all-APIs subscription) and checks at the end that they were not touched.
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
import time

import pytest
from azure.mgmt.apimanagement.models import (
    PolicyContract,
    ProductContract,
    ProductUpdateParameters,
    SubscriptionCreateParameters,
    SubscriptionUpdateParameters,
)
from conftest import allow_endpoints, write_plan
from fakes.azure_apim import AzureApimFake

from apimon_cli.model import Billing, DesiredState, Target
from apimon_cli.providers.azure import paging as azure_paging
from apimon_cli.providers.azure.paging import PagedList, Scheduler
from apimon_cli.providers.azure.provider import AzureProvider
from apimon_cli.providers.base import ProviderError
from apimon_cli.reconcile import compute_changes
from apimon_cli.reconcile.engine import apply_changes, make_plan

RG, SVC = "rg", "apim"
IMPORTED_KEY = "imported-key-0123456789abcdef"
LEGACY_POLICY = ('<policies><inbound><base /><ip-filter action="allow"><address>10.0.0.1</address></ip-filter>'
                 '</inbound><backend><base /></backend><outbound><base /></outbound></policies>')

PLAN = """
apimon: 1
target:
  provider: azure
  azure: {{subscription_id: sub-1, resource_group: rg, service: apim, endpoint: "{url}"}}
products:
  free:
    display_name: Free
    description: Try it
    apis: [petstore]
    rate_limit: {{rate: 5, burst: 5}}
    quota: {{limit: 1000, period: day}}
    pricing: {{model: free}}
  pro:
    display_name: Pro
    apis: [petstore, orders]
    rate_limit: {{rate: 50, burst: 50}}
    quota: {{limit: 100000, period: week}}
    pricing: {{model: per_unit, fee: "29.00", unit_price: "0.001"}}
subscribers:
  acme: {{product: pro, email: billing@acme.example, metadata: {{customer_id: cus_1}}}}
  bob: {{product: free, enabled: false}}
  imported: {{product: free, key: {{from_env: IMPORTED_KEY}}}}
"""


@pytest.fixture(autouse=True)
def env(monkeypatch):
    for name in ("APIMON_FORCE_POLICY", "APIMON_AZURE_CONCURRENCY", "APIMON_AZURE_MAX_RETRY_WAIT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("APIMON_AZURE_TOKEN", "test-token")
    monkeypatch.setenv("APIMON_AZURE_RETRY_BACKOFF", "0.01")
    monkeypatch.setenv("IMPORTED_KEY", IMPORTED_KEY)


@pytest.fixture
def fake(monkeypatch):
    with AzureApimFake(subscription_id="sub-1", resource_group=RG, service=SVC) as f:
        monkeypatch.setenv("APIMON_ALLOW_ENDPOINTS", allow_endpoints(f.base_url)["APIMON_ALLOW_ENDPOINTS"])
        f.add_api("petstore", "Petstore", "petstore")
        f.add_api("orders", "Orders", "orders")
        c = f.client()
        c.product.create_or_update(RG, SVC, "legacy", ProductContract(
            display_name="Legacy", subscription_required=True, state="published"))
        c.product_api.create_or_update(RG, SVC, "legacy", "petstore")
        c.product_policy.create_or_update(RG, SVC, "legacy", "policy", PolicyContract(value=LEGACY_POLICY))
        c.subscription.create_or_update(RG, SVC, "legacy-alice", SubscriptionCreateParameters(
            scope="/products/legacy", display_name="Alice", state="active"))
        c.subscription.create_or_update(RG, SVC, "master", SubscriptionCreateParameters(
            scope="/apis", display_name="Built-in all-access subscription", state="active"))
        c.close()
        before = unowned_state(f)
        yield f
        assert unowned_state(f) == before, "apimon touched resources it does not own"


def unowned_state(fake) -> dict:
    return copy.deepcopy({"product": fake.products.get("legacy"), "policy": fake.policies.get("legacy"),
                          "links": fake.product_apis.get("legacy"), "tags": fake.product_tags.get("legacy"),
                          "subs": {k: v for k, v in fake.subscriptions.items() if k in ("legacy-alice", "master")}})


@pytest.fixture
def plan(tmp_path, fake):
    return write_plan(tmp_path / "plan.yaml", PLAN.format(url=fake.base_url))


def planned(path):
    run = make_plan([str(path)])
    return run


def apply(path, **kw):
    run = make_plan([str(path)], **kw)
    try:
        return run, apply_changes(run.provider, run.changes.changes, run.live)
    finally:
        run.provider.close()


def changes_of(path) -> list[tuple[str, str, str, tuple[str, ...]]]:
    run = make_plan([str(path)])
    run.provider.close()
    return [(c.action, c.kind, c.id, tuple(f.field for f in c.fields)) for c in run.changes.changes]


def converged(path) -> None:
    _, report = apply(path)
    assert not report.failed, [o.message for o in report.failed]
    assert changes_of(path) == []


# ------------------------------------------------------------------------------------------------ the loop


def test_create_then_no_changes(plan, fake):
    run, report = apply(plan)
    assert [(o.change.id, o.ok) for o in report.outcomes][:2] == [("free", True), ("pro", True)]
    assert sorted((o.change.id, o.ok) for o in report.outcomes[2:]) == [
        ("acme", True), ("bob", True), ("imported", True)]
    assert {u.name for u in run.changes.unmanaged} == {"legacy", "legacy-alice", "master"}

    assert fake.products["pro"]["props"] == {
        "displayName": "Pro", "subscriptionRequired": True, "approvalRequired": False, "state": "published"}
    assert set(fake.product_tags["pro"]) == {"apimon-managed"}
    assert fake.product_apis["pro"] == ["petstore", "orders"]
    assert '<quota calls="100000" renewal-period="604800" />' in fake.policies["pro"]["value"]
    acme = fake.subscriptions["apimon-acme"]
    assert acme["props"]["displayName"] == "acme" and acme["props"]["state"] == "active"
    assert acme["props"]["scope"].endswith("/products/pro")
    assert fake.subscriptions["apimon-bob"]["props"]["state"] == "suspended"
    assert fake.subscriptions["apimon-imported"]["keys"][0] == IMPORTED_KEY
    assert changes_of(plan) == []
    # as many APIs as products: API links were read per product
    assert [p for m, p, q in fake.requests if m == "GET" and p.endswith("/products/free/apis")]

    # pricing, burst, email and metadata are not stored on Azure: changing them is never a diff
    text = plan.read_text().replace("burst: 50", "burst: 80").replace('"29.00"', '"39.00"')
    write_plan(plan, text.replace("cus_1", "cus_2").replace("billing@acme", "ap@acme"))
    assert changes_of(plan) == []


def test_updates_limits_links_state_and_key(plan, fake, monkeypatch):
    converged(plan)
    text = plan.read_text().replace("rate: 50, burst: 50", "rate: 60, burst: 60")
    text = text.replace("apis: [petstore, orders]", "apis: [orders]")
    text = text.replace("display_name: Free", "display_name: Free tier")
    text = text.replace("bob: {product: free, enabled: false}", "bob: {product: free}")
    write_plan(plan, text)
    assert changes_of(plan) == [
        ("update", "product", "free", ("display_name",)),
        ("update", "product", "pro", ("apis", "rate_limit.rate")),
        ("update", "subscriber", "bob", ("enabled",)),
    ]
    policy_etag = fake.policies["free"]["etag"]
    converged(plan)
    assert fake.policies["free"]["etag"] == policy_etag  # a display-name change does not rewrite the policy
    assert '<rate-limit calls="60" renewal-period="1" />' in fake.policies["pro"]["value"]
    assert fake.product_apis["pro"] == ["orders"]
    assert fake.subscriptions["apimon-bob"]["props"]["state"] == "active"

    # a new imported key value replaces the primary key
    keys = fake.subscriptions["apimon-imported"]["keys"]
    monkeypatch.setenv("IMPORTED_KEY", "another-key-value-0123456789")
    assert changes_of(plan) == [("update", "subscriber", "imported", ("key",))]
    converged(plan)
    assert fake.subscriptions["apimon-imported"]["keys"] == ("another-key-value-0123456789", keys[1])


def test_removing_limits_deletes_the_policy_and_deletes_go_in_order(plan, fake):
    converged(plan)
    text = plan.read_text().replace("    rate_limit: {rate: 5, burst: 5}\n    quota: {limit: 1000, period: day}\n", "")
    text = text.split("  pro:")[0] + "subscribers:\n  bob: {product: free}\n"
    write_plan(plan, text)
    run, report = apply(plan)
    outcomes = [(o.change.action, o.change.id, o.ok) for o in report.outcomes]
    # subscriber deletes run concurrently (any order among them), products strictly after them
    assert outcomes[:2] == [("update", "free", True), ("update", "bob", True)]
    assert sorted(outcomes[2:4]) == [("delete", "acme", True), ("delete", "imported", True)]
    assert outcomes[4] == ("delete", "pro", True)
    assert "free" not in fake.policies and "pro" not in fake.products
    assert set(fake.subscriptions) == {"apimon-bob", "legacy-alice", "master"}
    assert changes_of(plan) == []


def test_subscriber_changes_run_concurrently_and_stop_after_a_failure(plan, fake, monkeypatch):
    monkeypatch.setenv("APIMON_AZURE_CONCURRENCY", "4")
    subs = "".join(f"  s{i:02d}: {{product: free}}\n" for i in range(30))
    write_plan(plan, plan.read_text().replace("subscribers:\n", "subscribers:\n" + subs))
    fake.inject(method="PUT", path_regex=r"/subscriptions/apimon-s05$", status=409, code="Conflict", times=None)
    fake.latency = 0.02  # round trips like a real network's, so a busy machine cannot drain the queue first
    _, report = apply(plan)
    fake.latency = 0.0
    fake.clear_faults()
    [failed] = report.failed
    assert failed.change.id == "s05" and "HTTP 409" in failed.message
    tried = {o.change.id for o in report.outcomes}
    assert {"free", "pro"} <= tried and len(tried) < 35  # nothing new started after the failure
    assert len(report.outcomes) + len(report.not_applied) == 35
    assert {c.id for c in report.not_applied}.isdisjoint(tried)
    converged(plan)


# ------------------------------------------------------------------------------------------------ policies


def test_policy_formatting_is_never_a_diff_but_changed_values_are(plan, fake):
    converged(plan)
    c = fake.client()
    hand = ("<policies>\n  <!-- tuned by ops -->\n  <inbound><base/>"
            "<quota renewal-period='86400' calls='1000'/>  <rate-limit renewal-period='1' calls='5'></rate-limit>"
            "</inbound>\n<backend><base/></backend><outbound><base/></outbound><on-error><base/></on-error>"
            "</policies>")
    c.product_policy.create_or_update(RG, SVC, "free", "policy", PolicyContract(value=hand))
    assert changes_of(plan) == []

    c.product_policy.create_or_update(RG, SVC, "free", "policy", PolicyContract(value=hand.replace("'5'", "'9'")))
    run = planned(plan)
    run.provider.close()
    [change] = run.changes.changes
    assert change.id == "free"
    assert [(f.field, f.before, f.after) for f in change.fields] == [("rate_limit.rate", 9, 5)]
    converged(plan)
    assert '<rate-limit calls="5" renewal-period="1" />' in fake.policies["free"]["value"]
    c.close()


def test_foreign_policy_elements_refused_unless_forced(plan, fake, monkeypatch):
    converged(plan)
    c = fake.client()
    pro_policy = fake.policies["pro"]["value"].replace(
        "<base />\r\n\t\t<rate-limit", "<base />\r\n\t\t<ip-filter action=\"forbid\" />\r\n\t\t<rate-limit")
    c.product_policy.create_or_update(RG, SVC, "pro", "policy", PolicyContract(value=pro_policy))
    c.close()
    # no change to the limits: the foreign element is reported and left alone
    run = planned(plan)
    run.provider.close()
    assert run.changes.changes == []
    assert any("product pro: the live policy has elements apimon did not write (inbound/ip-filter)" in n
               for n in run.changes.notes)

    write_plan(plan, plan.read_text().replace("rate: 50, burst: 50", "rate: 70, burst: 70"))
    run, report = apply(plan)
    assert any("product pro" in w and "inbound/ip-filter" in w and "--force-policy" in w for w in run.changes.warnings)
    [outcome] = report.outcomes
    assert not outcome.ok and "refusing to replace its policy" in outcome.message
    assert "inbound/ip-filter" in outcome.message and "nothing was applied" in outcome.message
    assert "ip-filter" in fake.policies["pro"]["value"]

    monkeypatch.setenv("APIMON_FORCE_POLICY", "1")
    run, report = apply(plan)
    assert not report.failed
    assert "removed inbound/ip-filter" in report.outcomes[0].message
    assert "ip-filter" not in fake.policies["pro"]["value"]
    assert changes_of(plan) == []


# ------------------------------------------------------------------------------------------------ ETags


def test_change_between_plan_and_apply_stops_with_clear_message(plan, fake):
    converged(plan)
    write_plan(plan, plan.read_text().replace("display_name: Pro", "display_name: Pro plan"))
    run = make_plan([str(plan)])
    etag = run.live.handles[("product", "pro")].etag
    assert etag == fake.products["pro"]["etag"]  # read at plan time, for what the plan changes
    c = fake.client()
    c.product.update(RG, SVC, "pro", if_match="*", parameters=ProductUpdateParameters(description="edited by ops"))
    c.close()
    report = apply_changes(run.provider, run.changes.changes, run.live)
    run.provider.close()
    [outcome] = report.outcomes
    assert not outcome.ok
    assert "changed on the gateway since the plan read it" in outcome.message and "HTTP 412" in outcome.message
    assert "apimon plan" in outcome.message
    assert fake.products["pro"]["props"]["displayName"] == "Pro"

    run = planned(plan)
    run.provider.close()
    [change] = run.changes.changes
    assert {(f.field, f.before, f.after) for f in change.fields} == {
        ("description", "edited by ops", ""), ("display_name", "Pro", "Pro plan")}
    converged(plan)


def test_etags_are_read_lazily_when_apply_runs_without_a_plan(plan, fake):
    converged(plan)
    write_plan(plan, plan.read_text().replace("display_name: Pro", "display_name: Pro plan"))
    run = make_plan([str(plan)])
    provider = run.provider
    live = provider.read_live_state()  # fresh state, never annotated: no ETags yet
    assert not live.handles[("product", "pro")].etag_read
    c = fake.client()
    c.product.update(RG, SVC, "pro", if_match="*", parameters=ProductUpdateParameters(description="ops"))
    c.close()
    report = apply_changes(provider, run.changes.changes, live)  # the lazy GET sees the change against the list
    provider.close()
    assert not report.outcomes[0].ok and "changed on the gateway since the plan read it" in report.outcomes[0].message


def test_unpublished_product_is_noted_and_republished(plan, fake):
    converged(plan)
    c = fake.client()
    c.product.update(RG, SVC, "free", if_match="*", parameters=ProductUpdateParameters(state="notPublished"))
    c.close()
    run = planned(plan)
    run.provider.close()
    assert run.changes.changes == []
    assert any("product free has state=notPublished on the gateway" in n for n in run.changes.notes)
    write_plan(plan, plan.read_text().replace("description: Try it", "description: Try it now"))
    converged(plan)
    assert fake.products["free"]["props"]["state"] == "published"


def test_change_between_list_and_etag_read_is_caught(plan, fake):
    converged(plan)
    write_plan(plan, plan.read_text().replace("bob: {product: free, enabled: false}", "bob: {product: pro}"))
    run = make_plan([str(plan)])
    provider = run.provider
    # simulate the race: the subscription changes after the list but before the plan's GET
    c = fake.client()
    c.subscription.update(RG, SVC, "apimon-bob", if_match="*",
                          parameters=SubscriptionUpdateParameters(state="active"))
    c.close()
    provider.fetch_etag("subscriber", "bob", run.live)
    report = apply_changes(provider, run.changes.changes, run.live)
    provider.close()
    assert not report.outcomes[0].ok and "changed on the gateway since the plan read it" in report.outcomes[0].message


def test_deletes_send_if_match_and_gone_is_fine(plan, fake):
    converged(plan)
    write_plan(plan, plan.read_text().split("subscribers:")[0] + "subscribers: {}\n")
    run = make_plan([str(plan)])
    # someone else deletes one of them after the plan
    c = fake.client()
    c.subscription.delete(RG, SVC, "apimon-bob", if_match="*")
    c.close()
    report = apply_changes(run.provider, run.changes.changes, run.live)
    run.provider.close()
    assert not report.failed
    assert {o.change.id: o.message for o in report.outcomes} == {
        "acme": "deleted (key revoked)", "bob": "deleted (key revoked)", "imported": "deleted (key revoked)"}
    assert not [s for s in fake.subscriptions if s.startswith("apimon-")]


# ------------------------------------------------------------------------------------------------ deletion safety


def test_product_with_unowned_subscription_is_not_deleted(plan, fake):
    converged(plan)
    c = fake.client()
    c.subscription.create_or_update(RG, SVC, "partner-x", SubscriptionCreateParameters(
        scope="/products/pro", display_name="Partner X", state="active"))
    c.close()
    text = plan.read_text().split("  pro:")[0] + "subscribers:\n  bob: {product: free}\n"
    write_plan(plan, text)
    run, report = apply(plan)
    assert any("product pro will not be deleted" in w and "partner-x" in w for w in run.changes.warnings)
    failed = report.failed[0]
    assert failed.change.id == "pro" and "partner-x" in failed.message and "apimon does not own" in failed.message
    assert "pro" in fake.products and "partner-x" in fake.subscriptions
    assert "apimon-acme" not in fake.subscriptions  # its own subscriptions went first
    c = fake.client()
    c.subscription.delete(RG, SVC, "partner-x", if_match="*")
    c.close()
    converged(plan)


# ------------------------------------------------------------------------------------------------ moves


def test_move_subscriber_keeps_keys(plan, fake):
    converged(plan)
    keys = fake.subscriptions["apimon-acme"]["keys"]
    write_plan(plan, plan.read_text().replace("acme: {product: pro", "acme: {product: free"))
    _, report = apply(plan)
    assert report.outcomes[0].message == "updated (moved to product free, keys kept)"
    assert fake.subscriptions["apimon-acme"]["keys"] == keys
    assert fake.subscriptions["apimon-acme"]["props"]["scope"].endswith("/products/free")
    assert changes_of(plan) == []


def test_move_falls_back_to_recreate_with_same_keys(plan, fake):
    converged(plan)
    keys = fake.subscriptions["apimon-acme"]["keys"]
    write_plan(plan, plan.read_text().replace("acme: {product: pro", "acme: {product: free"))
    fake.inject(method="PATCH", path_regex=r"/subscriptions/apimon-acme$", status=400, code="ValidationError",
                message="Subscription scope cannot be changed.")
    _, report = apply(plan)
    msg = report.outcomes[0].message
    assert report.outcomes[0].ok
    assert "recreating subscription apimon-acme with the same primary and secondary keys" in msg
    assert "scope cannot be changed" in msg
    assert fake.subscriptions["apimon-acme"]["keys"] == keys
    assert fake.subscriptions["apimon-acme"]["props"]["state"] == "active"
    assert changes_of(plan) == []


# ------------------------------------------------------------------------------------------------ adopt, checks, 404


def test_adopt_product_but_not_a_foreign_subscription(plan, fake):
    c = fake.client()
    c.product.create_or_update(RG, SVC, "shop", ProductContract(display_name="Shop", state="notPublished"))
    c.subscription.create_or_update(RG, SVC, "carol", SubscriptionCreateParameters(
        scope="/products/shop", display_name="Carol", state="active"))
    c.close()
    text = plan.read_text().replace("products:\n", "products:\n  shop:\n    display_name: Shop\n"
                                                  "    apis: [orders]\n    rate_limit: {rate: 2, burst: 2}\n", 1)
    write_plan(plan, text + "  carol: {product: shop}\n")
    run = planned(plan)
    run.provider.close()
    # the product differs from the plan: a conflict; the foreign subscription already matches: only a note
    assert len(run.changes.conflicts) == 1 and "product shop exists on the gateway" in run.changes.conflicts[0]
    assert any(n.startswith("subscriber carol matches the plan") for n in run.changes.notes)
    run = make_plan([str(plan)], adopt=True)
    adopted = [c for c in run.changes.changes if c.adopt]
    assert [c.id for c in adopted] == ["shop", "carol"]
    report = apply_changes(run.provider, adopted, run.live)
    run.provider.close()
    assert report.outcomes[0].ok
    assert report.outcomes[0].message == ("adopted (properties, tagged apimon-managed, "
                                          "policy (rate-limit 2/s), API links)")
    assert not report.outcomes[1].ok and "cannot be adopted" in report.outcomes[1].message
    assert fake.products["shop"]["props"]["state"] == "published"
    assert "apimon-managed" in fake.product_tags["shop"] and fake.product_apis["shop"] == ["orders"]
    assert fake.subscriptions["carol"]["props"]["scope"].endswith("/products/shop")


def test_unknown_api_is_a_plan_time_error(plan, fake):
    write_plan(plan, plan.read_text().replace("apis: [petstore, orders]", "apis: [petstore, ordres]"))
    with pytest.raises(ProviderError) as exc:
        make_plan([str(plan)])
    assert "products.pro.apis: API 'ordres' does not exist in API Management service apim" in str(exc.value)
    assert "orders" in str(exc.value)


def test_missing_service_is_a_clear_error(fake, tmp_path):
    path = write_plan(tmp_path / "p.yaml", PLAN.format(url=fake.base_url).replace("service: apim", "service: nope"))
    with pytest.raises(ProviderError) as exc:
        make_plan([str(path)])
    assert "API Management service 'nope' was not found in resource group 'rg'" in str(exc.value)


def test_wrong_token_is_a_clear_error(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("APIMON_AZURE_TOKEN", " ")
    path = write_plan(tmp_path / "p.yaml", PLAN.format(url=fake.base_url))
    with pytest.raises(ProviderError) as exc:
        make_plan([str(path)])
    assert "Azure did not accept the credentials" in str(exc.value)


# ------------------------------------------------------------------------------------------------ paging, retries


def test_paging_many_pages_at_any_concurrency(plan, fake, monkeypatch):
    monkeypatch.setattr(azure_paging, "PAGE_SIZE", 4)
    for i in range(6):
        fake.add_api(f"api{i}")
    products = "".join(f"  p{i:02d}: {{display_name: P{i}, apis: [petstore, api0, api1, api2, api3, api4, api5]}}\n"
                       for i in range(13))
    subs = "".join(f"  s{i:02d}: {{product: p{i % 13:02d}}}\n" for i in range(23))
    write_plan(plan, plan.read_text().replace("products:\n", "products:\n" + products).replace(
        "subscribers:\n", "subscribers:\n" + subs))
    converged(plan)
    for concurrency in ("1", "3", "8"):
        monkeypatch.setenv("APIMON_AZURE_CONCURRENCY", concurrency)
        fake.reset_requests()
        run = planned(plan)
        run.provider.close()
        assert run.changes.changes == []
        assert len(run.live.products) == 15 and len(run.live.subscribers) == 26
        assert run.live.products["p03"].apis == tuple(sorted(["petstore"] + [f"api{i}" for i in range(6)]))
        # 8 APIs < 15 products: links are listed per API, paged 4 at a time with $skip
        skips = sorted(int(q.get("$skip", 0)) for m, p, q in fake.requests if p.endswith("/apis/petstore/products"))
        assert skips[:4] == [0, 4, 8, 12]
        assert not [p for m, p, q in fake.requests if p.endswith("/products/p03/apis")]
    for i in range(6, 30):
        fake.add_api(f"api{i}")  # now more APIs than products: links are listed per product
    fake.reset_requests()
    run = planned(plan)
    run.provider.close()
    assert run.changes.changes == [] and len(run.live.products) == 15
    link_pages = [q for m, p, q in fake.requests if p.endswith("/products/p03/apis")]
    assert len(link_pages) == 2 and link_pages[1].get("$skip") == "4"  # the SDK followed nextLink


def test_paged_list_follows_next_links_when_the_service_pages_smaller():
    """A service that caps pages below $top: the reader falls back to nextLink and loses nothing."""
    data = list(range(23))

    class Pager:
        def __init__(self, top=None, skip=None):
            self.skip = skip or 0

        def by_page(self, continuation_token=None):
            start = int(continuation_token) if continuation_token else self.skip
            outer = self

            class Pages:
                continuation_token = None

                def __next__(self):
                    chunk = data[start:start + 3]  # the service's own page size: 3
                    self.continuation_token = str(start + 3) if start + 3 < len(data) else None
                    return iter(chunk)
            del outer
            return Pages()

    from concurrent.futures import ThreadPoolExecutor

    for ahead in (1, 4):
        with ThreadPoolExecutor(ahead) as pool:
            sched = Scheduler(pool)
            got = []
            PagedList(sched, Pager, ahead, got.extend).start()
            sched.run()
        assert got == data


def test_throttling_and_server_errors_are_retried(plan, fake, monkeypatch):
    fake.inject(method="GET", path_regex=r"/productsByTags$", status=429, times=2, retry_after=0.2)
    fake.inject(method="GET", path_regex=r"/subscriptions$", status=503, times=1)
    fake.inject(method="PUT", path_regex=r"/subscriptions/apimon-acme$", status=500, times=2)
    started = time.monotonic()
    _, report = apply(plan)
    assert time.monotonic() - started >= 0.4  # Retry-After honoured twice
    assert not report.failed
    puts = [p for m, p, q in fake.requests if m == "PUT" and p.endswith("/subscriptions/apimon-acme")]
    assert len(puts) == 3
    assert changes_of(plan) == []


def test_retries_are_bounded(plan, fake, monkeypatch):
    monkeypatch.setenv("APIMON_AZURE_MAX_RETRY_WAIT", "1")
    fake.inject(method="GET", path_regex=r"/productsByTags$", status=429, times=1, retry_after=30)
    started = time.monotonic()
    with pytest.raises(ProviderError) as exc:
        make_plan([str(plan)])
    assert time.monotonic() - started < 5
    assert "HTTP 429" in str(exc.value) and "asks to wait 30" in str(exc.value)

    fake.inject(method="PUT", path_regex=r"/products/free$", status=503, times=None)
    _, report = apply(plan)
    fake.clear_faults()
    assert report.failed and "HTTP 503" in report.failed[0].message
    assert len([1 for m, p, q in fake.requests if m == "PUT" and p.endswith("/products/free")]) == 5


def test_reads_run_at_bounded_concurrency(plan, fake, monkeypatch):
    converged(plan)
    fake.latency = 0.02
    in_flight, peak, lock = [0], [0], threading.Lock()
    original = fake._dispatch

    def counting(req):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            return original(req)
        finally:
            with lock:
                in_flight[0] -= 1

    fake._dispatch = counting
    for concurrency, low, high in (("1", 1, 1), ("3", 2, 3)):
        monkeypatch.setenv("APIMON_AZURE_CONCURRENCY", concurrency)
        peak[0] = 0
        planned(plan).provider.close()
        assert low <= peak[0] <= high


# ------------------------------------------------------------------------------------------------ keys, usage, import


def test_reveal_key_and_usage(plan, fake):
    converged(plan)
    desired = make_plan([str(plan)])
    provider = desired.provider
    assert provider.reveal_key("imported") == IMPORTED_KEY
    assert provider.reveal_key("nobody") is None
    day1 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    fake.record_calls("apimon-acme", "pro", day1 + dt.timedelta(hours=1), success=5, blocked=1, failed=2, other=1)
    fake.record_calls("apimon-acme", "pro", day1 + dt.timedelta(hours=23, minutes=50), success=3)
    fake.record_calls("apimon-acme", "pro", day1 + dt.timedelta(days=1, minutes=5), success=7)
    fake.record_calls("apimon-bob", "free", day1 + dt.timedelta(days=1, hours=3), blocked=4)
    fake.record_calls("legacy-alice", "legacy", day1 + dt.timedelta(hours=2), success=100)  # not apimon's
    fake.record_calls("apimon-acme", "pro", day1 + dt.timedelta(days=5), success=1000)  # out of range
    rows = list(provider.pull_usage(dt.date(2026, 3, 1), dt.date(2026, 3, 2)))
    provider.close()
    table = {(r.subscriber, r.product, r.day, r.metric): r.count for r in rows}
    assert table[("acme", "pro", "2026-03-01", "success")] == 8
    assert table[("acme", "pro", "2026-03-01", "total")] == 12
    assert table[("acme", "pro", "2026-03-01", "blocked")] == 1
    assert table[("acme", "pro", "2026-03-02", "success")] == 7
    assert table[("bob", "free", "2026-03-02", "blocked")] == 4
    assert {r.subscriber for r in rows} == {"acme", "bob"}
    assert len(rows) == 15  # 3 subscriber-days x 5 metrics, no empty days


def test_export_plan_round_trips(plan, fake):
    converged(plan)
    desired = DesiredState(Target("azure", {"subscription_id": "sub-1", "resource_group": "rg", "service": "apim",
                                            "cloud": "public", "endpoint": fake.base_url}), Billing(), {}, {})
    with AzureProvider(desired) as p:
        exported = p.export_plan()
        owned = p.export_plan(include_unmanaged=False)
    assert exported["target"] == {"provider": "azure", "azure": {
        "subscription_id": "sub-1", "resource_group": "rg", "service": "apim", "endpoint": fake.base_url}}
    assert sorted(p.id for p in exported["products"]) == ["free", "legacy", "pro"]  # unmanaged too, to adopt
    assert sorted(p.id for p in owned["products"]) == ["free", "pro"]
    assert sorted(s.id for s in exported["subscribers"]) == ["acme", "bob", "imported"]


def test_settings_and_stores(fake, monkeypatch):
    def provider(**settings):
        base = {"subscription_id": "s", "resource_group": "g", "service": "n", "cloud": "public", "endpoint": None}
        return AzureProvider(DesiredState(Target("azure", {**base, **settings}), Billing(), {}, {}))

    assert provider().base_url == "https://management.azure.com"
    assert provider(cloud="china").base_url == "https://management.chinacloudapi.cn"
    assert provider(cloud="usgovernment").base_url == "https://management.usgovcloudapi.net"
    assert provider(endpoint="http://127.0.0.1:1/").base_url == "http://127.0.0.1:1"
    assert provider().target_id == "azure:s/g/n"
    p = provider()
    assert not p.stores("product", "pricing.fee") and not p.stores("product", "rate_limit.burst")
    assert p.stores("product", "rate_limit.rate") and p.stores("product", "apis")
    assert not p.stores("subscriber", "email") and not p.stores("subscriber", "metadata.customer_id")
    assert p.stores("subscriber", "enabled") and p.stores("subscriber", "product")
    with pytest.raises(ProviderError):
        provider(cloud="moon")
    # without APIMON_AZURE_TOKEN: DefaultAzureCredential, token scope of the cloud, endpoint as given
    monkeypatch.delenv("APIMON_AZURE_TOKEN")
    china = provider(cloud="china", endpoint="https://arm.example.test")
    assert type(china.client._config.credential).__name__ == "DefaultAzureCredential"
    assert china.client._config.credential_scopes == ["https://management.chinacloudapi.cn/.default"]
    assert china.client._client._base_url == "https://arm.example.test"
    china.close()
    monkeypatch.setenv("APIMON_AZURE_CONCURRENCY", "0")
    with pytest.raises(ProviderError, match="APIMON_AZURE_CONCURRENCY must be >= 1"):
        provider()


def test_diff_uses_provider_stores(plan, fake):
    converged(plan)
    run = make_plan([str(plan)])
    cs = compute_changes(run.loaded.desired, run.live, stores=run.provider.stores)
    run.provider.close()
    assert cs.changes == []


def test_service_without_products_by_tags_is_read_from_the_product_list(plan, fake):
    converged(plan)
    fake.inject(method="GET", path_regex=r"/productsByTags$", status=404, times=None)
    fake.reset_requests()
    run = planned(plan)
    run.provider.close()
    fake.clear_faults()
    assert run.changes.empty and not run.changes.conflicts
    assert {u.name for u in run.changes.unmanaged if u.kind == "product"} == {"legacy"}
    paths = [p for _, p, _ in fake.requests]
    assert any(p.endswith("/products") for p in paths) and any(p.endswith("/tags") for p in paths)


def test_make_plan_closes_the_provider_when_reading_fails(plan, fake):
    # defect 3: a read that raised left the provider open (its reader threads and HTTP session)
    fake.inject(method="GET", path_regex=r"/subscriptions$", status=403, code="AuthorizationFailed", times=None)
    with pytest.raises(ProviderError, match="HTTP 403"):
        make_plan([str(plan)])
    fake.clear_faults()
    assert not [t.name for t in threading.enumerate() if t.name.startswith("apimon-azure")]


def test_plan_warnings_name_the_provider_in_one_form(plan, fake):
    # defect 4: Apigee prefixed "warning: ", Azure did not; every provider warning is `warning: <provider>: ...`
    converged(plan)
    c = fake.client()
    pro_policy = fake.policies["pro"]["value"].replace(
        "<base />\r\n\t\t<rate-limit", "<base />\r\n\t\t<ip-filter action=\"forbid\" />\r\n\t\t<rate-limit")
    c.product_policy.create_or_update(RG, SVC, "pro", "policy", PolicyContract(value=pro_policy))
    c.close()
    write_plan(plan, plan.read_text().replace("rate: 50, burst: 50", "rate: 70, burst: 70"))
    run = planned(plan)
    run.provider.close()
    provider_warnings = [w for w in run.changes.warnings if ": warning: " not in w]  # not the plan file's
    assert provider_warnings and all(w.startswith("warning: azure: product pro: ") for w in provider_warnings)
