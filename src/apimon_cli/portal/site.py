"""`apimon portal build`: a static site from the plan and the ledger.

- ``index.html``: the public pricing page: each public product's limits, quota, prices and tier table, and
  worked examples priced by the pricing engine (``billing.pricing.charge_lines``), so the page and the
  invoices cannot disagree.
- ``s/<token>/index.html`` and ``s/<token>/usage.json``: one statement per subscriber of the plan under an
  unguessable path (``portal.tokens``): usage by day this period, quota headroom, the invoice preview (the
  invoice engine's invoice) and what the bill would be on the other public products.

No JavaScript, no external resource; the statement pages ask search engines not to index them. Nothing
secret is read: no key value, no email, no metadata reaches the site.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from apimon_cli.billing.periods import BillingWindow
from apimon_cli.model import DesiredState, Product

from ..report import svg
from ..report.figures import Money, Pricer, to_data
from ..report.html import money, signed
from ..report.page import Html, Mask, page
from ..report.quota import Headroom, headroom, most_windows, refusals
from ..report.usage import BLOCKED, FAILED, OTHER, SUCCESS, DailyUsage, admitted, billable, calls, days_of

EXAMPLES = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
_PERIOD = {"day": "day", "week": "week (ISO, Monday to Sunday, UTC)", "month": "calendar month (UTC)"}
_BILLING = {"month": "month", "week": "week"}


@dataclass(frozen=True)
class Example:
    quantity: int
    amounts: dict[str, Money]  # product -> recurring charge for the quantity
    over_quota: dict[str, bool]  # product -> more calls than its quota admits in one billing period


def public_products(desired: DesiredState) -> list[Product]:
    return [p for p in desired.products.values() if p.public]


def examples(desired: DesiredState, quantities: Sequence[int] = EXAMPLES) -> list[Example]:
    pricer = Pricer(desired.products, desired.billing.currency)
    out = []
    for q in quantities:
        amounts, over = {}, {}
        for p in public_products(desired):
            amounts[p.id] = pricer.cost(p.id, q)
            over[p.id] = p.quota is not None and q > p.quota.limit * most_windows(
                p.quota.period, desired.billing.period)
        out.append(Example(q, amounts, over))
    return out


def _limits(p: Product) -> list[tuple[str, str]]:
    rows = []
    if p.rate_limit:
        rows.append(("Rate limit", f"{p.rate_limit.rate:,} requests per second, bursts up to {p.rate_limit.burst:,}"))
    else:
        rows.append(("Rate limit", "none"))
    if p.quota:
        rows.append(("Quota", f"{p.quota.limit:,} calls per {_PERIOD[p.quota.period]}"))
    else:
        rows.append(("Quota", "none"))
    return rows


def _price_summary(p: Product, currency: str, period: str) -> list[tuple[str, str]]:
    pr = p.pricing
    per = _BILLING[period]

    def m(d: Decimal) -> str:
        return f"{d:,} {currency}"

    rows = []
    model = {
        "free": "Free",
        "flat": "A flat fee, whatever the usage",
        "per_unit": f"{m(pr.unit_price) if pr.unit_price is not None else ''} per call",
        "package": (f"{m(pr.package.price)} per package of {pr.package.size:,} calls (a started package is "
                    f"{'charged in full' if pr.package.round == 'up' else 'not charged'})") if pr.package else "",
        "graduated": "Graduated tiers: each call at the price of the tier it falls in",
        "volume": f"Volume tiers: every call of the {per} at the price of the tier its total reaches",
        "stairstep": f"Stairstep: one price for the band the {per}'s calls fall in",
    }[pr.model]
    rows.append(("Pricing", model))
    if pr.fee is not None:
        rows.append(("Fee", f"{m(pr.fee)} per {per}"))
    if pr.included:
        rows.append(("Included", f"the first {pr.included:,} calls of each {per}"))
    if pr.setup_fee is not None:
        rows.append(("Setup fee", f"{m(pr.setup_fee)}, once, with the first {per} of usage"))
    if pr.minimum is not None:
        rows.append(("Minimum", f"{m(pr.minimum)} per {per} (fee and usage)"))
    if pr.maximum is not None:
        rows.append(("Maximum", f"{m(pr.maximum)} per {per} (usage charges are capped)"))
    return rows


def _tier_rows(p: Product, currency: str) -> list[list[str]]:
    rows = []
    first = 1
    for t in p.pricing.tiers:
        rows.append([
            f"{first:,}",
            "and above" if t.up_to is None else f"{t.up_to:,}",
            "" if t.unit_price is None else f"{t.unit_price:,} {currency}",
            "" if t.flat_fee is None else f"{t.flat_fee:,} {currency}",
        ])
        if t.up_to is not None:
            first = t.up_to + 1
    return rows


def _dl(h: Html, rows: list[tuple[str, ...]]) -> str:
    """A definition list of (term, text) or (term, text, data-figure name)."""
    items = []
    for k, v, *fig in rows:
        attr = f' data-figure="{h.t(fig[0])}"' if fig else ""
        items.append(f"<dt>{h.t(k)}</dt><dd{attr}>{h.t(v)}</dd>")
    return '<dl class="facts">' + "".join(items) + "</dl>"


_EXTRA_CSS = """
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0; }
.facts dt { color: #4b5563; }
.facts dd { margin: 0; }
.product { border: 1px solid #d1d5db; border-radius: 8px; padding: 4px 16px 12px; margin: 16px 0; }
.product h2 { border-top: 0; margin-top: 8px; }
@media (max-width: 600px) { .facts { grid-template-columns: 1fr; } .facts dd { margin-bottom: 6px; } }
"""


def pricing_page(desired: DesiredState, *, title: str, quantities: Sequence[int] = EXAMPLES,
                 mask: Mask | None = None) -> str:
    h = Html(mask)
    cur = desired.billing.currency
    per = _BILLING[desired.billing.period]
    products = public_products(desired)
    ex = examples(desired, quantities)
    out = [f"<header><h1>{h.t(title)}</h1><p class=\"muted\">Prices in {h.t(cur)}, billed per "
           f"{h.t(per)} (UTC). Calls the gateway refuses (over a limit or quota) are never charged.</p></header>"
           "<main>"]
    if not products:
        out.append("<p>No public products.</p>")
    for p in products:
        out.append(f'<section class="product" id="product-{h.t(p.id)}" aria-labelledby="h-{h.t(p.id)}">'
                   f'<h2 id="h-{h.t(p.id)}">{h.t(p.display_name)}</h2>')
        if p.description:
            out.append(f"<p>{h.t(p.description)}</p>")
        out.append(_dl(h, _limits(p) + _price_summary(p, cur, desired.billing.period)))
        if p.pricing.tiers:
            out.append(h.table(f"{p.display_name}: tiers (calls per {per})",
                               ["from call", "to call", "price per call", "flat fee"], _tier_rows(p, cur),
                               numeric=(0, 1, 2, 3), row_header=False, attrs=f' data-tiers="{h.t(p.id)}"'))
        out.append("</section>")
    if products and ex:
        out.append('<section aria-labelledby="examples"><h2 id="examples">Worked examples</h2>')
        mid = ex[min(2, len(ex) - 1)]
        sentence = ", ".join(f"{money(mid.amounts[p.id])} on {p.display_name}" for p in products)
        out.append(f'<p data-figure="example-sentence">{h.t(f"{mid.quantity:,} calls in a {per} cost {sentence}.")}'
                   "</p>")
        out.append('<p class="note">Computed by the same pricing engine as the invoices; one-off setup fees not '
                   "included. * more calls than the product's quota admits in one " + h.t(per) + ".</p>")
        rows = [[f"{e.quantity:,}", *[money(e.amounts[p.id]) + (" *" if e.over_quota[p.id] else "")
                                      for p in products]] for e in ex]
        out.append(h.table(f"What a {per}'s calls cost on each product", ["calls", *[p.display_name for p in products]],
                           rows, numeric=range(len(products) + 1), attrs=' data-table="examples"'))
        out.append("</section>")
    out.append("</main><footer><p>Generated by <code>apimon portal build</code> from the plan that configures the "
               "gateway.</p></footer>")
    return page(title, "".join(out), h=h, description=f"{title}: products, limits and prices", css=_EXTRA_CSS)


# ---------------------------------------------------------------- statements


@dataclass(frozen=True)
class Statement:
    subscriber: str
    product: str
    product_name: str
    period: BillingWindow
    as_of: date
    currency: str
    days: list[dict]  # {day, success, blocked, failed, other, calls, billable}
    billable: int
    calls: int
    blocked: int
    quota: Headroom | None
    invoice: object  # the invoice engine's Invoice
    alternatives: list[dict]  # {product, display_name, amount, difference, within_quota}


def statement(desired: DesiredState, sid: str, window: BillingWindow, rows: Sequence, invoice, as_of: date,
              pricer: Pricer) -> Statement:
    """The statement of ``sid``; ``rows`` are its ((product, day), counts) of ``DailyUsage``."""
    sub = desired.subscribers[sid]
    product = desired.products[sub.product]
    metric = desired.billing.metric
    currency = desired.billing.currency
    per_day: dict[date, list[int]] = {}
    admitted_by_day: dict[date, int] = {}
    for (_pid, day), c in rows:
        a = admitted(c)
        if a:
            admitted_by_day[day] = admitted_by_day.get(day, 0) + a
        if window.start <= day <= window.end:
            acc = per_day.setdefault(day, [0, 0, 0, 0, 0, 0])
            for i in range(4):
                acc[i] += c[i]
            acc[4] += calls(c)
            acc[5] += billable(c, metric)
    days = []
    for d in days_of(window.start, window.end):
        c = per_day.get(d, [0] * 6)
        days.append({"day": d, "success": c[SUCCESS], "blocked": c[BLOCKED], "failed": c[FAILED],
                     "other": c[OTHER], "calls": c[4], "billable": c[5]})
    q = sum(x["billable"] for x in days)
    as_of = min(max(as_of, window.start), window.end)
    hr = None
    if product.quota is not None:
        hr = headroom(admitted_by_day, product.quota.limit, product.quota.period, as_of, window.start, window.end)
    recurring = Money(sum((line.amount for line in invoice.lines if line.line_type != "setup_fee"),
                          pricer.zero.amount), currency)
    alternatives = []
    for p in public_products(desired):
        if p.id == sub.product:
            continue
        amount = pricer.cost(p.id, q)
        within = p.quota is None or refusals(admitted_by_day, p.quota.limit, p.quota.period, window.start,
                                             window.end)[0] == 0
        alternatives.append({"product": p.id, "display_name": p.display_name, "amount": amount,
                             "difference": amount - recurring, "within_quota": within})
    return Statement(sid, sub.product, product.display_name, window, as_of, currency, days, q,
                     sum(x["calls"] for x in days), sum(x["blocked"] for x in days), hr, invoice, alternatives)


def statement_data(st: Statement) -> dict:
    inv = st.invoice
    return {
        "statement": 1,
        "subscriber": st.subscriber,
        "product": {"id": st.product, "display_name": st.product_name},
        "period": {"label": st.period.label, "start": st.period.start.isoformat(), "end": st.period.end.isoformat(),
                   "as_of": st.as_of.isoformat()},
        "currency": st.currency,
        "totals": {"calls": st.calls, "billable": st.billable, "blocked": st.blocked},
        "days": to_data(st.days),
        "quota": to_data(st.quota),
        "invoice": {
            "invoice_id": inv.invoice_id,
            "lines": [{"line_type": line.line_type, "description": line.description, "quantity": line.quantity,
                       "unit_price": None if line.unit_price is None else format(line.unit_price, "f"),
                       "amount": to_data(Money(line.amount, line.currency))} for line in inv.lines],
            "total": to_data(Money(inv.total, inv.currency)),
        },
        "alternatives": to_data(st.alternatives),
    }


def statement_page(st: Statement, *, title: str, mask: Mask | None = None) -> str:
    h = Html(mask)
    inv = st.invoice
    out = [f"<header><h1>Statement for {h.t(st.subscriber)}</h1><p class=\"muted\">{h.t(title)} · "
           f"{h.t(st.product_name)} · {h.t(st.period.label)} ({h.t(st.period.start)} to {h.t(st.period.end)}, UTC), "
           f"as of {h.t(st.as_of)}. Amounts in {h.t(st.currency)}.</p></header><main>"]
    out.append('<section aria-labelledby="summary"><h2 id="summary">This period</h2><dl class="cards">')
    for label, value, fig in (("Invoice so far", money(Money(inv.total, inv.currency)), "invoice-total"),
                              ("Billable calls", f"{st.billable:,}", "billable"),
                              ("Blocked calls", f"{st.blocked:,}", "blocked")):
        out.append(f'<div class="card"><dt>{h.t(label)}</dt><dd><span data-figure="{fig}">{h.t(value)}</span>'
                   "</dd></div>")
    out.append("</dl></section>")

    keys = [d["day"].isoformat() for d in st.days]
    series = [svg.Series("success", "success", svg.SUCCESS, [d["success"] for d in st.days]),
              svg.Series("blocked", "blocked", svg.BLOCKED, [d["blocked"] for d in st.days]),
              svg.Series("other", "failed/other", svg.OTHER, [d["failed"] + d["other"] for d in st.days])]
    out.append('<section aria-labelledby="usage"><h2 id="usage">Usage by day</h2>')
    out.append('<div class="chart scroll">' + svg.stacked_bars(
        "usage-by-day", keys, [d["day"].strftime("%d") for d in st.days], series,
        title=f"Your calls per day in {st.period.label}", desc=f"{len(keys)} bars, one per day; {st.calls:,} calls.",
    ) + "</div>")
    out.append("<details><summary>The numbers per day</summary>")
    out.append(h.table("Calls per day", ["day", "success", "blocked", "failed", "other", "billable"],
                       ([d["day"].isoformat(), f"{d['success']:,}", f"{d['blocked']:,}", f"{d['failed']:,}",
                         f"{d['other']:,}", f"{d['billable']:,}"] for d in st.days),
                       numeric=range(1, 6), attrs=' data-table="usage-by-day"'))
    out.append("</details></section>")

    out.append('<section aria-labelledby="quota"><h2 id="quota">Quota</h2>')
    if st.quota is None:
        out.append("<p>Your product has no quota.</p>")
    else:
        q = st.quota
        state = {"exhausted": f"Used up: calls are refused until {q.resets_on}.",
                 "at_risk": f"At the current rate it runs out on {q.exhausts_on}, before the reset on {q.resets_on}.",
                 "ok": f"At the current rate it lasts until the reset on {q.resets_on}.",
                 "idle": f"No calls yet in this window; it resets on {q.resets_on}."}[q.status]
        out.append(_dl(h, [
            ("Quota", f"{q.limit:,} calls per {_PERIOD[q.period]}"),
            ("This window", f"{q.window_start} to {q.window_end}"),
            ("Used", f"{q.used:,} of {q.limit:,} ({q.used_pct} %)", "quota-used"),
            ("Left", f"{q.remaining:,}"),
            ("Current rate", f"{q.burn_rate:,} calls per day"),
            ("Outlook", state),
        ]))
    out.append("</section>")

    out.append('<section aria-labelledby="invoice"><h2 id="invoice">Invoice preview</h2>')
    out.append(h.table(f"Invoice {inv.invoice_id} (preview)", ["line", "quantity", "unit price", "amount"],
                       ([line.description, "" if line.quantity is None else f"{line.quantity:,}",
                         "" if line.unit_price is None else f"{line.unit_price:,}", money(Money(line.amount,
                                                                                               line.currency))]
                        for line in inv.lines),
                       numeric=(1, 2, 3), foot=["total", "", "", money(Money(inv.total, inv.currency))],
                       attrs=' data-table="invoice"'))
    out.append("</section>")

    out.append('<section aria-labelledby="others"><h2 id="others">On other products</h2>')
    out.append("<p class=\"muted\">What this period's billable calls would cost on the other public products "
               "(one-off setup fees left out).</p>")
    out.append(h.table("Your usage on other products", ["product", "this period would cost", "difference",
                                                         "within its quota"],
                       ([a["display_name"], money(a["amount"]), signed(a["difference"]),
                         "yes" if a["within_quota"] else "no"] for a in st.alternatives),
                       numeric=(1, 2), attrs=' data-table="alternatives"'))
    out.append("</section></main><footer><p>This page is private to you: its address is not listed anywhere. "
               "<a href=\"usage.json\">usage.json</a> has the same figures as data.</p></footer>")
    return page(f"Statement {st.period.label}: {st.subscriber}", "".join(out), h=h, noindex=True, css=_EXTRA_CSS)


def build_site(
    desired: DesiredState,
    window: BillingWindow,
    usage: DailyUsage,
    invoices: Sequence,
    tokens: Mapping[str, str],
    as_of: date,
    *,
    title: str = "API pricing",
    quantities: Sequence[int] = EXAMPLES,
    mask: Mask | None = None,
) -> dict[str, bytes]:
    """relative path -> file content of the whole site. ``usage`` must hold the ledger's rows from
    ``report.quota.lookback_start(window.start)`` to ``window.end``; ``invoices`` are the invoice engine's."""
    masked = mask or (lambda s: s)
    files: dict[str, bytes] = {
        "index.html": pricing_page(desired, title=title, quantities=quantities, mask=mask).encode(),
        "robots.txt": b"User-agent: *\nDisallow: /s/\n",
    }
    pricer = Pricer(desired.products, desired.billing.currency)
    by_sub = {inv.subscriber: inv for inv in invoices}
    rows_of: dict[str, list] = {}  # one pass over the rows, not one per subscriber
    for (sid, pid, day), c in usage.rows.items():
        rows_of.setdefault(sid, []).append(((pid, day), c))
    for sid in sorted(desired.subscribers):
        inv = by_sub.get(sid)
        if inv is None:
            continue
        st = statement(desired, sid, window, rows_of.get(sid, []), inv, as_of, pricer)
        base = f"s/{tokens[sid]}/"
        files[base + "index.html"] = statement_page(st, title=title, mask=mask).encode()
        files[base + "usage.json"] = (masked(json.dumps(statement_data(st), indent=2)) + "\n").encode()
    return files
