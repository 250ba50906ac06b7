from datetime import date
from decimal import Decimal as D

import pytest

from apimon_cli.billing.invoice import ComparisonRow, Invoice, build_invoices, compare_invoices
from apimon_cli.billing.periods import parse_period
from apimon_cli.model import Billing, DesiredState, Pricing, Product, Subscriber, Target, Tier

NOV = parse_period("2026-11", "month")

STARTER = Pricing(model="per_unit", fee=D("29.00"), included=10_000, unit_price=D("0.001"))
PRO = Pricing(
    model="graduated",
    fee=D("199.00"),
    setup_fee=D("100.00"),
    tiers=(Tier(1_000_000, D("0.0008")), Tier(5_000_000, D("0.0005")), Tier(None, D("0.0003"))),
    minimum=D("250.00"),
)


def plan(subscribers, products=None, currency="USD"):
    products = products or {"starter": STARTER, "pro": PRO}
    return DesiredState(
        target=Target("local", {}),
        billing=Billing(currency=currency),
        products={pid: Product(pid, pid.title(), pricing=p) for pid, p in products.items()},
        subscribers={s.id: s for s in subscribers},
    )


def kinds(invoice):
    return [(line.line_type, str(line.amount)) for line in invoice.lines]


def test_one_invoice_per_subscriber_sorted_with_ids_and_metadata():
    desired = plan(
        [
            Subscriber("zeta", "starter"),
            Subscriber("acme", "pro", metadata=(("customer_id", "cus_123"),)),
            Subscriber("beta", "starter"),
        ]
    )
    usage = {("acme", "pro"): 3_000_000, ("zeta", "starter"): 25_000, ("ghost", "starter"): 99}
    first = {"acme": date(2026, 1, 5), "beta": date(2026, 2, 1), "zeta": date(2026, 3, 1)}
    invoices = build_invoices(desired, usage, NOV, first)
    # ghost left the plan but has billable usage in November: invoiced too (issue 11)
    assert [inv.invoice_id for inv in invoices] == ["2026-11-acme", "2026-11-beta", "2026-11-ghost", "2026-11-zeta"]
    acme, beta, ghost, zeta = invoices
    assert [inv.in_plan for inv in invoices] == [True, True, False, True]
    assert (acme.period_start, acme.period_end) == (date(2026, 11, 1), date(2026, 11, 30))
    assert (acme.subscriber, acme.product, acme.currency) == ("acme", "pro", "USD")
    assert acme.metadata == {"customer_id": "cus_123"} and beta.metadata == {}
    # 199 + 1,000,000 x 0.0008 + 2,000,000 x 0.0005
    assert kinds(acme) == [("fee", "199.00"), ("usage", "800.00"), ("usage", "1000.00")]
    assert acme.total == D("1999.00")
    # no usage: the fee is still due, the usage line shows 0
    assert kinds(beta) == [("fee", "29.00"), ("usage", "0.00")]
    # 25,000 - 10,000 included = 15,000 x 0.001
    assert kinds(zeta) == [("fee", "29.00"), ("usage", "15.00")]
    assert zeta.total == D("44.00")


def test_removed_subscriber_is_invoiced_by_the_product_recorded_with_its_usage():
    # "gone" churned during November: its last partial period is billed, as if still on starter
    desired = plan([Subscriber("acme", "pro")])
    usage = {("acme", "pro"): 0, ("gone", "starter"): 25_000, ("idle", "starter"): 0}
    invoices = build_invoices(desired, usage, NOV, {"acme": date(2026, 1, 1), "gone": date(2026, 2, 1)})
    assert [inv.subscriber for inv in invoices] == ["acme", "gone"]  # no usage, no invoice for "idle"
    gone = invoices[1]
    assert (gone.invoice_id, gone.product, gone.in_plan, gone.metadata) == ("2026-11-gone", "starter", False, {})
    assert kinds(gone) == [("fee", "29.00"), ("usage", "15.00")] and not gone.unpriced


