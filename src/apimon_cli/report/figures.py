"""Every figure of `apimon report`, computed from the plan, the ledger's daily counts and the invoices.

Pure: no I/O, no printing. ``build_report`` takes the invoices the invoice engine made for the period (and
for the previous one), so that revenue figures are the invoice lines themselves, to the cent; what-if
amounts (another product, blocked calls admitted) come from the same pricing engine
(``billing.pricing.charge_lines``). Money is ``Money`` (a Decimal and its currency) throughout.

Definitions (README, "Reports and portal"):

- **calls**: every call the gateway saw (``total``); **billable**: the plan's billable quantity
  (``success``, or ``total - blocked``); **admitted**: calls a quota counts (``total - blocked``).
- **revenue**: the sum of the invoices' lines; **recurring** (MRR-style): revenue without one-off setup
  fees. The previous period is priced exactly as ``apimon invoice --period PREVIOUS`` prices it (the
  current plan over the ledger's usage).
- **quota headroom**: see ``report.quota``.
- **candidates**: *pays less*: another product whose quota would have admitted the period's admitted calls
  and whose recurring charge for the period's billable quantity is below the subscriber's invoice (setup
  fee left out); *stops being throttled*: for a subscriber with blocked calls, the cheapest other product
  whose quota would have admitted every call (admitted + blocked) and whose rate limit is at least as high
  (higher, where the quota was not what blocked it), priced for billable + blocked calls.
- **leakage**: blocked calls, what they would have earned on the subscriber's own pricing had they been
  admitted, and what the subscriber's bill would be on the next tier (the *stops being throttled*
  product) with them admitted.
Disabled subscribers are left out of candidates and leakage: their keys are refused on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

from apimon_cli.billing.currency import quantize
from apimon_cli.billing.periods import BillingWindow
from apimon_cli.model import DesiredState, Product

from . import quota as Q
from .usage import BLOCKED, FAILED, OTHER, SUCCESS, DailyUsage, admitted, billable, calls, days_of

FORMAT = 1  # the JSON document's "report" version
_PCT = Decimal("0.1")


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str

    def __str__(self) -> str:
        return f"{self.amount:,} {self.currency}"

    def __add__(self, other: Money) -> Money:
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        return Money(self.amount - other.amount, self.currency)


def pct(part: int | Decimal, whole: int | Decimal) -> Decimal | None:
    """``part`` as a percentage of ``whole``, one decimal (None when ``whole`` is 0)."""
    if not whole:
        return None
    return (Decimal(part) * 100 / Decimal(whole)).quantize(_PCT, ROUND_HALF_UP)


# ---------------------------------------------------------------- figures


@dataclass(frozen=True)
class PeriodInfo:
    label: str
    start: date
    end: date
    as_of: date  # headroom and burn rates are as of the end of this day
    days: int
    billing_period: str  # month | week
    previous_label: str
    previous_start: date
    previous_end: date


@dataclass(frozen=True)
class ProductInfo:
    id: str
    display_name: str
    in_plan: bool
    public: bool
    pricing_model: str | None
    rate: int | None
    burst: int | None
    quota_limit: int | None
    quota_period: str | None


@dataclass(frozen=True)
class DayUsage:
    day: date
    calls: dict[str, int]  # product -> calls that day (every product of ``Report.products``)


@dataclass(frozen=True)
class ProductUsage:
    product: str
    calls: int
    success: int
    blocked: int
    failed: int
    other: int
    billable: int
    success_pct: Decimal | None
    blocked_pct: Decimal | None
    failed_other_pct: Decimal | None


@dataclass(frozen=True)
class Usage:
    days: list[DayUsage]
    by_product: list[ProductUsage]
    calls: int
    billable: int
    blocked: int


@dataclass(frozen=True)
class RevenueLine:
    product: str  # the product whose pricing made the line
    line_type: str  # fee | setup_fee | usage | minimum | maximum
    label: str  # "Recurring fee", "Tier 2 (1,000,001–5,000,000 @ 0.0005)", ...
    quantity: int  # summed quantities of the lines (units or packages; 0 for lines without one)
    lines: int  # invoice lines summed
    amount: Money


@dataclass(frozen=True)
class ProductRevenue:
    product: str
    amount: Money
    share_pct: Decimal | None


@dataclass(frozen=True)
class Revenue:
    total: Money
    previous_total: Money
    change: Money
    change_pct: Decimal | None
    recurring: Money  # total without setup fees
    previous_recurring: Money
    recurring_change: Money
    recurring_change_pct: Decimal | None
    setup_fees: Money
    invoices: int
    paying_subscribers: int  # invoices with a total above zero
    by_product: list[ProductRevenue]
    by_line: list[RevenueLine]


@dataclass(frozen=True)
class InvoiceSummary:
    invoice_id: str
    subscriber: str
    product: str
    lines: int
    total: Money


@dataclass(frozen=True)
class SubscriberCalls:
    subscriber: str
    product: str
    calls: int
    billable: int
    blocked: int


@dataclass(frozen=True)
class SubscriberRevenue:
    subscriber: str
    product: str
    billable: int
    total: Money


@dataclass(frozen=True)
class HeadroomRow:
    subscriber: str
    product: str
    quota: Q.Headroom


@dataclass(frozen=True)
class Candidate:
    subscriber: str
    product: str
    kind: str  # pays_less | stops_throttling
    candidate: str  # the other product
    quantity: int  # billable calls priced on the candidate (billable + blocked for stops_throttling)
    current: Money  # this period's invoice without setup fees
    candidate_amount: Money  # the candidate's recurring charge for ``quantity``
    difference: Money  # candidate_amount - current


@dataclass(frozen=True)
class Leak:
    subscriber: str
    product: str
    blocked: int
    on_current_pricing: Money  # what the blocked calls would have added on the subscriber's own pricing
    next_product: str | None  # the product that would have admitted them (None: no product would)
    next_amount: Money | None  # the bill on it, blocked calls admitted
    next_extra: Money | None  # next_amount - this period's invoice without setup fees


@dataclass(frozen=True)
class Leakage:
    rows: list[Leak]
    blocked: int
    on_current_pricing: Money
    next_extra: Money


@dataclass(frozen=True)
class CompareRow:
    subscriber: str
    current: Money
    compared: Money
    difference: Money


@dataclass(frozen=True)
class QuotaImpact:
    subscriber: str
    product: str  # the subscriber's product in the compared plan
    current_limit: int | None
    current_period: str | None
    proposed_limit: int | None
    proposed_period: str | None
    admitted: int  # calls admitted this period
    blocked: int  # calls blocked this period (by the current limits)
    refused: int  # of the admitted calls, how many the proposed quota would have refused
    refused_pct: Decimal | None
    windows_over: int  # proposed quota windows that would have reached their limit


@dataclass(frozen=True)
class Comparison:
    plan: str
    rows: list[CompareRow]
    current_total: Money
    compared_total: Money
    difference: Money
    quotas: list[QuotaImpact]


@dataclass(frozen=True)
class Report:
    currency: str
    metric: str
    plan_files: list[str]
    period: PeriodInfo
    products: list[ProductInfo]
    usage: Usage
    revenue: Revenue
    invoices: list[InvoiceSummary]
    top_by_calls: list[SubscriberCalls]
    top_by_revenue: list[SubscriberRevenue]
    headroom: list[HeadroomRow]
    candidates: list[Candidate]
    leakage: Leakage
    comparison: Comparison | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CompareInput:
    plan: str  # file name, for the heading
    desired: DesiredState
    invoices: list  # the invoice engine's invoices of the compared plan for the same period


# ---------------------------------------------------------------- building


class Pricer:
    """Recurring charge of a product for a quantity, from the pricing engine (cached)."""

    def __init__(self, products: Mapping[str, Product], currency: str):
        from apimon_cli.billing.pricing import charge_lines

        self._charge = charge_lines
        self._products = products
        self.currency = currency
        self._cache: dict[tuple[str, int], Money] = {}
        self.zero = Money(quantize(Decimal(0), currency), currency)

    def cost(self, pid: str, quantity: int) -> Money:
        key = (pid, quantity)
        hit = self._cache.get(key)
        if hit is None:
            lines = self._charge(self._products[pid].pricing, quantity, self.currency, first_period=False)
            amount = self.zero.amount
            for line in lines:
                amount += line.amount
            hit = self._cache[key] = Money(amount, self.currency)
        return hit


def _rate(p: Product) -> float:
    return float("inf") if p.rate_limit is None else p.rate_limit.rate


def _admits(p: Product, per_day: Mapping[date, int], start: date, end: date) -> bool:
    if p.quota is None:
        return True
    refused, _ = Q.refusals(per_day, p.quota.limit, p.quota.period, start, end)
    return refused == 0


def _recurring(invoice) -> Decimal:
    """The invoice's total without one-off setup fees."""
    return sum(
        (line.amount for line in invoice.lines if line.line_type != "setup_fee"), quantize(Decimal(0), invoice.currency)
    )


