"""The invoice and usage tables at 80 columns (CI logs) and 200 (a wide terminal): compact columns when narrow,
wide only when wide, never an identifier or amount broken across lines; through the real CLI."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import date
from decimal import Decimal

import pytest
from conftest import run_cli
from rich.cells import cell_len
from seed import usage_rows, write_plan


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("widths")
    plan = write_plan(tmp)
    assert run_cli("apply", str(plan), "--auto-approve").code == 0
    rows = usage_rows(date(2026, 11, 1), date(2026, 11, 30))
    with sqlite3.connect(tmp / "state" / "state.db") as conn:
        conn.execute("DELETE FROM usage")
        conn.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?)",
                         [(u.subscriber, u.product, u.day, u.metric, u.count) for u in rows])
    assert run_cli("usage", "pull", str(plan), "--from", "2026-11-01", "--to", "2026-11-30").code == 0
    invoices = json.loads(run_cli("invoice", str(plan), "--period", "2026-11", "--json").stdout)["invoices"]
    return plan, invoices


def _render(plan, columns: int, *args: str) -> list[str]:
    r = run_cli(*args, str(plan), "--period", "2026-11", env={"COLUMNS": str(columns)})
    assert r.code == 0, r.output
    return r.stdout.splitlines()


def _whole(word: str, lines: list[str]) -> bool:
    """``word`` appears unbroken on some line (not split over two)."""
    pattern = re.compile(rf"(?<![\w.,-]){re.escape(word)}(?![\w.,-])")
    return any(pattern.search(line) for line in lines)


def _identifiers(invoices) -> set[str]:
    """Invoice ids (they hold the subscriber), products, line types, quantities, prices and amounts."""
    words = set()
    for inv in invoices:
        words |= {inv["invoice_id"], inv["product"], f"{Decimal(inv['total']):,}"}
        for line in inv["lines"]:
            words |= {line["line_type"], f"{Decimal(line['amount']):,}"}
            if line["quantity"] is not None:
                words.add(f"{line['quantity']:,}")
            if line["unit_price"] is not None:
                words.add(line["unit_price"])
    return words


@pytest.mark.parametrize("columns", [80, 200])
def test_invoice_table_fits_and_never_breaks_an_identifier(site, columns):
    plan, invoices = site
    lines = _render(plan, columns, "invoice")
    assert max(cell_len(line) for line in lines) <= columns
    broken = [w for w in _identifiers(invoices) if not _whole(w, lines)]
    assert broken == [], "\n".join(lines)
    words = " ".join(" ".join(lines).split())  # descriptions may fold, at spaces, but keep every word
    for inv in invoices:
        for line in inv["lines"]:
            for word in line["description"].split():
                assert word in words, word


def test_invoice_table_is_wide_only_where_the_terminal_is_wide(site):
    plan, _invoices = site
    wide = _render(plan, 200, "invoice")
    header = next(line for line in wide if "description" in line)
    assert re.search(r"invoice\s.*product\s.*line\s.*description\s.*quantity\s.*unit price\s.*amount", header)
    assert any(re.search(r"2026-11-acme\s+│\s+pro\s+│\s+fee\s+│\s+Recurring fee", line) for line in wide)
    assert any("Usage @ 0.001 (19,650 used, 10,000 included)" in line for line in wide)  # unfolded
    narrow = _render(plan, 80, "invoice")
    header = next(line for line in narrow if "description" in line)
    assert "product" not in header  # compact: the product sits beside the invoice id, on a line of its own
    assert any(re.search(r"^\s*2026-11-acme\s+product pro\s*$", line) for line in narrow)
    assert any(re.search(r"^\s+fee\s+Recurring fee\s+199\.00\s*$", line) for line in narrow)


@pytest.mark.parametrize("columns", [80, 200])
def test_usage_table_fits_and_keeps_every_count_whole(site, columns):
    plan, _invoices = site
    lines = _render(plan, columns, "usage", "show")
    assert max(cell_len(line) for line in lines) <= columns, "\n".join(lines)
    doc = json.loads(run_cli("usage", "show", str(plan), "--period", "2026-11", "--json").stdout)
    for row in doc["rows"]:
        assert _whole(row["subscriber"], lines)
        for m in ("success", "blocked", "failed", "other", "total"):
            assert _whole(f"{row[m]:,}", lines), (row, m)
    sparks = [line for line in lines if re.search("[▁▂▃▄▅▆▇█]", line)]
    assert len(sparks) == len([r for r in doc["rows"] if r["total"]])
    header = next(line for line in lines if "success" in line)
    if columns == 200:  # wide: the sparkline is a column beside the counts
        assert "calls per day" in header and all("1,665,000" in s for s in sparks[:1])
    else:  # narrow: the counts, then the sparklines in a table of their own
        assert "calls per day" not in header
        assert any(line.startswith("Calls per day (30 days), by subscriber") for line in lines)
        assert not any(re.search(r"\d,\d{3}", s) for s in sparks)


@pytest.mark.parametrize("columns", [80, 200])
def test_usage_table_with_idle_days_is_never_truncated(tmp_path, columns):
    # a sparkline with idle days holds spaces: it used to be measured by its longest run of bars, so the
    # table "fitted" at 80 columns and rich then cut every header and the sparkline short ("subscri…", "…")
    from push_helpers import fill, local_target

    from apimon_cli.ledger import Ledger

    (tmp_path / "plan.yaml").write_text(
        "apimon: 1\ntarget: {provider: local}\nproducts:\n  pro: {display_name: Pro, pricing: {model: free}}\n"
        "subscribers:\n" + "".join(f"  {s}: {{product: pro}}\n" for s in ("acme", "hooli", "initech")))
    (tmp_path / ".apimon").mkdir()
    rows = {(s, "pro", d): 10 + i for i, s in enumerate(("acme", "hooli", "initech"))
            for d in ("2026-11-01", "2026-11-02", "2026-11-03")}
    with Ledger.open(tmp_path / ".apimon" / "ledger.db") as book:
        fill(book, rows, "2026-11-01", "2026-11-03", target=local_target(tmp_path))
    lines = _render(tmp_path / "plan.yaml", columns, "usage", "show")
    text = "\n".join(lines)
    assert "…" not in text and max(cell_len(line) for line in lines) <= columns, text
    header = next(line for line in lines if "success" in line)
    assert all(word in header for word in ("subscriber", "success", "blocked", "failed", "total")), text
    sparks = [line for line in lines if re.search("[▁▂▃▄▅▆▇█]", line)]
    assert len(sparks) == 3 and all("███" in s or "▇" in s or "▆" in s for s in sparks), text
