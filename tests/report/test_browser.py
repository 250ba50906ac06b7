"""The report and the portal in a real browser: Debian's chromium, headless, driven over the DevTools protocol
(tests/report/cdp.py). Pages load from file://; nothing may reach for the network; the charts' SVG has the
bars the JSON says; key figures read the same on the page as in the JSON; screenshots at 1280 and 390 px go
to out/browser/ (APIMON_ARTIFACTS overrides; APIMON_UPDATE_DOCS=1 also refreshes the two under docs/).

`make test` installs chromium when /usr/bin/chromium is missing. With CI set a missing browser fails the
tests; without CI they skip with one line saying why.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from cdp import CHROMIUM, Browser
from conftest import ROOT, run_cli
from seed import usage_rows, write_plan

ARTIFACTS = Path(os.environ.get("APIMON_ARTIFACTS") or ROOT / "out" / "browser")
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        reason = f"{CHROMIUM} is missing (make test installs Debian's chromium: apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with Browser() as b:
        yield b


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The seeded plan applied and pulled, its report (HTML + JSON) and its portal, built through the CLI."""
    tmp = tmp_path_factory.mktemp("browser")
    plan = write_plan(tmp)
    assert run_cli("apply", "plan.yaml", "--auto-approve", cwd=tmp).code == 0
    rows = usage_rows(date(2026, 10, 1), date(2026, 10, 31)) + usage_rows(date(2026, 11, 1), date(2026, 11, 30))
    with sqlite3.connect(tmp / "state" / "state.db") as conn:
        conn.execute("DELETE FROM usage")
        conn.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?)",
                         [(u.subscriber, u.product, u.day, u.metric, u.count) for u in rows])
    for start, end in (("2026-10-01", "2026-10-31"), ("2026-11-01", "2026-11-30")):
        assert run_cli("usage", "pull", "plan.yaml", "--from", start, "--to", end, cwd=tmp).code == 0
    report = tmp / "report.html"
    r = run_cli("report", "plan.yaml", "--period", "2026-11", "--as-of", "2026-11-20", "--out", "report.html",
                "--json", cwd=tmp)
    assert r.code == 0, r.output
    data = json.loads(r.stdout)  # the same run wrote the HTML
    site = tmp / "site"
    r = run_cli("portal", "build", "plan.yaml", "--out", "site", "--period", "2026-11", "--as-of", "2026-11-20",
                cwd=tmp)
    assert r.code == 0, r.output
    return {"report": report, "data": data, "site": site, "plan": plan}


def money(m: dict) -> str:
    return f"{Decimal(m['amount']):,} {m['currency']}"


def load(browser, path: Path):
    page = browser.new_page()
    page.goto(path.as_uri())
    return page


def assert_offline(page, path: Path) -> None:
    """The only request is the page itself; the page names no external resource; no CSP refusal was logged."""
    assert page.requests == [path.as_uri()], page.requests
    external = page.eval(
        "[...document.querySelectorAll('[src],[href],link,script,img,iframe,object,embed')]"
        ".map(e => e.getAttribute('src') || e.getAttribute('href') || e.tagName)"
        ".filter(u => !/^(#|usage\\.json$)/.test(u))"
    )
    assert external == [], external
    assert page.eval("performance.getEntriesByType('resource').length") == 0
    refused = [e for e in page.log if e.get("source") == "security" or "Content Security Policy" in e.get("text", "")]
    assert not refused, refused


def assert_fits(page, width: int) -> None:
    page.set_width(width)
    page.eval("new Promise(r => requestAnimationFrame(() => r(1)))")
    assert page.eval("document.documentElement.scrollWidth") <= width  # the page itself never scrolls sideways


def shots(page, name: str) -> list[Path]:
    out = []
    for width in (1280, 390):
        assert_fits(page, width)
        out.append(page.screenshot(ARTIFACTS / f"{name}-{width}.png", width))
    assert all(p.stat().st_size > 10_000 for p in out)
    return out