def build_report(
    desired: DesiredState,
    window: BillingWindow,
    usage: DailyUsage,
    invoices: Sequence,
    previous_window: BillingWindow,
    previous_invoices: Sequence,
    as_of: date,
    *,
    plan_files: Iterable[str] = (),
    compare: CompareInput | None = None,
    top: int = 10,
) -> Report:
    """The report for ``window``. ``usage`` must hold the ledger's rows from ``quota.lookback_start(window.start)``
    to ``window.end`` (earlier days of quota windows that began before the period count toward them)."""
    currency = desired.billing.currency
    metric = desired.billing.metric
    pricer = Pricer(desired.products, currency)
    zero = pricer.zero
    start, end = window.start, window.end
    as_of = min(max(as_of, start), end)
    days = days_of(start, end)

    # --- per subscriber and per product, in one pass over the rows
    product_ids: list[str] = list(desired.products)
    seen_products: set[str] = set(product_ids)
    day_calls: dict[date, dict[str, int]] = {d: {} for d in days}
    prod_counts: dict[str, list[int]] = {}
    prod_billable: dict[str, int] = {}
    sub_calls: dict[str, int] = {}
    sub_billable: dict[str, int] = {}
    sub_blocked: dict[str, int] = {}
    sub_product_calls: dict[str, dict[str, int]] = {}
    sub_admitted: dict[str, dict[date, int]] = {}  # whole lookback range: quota windows
    sub_blocked_days: dict[str, dict[date, int]] = {}
    for (sid, pid, day), c in usage.rows.items():
        a = admitted(c)
        if a:
            per = sub_admitted.setdefault(sid, {})
            per[day] = per.get(day, 0) + a
        if c[BLOCKED]:
            per = sub_blocked_days.setdefault(sid, {})
            per[day] = per.get(day, 0) + c[BLOCKED]
        if not start <= day <= end:
            continue
        if pid not in seen_products:
            seen_products.add(pid)
            product_ids.append(pid)
        n = calls(c)
        b = billable(c, metric)
        dc = day_calls[day]
        dc[pid] = dc.get(pid, 0) + n
        pc = prod_counts.setdefault(pid, [0, 0, 0, 0, 0])
        for i in range(4):
            pc[i] += c[i]
        pc[4] += n
        prod_billable[pid] = prod_billable.get(pid, 0) + b
        sub_calls[sid] = sub_calls.get(sid, 0) + n
        sub_billable[sid] = sub_billable.get(sid, 0) + b
        sub_blocked[sid] = sub_blocked.get(sid, 0) + c[BLOCKED]
        spc = sub_product_calls.setdefault(sid, {})
        spc[pid] = spc.get(pid, 0) + n
    extra = sorted(p for p in product_ids if p not in desired.products)
    product_ids = [p for p in product_ids if p in desired.products] + extra

    products = []
    for pid in product_ids:
        p = desired.products.get(pid)
        if p is None:
            products.append(ProductInfo(pid, pid, False, False, None, None, None, None, None))
            continue
        products.append(
            ProductInfo(
                pid,
                p.display_name,
                True,
                p.public,
                p.pricing.model,
                p.rate_limit.rate if p.rate_limit else None,
                p.rate_limit.burst if p.rate_limit else None,
                p.quota.limit if p.quota else None,
                p.quota.period if p.quota else None,
            )
        )

    by_product = []
    for pid in product_ids:
        pc = prod_counts.get(pid)
        if pc is None:
            continue
        total = pc[4]
        by_product.append(
            ProductUsage(
                pid,
                total,
                pc[SUCCESS],
                pc[BLOCKED],
                pc[FAILED],
                pc[OTHER],
                prod_billable.get(pid, 0),
                pct(pc[SUCCESS], total),
                pct(pc[BLOCKED], total),
                pct(pc[FAILED] + pc[OTHER], total),
            )
        )
    usage_fig = Usage(
        days=[DayUsage(d, {pid: day_calls[d].get(pid, 0) for pid in product_ids}) for d in days],
        by_product=by_product,
        calls=sum(sub_calls.values()),
        billable=sum(sub_billable.values()),
        blocked=sum(sub_blocked.values()),
    )

    revenue = _revenue(desired, invoices, previous_invoices, product_ids, zero)
    by_invoice = {inv.subscriber: inv for inv in invoices}
    invoice_rows = [
        InvoiceSummary(inv.invoice_id, inv.subscriber, inv.product, len(inv.lines), Money(inv.total, currency))
        for inv in invoices
    ]

    def product_of(sid: str) -> str:
        sub = desired.subscribers.get(sid)
        if sub is not None:
            return sub.product
        inv = by_invoice.get(sid)
        if inv is not None:
            return inv.product
        spc = sub_product_calls.get(sid, {})
        return max(spc, key=lambda p: (spc[p], p)) if spc else ""

    top_calls = sorted((s for s, n in sub_calls.items() if n), key=lambda s: (-sub_calls[s], s))[:top]
    top_by_calls = [
        SubscriberCalls(s, product_of(s), sub_calls[s], sub_billable.get(s, 0), sub_blocked.get(s, 0))
        for s in top_calls
    ]
    paid = sorted((inv for inv in invoices if inv.total > 0), key=lambda inv: (-inv.total, inv.subscriber))[:top]
    top_by_revenue = [
        SubscriberRevenue(inv.subscriber, inv.product, sub_billable.get(inv.subscriber, 0), Money(inv.total, currency))
        for inv in paid
    ]

    headroom_rows = []
    for sid in sorted(desired.subscribers):
        sub = desired.subscribers[sid]
        p = desired.products.get(sub.product)
        if p is None or p.quota is None:
            continue
        h = Q.headroom(sub_admitted.get(sid, {}), p.quota.limit, p.quota.period, as_of, start, end)
        headroom_rows.append(HeadroomRow(sid, sub.product, h))

    candidates: list[Candidate] = []
    leaks: list[Leak] = []
    for sid in sorted(desired.subscribers):
        sub = desired.subscribers[sid]
        cur = desired.products.get(sub.product)
        inv = by_invoice.get(sid)
        if cur is None or inv is None or not sub.enabled:
            continue
        current = Money(_recurring(inv), currency)
        q = sub_billable.get(sid, 0)
        adm = sub_admitted.get(sid, {})
        blocked = sub_blocked.get(sid, 0)
        others = [pid for pid in desired.products if pid != sub.product]
        cheaper = None
        for pid in others:
            if not _admits(desired.products[pid], adm, start, end):
                continue
            amount = pricer.cost(pid, q)
            if amount.amount < current.amount and (cheaper is None or amount.amount < cheaper[1].amount):
                cheaper = (pid, amount)
        if cheaper is not None:
            pid, amount = cheaper
            candidates.append(Candidate(sid, sub.product, "pays_less", pid, q, current, amount, amount - current))
        if not blocked:
            continue
        demand = dict(adm)
        for day, n in sub_blocked_days.get(sid, {}).items():
            demand[day] = demand.get(day, 0) + n
        quota_binding = cur.quota is not None and not _admits(cur, demand, start, end)
        unthrottled = None
        for pid in others:
            p = desired.products[pid]
            if not _admits(p, demand, start, end) or _rate(p) < _rate(cur):
                continue
            if not quota_binding and _rate(p) <= _rate(cur):
                continue
            amount = pricer.cost(pid, q + blocked)
            if unthrottled is None or amount.amount < unthrottled[1].amount:
                unthrottled = (pid, amount)
        on_current = pricer.cost(sub.product, q + blocked) - pricer.cost(sub.product, q)
        if unthrottled is not None:
            pid, amount = unthrottled
            candidates.append(
                Candidate(sid, sub.product, "stops_throttling", pid, q + blocked, current, amount, amount - current)
            )
            leaks.append(Leak(sid, sub.product, blocked, on_current, pid, amount, amount - current))
        else:
            leaks.append(Leak(sid, sub.product, blocked, on_current, None, None, None))
    leakage = Leakage(
        leaks,
        sum(leak.blocked for leak in leaks),
        sum((leak.on_current_pricing for leak in leaks), zero),
        sum((leak.next_extra for leak in leaks if leak.next_extra is not None), zero),
    )

    comparison = None
    if compare is not None:
        comparison = _comparison(desired, compare, invoices, sub_admitted, sub_blocked, start, end, currency)

    period = PeriodInfo(
        window.label,
        start,
        end,
        as_of,
        len(days),
        desired.billing.period,
        previous_window.label,
        previous_window.start,
        previous_window.end,
    )
    return Report(
        currency=currency,
        metric=metric,
        plan_files=list(plan_files),
        period=period,
        products=products,
        usage=usage_fig,
        revenue=revenue,
        invoices=invoice_rows,
        top_by_calls=top_by_calls,
        top_by_revenue=top_by_revenue,
        headroom=headroom_rows,
        candidates=candidates,
        leakage=leakage,
        comparison=comparison,
    )


