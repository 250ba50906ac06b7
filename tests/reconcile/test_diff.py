"""The diff engine: desired vs live -> ordered, field-level changes."""

from dataclasses import replace
from decimal import Decimal

from apimon_cli.model import (
    Billing,
    DesiredState,
    LiveState,
    Pricing,
    Product,
    Quota,
    RateLimit,
    Subscriber,
    Target,
    Tier,
    Unmanaged,
)
from apimon_cli.reconcile import SENSITIVE, compute_changes, key_fingerprint, live_fingerprint
from apimon_cli.reconcile.changes import Change, FieldChange, changeset_to_json
from apimon_cli.reconcile.diff import EveryField, Replacement, merge_changes


def product(pid="pro", **kw):
    base = dict(id=pid, display_name=pid.title(), apis=("petstore",), rate_limit=RateLimit(50, 100),
                quota=Quota(1000, "month"), pricing=Pricing(model="per_unit", unit_price=Decimal("0.001")))
    base.update(kw)
    return Product(**base)


def desired(products=(), subscribers=()):
    return DesiredState(Target("local", {}), Billing(), {p.id: p for p in products},
                        {s.id: s for s in subscribers})


def test_create_everything_products_before_subscribers():
    d = desired([product("free"), product("pro")], [Subscriber("acme", "pro"), Subscriber("bob", "free")])
    cs = compute_changes(d, LiveState())
    assert [(c.action, c.kind, c.id) for c in cs.changes] == [
        ("create", "product", "free"), ("create", "product", "pro"),
        ("create", "subscriber", "acme"), ("create", "subscriber", "bob")]
    assert cs.summary == {"creating": 4, "updating": 0, "deleting": 0, "replacing": 0, "total": 4}


def test_no_op_when_equal_and_money_written_differently():
    want = product(pricing=Pricing(model="flat", fee=Decimal("29.00")))
    have = product(pricing=Pricing(model="flat", fee=Decimal("29")))
    cs = compute_changes(desired([want]), LiveState(products={"pro": have}))
    assert cs.empty


def test_update_lists_only_changed_fields_before_after():
    have = product()
    want = product(rate_limit=RateLimit(50, 200), description="now with docs")
    cs = compute_changes(desired([want]), LiveState(products={"pro": have}))
    (change,) = cs.changes
    assert change.action == "update"
    assert [(f.field, f.before, f.after) for f in change.fields] == [
        ("description", "", "now with docs"), ("rate_limit.burst", 100, 200)]


def test_tier_change_is_one_field():
    have = product(pricing=Pricing(model="graduated", tiers=(Tier(1000, Decimal("0.1")), Tier(None, Decimal("0.05")))))
    want = product(pricing=Pricing(model="graduated", tiers=(Tier(2000, Decimal("0.1")), Tier(None, Decimal("0.05")))))
    (change,) = compute_changes(desired([want]), LiveState(products={"pro": have})).changes
    assert [f.field for f in change.fields] == ["pricing.tiers"]
    assert "up_to=1000 " in change.fields[0].before and "up_to=2000 " in change.fields[0].after


def test_deletes_subscribers_before_products_and_after_creates():
    live = LiveState(products={"old": product("old"), "pro": product("pro")},
                     subscribers={"gone": Subscriber("gone", "old"), "acme": Subscriber("acme", "old")})
    d = desired([product("pro")], [Subscriber("acme", "pro"), Subscriber("new", "pro")])
    cs = compute_changes(d, live)
    assert [(c.action, c.kind, c.id) for c in cs.changes] == [
        ("create", "subscriber", "new"), ("update", "subscriber", "acme"),
        ("delete", "subscriber", "gone"), ("delete", "product", "old")]


def test_unmanaged_resources_are_reported_never_changed_or_deleted():
    live = LiveState(unmanaged=[Unmanaged("product", "legacy"), Unmanaged("subscriber", "ops-key")])
    cs = compute_changes(desired([product("pro")]), live)
    assert [(c.action, c.id) for c in cs.changes] == [("create", "pro")]
    assert {u.name for u in cs.unmanaged} == {"legacy", "ops-key"}


