"""usage pull/show/export and invoice, end to end on the local target, through the real CLI."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import run_cli, write_plan

PLAN = """
apimon: 1
target: {provider: local, local: {state_dir: state}}
billing: {currency: USD, metric: success}
products:
  starter:
    display_name: Starter
    pricing: {model: per_unit, fee: "29.00", included: 10000, unit_price: "0.001", setup_fee: "10.00"}
  pro:
    display_name: Pro
    pricing:
      model: graduated
      fee: "199.00"
      tiers:
        - {up_to: 1000000, unit_price: "0.0008"}
        - {up_to: inf, unit_price: "0.0005"}
      minimum: "250.00"
subscribers:
  acme: {product: pro, metadata: {customer_id: "=HYPERLINK(\\"http://evil\\")"}}
  globex: {product: starter, metadata: {customer_id: cus_456}}
"""


def seed(tmp_path: Path, rows: list[tuple]) -> None:
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        conn.execute("DELETE FROM usage")
        conn.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?)", rows)


@pytest.fixture
def plan(tmp_path):
    p = write_plan(tmp_path / "plan.yaml", PLAN)
    assert run_cli("apply", str(p), "--auto-approve").code == 0
    seed(tmp_path, [
        ("acme", "pro", "2026-11-02", "success", 1_200_000), ("acme", "pro", "2026-11-02", "blocked", 40),
        ("acme", "pro", "2026-11-02", "total", 1_200_040),
        ("globex", "starter", "2026-11-03", "success", 15_000), ("globex", "starter", "2026-11-03", "total", 15_000),
        ("globex", "starter", "2026-12-01", "success", 7),  # outside the window pulled
    ])
    return p


def pull(plan, frm="2026-11-01", to="2026-11-30"):
    return run_cli("usage", "pull", str(plan), "--from", frm, "--to", to)


def test_pull_is_idempotent_and_reports_revisions(plan, tmp_path):
    r = pull(plan)
    assert r.code == 0, r.output
    assert "5 new, 0 revised, 0 removed, 0 unchanged" in r.stdout
    assert (tmp_path / ".apimon" / "ledger.db").exists()  # default: beside the plan

    r = pull(plan)
    assert "0 new, 0 revised, 0 removed, 5 unchanged" in r.stdout

    # the gateway revises a day: the ledger replaces, never adds
    seed(tmp_path, [("acme", "pro", "2026-11-02", "success", 1_200_100),
                    ("acme", "pro", "2026-11-02", "total", 1_200_140),
                    ("globex", "starter", "2026-11-03", "success", 15_000),
                    ("globex", "starter", "2026-11-03", "total", 15_000)])
    r = pull(plan)
    assert "~ 2026-11-02 acme pro success: 1200000 -> 1200100" in r.stdout
    assert "- 2026-11-02 acme pro blocked: 40 -> 0" in r.stdout
    r = run_cli("usage", "show", str(plan), "--period", "2026-11")
    assert r.code == 0
    acme = next(line for line in r.stdout.splitlines() if "acme" in line)
    assert "1,200,100" in acme and "1,200,140" in acme


def test_pull_rejects_bad_dates(plan):
    r = run_cli("usage", "pull", str(plan), "--from", "2026-11-31", "--to", "2026-12-01")
    assert r.code == 1 and "--from: not a date: '2026-11-31'; use YYYY-MM-DD" in r.stderr
    r = run_cli("usage", "pull", str(plan), "--from", "2026-11-10", "--to", "2026-11-01")
    assert r.code == 1 and "is before --from" in r.stderr


def test_invoice_csv_exact_lines_and_formula_protection(plan):
    pull(plan)
    r = run_cli("invoice", str(plan), "--period", "2026-11", "--format", "csv", "--with-metadata", "customer_id")
    assert r.code == 0, r.output
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0] == ["invoice_id", "period_start", "period_end", "subscriber", "product", "line_type",
                       "description", "quantity", "unit_price", "amount", "currency", "customer_id"]
    body = [(r[0], r[5], r[7], r[8], r[9], r[10]) for r in rows[1:]]
    assert body == [
        ("2026-11-acme", "fee", "", "", "199.00", "USD"),
        ("2026-11-acme", "usage", "1000000", "0.0008", "800.00", "USD"),
        ("2026-11-acme", "usage", "200000", "0.0005", "100.00", "USD"),
        ("2026-11-globex", "fee", "", "", "29.00", "USD"),
        ("2026-11-globex", "setup_fee", "", "", "10.00", "USD"),
        ("2026-11-globex", "usage", "5000", "0.001", "5.00", "USD"),
    ]
    assert rows[1][11] == "'=HYPERLINK(\"http://evil\")"  # a formula never reaches the spreadsheet as one
    assert rows[4][11] == "cus_456"


def test_invoice_table_totals_and_jsonl(plan, tmp_path):
    pull(plan)
    r = run_cli("invoice", str(plan), "--period", "2026-11")
    assert r.code == 0
    assert "1,099.00" in r.stdout and "44.00" in r.stdout and "1,143.00 USD" in r.stdout
    out = tmp_path / "inv.jsonl"
    r = run_cli("invoice", str(plan), "--period", "2026-11", "--format", "jsonl", "--out", str(out))
    assert r.code == 0 and "Wrote 2 invoices (6 lines)" in r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["amount"] == "199.00" and lines[0]["invoice_id"] == "2026-11-acme"


def test_invoice_with_no_usage_applies_minimum(plan):
    r = run_cli("invoice", str(plan), "--period", "2026-12", "--format", "csv")
    assert r.code == 1 and "no ledger at" in r.stderr and "usage pull" in r.stderr  # never a silent empty ledger
    pull(plan)  # November's usage; December has none
    r = run_cli("invoice", str(plan), "--period", "2026-12", "--format", "csv")
    # no usage at all for the period while products are priced by usage: refused (a pull not run?)
    assert r.code == 1 and r.stdout == "" and "has no usage at all for 2026-12" in r.stderr
    assert "usage pull PLAN --from 2026-12-01 --to 2026-12-31" in r.stderr and "--allow-no-usage" in r.stderr
    r = run_cli("invoice", str(plan), "--period", "2026-12", "--format", "csv", "--allow-no-usage")
    assert r.code == 0 and "warning: the ledger" in r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout)))
    acme = [(x[5], x[9]) for x in rows[1:] if x[3] == "acme"]
    assert ("fee", "199.00") in acme and ("minimum", "51.00") in acme


def test_removed_subscriber_usage_is_invoiced(plan, tmp_path):
    pull(plan)
    # globex churned in November and was taken out of the plan: its usage is still billed, priced by starter
    write_plan(plan, PLAN.replace("  globex: {product: starter, metadata: {customer_id: cus_456}}\n", ""))
    r = run_cli("invoice", str(plan), "--period", "2026-11", "--format", "csv")
    assert r.code == 0, r.output
    rows = [(x["invoice_id"], x["line_type"], x["amount"]) for x in csv.DictReader(io.StringIO(r.stdout))]
    assert [x for x in rows if x[0] == "2026-11-globex"] == [
        ("2026-11-globex", "fee", "29.00"), ("2026-11-globex", "setup_fee", "10.00"),
        ("2026-11-globex", "usage", "5.00")]
    assert "no longer in the plan" in r.stderr and "globex (starter)" in r.stderr

    # its product is gone too: nothing prices the usage -> listed as unpriced, exit 1 unless allowed
    no_starter = PLAN.replace("  globex: {product: starter, metadata: {customer_id: cus_456}}\n", "")
    no_starter = no_starter.replace(
        '  starter:\n    display_name: Starter\n    pricing: {model: per_unit, fee: "29.00", included: 10000, '
        'unit_price: "0.001", setup_fee: "10.00"}\n', "")
    assert "starter" not in no_starter.split("subscribers:")[0]
    write_plan(plan, no_starter)
    out = tmp_path / "inv.csv"
    r = run_cli("invoice", str(plan), "--period", "2026-11", "--format", "csv", "--out", str(out))
    assert r.code == 1 and not out.exists() and r.stdout == ""
    assert "unpriced usage: subscriber globex" in r.stderr and "15,000 billable units" in r.stderr
    assert "--allow-unpriced" in r.stderr
    r = run_cli("invoice", str(plan), "--period", "2026-11", "--format", "csv", "--allow-unpriced")
    assert r.code == 0, r.output
    assert "unpriced usage" in r.stderr
    globex = [(x["line_type"], x["quantity"], x["amount"]) for x in csv.DictReader(io.StringIO(r.stdout))
              if x["subscriber"] == "globex"]
    assert globex == [("unpriced", "15000", "0.00")]


def test_compare_shows_revenue_impact(plan, tmp_path):
    pull(plan)
    other = write_plan(tmp_path / "new-pricing.yaml", PLAN.replace('unit_price: "0.0008"', 'unit_price: "0.0009"'))
    r = run_cli("invoice", str(plan), "--period", "2026-11", "--compare", str(other), "--format", "csv")
    assert r.code == 0, r.output
    rows = list(csv.reader(io.StringIO(r.stdout)))
    assert rows[0] == ["subscriber", "current_total", "compared_total", "difference", "currency"]
    assert rows[1] == ["acme", "1099.00", "1199.00", "100.00", "USD"]
    assert rows[2] == ["globex", "44.00", "44.00", "0.00", "USD"]


def test_usage_export_csv_and_jsonl(plan, tmp_path):
    pull(plan)
    out = tmp_path / "usage.csv"
    r = run_cli("usage", "export", "--plan", str(plan), "--out", str(out))
    assert r.code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5 and rows[0]["provider"] == "local"
    assert {(x["subscriber"], x["metric"], x["count"]) for x in rows} >= {("acme", "success", "1200000")}
    r = run_cli("usage", "export", "--plan", str(plan), "--format", "jsonl", "--from", "2026-11-03")
    assert [json.loads(x)["subscriber"] for x in r.stdout.splitlines()] == ["globex", "globex"]


def test_bad_period_and_missing_ledger_are_one_line_errors(plan, tmp_path):
    r = run_cli("invoice", str(plan), "--period", "2026-13")
    assert r.code == 1 and r.stderr.startswith("error: --period:")
    r = run_cli("usage", "export", "--ledger", str(tmp_path / "nope.db"))
    assert r.code == 1 and "no ledger at" in r.stderr
    junk = tmp_path / "junk.db"
    junk.write_text("not a database at all " * 100)
    r = run_cli("usage", "pull", str(plan), "--from", "2026-11-01", "--to", "2026-11-02", "--ledger", str(junk))
    assert r.code == 1 and len(r.stderr.strip().splitlines()) == 1
    assert junk.read_text().startswith("not a database")


def test_metric_total_bills_every_call_except_blocked_ones(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", PLAN.replace("metric: success", "metric: total"))
    assert run_cli("apply", str(plan), "--auto-approve").code == 0
    seed(tmp_path, [("globex", "starter", "2026-11-03", "success", 15_000),
                    ("globex", "starter", "2026-11-03", "failed", 1_000),
                    ("globex", "starter", "2026-11-03", "blocked", 500),
                    ("globex", "starter", "2026-11-03", "total", 16_500)])
    pull(plan)
    r = run_cli("invoice", str(plan), "--period", "2026-11", "--format", "csv")
    usage = [row for row in csv.DictReader(io.StringIO(r.stdout)) if row["line_type"] == "usage"
             and row["subscriber"] == "globex"]
    # 16,500 seen - 500 blocked = 16,000; minus 10,000 included = 6,000 x 0.001
    assert [(u["quantity"], u["amount"]) for u in usage] == [("6000", "6.00")]


def test_setup_fee_does_not_repeat_on_a_fresh_ledger(plan, tmp_path):
    # globex has used the gateway since October; this run starts a new ledger and pulls November only
    seed(tmp_path, [("globex", "starter", "2026-10-12", "success", 300),
                    ("globex", "starter", "2026-11-03", "success", 15_000),
                    ("acme", "pro", "2026-11-02", "success", 9)])
    ledger = tmp_path / "fresh" / "ledger.db"
    r = run_cli("usage", "pull", str(plan), "--from", "2026-11-01", "--to", "2026-11-30", "--ledger", str(ledger))
    assert r.code == 0, r.output
    r = run_cli("invoice", str(plan), "--period", "2026-11", "--format", "csv", "--ledger", str(ledger))
    assert r.code == 0, r.output
    lines = {(x["subscriber"], x["line_type"]) for x in csv.DictReader(io.StringIO(r.stdout))}
    # the gateway's history (carried by the pull into the ledger's first-seen record) says October
    assert ("globex", "setup_fee") not in lines and ("globex", "usage") in lines
    assert "setup fee" not in r.stderr
    with sqlite3.connect(ledger) as conn:
        assert conn.execute("SELECT first_day, source FROM first_seen WHERE subscriber = 'globex'").fetchall() == [
            ("2026-10-12", "gateway")]


def test_setup_fee_on_a_ledger_that_knows_nothing_earlier_is_warned(plan, tmp_path):
    assert pull(plan).code == 0
    with sqlite3.connect(tmp_path / ".apimon" / "ledger.db") as conn:  # as a gateway without usage history leaves it
        conn.execute("UPDATE first_seen SET source = 'ledger'")
    r = run_cli("invoice", str(plan), "--period", "2026-11", "--format", "csv")
    assert r.code == 0, r.output
    assert "warning: 1 setup fee charged in 2026-11 (globex)" in r.stderr and "new ledger" in r.stderr


def test_a_failed_pull_leaves_no_new_ledger_and_an_existing_one_unchanged(plan, tmp_path):
    new = tmp_path / "new" / "dir" / "ledger.db"
    broken = write_plan(tmp_path / "broken.yaml", PLAN.replace("state_dir: state", "state_dir: no-such-state"))
    r = run_cli("usage", "pull", str(broken), "--from", "2026-11-01", "--to", "2026-11-30", "--ledger", str(new))
    assert r.code == 1 and "the ledger was not changed" in r.stderr
    assert not (tmp_path / "new").exists()  # no file, no -wal/-shm, no directory made for it
    r = run_cli("usage", "pull", str(broken), "--from", "2026-11-01", "--to", "2026-11-30")
    assert r.code == 1 and not (tmp_path / ".apimon").exists()
    r = run_cli("invoice", str(plan), "--period", "2026-11")
    assert r.code == 1 and "no ledger at" in r.stderr  # never fee-only invoices from an empty ledger

    assert pull(plan).code == 0
    ledger = tmp_path / ".apimon" / "ledger.db"

    def dump():
        with sqlite3.connect(ledger) as conn:
            return list(conn.iterdump())

    before = dump()
    seed(tmp_path, [("acme", "pro", "2026-11-02", "bogus-metric", 1)])  # the gateway answers nonsense
    r = pull(plan)
    assert r.code == 1 and "unusable usage" in r.stderr and "the ledger was not changed" in r.stderr
    assert ledger.exists() and dump() == before


def test_readme_maximum_example_caps_the_fee(tmp_path):
    """The README's published `maximum` example, run as written: fee 100, maximum 60 invoices 60.00."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("<!-- example: maximum -->", 1)[1]
    pricing = re.search(r"```yaml\n(pricing: .*)\n```", block)[1]
    table = re.findall(r"^\| (\w+) \| ([^|]+) \| (-?[\d.]+) \|$", block, re.M)[:3]
    plan = write_plan(tmp_path / "plan.yaml", f"""
        apimon: 1
        target: {{provider: local, local: {{state_dir: state}}}}
        products:
          capped: {{display_name: Capped, {pricing}}}
        subscribers:
          acme: {{product: capped}}
        """)
    assert run_cli("apply", str(plan), "--auto-approve").code == 0
    seed(tmp_path, [("acme", "capped", "2026-10-02", "success", 1), ("acme", "capped", "2026-11-02", "success", 500)])
    assert pull(plan).code == 0
    r = run_cli("invoice", str(plan), "--period", "2026-11", "--format", "csv")
    assert r.code == 0, r.output
    lines = [(x["line_type"], x["description"], x["amount"]) for x in csv.DictReader(io.StringIO(r.stdout))]
    assert lines == [(t, d.strip(), a) for t, d, a in table]
    assert sum(Decimal(a) for _t, _d, a in lines) == Decimal("60.00")
