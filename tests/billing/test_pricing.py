"""Hand-computed charges for every pricing model of the README (Stripe Billing's semantics)."""

from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apimon_cli.billing.pricing import charge_lines
from apimon_cli.model import Package, Pricing, Tier


def total(lines):
    return sum((line.amount for line in lines), D(0))


def lines_of(pricing, q, currency="USD", first_period=False):
    return charge_lines(pricing, q, currency, first_period=first_period)


def summary(lines):
    return [(line.line_type, line.quantity, line.unit_price, str(line.amount)) for line in lines]


# --- free and flat ---------------------------------------------------------------------------------------


def test_free_shows_usage_at_zero():
    lines = lines_of(Pricing(model="free"), 1234)
    assert summary(lines) == [("usage", 1234, None, "0.00")]
    assert lines[0].description == "Usage (free)" and lines[0].currency == "USD"


def test_free_with_fee():
    assert summary(lines_of(Pricing(model="free", fee=D(10)), 5)) == [
        ("fee", None, None, "10.00"),
        ("usage", 5, None, "0.00"),
    ]


def test_flat_is_only_the_fee():
    lines = lines_of(Pricing(model="flat", fee=D("49.99")), 1_000_000)
    assert summary(lines) == [("fee", None, None, "49.99")]
    assert lines[0].description == "Recurring fee"


# --- per_unit --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "q", "expected"),
    [
        ("0.001", 12_345, "12.35"),  # 12.345 -> half up (banker's would say 12.34)
        ("0.001", 12_344, "12.34"),
        ("0.001", 0, "0.00"),
        ("0.000000000001", 4_999_999_999, "0.00"),  # 0.004999999999
        ("0.000000000001", 5_000_000_000, "0.01"),  # 0.005 exactly
        ("0.123456789012", 1000, "123.46"),  # 123.456789012
        # 39 significant digits: a 28-digit default context would lose the cents
        ("123456789.123456789012", 10**18 + 1, "123456789123456789135456789.12"),
    ],
)
def test_per_unit(price, q, expected):
    lines = lines_of(Pricing(model="per_unit", unit_price=D(price)), q)
    assert summary(lines) == [("usage", q, D(price), expected)]
    assert lines[0].description == f"Usage @ {format(D(price), ',f')}"


def test_per_unit_with_included():
    p = Pricing(model="per_unit", unit_price=D("0.01"), included=1000)
    lines = lines_of(p, 1500)
    assert summary(lines) == [("usage", 500, D("0.01"), "5.00")]
    assert lines[0].description == "Usage @ 0.01 (1,500 used, 1,000 included)"
    # included larger than the usage: billable quantity is 0, never negative
    lines = lines_of(p, 500)
    assert summary(lines) == [("usage", 0, D("0.01"), "0.00")]
    assert lines[0].description.endswith("(500 used, 500 included)")


def test_jpy_has_no_minor_unit():
    p = Pricing(model="per_unit", unit_price=D("0.15"), fee=D(1000))
    assert summary(lines_of(p, 10, "JPY")) == [("fee", None, None, "1000"), ("usage", 10, D("0.15"), "2")]
    assert summary(lines_of(p, 9, "JPY"))[1][3] == "1"  # 1.35 -> 1


def test_bhd_has_three_decimals():
    p = Pricing(model="per_unit", unit_price=D("0.0125"))
    assert summary(lines_of(p, 3, "BHD")) == [("usage", 3, D("0.0125"), "0.038")]  # 0.0375
    assert summary(lines_of(p, 1, "BHD")) == [("usage", 1, D("0.0125"), "0.013")]  # 0.0125


# --- package ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rounding", "q", "packages", "amount"),
    [
        ("up", 12_345, 13, "6.50"),
        ("up", 12_000, 12, "6.00"),  # exact multiple: no extra package
        ("up", 12_001, 13, "6.50"),
        ("up", 1, 1, "0.50"),
        ("up", 0, 0, "0.00"),
        ("down", 12_999, 12, "6.00"),
        ("down", 13_000, 13, "6.50"),
        ("down", 999, 0, "0.00"),
    ],
)
def test_package(rounding, q, packages, amount):
    p = Pricing(model="package", package=Package(size=1000, price=D("0.50"), round=rounding))
    lines = lines_of(p, q)
    assert summary(lines) == [("usage", packages, D("0.50"), amount)]
    assert f"{packages:,} × 1,000-unit packages @ 0.50" in lines[0].description