def test_removed_subscriber_on_several_products_uses_the_recorded_one():
    desired = plan([Subscriber("acme", "pro")])
    usage = {("gone", "starter"): 20_000, ("gone", "pro"): 1_000, ("gone", "legacy"): 500}
    first = {"gone": date(2026, 1, 1)}
    (_, inv) = build_invoices(desired, usage, NOV, first, {"gone": "starter"})
    assert inv.product == "starter"
    # starter: 20,500 (legacy joins it) - 10,000 included; pro's usage in its own line, pro's fee not charged
    assert kinds(inv) == [("fee", "29.00"), ("usage", "10.50"), ("usage", "0.80")]
    assert inv.lines[-1].description.startswith("pro: ")
    (_, inv) = build_invoices(desired, usage, NOV, first)  # nothing recorded: the most used priced product
    assert inv.product == "starter"


def test_removed_subscriber_on_a_removed_product_is_unpriced():
    desired = plan([Subscriber("acme", "pro")])
    (_, inv) = build_invoices(desired, {("gone", "legacy"): 1_234, ("gone", "older"): 5}, NOV, {})
    assert inv.product == "legacy" and not inv.in_plan
    assert [(x.line_type, x.quantity, str(x.amount)) for x in inv.unpriced] == [
        ("unpriced", 1_234, "0.00"), ("unpriced", 5, "0.00")]
    assert inv.unpriced[0].description == "Unpriced usage: product legacy is not in the plan"
    assert inv.total == D("0.00")


@pytest.mark.parametrize(
    ("first_day", "charged"),
    [
        (date(2026, 11, 1), True),  # first usage in the window
        (date(2026, 11, 30), True),
        (date(2026, 10, 31), False),  # an earlier window had it
        (date(2026, 12, 1), False),  # not a customer yet in November
        (None, False),  # no usage recorded at all: not started; charged with the first usage
    ],
)
def test_setup_fee_in_window_of_first_usage(first_day, charged):
    desired = plan([Subscriber("acme", "pro")])
    first = {} if first_day is None else {"acme": first_day}
    (inv,) = build_invoices(desired, {("acme", "pro"): 1_000_000}, NOV, first)
    types = [line.line_type for line in inv.lines]
    assert ("setup_fee" in types) is charged
    assert inv.total == (D("1099.00") if charged else D("999.00"))


def test_disabled_subscriber_is_still_invoiced():
    desired = plan([Subscriber("acme", "starter", enabled=False)])
    (inv,) = build_invoices(desired, {("acme", "starter"): 20_000}, NOV, {"acme": date(2026, 1, 1)})
    assert kinds(inv) == [("fee", "29.00"), ("usage", "10.00")]


def test_usage_under_previous_product_priced_under_its_pricing():
    # acme moved from starter to pro during November; starter is still in the plan
    desired = plan([Subscriber("acme", "pro")])
    usage = {("acme", "starter"): 20_000, ("acme", "pro"): 2_000_000}
    (inv,) = build_invoices(desired, usage, NOV, {"acme": date(2026, 1, 1)})
    assert inv.product == "pro"
    assert kinds(inv) == [
        ("fee", "199.00"),
        ("usage", "800.00"),
        ("usage", "500.00"),
        ("usage", "10.00"),  # starter: (20,000 - 10,000 included) x 0.001, no starter fee
    ]
    assert inv.lines[-1].description == "starter: Usage @ 0.001 (20,000 used, 10,000 included)"
    assert inv.total == D("1509.00")


def test_previous_product_usage_counts_toward_current_minimum():
    desired = plan([Subscriber("acme", "pro")])
    usage = {("acme", "starter"): 40_000}
    (inv,) = build_invoices(desired, usage, NOV, {"acme": date(2026, 1, 1)})
    # 199 + pro usage 0 + starter 30.00 = 229 -> minimum adds 21
    assert kinds(inv) == [("fee", "199.00"), ("usage", "0.00"), ("usage", "30.00"), ("minimum", "21.00")]
    assert inv.total == D("250.00")


