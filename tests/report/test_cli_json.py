"""`--json` on usage show, invoice, keys show, import and validate, and JSON errors, through the real CLI on the
local target with a seeded ledger (tests/report/seed.py)."""

from __future__ import annotations

import json
import sqlite3
from datetime import date
from decimal import Decimal

import pytest
from conftest import run_cli
from seed import usage_rows, write_plan

ERROR_FIELDS = ["file", "line", "column", "field", "message"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("json")
    plan = write_plan(tmp)
    assert run_cli("apply", str(plan), "--auto-approve").code == 0
    rows = usage_rows(date(2026, 11, 1), date(2026, 11, 30))
    with sqlite3.connect(tmp / "state" / "state.db") as conn:
        conn.execute("DELETE FROM usage")
        conn.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?)",
                         [(u.subscriber, u.product, u.day, u.metric, u.count) for u in rows])
    r = run_cli("usage", "pull", str(plan), "--from", "2026-11-01", "--to", "2026-11-30")
    assert r.code == 0, r.output
    return tmp, plan


def test_usage_show_json_matches_the_table(site):
    _tmp, plan = site
    r = run_cli("usage", "show", str(plan), "--period", "2026-11", "--json")
    assert r.code == 0, r.output
    doc = json.loads(r.stdout)
    assert (doc["period"], doc["start"], doc["end"], doc["by"]) == ("2026-11", "2026-11-01", "2026-11-30",
                                                                    "subscriber")
    rows = {row["subscriber"]: row for row in doc["rows"]}
    assert doc["total"]["success"] == sum(row["success"] for row in rows.values()) > 0
    assert len(rows["acme"]["calls_per_day"]) == 30
    table = run_cli("usage", "show", str(plan), "--period", "2026-11").stdout
    assert f"{rows['acme']['success']:,}" in table
    r = run_cli("usage", "show", str(plan), "--period", "2026-11", "--by", "day", "--json")
    days = json.loads(r.stdout)["rows"]
    assert [d["day"] for d in days][:2] == ["2026-11-01", "2026-11-02"] and "calls_per_day" not in days[0]


def test_invoice_json_is_one_document_with_exact_amounts(site):
    _tmp, plan = site
    r = run_cli("invoice", str(plan), "--period", "2026-11", "--json")
    assert r.code == 0, r.output
    doc = json.loads(r.stdout)
    lines = [json.loads(x) for x in run_cli("invoice", str(plan), "--period", "2026-11", "--format",
                                            "jsonl").stdout.splitlines()]
    assert sum(len(i["lines"]) for i in doc["invoices"]) == len(lines)
    for inv in doc["invoices"]:
        assert Decimal(inv["total"]) == sum(Decimal(x["amount"]) for x in inv["lines"])
        assert all(x["currency"] == inv["currency"] == "USD" for x in inv["lines"])
    assert doc["totals"] == [{"amount": str(sum(Decimal(x["amount"]) for x in lines)), "currency": "USD"}]


def test_keys_show_json(site):
    tmp, plan = site
    with sqlite3.connect(tmp / "state" / "state.db") as conn:
        (key,) = conn.execute("SELECT api_key FROM subscribers WHERE id = 'acme'").fetchone()
    r = run_cli("keys", "show", "acme", "--plan", str(plan), "--json")
    assert r.code == 0 and json.loads(r.stdout) == {"subscriber": "acme", "key": key}
    r = run_cli("keys", "show", "nobody", "--plan", str(plan), "--json")
    assert r.code == 1
    (err,) = json.loads(r.stdout)["errors"]
    assert list(err) == ERROR_FIELDS and "nobody" in err["message"]


def test_import_json_lists_what_was_imported(site, tmp_path):
    tmp, _plan = site
    out = tmp_path / "imported.yaml"
    r = run_cli("import", "--provider", "local", "--state-dir", str(tmp / "state"), "--out", str(out), "--json")
    assert r.code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["file"] == str(out) and "plan" not in doc
    assert sorted(doc["subscribers"]) == ["acme", "globex", "hooli", "initech", "umbrella", "wayne"]
    assert "acme" in out.read_text()
    r = run_cli("import", "--provider", "local", "--state-dir", str(tmp / "state"), "--json")
    assert "subscribers:" in json.loads(r.stdout)["plan"]


BAD = "apimon: 1\ntarget: {provider: local}\nproducts:\n  x: {display_name: X, pricing: {model: flat}}\n"


def test_validate_json(site, tmp_path):
    _tmp, plan = site
    r = run_cli("validate", str(plan), "--json")
    assert r.code == 0
    doc = json.loads(r.stdout)
    assert doc["valid"] is True and doc["products"] == 5 and doc["subscribers"] == 6 and doc["errors"] == []
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    r = run_cli("validate", str(bad), "--json")
    assert r.code == 1
    doc = json.loads(r.stdout)
    assert doc["valid"] is False
    (err,) = doc["errors"]
    assert list(err) == ERROR_FIELDS
    assert (err["file"], err["line"], err["field"]) == (str(bad), 4, "products.x.pricing.fee")
    assert isinstance(err["column"], int) and err["message"]


@pytest.mark.parametrize("command", [
    ["validate", "{bad}"],
    ["plan", "{bad}"],
    ["apply", "{bad}", "--auto-approve"],
    ["usage", "show", "{bad}"],
    ["invoice", "{bad}", "--period", "2026-11"],
    ["keys", "show", "acme", "--plan", "{bad}"],
    ["report", "{bad}", "--period", "2026-11"],
    ["billing", "push", "{bad}", "--period", "2026-11"],
], ids=lambda c: " ".join(c[:2]))
def test_every_json_command_reports_plan_errors_as_located_json(tmp_path, command):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    r = run_cli(*[a.format(bad=bad) for a in command], "--json")
    assert r.code == 1, r.output
    errors = json.loads(r.stdout)["errors"]
    assert errors and all(list(e) == ERROR_FIELDS for e in errors)
    assert errors[0]["file"] == str(bad) and errors[0]["line"] == 4 and errors[0]["field"] == "products.x.pricing.fee"
    assert "products.x.pricing.fee" in r.stderr  # the human line is still on stderr


def test_a_command_line_mistake_with_json_is_json_too(site):
    _tmp, plan = site
    r = run_cli("invoice", str(plan), "--period", "2026-11", "--json", "--no-such-option")
    assert r.code == 1
    (err,) = json.loads(r.stdout)["errors"]
    assert "--no-such-option" in err["message"] and err["file"] is None