def test_package_after_included():
    p = Pricing(model="package", included=100, package=Package(size=1000, price=D("0.50")))
    assert summary(lines_of(p, 12_100)) == [("usage", 12, D("0.50"), "6.00")]


# --- graduated -------------------------------------------------------------------------------------------

PRO = Pricing(  # the "pro" product of the README's plan-file example
    model="graduated",
    fee=D("199.00"),
    tiers=(
        Tier(up_to=1_000_000, unit_price=D("0.0008")),
        Tier(up_to=5_000_000, unit_price=D("0.0005")),
        Tier(up_to=None, unit_price=D("0.0003")),
    ),
    minimum=D("250.00"),
)


def test_graduated_at_first_boundary():
    lines = lines_of(PRO, 1_000_000)
    assert summary(lines) == [("fee", None, None, "199.00"), ("usage", 1_000_000, D("0.0008"), "800.00")]
    assert lines[1].description == "Usage 1–1,000,000 @ 0.0008"


def test_graduated_one_above_boundary():
    lines = lines_of(PRO, 1_000_001)
    assert summary(lines) == [
        ("fee", None, None, "199.00"),
        ("usage", 1_000_000, D("0.0008"), "800.00"),
        ("usage", 1, D("0.0005"), "0.00"),  # 0.0005 rounds to 0.00
    ]
    assert lines[2].description == "Usage 1,000,001–1,000,001 @ 0.0005"


def test_graduated_all_tiers():
    lines = lines_of(PRO, 7_000_000)
    assert summary(lines) == [
        ("fee", None, None, "199.00"),
        ("usage", 1_000_000, D("0.0008"), "800.00"),
        ("usage", 4_000_000, D("0.0005"), "2000.00"),
        ("usage", 2_000_000, D("0.0003"), "600.00"),
    ]
    assert [line.description for line in lines[1:]] == [
        "Usage 1–1,000,000 @ 0.0008",
        "Usage 1,000,001–5,000,000 @ 0.0005",
        "Usage 5,000,001–7,000,000 @ 0.0003",
    ]
    assert total(lines) == D("3599.00")


def test_graduated_minimum_true_up():
    lines = lines_of(PRO, 0)
    assert summary(lines) == [
        ("fee", None, None, "199.00"),
        ("usage", 0, D("0.0008"), "0.00"),
        ("minimum", None, None, "51.00"),
    ]
    assert lines[-1].description == "Minimum commitment 250.00"
    assert total(lines) == D("250.00")
    lines = lines_of(PRO, 50_000)  # 199 + 40 = 239 -> +11
    assert summary(lines)[-1] == ("minimum", None, None, "11.00")
    assert total(lines) == D("250.00")
    lines = lines_of(PRO, 63_750)  # 199 + 51 = 250 exactly: no line
    assert [line.line_type for line in lines] == ["fee", "usage"]


STRIPE_TIERS = (
    Tier(up_to=5, unit_price=D(7)),
    Tier(up_to=10, unit_price=D("6.5")),
    Tier(up_to=None, unit_price=D(6)),
)


# Stripe, "Set up tiered pricing" (https://docs.stripe.com/subscriptions/pricing-models/tiered-pricing),
# Typographic example, tiers 1-5 at 7 USD, 6-10 at 6.5 USD, 11+ at 6 USD. The page states 5 fonts cost
# 35 USD in both modes; the other graduated totals are hand-computed from the same tiers:
# 6 = 5x7 + 1x6.5; 20 = 35 + 5x6.5 + 10x6; 25 = 35 + 32.5 + 15x6.
@pytest.mark.parametrize(
    ("q", "expected", "n_lines"),
    [(1, "7.00", 1), (5, "35.00", 1), (6, "41.50", 2), (10, "67.50", 2), (11, "73.50", 3), (20, "127.50", 3),
     (25, "157.50", 3)],
)  # fmt: skip
def test_graduated_stripe_typographic(q, expected, n_lines):
    lines = lines_of(Pricing(model="graduated", tiers=STRIPE_TIERS), q)
    assert total(lines) == D(expected)
    assert len(lines) == n_lines


