# ruff: noqa: F811 - the fixtures come from seed.py
"""Golden figures of the seeded ledger (tests/report/seed.py): hand-computed, and equal to the invoice
engine's lines to the cent."""

from __future__ import annotations

import json
import textwrap
from datetime import date
from decimal import Decimal

from seed import PROVIDER, TARGET, make_report, seeded  # noqa: F401 - fixtures

from apimon_cli.report.figures import Money, report_data


def usd(text: str) -> Money:
    return Money(Decimal(text), "USD")


def engine_invoices(seeded, period):
    from apimon_cli.billing.periods import parse_period
    from apimon_cli.ledger import Ledger
    from apimon_cli.report.source import period_invoices

    desired, ledger, _plan = seeded
    with Ledger.open(ledger) as book:
        return period_invoices(desired, parse_period(period, "month"), book, PROVIDER, TARGET)


def test_revenue_is_the_invoice_lines_to_the_cent(seeded, make_report):
    r = make_report()
    invoices = engine_invoices(seeded, "2026-11")
    lines = [line for inv in invoices for line in inv.lines]
    assert r.revenue.total == usd("1654.15")  # by hand: pro 1331.50 + 250.00, starter 38.65 + 29.00, trial 5
    assert r.revenue.total.amount == sum(line.amount for line in lines)
    assert sum(x.amount.amount for x in r.revenue.by_line) == r.revenue.total.amount
    assert sum(x.lines for x in r.revenue.by_line) == len(lines)
    per_product = {x.product: x.amount for x in r.revenue.by_product}
    assert per_product == {"free": usd("0.00"), "trial": usd("5.00"), "starter": usd("67.65"), "pro": usd("1581.50")}
    tiers = {(x.product, x.label): (x.quantity, x.amount) for x in r.revenue.by_line}
    assert tiers[("pro", "Tier 1 (1–1,000,000 @ 0.0008)")] == (1_000_000, usd("800.00"))
    assert tiers[("pro", "Tier 2 (1,000,001–5,000,000 @ 0.0005)")] == (665_000, usd("332.50"))
    assert tiers[("pro", "Minimum commitment")] == (0, usd("51.00"))  # wayne: 199.00 fee lifted to 250.00
    assert tiers[("starter", "Usage @ 0.001")] == (9_650, usd("9.65"))
    assert tiers[("starter", "Recurring fee")] == (0, usd("58.00"))
    assert {s.subscriber: s.total for s in r.top_by_revenue} == {
        inv.subscriber: Money(inv.total, "USD") for inv in invoices if inv.total > 0
    }
    assert [s.subscriber for s in r.top_by_revenue] == ["acme", "wayne", "globex", "umbrella", "hooli"]


def test_previous_period_and_mrr(make_report, seeded):
    r = make_report()
    october = engine_invoices(seeded, "2026-10")
    assert r.period.previous_label == "2026-10"
    # acme 1,736,000 calls: 800 + 368 + 199; wayne 250; globex 29 + 10.46 + setup 10; umbrella 29; hooli 5
    assert r.revenue.previous_total == usd("1700.46") == Money(sum(i.total for i in october), "USD")
    assert r.revenue.change == usd("-46.31") and r.revenue.change_pct == Decimal("-2.7")
    assert r.revenue.previous_recurring == usd("1690.46")  # without globex's one-off setup fee
    assert r.revenue.recurring == r.revenue.total and r.revenue.setup_fees == usd("0.00")
    assert r.revenue.recurring_change_pct == Decimal("-2.1")


def test_usage_per_day_and_shares(make_report):
    r = make_report()
    u = r.usage
    assert len(u.days) == 30 and u.days[0].day == date(2026, 11, 1) and u.days[-1].day == date(2026, 11, 30)
    nov3 = u.days[2].calls
    # acme 43,000 + 0 blocked + 3 failed; globex 530 + 2 other; initech 50; hooli 57; umbrella 12 blocked
    assert nov3 == {"free": 50, "trial": 57, "starter": 544, "pro": 43_003, "enterprise": 0}
    shares = {p.product: p for p in u.by_product}
    assert shares["free"].success == 1000 and shares["free"].blocked == 300
    assert shares["free"].blocked_pct == Decimal("23.1") and shares["free"].success_pct == Decimal("76.9")
    assert shares["pro"].blocked == 300 and shares["pro"].failed == 465
    assert u.blocked == 300 + 300 + 210 + 12
    assert u.calls == sum(sum(d.calls.values()) for d in u.days)
    assert [s.subscriber for s in r.top_by_calls][:3] == ["acme", "globex", "hooli"]
    assert r.top_by_calls[0].billable == 1_665_000


def test_headroom_per_quota_period(make_report):
    mid = {h.subscriber: h.quota for h in make_report(as_of=date(2026, 11, 10)).headroom}
    initech = mid["initech"]  # 50 a day against 1,000 a month: runs out on the 20th, as it did
    assert (initech.used, initech.remaining, initech.burn_rate) == (500, 500, Decimal("50.0"))
    assert initech.days_to_exhaust == Decimal("10.0") and initech.exhausts_on == date(2026, 11, 20)
    assert initech.status == "at_risk" and initech.resets_on == date(2026, 12, 1)
    globex = mid["globex"]  # admitted calls include the 2 'other' a day (the upstream's 404s)
    assert globex.used == 5_570 and globex.status == "ok" and globex.exhausts_on is None
    hooli = mid["hooli"]  # a daily quota: the window is the day itself
    assert (hooli.window_start, hooli.window_end, hooli.used, hooli.status) == (
        date(2026, 11, 10), date(2026, 11, 10), 50, "exhausted")
    assert hooli.windows_in_period == 30 and hooli.windows_exhausted == 30
    end = {h.subscriber: h.quota for h in make_report().headroom}
    assert end["initech"].status == "exhausted" and end["initech"].windows_exhausted == 1
    assert end["umbrella"].status == "idle"
    assert "acme" not in end  # pro has no quota


