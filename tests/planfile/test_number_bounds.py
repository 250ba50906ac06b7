"""Issue 20.6: every number is bounded before it is converted, and what validates can be invoiced.

A 145-byte plan (`fee: 1.0e+999999999`) cost a minute and 6 GB; `fee: "<99 nines>"` validated and then made
`invoice` fail. The bounds come from billing/currency.py (the 100-digit money contexts): amounts below 10**15,
counts up to 2**63 - 1.
"""

from __future__ import annotations

import csv
import io
import resource
import sqlite3
import subprocess
import sys
import time
from decimal import ROUND_HALF_UP, Context, Decimal
from pathlib import Path

import pytest
from conftest import run_cli, write_plan

from apimon_cli.billing import currency
from apimon_cli.billing.pricing import charge_lines
from apimon_cli.planfile.loader import load_plans

HOSTILE = {
    "float exponent": "fee: 1.0e+999999999",
    "negative exponent": "fee: 1.0e-999999999",
    "exponent of 30 digits": "fee: 1.0e+" + "9" * 30,
    "integer of 4,301 digits": "fee: " + "9" * 4301,
    "hex integer of 100,000 digits": "fee: 0x" + "f" * 100_000,
    "sexagesimal integer": "fee: " + ":".join(["59"] * 20_000),
    "amount of 99 nines": 'fee: "' + "9" * 99 + '"',
    "amount of 10 MB": 'fee: "' + "9" * 10_000_000 + '"',
    "amount with 1,000,000 decimals": 'fee: "1.' + "0" * 1_000_000 + '"',
}


def _plan(line: str) -> str:
    return f"apimon: 1\ntarget: {{provider: local}}\nproducts:\n  pro:\n    display_name: Pro\n    pricing:\n" \
           f"      model: flat\n      {line}\n"


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_numbers_fail_fast_with_a_located_error(tmp_path: Path, case: str):
    p = tmp_path / "plan.yaml"
    p.write_text(_plan(HOSTILE[case]))
    start = time.perf_counter()
    loaded = load_plans([str(p)], env={})
    elapsed = time.perf_counter() - start
    assert loaded.desired is None
    [error] = loaded.errors
    assert (error.line, error.path) == (8, "products.pro.pricing.fee")
    assert len(str(error)) < 400, str(error)
    # under a second; the inputs of megabytes are parsed in linear time (a few seconds on a loaded machine)
    bound = 1.0 if p.stat().st_size < 100_000 else 6.0
    assert elapsed < bound, f"{case}: {elapsed:.2f} s"