FLAT_FEE_TIERS = (
    Tier(up_to=100, unit_price=D(0), flat_fee=D(10)),
    Tier(up_to=1000, unit_price=D("0.05"), flat_fee=D(5)),
    Tier(up_to=None, unit_price=D("0.01")),
)


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0, ["0.00", "10.00"]),  # Stripe bills the first tier's flat fee at quantity 0
        (100, ["0.00", "10.00"]),
        (101, ["0.00", "10.00", "0.05", "5.00"]),
        (2000, ["0.00", "10.00", "45.00", "5.00", "10.00"]),
    ],
)
def test_graduated_tier_flat_fees(q, expected):
    lines = lines_of(Pricing(model="graduated", tiers=FLAT_FEE_TIERS), q)
    assert [str(line.amount) for line in lines] == expected
    assert all(line.line_type == "usage" for line in lines)
    assert lines[1].description == "Flat fee, tier 1–100" and lines[1].quantity is None


def test_graduated_flat_only_tier_and_included_above_usage():
    p = Pricing(model="graduated", tiers=(Tier(up_to=10, flat_fee=D(3)), Tier(up_to=None, unit_price=D(1))))
    assert summary(lines_of(p, 12)) == [("usage", None, None, "3.00"), ("usage", 2, D(1), "2.00")]
    assert lines_of(p, 12)[1].description == "Usage 11–12 @ 1"
    # 40 included > 12 used: quantity 0, which still reaches the first tier's flat fee
    p2 = Pricing(model="graduated", included=40, tiers=p.tiers)
    assert summary(lines_of(p2, 12)) == [("usage", None, None, "3.00")]


# --- volume ----------------------------------------------------------------------------------------------


# Stripe, same page: volume-based table (1 -> 7, 5 -> 35, 6 -> 39, 20 -> 120, 25 -> 150 USD).
@pytest.mark.parametrize(
    ("q", "expected"), [(1, "7.00"), (5, "35.00"), (6, "39.00"), (20, "120.00"), (25, "150.00")]
)
def test_volume_stripe_typographic(q, expected):
    lines = lines_of(Pricing(model="volume", tiers=STRIPE_TIERS), q)
    assert len(lines) == 1 and lines[0].quantity == q
    assert total(lines) == D(expected)


LAGO_VOLUME = (
    Tier(up_to=10_000, unit_price=D("0.0010"), flat_fee=D(10)),
    Tier(up_to=50_000, unit_price=D("0.0008"), flat_fee=D(10)),
    Tier(up_to=100_000, unit_price=D("0.0006"), flat_fee=D(10)),
    Tier(up_to=None, unit_price=D("0.0004"), flat_fee=D(10)),
)


def test_volume_lago_published_example():
    # Lago, "Volume" charge model (https://docs.getlago.com/guide/plans/charges/charge-models/volume):
    # "65,000 API calls would cost 65,000 x $0.0006 + $10 = $49."
    lines = lines_of(Pricing(model="volume", tiers=LAGO_VOLUME), 65_000)
    assert summary(lines) == [("usage", 65_000, D("0.0006"), "39.00"), ("usage", None, None, "10.00")]
    assert lines[0].description == "Usage @ 0.0006 (volume tier 50,001–100,000)"
    assert lines[1].description == "Flat fee, volume tier 50,001–100,000"
    assert total(lines) == D("49.00")


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0, "10.00"), (10_000, "20.00"), (10_001, "18.00"), (100_000, "70.00"), (100_001, "50.00")],
)
def test_volume_boundaries(q, expected):
    # 10,001 x 0.0008 = 8.0008 -> 8.00; 100,001 x 0.0004 = 40.0004 -> 40.00
    assert total(lines_of(Pricing(model="volume", tiers=LAGO_VOLUME), q)) == D(expected)


