"""Issue 20.7: a value from the environment (``${env:...}``) never appears in any output, in any rendering.

The masker used to match only the literal value: the repr() in diagnostics (``\\`` doubled, quotes escaped),
the JSON-escaped copy in ``plan --json`` and saved plans (``\\"``, ``\\u00e9``), the old value of a changed
``${env:...}`` value (``before -> ***``) and invoice / usage export cells all got through. Values here hold
``\\``, ``"`` and ``é``; every output is searched for every rendering of them (``renderings``).
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest
from conftest import run_cli, write_plan

from apimon_cli.render.output import Masker, renderings

DESC = 'Pro plan: cl\\ient "secret" dé-one'
CUST = 'cus_s\\e"cré-1'
STATE = 'state-sé\\c"ret'
SECRETS = {"DESC": DESC, "CUST": CUST, "STATE_DIR": STATE}

PLAN = """
apimon: 1
target: {provider: local, local: {state_dir: "${env:STATE_DIR}"}}
products:
  pro:
    display_name: Pro
    description: "${env:DESC}"
    pricing: {model: per_unit, unit_price: "0.001"}
subscribers:
  acme:
    product: pro
    email: ops@acme.example
    metadata: {customer_id: "${env:CUST}", plan_note: "id ${env:CUST} (EU)", region: eu-west}
"""


def assert_no_secret(text: str, *values: str) -> None:
    for value in values or SECRETS.values():
        for form in renderings(value):
            assert form not in text, f"{form!r} (a rendering of a secret) is in the output:\n{text}"


def test_renderings_cover_repr_json_csv_and_html():
    forms = renderings('a\\b"cé')
    assert {'a\\b"cé', 'a\\\\b"cé', 'a\\\\b"c\\xe9', 'a\\\\b\\"cé', 'a\\\\b\\"c\\u00e9', 'a\\b""cé',
            "a\\b&quot;cé"} <= forms
    mask = Masker(['a\\b"cé'])
    assert mask(repr({"x": 'a\\b"cé'})) == "{'x': '***'}"
    assert mask(json.dumps(['a\\b"cé'])) == '["***"]'
    assert mask.cut("got the string 'a\\b\"...'; use a number") == "got the string '***...'; use a number"


@pytest.fixture
def plan(tmp_path: Path) -> Path:
    return write_plan(tmp_path / "plan.yaml", PLAN)


def test_diagnostics_never_show_a_secret_in_a_repr_or_cut_short(tmp_path: Path):
    bad = 'no\\t-"an-émail'
    long = 'sk_live_' + "é\\x" * 30  # longer than the 40 characters a message quotes
    p = write_plan(tmp_path / "plan.yaml", """
        apimon: 1
        target: {provider: local}
        products:
          pro:
            display_name: Pro
            rate_limit: {rate: "${env:LONG}", burst: 10}
        subscribers:
          acme: {product: pro, email: "${env:BAD}"}
    """)
    for args in (("validate", str(p)), ("plan", str(p)), ("plan", "--json", str(p))):
        r = run_cli(*args, env={"BAD": bad, "LONG": long})
        assert r.code == 1
        assert "email: not an email address: '***'" in r.stderr
        assert "got the string '***...'" in r.stderr
        assert_no_secret(r.stdout + r.stderr, bad, long, long[:30])


def test_plan_text_json_and_saved_plan_show_secrets_as_sensitive(plan: Path, tmp_path: Path):
    r = run_cli("plan", str(plan), env=SECRETS)
    assert r.code == 0, r.output
    assert "+ description = (sensitive)" in r.stdout and "+ metadata.customer_id = (sensitive)" in r.stdout
    assert "+ metadata.plan_note = (sensitive)" in r.stdout and '+ metadata.region = "eu-west"' in r.stdout
    assert_no_secret(r.stdout + r.stderr)
    saved = tmp_path / "saved.json"
    r = run_cli("plan", "--json", "--out", str(saved), str(plan), env=SECRETS)
    assert r.code == 0, r.output
    assert_no_secret(r.stdout + r.stderr)
    assert_no_secret(saved.read_text(encoding="utf-8"))
    doc = json.loads(r.stdout)
    [sub] = doc["changes"]["creating"][1:]
    assert sub["fields"]["metadata.customer_id"] == {"before": None, "after": "(sensitive)"}
    r = run_cli("apply", "--plan-file", str(saved), "--json", env=SECRETS)
    assert r.code == 0, r.output
    assert_no_secret(r.stdout + r.stderr)


def test_a_changed_env_value_hides_its_old_value_too(plan: Path):
    old = 'cus_old\\v"é-9'
    assert run_cli("apply", str(plan), "--auto-approve", env=SECRETS | {"CUST": old}).code == 0
    for args in (("plan", str(plan)), ("plan", "--json", str(plan)), ("apply", str(plan), "--auto-approve")):
        r = run_cli(*args, env=SECRETS)
        assert r.code == 0, r.output
        assert_no_secret(r.stdout + r.stderr, old, CUST, DESC)
    r = run_cli("plan", "--json", str(plan), env=SECRETS | {"CUST": old})
    [change] = json.loads(r.stdout)["changes"]["updating"]
    assert change["fields"]["metadata.customer_id"] == {"before": "(sensitive)", "after": "(sensitive)"}


def _seed_usage(plan: Path) -> None:
    assert run_cli("apply", str(plan), "--auto-approve", env=SECRETS).code == 0
    with sqlite3.connect(plan.parent / STATE / "state.db") as conn:
        conn.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?)", [
            ("acme", "pro", "2026-11-02", "success", 1500), ("acme", "pro", "2026-11-02", "total", 1500)])
    r = run_cli("usage", "pull", str(plan), "--from", "2026-11-01", "--to", "2026-11-30", env=SECRETS)
    assert r.code == 0, r.output
    assert_no_secret(r.stdout + r.stderr)


def test_invoice_exports_carry_asterisks_for_env_metadata(plan: Path, tmp_path: Path):
    _seed_usage(plan)
    meta = ["--with-metadata", "customer_id", "--with-metadata", "plan_note", "--with-metadata", "region"]
    r = run_cli("invoice", str(plan), "--period", "2026-11", "--format", "csv", *meta, env=SECRETS)
    assert r.code == 0, r.output
    assert_no_secret(r.stdout + r.stderr)
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {(x["customer_id"], x["plan_note"], x["region"]) for x in rows} == {("***", "***", "eu-west")}
    out = tmp_path / "inv.jsonl"
    r = run_cli("invoice", str(plan), "--period", "2026-11", "--format", "jsonl", "--out", str(out), *meta,
                env=SECRETS)
    assert r.code == 0, r.output
    assert_no_secret(out.read_text(encoding="utf-8") + r.stderr)
    assert json.loads(out.read_text().splitlines()[0])["customer_id"] == "***"
    r = run_cli("invoice", str(plan), "--period", "2026-11", env=SECRETS)
    assert r.code == 0 and "1.50" in r.stdout
    assert_no_secret(r.stdout + r.stderr)


def test_usage_export_masks_a_target_from_the_environment(plan: Path):
    _seed_usage(plan)
    for fmt in ("csv", "jsonl"):
        r = run_cli("usage", "export", "--plan", str(plan), "--format", fmt, env=SECRETS)
        assert r.code == 0, r.output
        assert_no_secret(r.stdout + r.stderr)
        assert "***" in r.stdout and "acme" in r.stdout and "1500" in r.stdout
    r = run_cli("usage", "show", str(plan), "--period", "2026-11", env=SECRETS)
    assert r.code == 0, r.output
    assert_no_secret(r.stdout + r.stderr)