def _revenue(desired, invoices, previous_invoices, product_ids: list[str], zero: Money) -> Revenue:
    currency = zero.currency

    def totals(invs) -> tuple[Money, Money]:
        total = zero.amount
        setup = zero.amount
        for inv in invs:
            for line in inv.lines:
                total += line.amount
                if line.line_type == "setup_fee":
                    setup += line.amount
        return Money(total, currency), Money(setup, currency)

    total, setup = totals(invoices)
    prev_total, prev_setup = totals(previous_invoices)
    recurring, prev_recurring = total - setup, prev_total - prev_setup

    groups: dict[tuple[str, str, str], list] = {}  # (product, line type, label) -> [quantity, lines, amount, order]
    by_product: dict[str, Decimal] = {}
    for inv in invoices:
        for line in inv.lines:
            pid, label, order = classify_line(inv.product, line, desired.products)
            g = groups.get((pid, line.line_type, label))
            if g is None:
                g = groups[(pid, line.line_type, label)] = [0, 0, zero.amount, order]
            g[0] += line.quantity or 0
            g[1] += 1
            g[2] += line.amount
            by_product[pid] = by_product.get(pid, zero.amount) + line.amount
    rank = {pid: i for i, pid in enumerate(product_ids)}
    order_of = {pid: i for i, pid in enumerate(sorted(by_product, key=lambda p: (rank.get(p, len(rank)), p)))}
    by_line = [
        RevenueLine(pid, lt, label, g[0], g[1], Money(g[2], currency))
        for (pid, lt, label), g in sorted(groups.items(), key=lambda kv: (order_of[kv[0][0]], kv[1][3], kv[0][2]))
    ]
    product_rows = [
        ProductRevenue(pid, Money(by_product[pid], currency), pct(by_product[pid], total.amount))
        for pid in sorted(by_product, key=lambda p: order_of[p])
    ]
    return Revenue(
        total=total,
        previous_total=prev_total,
        change=total - prev_total,
        change_pct=pct(total.amount - prev_total.amount, prev_total.amount),
        recurring=recurring,
        previous_recurring=prev_recurring,
        recurring_change=recurring - prev_recurring,
        recurring_change_pct=pct(recurring.amount - prev_recurring.amount, prev_recurring.amount),
        setup_fees=setup,
        invoices=len(invoices),
        paying_subscribers=sum(1 for inv in invoices if inv.total > 0),
        by_product=product_rows,
        by_line=by_line,
    )