def test_the_145_byte_plan_fails_in_under_a_second_within_256_mb(tmp_path: Path):
    """In a subprocess whose address space is capped (RLIMIT_AS): expanding the number would need gigabytes."""
    p = tmp_path / "plan.yaml"
    p.write_text(_plan("fee: 1.0e+999999999"))
    assert len(p.read_bytes()) < 145
    script = (
        "import resource, sys, time\n"
        "from apimon_cli.planfile.loader import load_plans\n"  # imported before the cap: only the load is bounded
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "limit = 256 * 2**20 + base * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
        "t = time.perf_counter()\n"
        "loaded = load_plans([sys.argv[1]], env={})\n"
        "print(round(time.perf_counter() - t, 3), loaded.errors[0])\n"
    )
    if not hasattr(resource, "RLIMIT_AS"):  # pragma: no cover - Linux has it
        pytest.skip("no RLIMIT_AS on this platform")
    proc = subprocess.run([sys.executable, "-c", script, str(p)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seconds, message = proc.stdout.split(" ", 1)
    assert float(seconds) < 1.0
    assert "out of range (exponent +999999999)" in message and "at most 308" in message


def test_the_bounds_are_billings_own():
    from apimon_cli.planfile import schema

    assert schema.MAX_AMOUNT_DIGITS is currency.MAX_AMOUNT_DIGITS
    assert schema.MAX_COUNT == currency.MAX_COUNT == 2**63 - 1
    # the largest amount with the most decimals, times the largest quantity, summed over a few lines, fits
    worst = 15 + schema.MAX_PRICE_PLACES + len(str(currency.MAX_COUNT)) + 2
    assert worst < currency.MONEY_PRECISION


LARGEST = "999999999999999.999999999999"


def test_the_largest_amounts_validate_and_price_at_the_largest_quantity(tmp_path: Path):
    p = write_plan(tmp_path / "plan.yaml", f"""
        apimon: 1
        target: {{provider: local}}
        products:
          unit:
            display_name: Unit
            pricing: {{model: per_unit, fee: "{LARGEST}", setup_fee: "{LARGEST}", unit_price: "{LARGEST}",
                       minimum: "{LARGEST}"}}
          tiers:
            display_name: Tiers
            pricing:
              model: graduated
              tiers:
                - {{up_to: 9223372036854775806, unit_price: "{LARGEST}", flat_fee: "{LARGEST}"}}
                - {{up_to: inf, unit_price: "{LARGEST}", flat_fee: "{LARGEST}"}}
    """)
    loaded = load_plans([str(p)], env={})
    assert loaded.errors == []
    for product in loaded.desired.products.values():
        for code in ("USD", "JPY", "CLF"):
            lines = charge_lines(product.pricing, currency.MAX_COUNT, code, first_period=True)
            assert lines and all(line.amount > 0 for line in lines)


def test_one_past_the_bounds_is_refused_with_the_bound_in_the_message(tmp_path: Path):
    p = write_plan(tmp_path / "plan.yaml", """
        apimon: 1
        target: {provider: local}
        products:
          pro:
            display_name: Pro
            quota: {limit: 9223372036854775808}
            pricing: {model: per_unit, fee: 1000000000000000, unit_price: "1000000000000000.5"}
    """)
    messages = [d.message for d in load_plans([str(p)], env={}).errors]
    assert messages == [
        "is too large: whole numbers go up to 9,223,372,036,854,775,807 (2^63 - 1, what the ledger and the "
        "gateways store); got 9223372036854775808",
        "is too large: amounts are below 10^15 (at most 15 digits before the point, up to "
        "999,999,999,999,999.999999999999) so that invoices can be computed exactly; got 1000000000000000",
        "is too large: amounts are below 10^15 (at most 15 digits before the point, up to "
        "999,999,999,999,999.999999999999) so that invoices can be computed exactly; got '1000000000000000.5'",
    ]


def test_invoice_computes_what_validate_accepts_end_to_end(tmp_path: Path):
    """The real CLI: apply, a day of usage near the ledger's largest count, pull, invoice."""
    p = write_plan(tmp_path / "plan.yaml", f"""
        apimon: 1
        target: {{provider: local, local: {{state_dir: state}}}}
        products:
          big:
            display_name: Big
            pricing: {{model: per_unit, fee: "{LARGEST}", unit_price: "{LARGEST}"}}
        subscribers:
          acme: {{product: big}}
    """)
    assert run_cli("validate", str(p)).code == 0
    assert run_cli("apply", str(p), "--auto-approve").code == 0
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        conn.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?)", [
            ("acme", "big", "2026-11-02", "success", 2**62), ("acme", "big", "2026-11-02", "total", 2**62)])
    assert run_cli("usage", "pull", str(p), "--from", "2026-11-01", "--to", "2026-11-30").code == 0
    r = run_cli("invoice", str(p), "--period", "2026-11", "--format", "csv")
    assert r.code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    usage = next(row for row in rows if row["line_type"] == "usage")
    assert usage["quantity"] == str(2**62)
    exact = Context(prec=100).multiply(Decimal(LARGEST), 2**62)
    assert usage["amount"] == str(exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP, context=Context(prec=100)))


def test_a_billion_laughs_is_refused_in_well_under_a_second(tmp_path: Path):
    """Ten levels of ten aliases each would be 10**10 values: refused after counting, never expanded."""
    lines = ["apimon: 1", "target: {provider: local}", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    loaded = load_plans([str(p)], env={})
    assert time.perf_counter() - start < 1.0
    [error] = loaded.errors
    assert "aliases expand the document to more than 200,000 values" in error.message