def test_usage_under_removed_product_joins_current_product():
    desired = plan([Subscriber("acme", "starter")])
    usage = {("acme", "starter"): 5_000, ("acme", "legacy"): 7_000, ("acme", "pro"): 0}
    (inv,) = build_invoices(desired, usage, NOV, {"acme": date(2026, 1, 1)})
    # 12,000 - 10,000 included = 2,000 x 0.001; zero usage under pro adds nothing (no first-tier charges)
    assert kinds(inv) == [("fee", "29.00"), ("usage", "2.00")]


def test_maximum_applies_to_the_whole_invoice():
    capped = Pricing(model="per_unit", unit_price=D(1), maximum=D(100))
    desired = plan(
        [Subscriber("acme", "capped")], {"capped": capped, "old": Pricing(model="per_unit", unit_price=D(1))}
    )
    (inv,) = build_invoices(
        desired, {("acme", "capped"): 60, ("acme", "old"): 70}, NOV, {"acme": date(2026, 1, 1)}
    )
    assert kinds(inv) == [("usage", "60.00"), ("usage", "70.00"), ("maximum", "-30.00")]
    assert inv.total == D("100.00")


def test_total_is_sum_of_rounded_lines():
    half_cent = Pricing(
        model="graduated", tiers=(Tier(1, D("0.005")), Tier(2, D("0.005")), Tier(None, D("0.005")))
    )
    desired = plan([Subscriber("acme", "p")], {"p": half_cent})
    (inv,) = build_invoices(desired, {("acme", "p"): 3}, NOV, {"acme": date(2026, 1, 1)})
    assert [str(line.amount) for line in inv.lines] == ["0.01", "0.01", "0.01"]
    assert inv.total == sum(line.amount for line in inv.lines) == D("0.03")  # exact 0.015 would be 0.02


def test_currency_of_plan_is_used():
    desired = plan([Subscriber("acme", "p")], {"p": Pricing(model="per_unit", unit_price=D("0.15"))}, "JPY")
    (inv,) = build_invoices(desired, {("acme", "p"): 10}, NOV, {})
    assert inv.currency == "JPY" and str(inv.total) == "2"
    assert all(line.currency == "JPY" for line in inv.lines)


def test_empty_invoice_total_has_currency_exponent():
    inv = Invoice("2026-11-a", NOV.start, NOV.end, "a", "p", "BHD", [], {})
    assert str(inv.total) == "0.000"


def test_errors():
    with pytest.raises(ValueError, match="'missing', which is not in the plan"):
        build_invoices(plan([Subscriber("acme", "missing")]), {}, NOV, {})
    with pytest.raises(ValueError, match="currency"):
        build_invoices(plan([Subscriber("acme", "pro")], currency="ZZZ"), {}, NOV, {})


def test_compare_invoices():
    subs = [Subscriber("acme", "p"), Subscriber("beta", "p")]
    usage = {("acme", "p"): 100_000, ("beta", "p"): 1_234}
    old = build_invoices(plan(subs, {"p": Pricing(model="per_unit", unit_price=D("0.001"))}), usage, NOV, {})
    # beta invoiced on one side only (a removed subscriber with usage is invoiced too, so drop its usage)
    new = build_invoices(
        plan(subs[:1], {"p": Pricing(model="per_unit", fee=D(5), unit_price=D("0.0008"))}),
        {("acme", "p"): 100_000}, NOV, {}
    )
    assert compare_invoices(old, new) == [
        ComparisonRow("acme", D("100.00"), D("85.00"), D("-15.00"), "USD"),
        ComparisonRow("beta", D("1.23"), D("0.00"), D("-1.23"), "USD"),  # 1.234 -> 1.23; not in new plan
    ]
    assert compare_invoices([], []) == []


def test_compare_rejects_mixed_currencies_and_duplicates():
    subs = [Subscriber("acme", "p")]
    p = {"p": Pricing(model="per_unit", unit_price=D(1))}
    usd = build_invoices(plan(subs, p), {}, NOV, {})
    eur = build_invoices(plan(subs, p, "EUR"), {}, NOV, {})
    with pytest.raises(ValueError, match="different currencies: EUR, USD"):
        compare_invoices(usd, eur)
    with pytest.raises(ValueError, match="twice"):
        compare_invoices(usd + usd, usd)