def test_the_harness_sees_a_page_that_reaches_for_the_network(browser, tmp_path):
    """Guard for the offline assertions: a page with external references is caught (and resolves nowhere)."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><link rel="stylesheet" href="https://cdn.example.com/x.css"></head>'
                   '<body><img src="http://example.invalid/pixel.png"></body></html>')
    page = load(browser, bad)
    assert any(u.startswith("http") for u in page.requests), page.requests
    with pytest.raises(AssertionError):
        assert_offline(page, bad)
    # behind the pages' own Content-Security-Policy the attempt is still seen (and logged as refused)
    from apimon_cli.report.page import Html
    from apimon_cli.report.page import page as make_page

    csp = tmp_path / "csp.html"
    csp.write_text(make_page("t", '<img src="http://example.invalid/pixel.png" alt="">', h=Html()))
    page = load(browser, csp)
    assert "http://example.invalid/pixel.png" in page.requests
    assert any(e.get("source") == "security" for e in page.log), page.log


def test_report_in_the_browser(browser, built):
    path, data = built["report"], built["data"]
    page = load(browser, path)
    assert_offline(page, path)
    # usage per day: one bar per day, one segment per product with calls that day, values as in the JSON
    bars = page.eval("""[...document.querySelectorAll('svg[data-chart="usage-by-day"] g.bar')].map(g => ({
        key: g.dataset.key,
        segs: [...g.querySelectorAll('rect.seg')].map(r => [r.dataset.series, Number(r.dataset.value)])}))""")
    days = data["usage"]["days"]
    assert len(bars) == len(days) == 30
    for bar, day in zip(bars, days, strict=True):
        assert bar["key"] == day["day"]
        assert dict(bar["segs"]) == {p: n for p, n in day["calls"].items() if n}
    shares = page.eval("""[...document.querySelectorAll('svg[data-chart="success-blocked"] g.bar')]
        .map(g => [g.dataset.key, g.querySelectorAll('rect.seg').length])""")
    assert [k for k, _n in shares] == [p["product"] for p in data["usage"]["by_product"]]
    revenue_bars = page.eval("""[...document.querySelectorAll('svg[data-chart="revenue-by-product"] g.bar')]
        .map(g => g.dataset.key)""")
    assert revenue_bars == [p["product"] for p in data["revenue"]["by_product"]]
    # key figures: the same text as the JSON
    figure = "document.querySelector('[data-figure=\"%s\"]').textContent"
    assert page.eval(figure % "revenue-total") == money(data["revenue"]["total"]) == "1,654.15 USD"
    assert page.eval(figure % "revenue-recurring") == money(data["revenue"]["recurring"])
    assert page.eval(figure % "calls-total") == f"{data['usage']['calls']:,}"
    assert page.eval(figure % "calls-blocked") == f"{data['usage']['blocked']:,}"
    foot = page.eval("document.querySelector('[data-table=\"revenue-lines\"] tfoot').textContent")
    assert money(data["revenue"]["total"]) in foot
    top = page.eval("""[...document.querySelectorAll('[data-table="top-revenue"] tbody tr')]
        .map(tr => [tr.cells[0].textContent, tr.cells[3].textContent])""")
    assert top == [[s["subscriber"], money(s["total"])] for s in data["top_by_revenue"]]
    headroom = page.eval("""Object.fromEntries([...document.querySelectorAll('[data-table="headroom"] tbody tr')]
        .map(tr => [tr.cells[0].textContent, tr.cells[4].textContent]))""")
    assert headroom == {h["subscriber"]: f"{h['quota']['used']:,} of {h['quota']['limit']:,}" for h in data["headroom"]}
    # tables have header semantics; headings in order
    assert page.eval("document.querySelectorAll('th[scope=col]').length") > 20
    assert page.eval("[...document.querySelectorAll('h1')].length") == 1
    pdf = base64.b64decode(page.send("Page.printToPDF", {"printBackground": True})["data"])
    assert pdf.startswith(b"%PDF") and len(pdf) > 20_000  # printable
    shots(page, "report")
    if os.environ.get("APIMON_UPDATE_DOCS"):  # the README's picture: the top of the report
        page.screenshot(DOCS / "report-1280.png", 1280, max_height=2300)


def test_portal_in_the_browser(browser, built):
    from apimon_cli.planfile.loader import load_or_raise
    from apimon_cli.portal.site import examples, public_products

    site = built["site"]
    index = site / "index.html"
    page = load(browser, index)
    assert_offline(page, index)
    desired = load_or_raise([str(built["plan"])]).desired
    public = public_products(desired)
    assert page.eval("[...document.querySelectorAll('section.product h2')].map(h => h.textContent)") == [
        p.display_name for p in public]
    cells = page.eval("""[...document.querySelectorAll('[data-table="examples"] tbody tr')]
        .map(tr => [...tr.cells].map(c => c.textContent))""")
    expected = [[f"{e.quantity:,}", *[f"{e.amounts[p.id].amount:,} USD" + (" *" if e.over_quota[p.id] else "")
                                      for p in public]] for e in examples(desired)]
    assert cells == expected
    _, index_390 = shots(page, "portal-index")

    statement = next(site.glob("s/*/usage.json"))
    for st_file in site.glob("s/*/usage.json"):
        if json.loads(st_file.read_text())["subscriber"] == "initech":
            statement = st_file
    data = json.loads(statement.read_text())
    html = statement.parent / "index.html"
    page = load(browser, html)
    assert_offline(page, html)
    bars = page.eval("""[...document.querySelectorAll('svg[data-chart="usage-by-day"] g.bar')].map(g =>
        Object.fromEntries([...g.querySelectorAll('rect.seg')]
            .map(r => [r.dataset.series, Number(r.dataset.value)])))""")
    assert len(bars) == len(data["days"]) == 30
    for bar, day in zip(bars, data["days"], strict=True):
        want = {"success": day["success"], "blocked": day["blocked"], "other": day["failed"] + day["other"]}
        assert bar == {k: v for k, v in want.items() if v}
    figure = "document.querySelector('[data-figure=\"%s\"]').textContent"
    assert page.eval(figure % "invoice-total") == money(data["invoice"]["total"])
    assert page.eval(figure % "quota-used").startswith(f"{data['quota']['used']:,} of {data['quota']['limit']:,}")
    assert page.eval("document.querySelector('meta[name=robots]').content") == "noindex, nofollow"
    shots(page, "portal-statement")
    if os.environ.get("APIMON_UPDATE_DOCS"):
        DOCS.mkdir(exist_ok=True)
        (DOCS / "portal-390.png").write_bytes(index_390.read_bytes())