def test_desired_name_taken_by_unmanaged_is_a_conflict_unless_adopting():
    legacy = product("pro", display_name="Old Pro")
    live = LiveState(unmanaged=[Unmanaged("product", "pro", "", legacy)])
    cs = compute_changes(desired([product("pro")]), live)
    assert cs.changes == [] and "pro" in cs.conflicts[0] and "(display_name differ)" in cs.conflicts[0]
    cs = compute_changes(desired([product("pro")]), live, adopt=True)
    (change,) = cs.changes
    assert change.adopt and change.action == "update"
    assert [(f.field, f.before, f.after) for f in change.fields] == [
        ("managed", False, True), ("display_name", "Old Pro", "Pro")]


def test_fields_the_provider_cannot_store_are_never_a_diff():
    have = product(pricing=Pricing())  # e.g. AWS keeps no pricing
    want = product()
    stores = lambda kind, f: not f.startswith("pricing.")  # noqa: E731
    assert compute_changes(desired([want]), LiveState(products={"pro": have}), stores=stores).empty
    assert not compute_changes(desired([want]), LiveState(products={"pro": have})).empty


def test_key_values_are_compared_by_fingerprint_and_never_exposed():
    secret = "k" * 40
    live = LiveState(products={"pro": product()}, subscribers={"acme": Subscriber("acme", "pro")},
                     key_fingerprints={"acme": key_fingerprint("other-value-000000000")})
    d = desired([product()], [Subscriber("acme", "pro", key_value=secret)])
    (change,) = compute_changes(d, live).changes
    assert [(f.field, f.before, f.after) for f in change.fields] == [("key", SENSITIVE, SENSITIVE)]
    assert secret not in repr(change)
    live.key_fingerprints["acme"] = key_fingerprint(secret)
    assert compute_changes(d, live).empty


def test_live_fingerprint_moves_with_the_gateway():
    a = LiveState(products={"pro": product()})
    b = LiveState(products={"pro": product(rate_limit=RateLimit(50, 101))})
    assert live_fingerprint(a) == live_fingerprint(LiveState(products={"pro": product()}))
    assert live_fingerprint(a) != live_fingerprint(b)


def test_unmanaged_resource_that_matches_the_plan_is_no_change_but_noted():
    # what `apimon import` produces: the plan describes resources apimon does not own yet
    live = LiveState(unmanaged=[Unmanaged("product", "pro", "", product("pro")),
                                Unmanaged("subscriber", "acme", "", Subscriber("acme", "pro"))])
    cs = compute_changes(desired([product("pro")], [Subscriber("acme", "pro")]), live)
    assert cs.empty and cs.conflicts == []
    assert [n.split(" matches")[0] for n in cs.notes] == ["product pro", "subscriber acme"]
    adopting = compute_changes(desired([product("pro")], [Subscriber("acme", "pro")]), live, adopt=True)
    assert [(c.id, [f.field for f in c.fields]) for c in adopting.changes] == [("pro", ["managed"]),
                                                                               ("acme", ["managed"])]


# ---------------------------------------------------------------- fields compared by meaning


def test_text_is_compared_exactly_even_when_it_holds_numbers():
    # a description changed from "Plan v1.10" to "Plan v1.1" is a real change (it used to be rewritten away)
    have = product(description="Plan v1.10")
    want = product(description="Plan v1.1")
    (change,) = compute_changes(desired([want]), LiveState(products={"pro": have})).changes
    assert [(f.field, f.before, f.after) for f in change.fields] == [("description", "Plan v1.10", "Plan v1.1")]
    assert compute_changes(desired([product(display_name="Tier 2.50")]),
                           LiveState(products={"pro": product(display_name="Tier 2.5")})).changes


def test_money_is_compared_as_decimal_in_every_field_and_tier():
    have = product(pricing=Pricing(model="graduated", fee=Decimal("29"), tiers=(
        Tier(1000, Decimal("0.10"), Decimal("5")), Tier(None, Decimal("0.05")))))
    want = product(pricing=Pricing(model="graduated", fee=Decimal("29.000"), tiers=(
        Tier(1000, Decimal("0.1"), Decimal("5.00")), Tier(None, Decimal("0.050")))))
    assert compute_changes(desired([want]), LiveState(products={"pro": have})).empty
    cheaper = product(pricing=Pricing(model="graduated", fee=Decimal("29"), tiers=(
        Tier(1000, Decimal("0.09"), Decimal("5")), Tier(None, Decimal("0.05")))))
    (change,) = compute_changes(desired([cheaper]), LiveState(products={"pro": have})).changes
    assert [f.field for f in change.fields] == ["pricing.tiers"]
    assert "unit_price=0.10" in change.fields[0].before and "unit_price=0.09" in change.fields[0].after


