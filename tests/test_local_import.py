"""`import --provider local` (issue 11 item 5): a state directory that does not exist is an error, and the
imported plan carries the billing block the state recorded on apply, so re-invoicing it keeps the currency."""

from __future__ import annotations

import csv
import io
import sqlite3

import yaml
from conftest import run_cli, write_plan

PLAN = """
apimon: 1
target: {provider: local, local: {state_dir: state}}
billing: {currency: EUR, period: month, metric: total}
products:
  starter:
    display_name: Starter
    pricing: {model: per_unit, fee: "29.00", included: 10, unit_price: "0.01"}
subscribers:
  acme: {product: starter}
"""


def test_a_missing_state_dir_is_an_error_naming_it(tmp_path):
    missing = tmp_path / "DOES-NOT-EXIST"
    out = tmp_path / "imported.yaml"
    r = run_cli("import", "--provider", "local", "--state-dir", str(missing), "--out", str(out))
    # before: an empty plan and exit 0
    assert r.code == 1 and r.stdout == ""
    assert f"no local gateway state at {missing / 'state.db'}" in r.stderr
    assert not out.exists() and not missing.exists()  # nothing written, no state created
    r = run_cli("import", "--provider", "local", cwd=tmp_path)  # the default, .apimon, missing too
    assert r.code == 1 and str(tmp_path / ".apimon" / "state.db") in r.stderr


def test_an_imported_eur_plan_invoices_in_eur(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    assert run_cli("apply", str(plan), "--auto-approve").code == 0
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        conn.execute("INSERT INTO usage VALUES ('acme', 'starter', '2026-11-02', 'total', 110)")
    ledger = tmp_path / "ledger.db"
    assert run_cli("usage", "pull", str(plan), "--from", "2026-11-01", "--to", "2026-11-30",
                   "--ledger", str(ledger)).code == 0
    imported = tmp_path / "imported" / "plan.yaml"
    imported.parent.mkdir()
    r = run_cli("import", "--provider", "local", "--state-dir", str(tmp_path / "state"), "--out", str(imported))
    assert r.code == 0, r.output
    # before: no billing block, so the imported plan billed in USD
    assert yaml.safe_load(imported.read_text())["billing"] == {"currency": "EUR", "period": "month",
                                                                "metric": "total"}
    r = run_cli("invoice", str(imported), "--period", "2026-11", "--format", "csv", "--ledger", str(ledger))
    assert r.code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {row["currency"] for row in rows} == {"EUR"}
    assert sum(float(row["amount"]) for row in rows) == 30.00  # 29.00 + 100 calls over 10 at 0.01
    assert run_cli("plan", str(imported), "--detailed-exitcode").code == 0


def test_a_billing_change_alone_is_planned_and_recorded(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", PLAN)
    assert run_cli("apply", str(plan), "--auto-approve").code == 0
    plan.write_text(plan.read_text().replace("currency: EUR", "currency: GBP"))
    r = run_cli("plan", str(plan), "--detailed-exitcode")
    assert r.code == 2 and "billing.currency" in r.stdout and "EUR" in r.stdout and "GBP" in r.stdout, r.output
    assert run_cli("apply", str(plan), "--auto-approve").code == 0
    assert run_cli("plan", str(plan), "--detailed-exitcode").code == 0
    r = run_cli("import", "--provider", "local", "--state-dir", str(tmp_path / "state"))
    assert yaml.safe_load(r.stdout)["billing"]["currency"] == "GBP"
