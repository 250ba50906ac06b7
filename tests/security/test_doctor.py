"""Issue 11 `apimon doctor PLAN`: credentials (and their source), endpoint, permissions by read-only calls,
quotas in use vs limits, the ledger's location and schema version; exit 1 on a problem."""

from __future__ import annotations

import json

import pytest
from conftest import allow_endpoints, run_cli, write_plan
from contract import harnesses
from listener import Listener

from apimon_cli.ledger.store import SCHEMA_VERSION, Ledger


@pytest.fixture(params=["aws", "azure", "apigee", "local"])
def gateway(request, tmp_path):
    h = harnesses()[request.param]
    h.start()
    h.tmp_path = tmp_path
    yield h
    h.stop()


def plan(h, tmp_path):
    api = h.apis[0]
    return write_plan(tmp_path / "plan.yaml", f"apimon: 1\ntarget: {h.target(tmp_path)}\nproducts:\n"
                      f"  free: {{display_name: Free, apis: [{api}], pricing: {{model: free}}}}\n"
                      f"  pro: {{display_name: Pro, apis: [{api}], pricing: {{model: flat, fee: '10'}}}}\n"
                      "subscribers:\n  acme: {product: free, email: billing@acme.example}\n")


def test_doctor_reports_every_check_and_changes_nothing(gateway, tmp_path):
    path = plan(gateway, tmp_path)
    env = gateway.env()
    assert run_cli("apply", str(path), "--auto-approve", env=env).code == 0
    ledger = tmp_path / ".apimon" / "ledger.db"
    Ledger.open(ledger).close()
    before = gateway.unmanaged_state() if gateway.name != "local" else None
    r = run_cli("doctor", str(path), env=env)
    assert r.code == 0, r.output
    lines = {line.split()[1]: line for line in r.stdout.splitlines() if line[:1].isupper() and len(line.split()) > 1}
    assert lines["plan"].startswith("OK") and "2 products, 1 subscriber" in lines["plan"]
    assert f"{ledger}, schema version {SCHEMA_VERSION}" in lines["ledger"]
    if gateway.name != "local":
        assert lines["credentials"].startswith("OK") and lines["endpoint"].startswith("OK")
        assert lines["permissions"].startswith("OK") and "read-only" in lines["permissions"]
        source = {"aws": "environment variables (AWS_ACCESS_KEY_ID)", "azure": "APIMON_AZURE_TOKEN",
                  "apigee": "APIMON_APIGEE_TOKEN"}[gateway.name]
        assert source in lines["credentials"]
        assert gateway.unmanaged_state() == before
    if gateway.name == "aws":
        assert "usage plans: 2 of 300 in use in us-east-1" in r.stdout
        assert "API keys: 1 of 10,000 in use in us-east-1" in r.stdout
    assert "No problems found" in r.stdout
    body = json.loads(run_cli("doctor", str(path), "--json", env=env).stdout)
    assert body["problems"] == 0 and {c["check"] for c in body["checks"]} >= {"plan", "ledger"}
    # doctor ran only reads: the plan still shows no changes
    assert run_cli("plan", str(path), "--detailed-exitcode", env=env).code == 0


def test_doctor_exits_1_on_refused_credentials(tmp_path):
    h = harnesses()["apigee"]
    h.start()
    try:
        path = plan(h, tmp_path)
        h.fake.valid_tokens = {"the-right-token"}
        r = run_cli("doctor", str(path), env={**h.env(), "APIMON_APIGEE_TOKEN": "a-wrong-token"})
    finally:
        h.stop()
    assert r.code == 1, r.output
    assert any(line.startswith("PROBLEM") and "credentials" in line for line in r.stdout.splitlines()), r.stdout
    assert "1 problem found" in r.stdout and "a-wrong-token" not in r.output


def test_doctor_names_an_endpoint_that_does_not_answer(tmp_path):
    with Listener() as hole:
        path = write_plan(tmp_path / "plan.yaml", "apimon: 1\ntarget:\n  provider: azure\n  azure: "
                          f"{{subscription_id: s, resource_group: g, service: n, endpoint: '{hole.url}'}}\n"
                          "products: {}\n")
        r = run_cli("doctor", str(path), "--timeout", "3",
                    env={"APIMON_AZURE_TOKEN": "t0ken-value", **allow_endpoints(hole.url)})
    assert r.code == 1
    assert hole.url in r.output and "read timed out" in r.output


def test_doctor_on_an_invalid_plan_or_a_newer_ledger(tmp_path):
    path = write_plan(tmp_path / "plan.yaml", "apimon: 1\ntarget: {provider: local}\nproducts:\n  Bad: {}\n")
    r = run_cli("doctor", str(path))
    assert r.code == 1 and f"{path}:4:" in r.stderr and "PROBLEM  plan" in r.stdout
    good = write_plan(tmp_path / "ok.yaml", "apimon: 1\ntarget: {provider: local}\nproducts: {}\n")
    ledger = tmp_path / "ledger.db"
    Ledger.open(ledger).close()
    import sqlite3

    with sqlite3.connect(ledger) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    r = run_cli("doctor", str(good), "--ledger", str(ledger))
    assert r.code == 1 and "newer than this apimon knows" in r.stdout