_TYPE_ORDER = {"fee": 0, "setup_fee": 1, "usage": 2, "minimum": 900, "maximum": 901}
_FIXED_LABELS = {
    "fee": "Recurring fee",
    "setup_fee": "Setup fee",
    "minimum": "Minimum commitment",
    "maximum": "Maximum (fee + usage capped)",
    "unpriced": "Unpriced usage",
}


def classify_line(invoice_product: str, line, products: Mapping[str, Product]) -> tuple[str, str, int]:
    """(product whose pricing made the line, tier label, sort order) of one invoice line.

    Usage lines of another product carry its id first (``"basic: Usage @ 0.001"``, billing.invoice); tiered
    lines name their tier's range (billing.pricing), which identifies the tier of the product's pricing."""
    from apimon_cli.billing.pricing import compile_pricing

    lt = line.line_type
    if lt != "usage":
        return invoice_product, _FIXED_LABELS.get(lt, lt), _TYPE_ORDER.get(lt, 999)
    desc = line.description
    pid = invoice_product
    head, sep, rest = desc.partition(": ")
    if sep and head != invoice_product and head in products:
        pid, desc = head, rest
    product = products.get(pid)
    if product is None:
        return pid, desc, 500
    compiled = compile_pricing(product.pricing)
    model = product.pricing.model
    for i, tier in enumerate(compiled.tiers, 1):
        price = f" @ {tier.price_text}" if tier.price_text else ""
        if model == "graduated":
            if desc.startswith(f"Flat fee, tier {tier.range_text}"):
                return pid, f"Tier {i} ({tier.range_text}) flat fee", 2 + 2 * i + 1
            if desc.startswith(f"Usage {tier.first:,}–") or desc.startswith(f"Usage {tier.range_text} @"):
                return pid, f"Tier {i} ({tier.range_text}{price})", 2 + 2 * i
        elif model == "volume":
            if desc.startswith(f"Flat fee, volume tier {tier.range_text}"):
                return pid, f"Volume tier {i} ({tier.range_text}) flat fee", 2 + 2 * i + 1
            if f"(volume tier {tier.range_text})" in desc:
                return pid, f"Volume tier {i} ({tier.range_text}{price})", 2 + 2 * i
        elif model == "stairstep" and f"(stairstep tier {tier.range_text})" in desc:
            return pid, f"Stairstep tier {i} ({tier.range_text})", 2 + 2 * i
    if model == "per_unit":
        return pid, f"Usage @ {compiled.unit_price_text}", 2
    if model == "package":
        size = product.pricing.package.size
        return pid, f"Packages of {size:,} @ {compiled.unit_price_text}", 2
    if model == "free":
        return pid, "Usage (free)", 2
    return pid, desc, 500


