"""`apimon report`, `apimon portal build` and `usage show`'s sparklines, end to end on the local target: apply,
the gateway's usage counters seeded, `usage pull`, then the commands, through the real CLI."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import run_cli
from seed import usage_rows, write_plan

PERIODS = (("2026-10-01", "2026-10-31"), ("2026-11-01", "2026-11-30"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A plan applied to the local target, its usage counters seeded for Oct and Nov 2026 and pulled."""
    tmp = tmp_path_factory.mktemp("report")
    plan = write_plan(tmp)
    r = run_cli("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.output
    rows = usage_rows(date(2026, 10, 1), date(2026, 10, 31)) + usage_rows(date(2026, 11, 1), date(2026, 11, 30))
    with sqlite3.connect(tmp / "state" / "state.db") as conn:
        conn.execute("DELETE FROM usage")
        conn.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?)",
                         [(u.subscriber, u.product, u.day, u.metric, u.count) for u in rows])
    for start, end in PERIODS:
        r = run_cli("usage", "pull", str(plan), "--from", start, "--to", end)
        assert r.code == 0, r.output
    with sqlite3.connect(tmp / "state" / "state.db") as conn:
        keys = [k for (k,) in conn.execute("SELECT api_key FROM subscribers")]
    assert len(keys) == 6
    return tmp, plan, keys


def invoice_lines(plan, period="2026-11", *extra):
    r = run_cli("invoice", str(plan), "--period", period, "--format", "jsonl", *extra)
    assert r.code == 0, r.output
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_report_json_equals_the_invoice_lines_to_the_cent(site):
    _tmp, plan, _keys = site
    r = run_cli("report", str(plan), "--period", "2026-11", "--json")
    assert r.code == 0, r.output
    data = json.loads(r.stdout)
    lines = invoice_lines(plan)
    total = sum(Decimal(x["amount"]) for x in lines)
    assert data["revenue"]["total"] == {"amount": format(total, "f"), "currency": "USD"} == {
        "amount": "1654.15", "currency": "USD"}
    assert sum(Decimal(x["amount"]["amount"]) for x in data["revenue"]["by_line"]) == total
    per_invoice: dict[str, Decimal] = {}
    for x in lines:
        per_invoice[x["subscriber"]] = per_invoice.get(x["subscriber"], Decimal(0)) + Decimal(x["amount"])
    assert {i["subscriber"]: Decimal(i["total"]["amount"]) for i in data["invoices"]} == per_invoice
    prev = sum(Decimal(x["amount"]) for x in invoice_lines(plan, "2026-10"))
    assert Decimal(data["revenue"]["previous_total"]["amount"]) == prev == Decimal("1700.46")
    assert data["period"]["as_of"] == "2026-11-30"  # a past period: as of its last day
    assert not (Path.cwd() / "report-2026-11.html").exists()  # --json alone writes no HTML


def test_report_html_is_self_contained_escaped_and_keyless(site, tmp_path):
    _tmp, plan, keys = site
    out = tmp_path / "r.html"
    r = run_cli("report", str(plan), "--period", "2026-11", "--out", str(out), "--as-of", "2026-11-10")
    assert r.code == 0, r.output
    assert f"Wrote the 2026-11 report to {out}." in r.stderr
    html = out.read_text()
    assert html.count('<g class="bar" data-key="2026-11-') == 30 * 1  # one bar per day (usage chart)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing to fetch
    assert "<script" not in html.lower()
    for key in keys:
        assert key not in html
    assert "billing@acme.example" not in html and "cus_123" not in html  # no email or metadata
    assert 'data-figure="revenue-total">1,654.15 USD<' in html
    assert "runs out on 2026-11-20" in html  # initech at 50 a day against 1,000 a month


