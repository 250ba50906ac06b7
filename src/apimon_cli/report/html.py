"""`apimon report` as one self-contained HTML file: the figures of ``report.figures``, charts in inline SVG."""

from __future__ import annotations

from decimal import Decimal

from . import svg
from .figures import Money, Report
from .page import Html, Mask, page

_STATUS = {
    "exhausted": "used up",
    "at_risk": "runs out before the reset",
    "ok": "lasts until the reset",
    "idle": "no calls yet",
}
_PERIOD = {"day": "day", "week": "ISO week", "month": "month"}


def money(m: Money | None) -> str:
    return "" if m is None else f"{m.amount:,} {m.currency}"


def signed(m: Money) -> str:
    return f"{m.amount:+,} {m.currency}"


def pct_text(p: Decimal | None) -> str:
    return "–" if p is None else f"{p} %"


def _change_class(d: Decimal) -> str:
    return "neg" if d < 0 else ("pos" if d > 0 else "")


def render_report(report: Report, *, mask: Mask | None = None) -> str:
    h = Html(mask)
    r = report
    per = r.period
    names = {p.id: h.mask(p.display_name) for p in r.products}
    colours = {p.id: svg.colour(i) for i, p in enumerate(r.products)}
    rev = r.revenue

    def name(pid: str) -> str:
        return names.get(pid, pid)

    out: list[str] = []
    out.append(
        f"<header><h1>Usage and revenue, {h.t(per.label)}</h1>"
        f'<p class="muted">{h.t(per.start)} to {h.t(per.end)} ({per.days} days), UTC; headroom as of '
        f"{h.t(per.as_of)}. Plan: {h.t(', '.join(r.plan_files) or '-')}; amounts in {h.t(r.currency)}; billable "
        f"metric {h.t(r.metric)}.</p></header><main>"
    )

    # --- summary
    out.append('<section aria-labelledby="summary"><h2 id="summary">Summary</h2><dl class="cards">')

    def card(label: str, value: str, figure: str, small: str = "") -> None:
        sub = f"<small>{h.t(small)}</small>" if small else ""
        value_html = f'<span data-figure="{figure}">{h.t(value)}</span>'
        out.append(f'<div class="card"><dt>{h.t(label)}</dt><dd>{value_html}{sub}</dd></div>')

    card("Revenue this period", money(rev.total), "revenue-total",
         f"{signed(rev.change)} ({pct_text(rev.change_pct)}) vs {per.previous_label}")
    card("Recurring (MRR-style)", money(rev.recurring), "revenue-recurring",
         f"{per.previous_label}: {money(rev.previous_recurring)}")
    card("Calls", f"{r.usage.calls:,}", "calls-total", f"{r.usage.billable:,} billable")
    card("Blocked calls", f"{r.usage.blocked:,}", "calls-blocked",
         f"leakage {money(r.leakage.on_current_pricing)} on current pricing")
    card("Invoices", f"{rev.invoices:,}", "invoices", f"{rev.paying_subscribers:,} above zero")
    out.append("</dl></section>")

    # --- usage per day per product
    days = r.usage.days
    keys = [d.day.isoformat() for d in days]
    ticks = [d.day.strftime("%d") for d in days]
    used_products = [p for p in r.products if any(d.calls.get(p.id) for d in days)]
    series = [svg.Series(p.id, name(p.id), colours[p.id], [d.calls.get(p.id, 0) for d in days])
              for p in used_products]
    out.append('<section aria-labelledby="usage"><h2 id="usage">Usage per day, by product</h2>')
    out.append('<p class="muted">Every call the gateway saw (success, blocked, failed and other), per UTC day, '
               "stacked by product.</p>")
    out.append('<div class="chart scroll">' + svg.stacked_bars(
        "usage-by-day", keys, ticks, series,
        title=f"Calls per day in {per.label}, stacked by product",
        desc=f"{len(days)} bars, one per day; {r.usage.calls:,} calls in all.",
    ) + "</div>")
    out.append("<details><summary>The numbers per day</summary>")
    out.append(h.table(
        f"Calls per day and product, {per.label}",
        ["day", *[p.display_name for p in used_products], "total"],
        ([d.day.isoformat(), *[f"{d.calls.get(p.id, 0):,}" for p in used_products],
          f"{sum(d.calls.values()):,}"] for d in days),
        numeric=range(1, len(used_products) + 2),
        attrs=' data-table="usage-by-day"',
    ))
    out.append("</details></section>")

    # --- success vs blocked
    out.append('<section aria-labelledby="shares"><h2 id="shares">Success vs blocked, by product</h2>')
    out.append('<p class="muted">Blocked: refused by the gateway (401, 403, 429: no or disabled key, rate limit, '
               "quota). Failed and other: 400/5xx and the rest (e.g. 404).</p>")
    rows = [(u.product, name(u.product), [("success", "success", svg.SUCCESS, u.success),
                                          ("blocked", "blocked", svg.BLOCKED, u.blocked),
                                          ("other", "failed/other", svg.OTHER, u.failed + u.other)])
            for u in r.usage.by_product]
    out.append('<div class="chart scroll">' + svg.share_bars(
        "success-blocked", rows, title="Share of successful and blocked calls per product",
        desc=f"{len(rows)} products; each bar is 100 % of the product's calls.",
    ) + "</div>")
    out.append(h.table(
        "Calls by product and outcome",
        ["product", "calls", "success", "blocked", "failed + other", "billable", "success share", "blocked share"],
        ([name(u.product), f"{u.calls:,}", f"{u.success:,}", f"{u.blocked:,}", f"{u.failed + u.other:,}",
          f"{u.billable:,}", pct_text(u.success_pct), pct_text(u.blocked_pct)] for u in r.usage.by_product),
        numeric=range(1, 8),
    ))
    out.append("</section>")

    # --- revenue
    out.append('<section aria-labelledby="revenue"><h2 id="revenue">Revenue</h2>')
    out.append(h.table(
        f"Revenue {per.label} vs {per.previous_label}",
        ["", per.label, per.previous_label, "change", "change %"],
        [["total", money(rev.total), money(rev.previous_total), signed(rev.change), pct_text(rev.change_pct)],
         ["recurring (MRR-style: without setup fees)", money(rev.recurring), money(rev.previous_recurring),
          signed(rev.recurring_change), pct_text(rev.recurring_change_pct)]],
        numeric=range(1, 5),
    ))
    out.append('<p class="note">Both periods are priced as <code>apimon invoice</code> prices them: the current plan '
               "over the ledger's usage.</p>")
    out.append("<h3>By product</h3>")
    out.append('<div class="chart scroll">' + svg.hbars(
        "revenue-by-product",
        [(p.product, name(p.product), p.amount.amount, money(p.amount)) for p in rev.by_product],
        title=f"Revenue by product, {per.label}", desc=f"{len(rev.by_product)} products, {money(rev.total)} in all.",
        fill=lambda i: colours.get(rev.by_product[i].product, svg.colour(i)),
    ) + "</div>")
    out.append(h.table(
        "Revenue by product and tier line (sums of the invoices' lines)",
        ["product", "line", "quantity", "lines", "amount"],
        ([name(line.product), line.label, f"{line.quantity:,}" if line.quantity else "", f"{line.lines:,}",
          money(line.amount)] for line in rev.by_line),
        numeric=(2, 3, 4),
        foot=["total", "", "", f"{sum(line.lines for line in rev.by_line):,}", money(rev.total)],
        attrs=' data-table="revenue-lines"',
    ))
    out.append("</section>")

    # --- top subscribers
    out.append('<section aria-labelledby="top"><h2 id="top">Top subscribers</h2><div class="grid2"><div>')
    out.append(h.table(
        "By calls", ["subscriber", "product", "calls", "billable", "blocked"],
        ([s.subscriber, name(s.product), f"{s.calls:,}", f"{s.billable:,}", f"{s.blocked:,}"] for s in r.top_by_calls),
        numeric=(2, 3, 4),
        attrs=' data-table="top-calls"',
    ))
    out.append("</div><div>")
    out.append(h.table(
        "By revenue", ["subscriber", "product", "billable", "invoice total"],
        ([s.subscriber, name(s.product), f"{s.billable:,}", money(s.total)] for s in r.top_by_revenue),
        numeric=(2, 3),
        attrs=' data-table="top-revenue"',
    ))
    out.append("</div></div></section>")

    # --- quota headroom
    out.append('<section aria-labelledby="headroom"><h2 id="headroom">Quota headroom</h2>')
    out.append(f'<p class="muted">The quota window that contains {h.t(per.as_of)}, counted as the gateway counts '
               "it (calls admitted per UTC day, ISO week or calendar month); the burn rate is the window's calls so "
               "far per elapsed day.</p>")
    out.append(h.table(
        "Quota headroom per subscriber",
        ["subscriber", "product", "quota", "window", "used", "used %", "calls/day", "days to exhaust", "status",
         "windows used up"],
        ([x.subscriber, name(x.product), f"{x.quota.limit:,} per {_PERIOD[x.quota.period]}",
          f"{x.quota.window_start} to {x.quota.window_end}", f"{x.quota.used:,} of {x.quota.limit:,}",
          f"{x.quota.used_pct} %", f"{x.quota.burn_rate:,}",
          "" if x.quota.days_to_exhaust is None else f"{x.quota.days_to_exhaust:,}",
          _status_text(x.quota), f"{x.quota.windows_exhausted} of {x.quota.windows_in_period}"]
         for x in r.headroom),
        numeric=(4, 5, 6, 7, 9),
        attrs=' data-table="headroom"',
    ))
    out.append("</section>")

    # --- candidates
    out.append('<section aria-labelledby="candidates"><h2 id="candidates">Upgrade and downgrade candidates</h2>')
    out.append('<p class="muted">Priced by the pricing engine for this period\'s usage, setup fees left out. '
               "<em>Would pay less</em>: another product whose quota admits the calls it made. <em>Would stop being "
               "throttled</em>: the cheapest product whose quota and rate limit would have admitted the blocked "
               "calls too, priced with them.</p>")
    out.append(h.table(
        "Candidates", ["subscriber", "product", "candidate", "why", "quantity priced", "now", "on candidate",
                       "difference"],
        ([c.subscriber, name(c.product), name(c.candidate),
          "would pay less" if c.kind == "pays_less" else "would stop being throttled",
          f"{c.quantity:,}", money(c.current), money(c.candidate_amount), signed(c.difference)]
         for c in r.candidates),
        numeric=(4, 5, 6, 7),
        attrs=' data-table="candidates"',
    ))
    out.append("</section>")

    # --- leakage
    lk = r.leakage
    out.append('<section aria-labelledby="leakage"><h2 id="leakage">Blocked-call leakage</h2>')
    out.append('<p class="muted">Calls the gateway refused (quota, rate limit, key), what they would have earned on '
               "the subscriber's own pricing had they been admitted, and the bill on the next tier that admits "
               "them.</p>")
    out.append(h.table(
        "Leakage per subscriber",
        ["subscriber", "product", "blocked calls", "on current pricing", "next tier", "bill on next tier", "extra"],
        ([x.subscriber, name(x.product), f"{x.blocked:,}", money(x.on_current_pricing),
          name(x.next_product) if x.next_product else "none admits them", money(x.next_amount),
          "" if x.next_extra is None else signed(x.next_extra)] for x in lk.rows),
        numeric=(2, 3, 5, 6),
        foot=["total", "", f"{lk.blocked:,}", money(lk.on_current_pricing), "", "", signed(lk.next_extra)],
        attrs=' data-table="leakage"',
    ))
    out.append("</section>")

    # --- comparison
    if r.comparison is not None:
        c = r.comparison
        out.append(f'<section aria-labelledby="compare"><h2 id="compare">Compared with {h.t(c.plan)}</h2>')
        out.append(h.table(
            f"Revenue impact {per.label}: current plan vs {c.plan}",
            ["subscriber", "current", "compared", "difference"],
            ([x.subscriber, money(x.current), money(x.compared), signed(x.difference)] for x in c.rows),
            numeric=(1, 2, 3),
            foot=["total", money(c.current_total), money(c.compared_total), signed(c.difference)],
            attrs=' data-table="compare"',
        ))
        out.append(h.table(
            f"Proposed quotas: calls of {per.label} they would have refused",
            ["subscriber", "product", "current quota", "proposed quota", "calls admitted", "blocked now",
             "would refuse", "share", "windows over"],
            ([q.subscriber, q.product, _quota(q.current_limit, q.current_period),
              _quota(q.proposed_limit, q.proposed_period), f"{q.admitted:,}", f"{q.blocked:,}", f"{q.refused:,}",
              pct_text(q.refused_pct), f"{q.windows_over:,}"] for q in c.quotas),
            numeric=(4, 5, 6, 7, 8),
            attrs=' data-table="compare-quotas"',
        ))
        out.append("</section>")

    out.append("</main><footer><p>Made by <code>apimon report</code> from the plan and the usage ledger. "
               "Definitions: README, “Reports and portal”.</p></footer>")
    return page(f"apimon report {per.label}", "".join(out), h=h, description=f"Usage and revenue {per.label}")


def _status_text(q) -> str:
    if q.status == "at_risk" and q.exhausts_on is not None:
        return f"runs out on {q.exhausts_on}"
    if q.status == "ok":
        return f"lasts until the reset on {q.resets_on}"
    return _STATUS.get(q.status, q.status)


def _quota(limit: int | None, period: str | None) -> str:
    return "none" if limit is None else f"{limit:,} per {_PERIOD.get(period, period)}"
