"""Issue 20.11: unreadable foreign rows, `keys show` on keys apimon does not own, the AWS ledger target."""

from __future__ import annotations

import sqlite3
from datetime import date

import pytest
from conftest import run_cli, write_plan

from apimon_cli.ledger import SCHEMA_VERSION, Ledger
from apimon_cli.model import UsageRow

LOCAL = """
apimon: 1
target: {provider: local, local: {state_dir: state}}
products:
  free: {display_name: Free, pricing: {model: free}}
subscribers:
  acme: {product: free, metadata: {customer_id: cus_1}}
"""
FOREIGN_KEY = "foreign-secret-key-0123456789"


def _foreign_rows(tmp_path) -> None:
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        rows = [("notjson", "ops-team", "not json {", FOREIGN_KEY), ("alist", None, "[1, 2]", "another-foreign-key-1"),
                ("ok", "ops-team", "{}", "a-third-foreign-key-12")]
        for sid, owner, meta, key in rows:
            conn.execute("INSERT INTO subscribers VALUES (?, ?, 'free', NULL, 1, ?, ?, '2026-01-01')",
                         (sid, owner, key, meta))


def test_foreign_subscriber_rows_with_unreadable_metadata_do_not_break_plans(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", LOCAL)
    assert run_cli("apply", str(plan), "--auto-approve", cwd=tmp_path).code == 0
    _foreign_rows(tmp_path)
    r = run_cli("plan", str(plan), "--detailed-exitcode", cwd=tmp_path)
    assert r.code == 0, r.output  # no changes, no error: the rows are left alone
    assert "= subscriber notjson: unmanaged, left alone" in r.stdout
    assert "= subscriber alist: unmanaged, left alone" in r.stdout
    assert "= subscriber ok: unmanaged, left alone" in r.stdout
    assert FOREIGN_KEY not in r.output
    assert run_cli("apply", str(plan), "--auto-approve", cwd=tmp_path).code == 0
    r = run_cli("import", "--provider", "local", "--state-dir", str(tmp_path / "state"), "--out", "imported.yaml",
                cwd=tmp_path)
    assert r.code == 0, r.output
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:  # never touched
        assert conn.execute("SELECT metadata FROM subscribers WHERE id = 'notjson'").fetchone() == ("not json {",)


def test_keys_show_refuses_an_unmanaged_subscribers_key(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", LOCAL)
    assert run_cli("apply", str(plan), "--auto-approve", cwd=tmp_path).code == 0
    _foreign_rows(tmp_path)
    r = run_cli("keys", "show", "notjson", "--plan", str(plan), cwd=tmp_path)
    assert r.code == 1 and FOREIGN_KEY not in r.output  # not in the plan: refused
    # a plan that names an unmanaged subscriber (not adopted): the gateway's key is not apimon's to show
    claims = write_plan(tmp_path / "claims.yaml", LOCAL + "  ok: {product: free}\n")
    r = run_cli("keys", "show", "ok", "--plan", str(claims), cwd=tmp_path)
    assert r.code == 1
    assert "subscriber ok is not managed by apimon; apimon shows only the keys it owns" in r.stderr, r.output
    assert "a-third-foreign-key-12" not in r.output
    r = run_cli("keys", "show", "acme", "--plan", str(plan), cwd=tmp_path)  # its own keys: shown
    assert r.code == 0 and len(r.stdout.strip()) >= 20


# ---------------------------------------------------------------- AWS: the ledger target is the account id

AWS = """
apimon: 1
target: {provider: aws, aws: {region: us-east-1}}
products:
  free: {display_name: Free, apis: [petstore/prod], rate_limit: {rate: 5, burst: 10}, pricing: {model: free}}
subscribers:
  acme: {product: free}
"""


@pytest.fixture
def aws_fake():
    from fakes.aws_gateway import AwsFake

    with AwsFake() as fake:
        fake.add_rest_api("petstore", ["prod"])
        first = fake.account_id
        yield fake
        if fake.account_id != first:  # a test switched accounts: drop that backend, then the fake's own
            from moto.apigateway.models import apigateway_backends

            apigateway_backends.pop(fake.account_id, None)
            fake.account_id = first


def _aws_env(fake, tmp_path) -> dict:
    return {"AWS_ENDPOINT_URL": fake.endpoint_url, "APIMON_AWS_QUOTA_SCALE": "200",
            "APIMON_LOCK_DIR": str(tmp_path / "locks")}


def _seed_usage(fake, day: str, used: int) -> None:
    c = fake.client(max_attempts=1)
    plan_id = next(p["id"] for p in c.get_usage_plans(limit=500)["items"] if p["name"] == "free")
    key_id = next(k["id"] for k in c.get_api_keys(limit=500)["items"] if k["name"] == "acme")
    fake.set_usage(plan_id, key_id, day, used, 1000 - used)


def _targets(ledger_file) -> set[str]:
    with sqlite3.connect(ledger_file) as conn:
        return {t for (t,) in conn.execute("SELECT DISTINCT target FROM usage")}


def test_aws_usage_is_stored_under_the_account_id_and_two_accounts_never_share_rows(aws_fake, tmp_path):
    env = _aws_env(aws_fake, tmp_path)
    plan = write_plan(tmp_path / "plan.yaml", AWS)
    assert run_cli("apply", str(plan), "--auto-approve", cwd=tmp_path, env=env).code == 0
    _seed_usage(aws_fake, "2026-03-02", 40)
    pull = ("usage", "pull", str(plan), "--from", "2026-03-01", "--to", "2026-03-31")
    r = run_cli(*pull, cwd=tmp_path, env=env)
    assert r.code == 0, r.output
    ledger_file = tmp_path / ".apimon" / "ledger.db"
    first = f"{aws_fake.endpoint_url}/account:{aws_fake.account_id}/us-east-1"
    assert _targets(ledger_file) == {first}

    # the same configuration (same endpoint, same profile) now reaches another account: its pull must not
    # replace (remove) the first account's rows
    old_account = aws_fake.account_id
    aws_fake.account_id = "222233334444"
    aws_fake.add_rest_api("petstore", ["prod"])
    assert run_cli("apply", str(plan), "--auto-approve", cwd=tmp_path, env=env).code == 0
    _seed_usage(aws_fake, "2026-03-03", 7)
    r = run_cli(*pull, cwd=tmp_path, env=env)
    assert r.code == 0, r.output
    assert "0 removed" in r.stdout, r.stdout
    second = f"{aws_fake.endpoint_url}/account:222233334444/us-east-1"
    assert _targets(ledger_file) == {first, second}
    with Ledger.open(ledger_file) as book:
        counts = {(row.target, row.day): row.count for row in book.iter_rows() if row.metric == "success"}
    assert counts == {(first, "2026-03-02"): 40, (second, "2026-03-03"): 7}
    # readers (offline) see the account the plan's configuration reached last
    r = run_cli("usage", "show", str(plan), "--period", "2026-03", cwd=tmp_path, env=env)
    assert r.code == 0, r.output
    assert old_account not in r.output
    row = next(line for line in r.stdout.splitlines() if "acme" in line)
    assert " 7 " in row + " " and "40" not in row, r.stdout


def test_a_schema_5_ledger_keyed_by_profile_name_is_migrated_to_the_account_id(aws_fake, tmp_path):
    env = _aws_env(aws_fake, tmp_path)
    plan = write_plan(tmp_path / "plan.yaml", AWS)
    assert run_cli("apply", str(plan), "--auto-approve", cwd=tmp_path, env=env).code == 0
    alias = f"{aws_fake.endpoint_url}/us-east-1"  # what apimon before schema 6 stored AWS rows under
    ledger_file = tmp_path / ".apimon" / "ledger.db"
    with Ledger.open(ledger_file) as book:
        book.replace_window("aws", alias, date(2026, 2, 1), date(2026, 2, 28),
                            [UsageRow("acme", "free", "2026-02-10", "success", 12),
                             UsageRow("acme", "free", "2026-02-10", "total", 12)])
    conn = sqlite3.connect(ledger_file)  # make it a schema 5 ledger (before target_aliases)
    conn.executescript("DROP TABLE target_aliases; UPDATE schema_version SET version = 5;")
    conn.close()

    with Ledger.open(ledger_file) as book:
        assert book.schema_version == SCHEMA_VERSION
        assert book.resolve_target("aws", alias) == alias  # not learnt yet: the old rows are still found
    r = run_cli("usage", "show", str(plan), "--period", "2026-02", cwd=tmp_path, env=env)
    assert r.code == 0 and "12" in next(x for x in r.stdout.splitlines() if "acme" in x), r.output

    _seed_usage(aws_fake, "2026-03-02", 5)
    r = run_cli("usage", "pull", str(plan), "--from", "2026-03-01", "--to", "2026-03-31", cwd=tmp_path, env=env)
    assert r.code == 0, r.output
    account = f"{aws_fake.endpoint_url}/account:{aws_fake.account_id}/us-east-1"
    assert _targets(ledger_file) == {account}  # the February rows moved with the alias
    with Ledger.open(ledger_file) as book:
        assert book.resolve_target("aws", alias) == account
        days = sorted((row.day, row.count) for row in book.iter_rows(provider="aws", target=account)
                      if row.metric == "success")
    assert days == [("2026-02-10", 12), ("2026-03-02", 5)]
    r = run_cli("usage", "show", str(plan), "--period", "2026-02", cwd=tmp_path, env=env)
    assert r.code == 0 and "12" in next(x for x in r.stdout.splitlines() if "acme" in x), r.output