def test_report_compare_matches_invoice_compare(site, tmp_path):
    _tmp, plan, _keys = site
    other = tmp_path / "new.yaml"
    other.write_text(plan.read_text().replace('unit_price: "0.001"', 'unit_price: "0.002"')
                     .replace("{limit: 50, period: day}", "{limit: 40, period: day}"))
    r = run_cli("report", str(plan), "--period", "2026-11", "--compare", str(other), "--json")
    assert r.code == 0, r.output
    cmp = json.loads(r.stdout)["comparison"]
    rows = invoice_lines(plan, "2026-11", "--compare", str(other))
    assert [(x["subscriber"], x["compared_total"], x["difference"]) for x in rows] == [
        (x["subscriber"], x["compared"]["amount"], x["difference"]["amount"]) for x in cmp["rows"]]
    assert cmp["difference"] == {"amount": "9.65", "currency": "USD"}  # globex's 9,650 calls at +0.001
    hooli = next(q for q in cmp["quotas"] if q["subscriber"] == "hooli")
    assert (hooli["proposed_limit"], hooli["refused"], hooli["refused_pct"]) == (40, 300, "20.0")


@pytest.mark.parametrize("args,message", [
    (["--period", "2026-13"], "error: --period: invalid month period '2026-13': the month must be 01-12"),
    (["--period", "2026-11", "--as-of", "2026-12-01"], "error: --as-of 2026-12-01 is outside the period 2026-11"),
    (["--period", "2026-11", "--ledger", "nowhere.db"], "error: no ledger at nowhere.db"),
])
def test_report_errors_are_one_line(site, args, message):
    _tmp, plan, _keys = site
    r = run_cli("report", str(plan), *args)
    assert r.code == 1
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_report_compare_refuses_another_currency(site, tmp_path):
    _tmp, plan, _keys = site
    other = tmp_path / "eur.yaml"
    other.write_text(plan.read_text().replace("currency: USD", "currency: EUR"))
    r = run_cli("report", str(plan), "--period", "2026-11", "--compare", str(other), "--json")
    assert r.code == 1 and "bills in EUR, the plan in USD" in r.stderr
    assert json.loads(r.stdout)["errors"]


def test_usage_show_has_a_sparkline_per_day(site):
    _tmp, plan, _keys = site
    r = run_cli("usage", "show", str(plan), "--period", "2026-11")
    assert r.code == 0, r.output
    assert "calls per day" in r.stdout
    initech = next(line for line in r.stdout.splitlines() if line.strip().startswith(("│ initech", "initech")))
    # 50 calls a day for 20 days, then 30 blocked a day: full blocks, then 30/50 of the height
    assert "█" * 20 + "▅" * 10 in initech
    umbrella = next(line for line in r.stdout.splitlines() if "umbrella" in line)
    assert "  █" + " " * 27 in umbrella  # 12 blocked calls on the 3rd only
    r = run_cli("usage", "show", str(plan), "--period", "2026-11", "--by", "day")
    assert "calls per day" not in r.stdout  # a row per day already


def _statements(site_dir: Path) -> dict[str, dict]:
    out = {}
    for f in site_dir.glob("s/*/usage.json"):
        data = json.loads(f.read_text())
        out[data["subscriber"]] = {"token": f.parent.name, **data}
    return out


def test_portal_build_pricing_page_and_statements(site, tmp_path):
    tmp, plan, keys = site
    out = tmp_path / "site"
    r = run_cli("portal", "build", str(plan), "--out", str(out), "--period", "2026-11", "--as-of", "2026-11-10")
    assert r.code == 0, r.output
    assert "index.html (4 public products) and 6 statements for 2026-11" in r.stdout
    index = (out / "index.html").read_text()
    for name in ("Free", "Trial", "Starter", "Pro"):
        assert f">{name}</h2>" in index
    assert "Enterprise" not in index and "enterprise" not in index  # public: false
    assert "Try the API, no card needed (R&amp;D &lt;beta&gt;)" in index  # descriptions are text
    # the worked example: 100,000 calls, by the pricing engine: starter 29 + 90,000 x 0.001; pro 199 + 80 -> 279
    assert ("100,000 calls in a month cost 0.00 USD on Free, 5.00 USD on Trial, 119.00 USD on Starter, "
            "279.00 USD on Pro.") in index
    statements = _statements(out)
    assert sorted(statements) == ["acme", "globex", "hooli", "initech", "umbrella", "wayne"]
    lines = invoice_lines(plan)
    for sid, st in statements.items():
        assert re.fullmatch(r"[0-9a-f]{32}", st["token"])
        expected = sum(Decimal(x["amount"]) for x in lines if x["subscriber"] == sid)
        assert Decimal(st["invoice"]["total"]["amount"]) == expected
        page = (out / "s" / st["token"] / "index.html").read_text()
        assert '<meta name="robots" content="noindex, nofollow">' in page
        assert page.count('<g class="bar" data-key="2026-11-') == 30
    initech = statements["initech"]
    assert initech["quota"]["exhausts_on"] == "2026-11-20" and initech["quota"]["used"] == 500
    alt = {a["product"]: a for a in statements["globex"]["alternatives"]}
    assert set(alt) == {"free", "trial", "pro"}  # the other public products, not the hidden one
    assert alt["pro"]["amount"] == {"amount": "250.00", "currency": "USD"}
    assert alt["free"]["within_quota"] is False  # 19,710 calls against 1,000 a month
    text = "".join(p.read_text() for p in out.rglob("*") if p.is_file())
    for key in keys:
        assert key not in text
    assert "billing@acme.example" not in text and "cus_123" not in text
    tokens_file = tmp / ".apimon" / "portal-tokens.json"
    assert stat.S_IMODE(os.stat(tokens_file).st_mode) == 0o600
    assert json.loads(tokens_file.read_text())["tokens"] == {s: st["token"] for s, st in statements.items()}