# --- stairstep -------------------------------------------------------------------------------------------

STAIRS = Pricing(
    model="stairstep",
    tiers=(
        Tier(up_to=1000, flat_fee=D(10)),
        Tier(up_to=10_000, flat_fee=D(50)),
        Tier(up_to=None, flat_fee=D(200)),
    ),
)


@pytest.mark.parametrize(
    ("q", "expected"), [(1, "10.00"), (1000, "10.00"), (1001, "50.00"), (10_000, "50.00"), (10_001, "200.00")]
)
def test_stairstep(q, expected):
    lines = lines_of(STAIRS, q)
    assert summary(lines) == [("usage", q, None, expected)]


def test_stairstep_charges_nothing_at_zero():
    assert lines_of(STAIRS, 0) == []
    p = Pricing(model="stairstep", fee=D(5), included=100, tiers=STAIRS.tiers)
    assert summary(lines_of(p, 100)) == [("fee", None, None, "5.00")]
    lines = lines_of(p, 1101)  # 1,001 billable
    assert lines[1].description == "Usage (stairstep tier 1,001–10,000) (1,101 used, 100 included)"


# --- fee, setup fee, minimum, maximum --------------------------------------------------------------------


def test_setup_fee_only_in_first_period():
    p = Pricing(model="per_unit", fee=D(29), setup_fee=D("99.5"), unit_price=D("0.01"))
    assert [line.line_type for line in lines_of(p, 10, first_period=True)] == ["fee", "setup_fee", "usage"]
    assert str(lines_of(p, 10, first_period=True)[1].amount) == "99.50"
    assert [line.line_type for line in lines_of(p, 10, first_period=False)] == ["fee", "usage"]


def test_minimum_ignores_setup_fee():
    p = Pricing(model="per_unit", fee=D(10), setup_fee=D(500), minimum=D(50), unit_price=D("0.01"))
    lines = lines_of(p, 0, first_period=True)
    assert summary(lines)[-1] == ("minimum", None, None, "40.00")
    assert total(lines) == D("550.00")


@pytest.mark.parametrize(
    ("q", "discount", "expected_total"),
    [
        (5000, None, "60.00"),
        (9000, None, "100.00"),
        (10_000, "-10.00", "100.00"),
        (20_000, "-110.00", "100.00"),
    ],
)
def test_maximum_caps_usage(q, discount, expected_total):
    p = Pricing(model="per_unit", fee=D(10), unit_price=D("0.01"), maximum=D(100))
    lines = lines_of(p, q)
    if discount is None:
        assert [line.line_type for line in lines] == ["fee", "usage"]
    else:
        assert summary(lines)[-1] == ("maximum", None, None, discount)
        assert lines[-1].description == "Maximum charge 100 (usage capped)"
    assert total(lines) == D(expected_total)


def test_maximum_caps_the_fee_too():
    # the README's contract: maximum caps fee + usage (issue 20.8: a fee above it used to be invoiced in full)
    p = Pricing(model="per_unit", fee=D(150), unit_price=D("0.01"), maximum=D(100))
    lines = lines_of(p, 1000)
    assert summary(lines)[-1] == ("maximum", None, None, "-60.00")
    assert lines[-1].description == "Maximum charge 100 (fee and usage capped)"
    assert total(lines) == D("100.00")
    flat = Pricing(model="flat", fee=D(100), maximum=D(60))
    assert total(lines_of(flat, 0)) == D("60.00")


def test_maximum_with_setup_fee_in_first_period():
    p = Pricing(model="per_unit", setup_fee=D(500), unit_price=D(1), maximum=D(100))
    lines = lines_of(p, 300, first_period=True)
    assert summary(lines) == [
        ("setup_fee", None, None, "500.00"),
        ("usage", 300, D(1), "300.00"),
        ("maximum", None, None, "-200.00"),
    ]