def test_doctor_json_gives_the_errors_like_every_json_command(tmp_path):
    # issue 11: with --json, errors are {"errors": [{file, line, column, field, message}]} on stdout
    path = write_plan(tmp_path / "plan.yaml", "apimon: 1\ntarget: {provider: local}\nproducts:\n"
                      "  p: {display_name: P, pricing: {model: bogus}}\n")
    r = run_cli("doctor", str(path), "--json")
    assert r.code == 1
    body = json.loads(r.stdout)
    assert body["problems"] == 1
    [err] = body["errors"]
    assert (err["file"], err["line"], err["field"]) == (str(path), 4, "products.p.pricing.model")
    assert "bogus" in err["message"] and isinstance(err["column"], int)
    good = write_plan(tmp_path / "ok.yaml", "apimon: 1\ntarget: {provider: local}\nproducts: {}\n")
    ledger = tmp_path / "ledger.db"
    Ledger.open(ledger).close()
    import sqlite3

    with sqlite3.connect(ledger) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    body = json.loads(run_cli("doctor", str(good), "--ledger", str(ledger), "--json").stdout)
    [err] = body["errors"]
    assert err["file"] is None and err["message"].startswith("ledger: ") and "newer" in err["message"]
    ok = json.loads(run_cli("doctor", str(good), "--json").stdout)
    assert ok["problems"] == 0 and ok["errors"] == []


def test_doctor_on_a_postgresql_ledger(tmp_path, postgres_db):
    """--ledger / APIMON_LEDGER postgresql://: the ledger check reads its schema version without migrating
    (it used to fail with an unexpected AttributeError), the password masked in every line."""
    import psycopg

    secret = "doctor-Secret-pw"
    url = postgres_db.replace("postgres@", f"postgres:{secret}@", 1)  # trust auth: only there to hide
    good = write_plan(tmp_path / "ok.yaml", "apimon: 1\ntarget: {provider: local}\nproducts: {}\n")
    r = run_cli("doctor", str(good), "--ledger", url)
    assert r.code == 0 and "INFO     ledger" in r.stdout and "no ledger yet in postgresql://postgres:***@" in r.stdout
    assert not any(t[0] for t in psycopg.connect(postgres_db).execute(  # doctor created nothing
        "SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema())"))
    Ledger.open(url).close()
    r = run_cli("doctor", str(good), env={"APIMON_LEDGER": url})
    assert r.code == 0 and f"schema version {SCHEMA_VERSION}" in r.stdout and "postgres:***@" in r.stdout
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    body = json.loads(run_cli("doctor", str(good), "--ledger", url, "--json").stdout)
    [err] = body["errors"]
    assert err["message"].startswith("ledger: ") and "newer" in err["message"]
    with psycopg.connect(postgres_db, autocommit=True) as conn:
        conn.execute("DROP TABLE schema_version")  # tables of a ledger, but no version: not an apimon ledger
    r = run_cli("doctor", str(good), "--ledger", url)
    assert r.code == 1 and "not an apimon ledger" in r.stdout
    assert secret not in r.output


def test_doctor_on_a_local_target_kept_in_postgresql_with_redis_limits(tmp_path, postgres_db, redis_prefix):
    """target.local.database and target.local.limits: doctor checks the database (not a state directory it
    does not use) and pings the Redis, read-only, passwords masked."""
    import psycopg

    secret = "doctor-Secret-pw"
    db = postgres_db.replace("postgres@", f"postgres:{secret}@", 1)  # trust auth: only there to hide
    redis_url, prefix = redis_prefix

    def doctor(database: str, redis: str):
        plan = write_plan(tmp_path / "plan.yaml", "apimon: 1\ntarget:\n  provider: local\n  local:\n"
                          f"    database: \"{database}\"\n"
                          f"    limits: {{backend: redis, url: \"{redis}\", key_prefix: \"{prefix}\"}}\n"
                          "products: {}\n")
        r = run_cli("doctor", str(plan))
        assert secret not in r.output and "state directory" not in r.output
        return r

    r = doctor(db, redis_url)
    assert r.code == 0 and "INFO     endpoint     state database postgresql://postgres:***@" in r.stdout
    assert "holds no state yet" in r.stdout and f"OK       limits       Redis at {redis_url} answers" in r.stdout
    with psycopg.connect(postgres_db) as conn:  # read-only: doctor created no state
        assert conn.execute("SELECT to_regclass('meta')").fetchone()[0] is None
    plan = tmp_path / "plan.yaml"
    assert run_cli("apply", str(plan), "--auto-approve").code == 0
    r = doctor(db, redis_url)
    assert r.code == 0 and "OK       endpoint     state database postgresql://postgres:***@" in r.stdout, r.output
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = doctor(db.rsplit("/", 1)[0] + "/apimon_no_such_db", f"redis://:{secret}@127.0.0.1:{port}/0")
    assert r.code == 1 and "PROBLEM  endpoint     cannot open local gateway state" in r.stdout
    assert f"PROBLEM  limits       Redis at redis://:***@127.0.0.1:{port}/0 does not answer" in r.stdout