def test_portal_tokens_are_stable_rotatable_and_removed_subscribers_go(site, tmp_path):
    _tmp, plan, _keys = site
    out = tmp_path / "site"
    assert run_cli("portal", "build", str(plan), "--out", str(out), "--period", "2026-11").code == 0
    first = {s: st["token"] for s, st in _statements(out).items()}
    assert run_cli("portal", "build", str(plan), "--out", str(out), "--period", "2026-11").code == 0
    assert {s: st["token"] for s, st in _statements(out).items()} == first
    r = run_cli("portal", "build", str(plan), "--out", str(out), "--period", "2026-11", "--rotate", "acme",
                "--show-links")
    assert r.code == 0, r.output
    again = {s: st["token"] for s, st in _statements(out).items()}
    assert again["acme"] != first["acme"] and {k: v for k, v in again.items() if k != "acme"} == {
        k: v for k, v in first.items() if k != "acme"}
    assert f"acme: s/{again['acme']}/" in r.stdout
    assert not (out / "s" / first["acme"]).exists()  # the old address is gone from the site
    fewer = tmp_path / "fewer.yaml"
    fewer.write_text(plan.read_text().replace("  wayne: {product: pro}\n", ""))
    r = run_cli("portal", "build", str(fewer), "--out", str(out), "--period", "2026-11",
                "--ledger", str(plan.parent / ".apimon" / "ledger.db"))
    assert r.code == 0, r.output
    assert "wayne" not in _statements(out) and not (out / "s" / first["wayne"]).exists()


def test_portal_refuses_a_directory_it_did_not_write(site, tmp_path):
    _tmp, plan, _keys = site
    out = tmp_path / "docs"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run_cli("portal", "build", str(plan), "--out", str(out), "--period", "2026-11")
    assert r.code == 1 and "is not empty and was not written by apimon portal build" in r.stderr
    assert (out / "keep.txt").read_text() == "mine" and not (out / "index.html").exists()
    r = run_cli("portal", "build", str(plan), "--out", str(tmp_path / "s2"), "--rotate", "nobody")
    assert r.code == 1 and "--rotate: 'nobody' is not a subscriber of the plan" in r.stderr


def test_env_values_are_masked_in_the_html(tmp_path):
    plan = write_plan(tmp_path)
    plan.write_text(plan.read_text().replace("display_name: Pro\n", "display_name: ${env:PRO_NAME}\n"))
    env = {"PRO_NAME": "Top-Secret-Tier"}
    assert run_cli("apply", str(plan), "--auto-approve", env=env).code == 0
    assert run_cli("usage", "pull", str(plan), "--from", "2026-11-01", "--to", "2026-11-30", env=env).code == 0
    out = tmp_path / "r.html"
    r = run_cli("report", str(plan), "--period", "2026-11", "--out", str(out), env=env)
    assert r.code == 0, r.output
    assert "Top-Secret-Tier" not in out.read_text() and "***" in out.read_text()
    r = run_cli("portal", "build", str(plan), "--out", str(tmp_path / "site"), "--period", "2026-11", env=env)
    assert r.code == 0, r.output
    assert "Top-Secret-Tier" not in (tmp_path / "site" / "index.html").read_text()