def test_candidates_and_leakage_priced_by_the_engine(make_report):
    r = make_report()
    cands = {(c.subscriber, c.kind): c for c in r.candidates}
    initech = cands[("initech", "stops_throttling")]  # 1,300 calls fit trial's 50 a day, not free's 1,000 a month
    assert (initech.candidate, initech.quantity, initech.candidate_amount) == ("trial", 1300, usd("5.00"))
    hooli = cands[("hooli", "stops_throttling")]  # 57 a day: starter's monthly quota admits them
    assert (hooli.candidate, hooli.current, hooli.candidate_amount, hooli.difference) == (
        "starter", usd("5.00"), usd("29.00"), usd("24.00"))
    acme = cands[("acme", "stops_throttling")]  # pro has no quota: rate-limited, so a higher rate: enterprise
    assert acme.candidate == "enterprise" and acme.candidate_amount == usd("1332.06")  # 1,665,300 x 0.0002 + 999
    wayne = cands[("wayne", "pays_less")]
    assert (wayne.candidate, wayne.current, wayne.difference) == ("free", usd("250.00"), usd("-250.00"))
    assert not any(c.subscriber == "umbrella" for c in r.candidates)  # disabled: blocked on purpose
    leaks = {x.subscriber: x for x in r.leakage.rows}
    assert leaks["acme"].on_current_pricing == usd("0.15")  # 300 more calls in pro's tier 2 @ 0.0005
    assert leaks["acme"].next_product == "enterprise" and leaks["acme"].next_extra == usd("0.56")
    assert leaks["initech"].on_current_pricing == usd("0.00") and leaks["initech"].next_amount == usd("5.00")
    assert leaks["hooli"].next_extra == usd("24.00")
    assert "umbrella" not in leaks
    assert r.leakage.blocked == 300 + 300 + 210
    assert r.leakage.next_extra == usd("29.56")


COMPARED = """
apimon: 1
target: {provider: local, local: {state_dir: state}}
billing: {currency: USD}
products:
  free: {display_name: Free, quota: {limit: 1000, period: month}, pricing: {model: free}}
  trial: {display_name: Trial, quota: {limit: 40, period: day}, pricing: {model: flat, fee: "6.00"}}
  starter:
    display_name: Starter
    quota: {limit: 3500, period: week}
    pricing: {model: per_unit, fee: "29.00", included: 10000, unit_price: "0.002"}
  pro: {display_name: Pro, pricing: {model: per_unit, fee: "99.00", unit_price: "0.0009"}}
subscribers:
  acme: {product: pro}
  globex: {product: starter}
  initech: {product: free}
  hooli: {product: trial}
"""


def test_compare_revenue_impact_and_proposed_quotas(make_report, tmp_path):
    from apimon_cli.planfile.loader import load_or_raise

    path = tmp_path / "new.yaml"
    path.write_text(textwrap.dedent(COMPARED).lstrip())
    other = load_or_raise([str(path)]).desired
    c = make_report(compare=("new.yaml", other)).comparison
    rows = {x.subscriber: x for x in c.rows}
    assert rows["acme"].compared == usd("1597.50")  # 99 + 1,665,000 x 0.0009
    assert rows["globex"].compared == usd("48.30")  # 29 + 9,650 x 0.002
    assert rows["hooli"].difference == usd("1.00")
    assert rows["wayne"].compared == usd("0.00")  # not in the compared plan
    assert c.difference == c.compared_total - c.current_total
    quotas = {q.subscriber: q for q in c.quotas}
    assert quotas["hooli"].refused == 300 and quotas["hooli"].windows_over == 30  # 50 admitted a day, 40 allowed
    # globex: 657 admitted a day; ISO weeks of Nov 2026 start on Mon 26 Oct (its October days count too)
    g = quotas["globex"]
    assert (g.proposed_limit, g.proposed_period, g.current_limit) == (3500, "week", 100000)
    assert g.admitted == 19_710 and g.refused == 19_710 - _weekly_admitted_globex()
    assert quotas["initech"].refused == 0 and "acme" not in quotas


def _weekly_admitted_globex() -> int:
    """What 3,500 a week admits of globex's November (by hand, day by day)."""
    from datetime import timedelta

    def per_day(d: date) -> int:
        return 500 + 10 * d.day + 2

    admitted_in_nov = 0
    week_start = date(2026, 10, 26)
    while week_start <= date(2026, 11, 30):
        used = 0
        for i in range(7):
            d = week_start + timedelta(days=i)
            n = per_day(d)
            take = max(0, min(n, 3500 - used))
            used += take
            if d.month == 11:
                admitted_in_nov += take
        week_start += timedelta(days=7)
    return admitted_in_nov


def test_json_amounts_are_decimal_strings_with_currency(make_report):
    data = report_data(make_report())
    text = json.dumps(data)  # plain JSON: no Decimal or date objects left
    assert data["report"] == 1
    assert data["revenue"]["total"] == {"amount": "1654.15", "currency": "USD"}
    assert data["revenue"]["by_line"][0]["amount"]["currency"] == "USD"
    assert data["period"]["as_of"] == "2026-11-30"
    assert data["headroom"][0]["quota"]["burn_rate"] == "657.0"
    assert '"amount": 1654.15' not in text