def _comparison(desired, compare: CompareInput, invoices, sub_admitted, sub_blocked, start, end, currency):
    from apimon_cli.billing.invoice import compare_invoices

    rows = [
        CompareRow(r.subscriber, Money(r.old_total, currency), Money(r.new_total, currency),
                   Money(r.difference, currency))
        for r in compare_invoices(list(invoices), list(compare.invoices))
    ]
    zero = Money(quantize(Decimal(0), currency), currency)
    other = compare.desired
    quotas = []
    for sid in sorted(other.subscribers):
        new_sub = other.subscribers[sid]
        new_p = other.products.get(new_sub.product)
        cur_sub = desired.subscribers.get(sid)
        cur_p = desired.products.get(cur_sub.product) if cur_sub is not None else None
        new_q = new_p.quota if new_p is not None else None
        cur_q = cur_p.quota if cur_p is not None else None
        if new_q is None and cur_q is None:
            continue
        per_day = sub_admitted.get(sid, {})
        served = sum(n for d, n in per_day.items() if start <= d <= end)
        refused, over = (0, 0) if new_q is None else Q.refusals(per_day, new_q.limit, new_q.period, start, end)
        quotas.append(
            QuotaImpact(
                sid,
                new_sub.product,
                cur_q.limit if cur_q else None,
                cur_q.period if cur_q else None,
                new_q.limit if new_q else None,
                new_q.period if new_q else None,
                served,
                sub_blocked.get(sid, 0),
                refused,
                pct(refused, served),
                over,
            )
        )
    return Comparison(
        plan=compare.plan,
        rows=rows,
        current_total=sum((r.current for r in rows), zero),
        compared_total=sum((r.compared for r in rows), zero),
        difference=sum((r.difference for r in rows), zero),
        quotas=quotas,
    )


# ---------------------------------------------------------------- JSON


def to_data(obj):
    """Figures as JSON-ready data: money as ``{"amount": "12.50", "currency": "USD"}``, other decimals as
    strings, dates as ISO strings."""
    from dataclasses import fields, is_dataclass

    if isinstance(obj, Money):
        return {"amount": format(obj.amount, "f"), "currency": obj.currency}
    if isinstance(obj, Decimal):
        return format(obj, "f")
    if isinstance(obj, date):
        return obj.isoformat()
    if is_dataclass(obj):
        return {f.name: to_data(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, dict):
        return {(k.isoformat() if isinstance(k, date) else k): to_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_data(v) for v in obj]
    return obj


def report_data(report: Report) -> dict:
    return {"report": FORMAT, **to_data(report)}