def test_emails_are_compared_case_folded_and_shown_as_written():
    live = LiveState(products={"pro": product()},
                     subscribers={"acme": Subscriber("acme", "pro", "billing@acme.example")})
    assert compute_changes(desired([product()], [Subscriber("acme", "pro", "Billing@ACME.example")]), live).empty
    (change,) = compute_changes(desired([product()], [Subscriber("acme", "pro", "AP@acme.example")]), live).changes
    assert [(f.field, f.before, f.after) for f in change.fields] == [("email", "billing@acme.example",
                                                                    "AP@acme.example")]


# ---------------------------------------------------------------- provider rules: canonical, replacement


class KeysCannotChange(EveryField):
    """A gateway that cannot change a key value in place and spells API names in upper case."""

    def canonical(self, kind, resource):
        if kind == "product":
            return replace(resource, apis=tuple(a.upper() for a in resource.apis))
        return resource

    def replacement(self, kind, fields):
        if kind == "subscriber" and "key" in fields:
            return Replacement("subscriber", "key", "the gateway cannot change a key value")
        return None


def test_a_change_the_gateway_cannot_make_in_place_is_a_replacement():
    secret = "k" * 40
    live = LiveState(products={"pro": product()}, subscribers={"acme": Subscriber("acme", "pro")},
                     key_fingerprints={"acme": key_fingerprint("old-value-0000000000")})
    d = desired([product()], [Subscriber("acme", "pro", key_value=secret)])
    (change,) = compute_changes(d, live, rules=KeysCannotChange()).changes
    assert change.action == "replace" and change.reason == "the gateway cannot change a key value"
    assert change.create_before_delete
    cs = compute_changes(d, live, rules=KeysCannotChange())
    assert cs.summary == {"creating": 0, "updating": 0, "deleting": 0, "replacing": 1, "total": 1}
    doc = changeset_to_json(cs)
    assert [c["id"] for c in doc["changes"]["replacing"]] == ["acme"]
    assert doc["changes"]["replacing"][0]["reason"] == "the gateway cannot change a key value"
    # other changes stay updates
    d = desired([product()], [Subscriber("acme", "pro", enabled=False)])
    assert [c.action for c in compute_changes(d, live, rules=KeysCannotChange()).changes] == ["update"]


def test_values_are_compared_in_the_gateways_form_and_shown_in_their_own():
    live = LiveState(products={"pro": product(apis=("PETSTORE",))})
    assert compute_changes(desired([product(apis=("petstore",))]), live, rules=KeysCannotChange()).empty
    (change,) = compute_changes(desired([product(apis=("orders",))]), live, rules=KeysCannotChange()).changes
    assert [(f.field, f.before, f.after) for f in change.fields] == [("apis", "PETSTORE", "orders")]


def test_provider_field_changes_join_the_diffs_change_or_come_after_their_rank():
    live = LiveState(products={"a": product("a"), "b": product("b")}, subscribers={"s": Subscriber("s", "a")})
    d = desired([product("a", description="new"), product("b"), product("c")], [Subscriber("s", "a", enabled=False)])
    cs = compute_changes(d, live)
    merge_changes(cs, [Change("update", "product", "a", (FieldChange("x.env", "1", "2"),), d.products["a"]),
                       Change("update", "product", "b", (FieldChange("x.env", "1", "2"),), d.products["b"])])
    assert [(c.action, c.id, [f.field for f in c.fields]) for c in cs.changes] == [
        ("create", "c", ["apis", "description", "display_name", "pricing.model", "pricing.unit_price", "quota.limit",
                         "quota.period", "rate_limit.burst", "rate_limit.rate"]),
        ("update", "a", ["description", "x.env"]),
        ("update", "b", ["x.env"]),
        ("update", "s", ["enabled"])]