def test_each_line_rounded_once_and_total_is_their_sum():
    # three tiers of one unit at 0.005: each line is 0.01, so 0.03 (the exact sum 0.015 would round to 0.02)
    p = Pricing(model="graduated", tiers=(Tier(1, D("0.005")), Tier(2, D("0.005")), Tier(None, D("0.005"))))
    lines = lines_of(p, 3)
    assert [str(line.amount) for line in lines] == ["0.01", "0.01", "0.01"]
    assert total(lines) == D("0.03")


# --- invalid input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pricing", "message"),
    [
        (Pricing(model="per_unit"), "unit_price is required"),
        (Pricing(model="package"), "package is required"),
        (Pricing(model="package", package=Package(0, D(1))), "size must be >= 1"),
        (Pricing(model="graduated"), "tiers is required"),
        (Pricing(model="volume", tiers=(Tier(10, D(1)),)), "last tier's up_to must be inf"),
        (
            Pricing(model="volume", tiers=(Tier(None, D(1)), Tier(None, D(1)))),
            "only the last tier may be inf",
        ),
        (
            Pricing(model="graduated", tiers=(Tier(10, D(1)), Tier(10, D(1)), Tier(None, D(1)))),
            "must be >= 11",
        ),
        (Pricing(model="graduated", tiers=(Tier(None),)), "needs unit_price, flat_fee or both"),
        (Pricing(model="stairstep", tiers=(Tier(None, D(1)),)), "flat_fee is required"),
        (Pricing(model="per_unit", unit_price=D(-1)), "non-negative"),
        (Pricing(model="bogus"), "unknown pricing model"),
    ],
)
def test_invalid_pricing(pricing, message):
    with pytest.raises(ValueError, match=message):
        lines_of(pricing, 1)


def test_negative_quantity_and_unknown_currency():
    with pytest.raises(ValueError, match=">= 0"):
        lines_of(Pricing(), -1)
    with pytest.raises(ValueError, match="currency"):
        lines_of(Pricing(), 1, currency="XYZ")


# --- properties ------------------------------------------------------------------------------------------

prices = st.decimals(min_value=0, max_value=100, places=12, allow_nan=False, allow_infinity=False)
optional_prices = st.one_of(st.none(), prices)


@st.composite
def tier_lists(draw):
    bounds = sorted(draw(st.sets(st.integers(1, 10**7), min_size=0, max_size=5)))
    tiers = []
    for bound in [*bounds, None]:
        unit = draw(optional_prices)
        flat = draw(optional_prices if unit is not None else prices)
        tiers.append(Tier(up_to=bound, unit_price=unit, flat_fee=flat))
    return tuple(tiers)


quantities = st.integers(0, 2 * 10**7)
currencies = st.sampled_from(["USD", "JPY", "BHD", "CLF"])


@settings(max_examples=300)
@given(tier_lists(), quantities, quantities, st.integers(0, 10**6), currencies)
def test_graduated_never_decreases(tiers, a, b, included, currency):
    p = Pricing(model="graduated", tiers=tiers, included=included)
    lo, hi = min(a, b), max(a, b)
    assert total(lines_of(p, lo, currency)) <= total(lines_of(p, hi, currency))
    assert total(lines_of(p, hi, currency)) <= total(lines_of(p, hi + 1, currency))


@settings(max_examples=300)
@given(tier_lists(), prices, quantities, currencies, st.booleans())
def test_totals_are_never_negative(tiers, unit_price, q, currency, first):
    for p in (
        Pricing(model="graduated", tiers=tiers),
        Pricing(model="volume", tiers=tiers),
        Pricing(model="per_unit", unit_price=unit_price, maximum=unit_price),
    ):
        lines = lines_of(p, q, currency, first)
        assert total(lines) >= 0
        assert all(line.currency == currency for line in lines)
        assert all(
            line.amount.as_tuple().exponent == -{"USD": 2, "JPY": 0, "BHD": 3, "CLF": 4}[currency]
            for line in lines
        )
