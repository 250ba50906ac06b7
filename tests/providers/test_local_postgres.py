"""The local target's state in PostgreSQL (target.local.database, issue 13): apply, plan, keys show, import
and usage pull work as on SQLite; applies are serialised across processes; the password never shows."""

from __future__ import annotations

import subprocess
import sys
import time

import psycopg
from conftest import run_cli, write_plan

PLAN = """
apimon: 1
target:
  provider: local
  local:
    database: "{url}"
    upstreams: {{petstore: "http://127.0.0.1:9"}}
products:
  gold:
    display_name: Gold
    apis: [petstore]
    rate_limit: {{rate: 5, burst: 10}}
    quota: {{limit: {limit}, period: month}}
    pricing: {{model: per_unit, unit_price: "0.01"}}
subscribers:
  acme: {{product: gold, email: ops@acme.test}}
  {extra}
"""
SECRET = "hunter2-Secret"


def plan_file(tmp_path, db: str, limit: int = 100, extra: str = ""):
    url = db.replace("postgres@", f"postgres:{SECRET}@", 1)  # trust auth: the password is only there to hide
    return write_plan(tmp_path / "plan.yaml", PLAN.format(url=url, limit=limit, extra=extra))


def test_apply_plan_keys_import_and_pull_on_postgresql(tmp_path, postgres_db):
    plan = plan_file(tmp_path, postgres_db)
    r = run_cli("plan", str(plan))
    assert r.code == 0 and "2 to add" in r.stdout
    with psycopg.connect(postgres_db) as conn:  # plan only reads: nothing created
        assert conn.execute("SELECT to_regclass('products')").fetchone()[0] is None
    r = run_cli("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.output
    assert run_cli("plan", str(plan)).stdout.startswith("No changes")
    r = run_cli("keys", "show", "acme", "--plan", str(plan))
    assert r.code == 0
    with psycopg.connect(postgres_db) as conn:
        key = conn.execute("SELECT api_key FROM subscribers WHERE id = 'acme'").fetchone()[0]
        conn.execute("INSERT INTO usage VALUES ('acme', 'gold', '2026-11-02', 'total', 7)")
        conn.execute("INSERT INTO usage VALUES ('acme', 'gold', '2026-11-02', 'success', 7)")
    assert key in r.stdout
    # a change is its own transaction and bumps the revision gateways poll
    with psycopg.connect(postgres_db) as conn:
        before = int(conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])
    r = run_cli("apply", str(plan_file(tmp_path, postgres_db, limit=200)), "--auto-approve")
    assert r.code == 0 and "gold: updated" in r.stdout, r.output
    with psycopg.connect(postgres_db) as conn:
        assert int(conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]) == before + 1
    out = tmp_path / "imported.yaml"
    r = run_cli("import", "--provider", "local", "--database", postgres_db.replace("postgres@", f"postgres:{SECRET}@"),
                "--out", str(out))
    assert r.code == 0, r.output
    text = out.read_text()
    assert f"database: {postgres_db}" in text and "limit: 200" in text and SECRET not in text
    r = run_cli("usage", "pull", str(plan), "--from", "2026-11-01", "--to", "2026-11-30",
                "--ledger", str(tmp_path / "l.db"))
    assert r.code == 0 and "2 new" in r.stdout, r.output
    r = run_cli("usage", "export", "--ledger", str(tmp_path / "l.db"))
    assert f"local,{postgres_db},2026-11-02,acme,gold,total,7" in r.stdout  # the target: the URL, no password
    assert not (tmp_path / ".apimon").exists() and not (tmp_path / "state").exists()
    for result in (r,):
        assert SECRET not in result.output


def test_a_url_with_the_host_in_its_query_round_trips_through_import(tmp_path, postgres_db):
    """libpq's form without an authority, postgresql:///db?host=...&user=...: the target named in the ledger and
    written by `import` keeps the ``//`` (it became 'postgresql:/db?...', which the imported plan refused)."""
    from urllib.parse import urlsplit

    parts = urlsplit(postgres_db)
    url = f"postgresql://{parts.path}?host={parts.hostname}&port={parts.port or 5432}&user={parts.username}"
    assert run_cli("apply", str(plan_file(tmp_path, url)), "--auto-approve").code == 0
    out = tmp_path / "imported.yaml"
    r = run_cli("import", "--provider", "local", "--database", f"{url}&password={SECRET}", "--out", str(out))
    assert r.code == 0, r.output
    assert f"database: {url}\n" in out.read_text() and SECRET not in out.read_text()
    r = run_cli("plan", str(out), "--detailed-exitcode")
    assert r.code == 0 and r.stdout.startswith("No changes"), r.output


def test_applies_are_serialised_across_processes(tmp_path, postgres_db):
    plan = plan_file(tmp_path, postgres_db)
    assert run_cli("apply", str(plan), "--auto-approve").code == 0
    with psycopg.connect(postgres_db, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(7002, 1)")  # what a running apply holds
        bigger = plan_file(tmp_path, postgres_db, extra="globex: {product: gold}")
        proc = subprocess.Popen([sys.executable, "-m", "apimon_cli.cli", "apply", str(bigger), "--auto-approve"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert proc.poll() is None  # waiting for the other apply
        with psycopg.connect(postgres_db) as conn:
            assert conn.execute("SELECT count(*) FROM subscribers").fetchone()[0] == 1
        holder.execute("SELECT pg_advisory_unlock(7002, 1)")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "globex: created" in out, out + err
        # how long the second one waits: APIMON_LOCK_TIMEOUT, as with a SQLite state (it was a fixed 10 s)
        holder.execute("SELECT pg_advisory_lock(7002, 1)")
        started = time.monotonic()
        r = run_cli("apply", str(plan), "--auto-approve", env={"APIMON_LOCK_TIMEOUT": "0.5"})
        took = time.monotonic() - started
        assert r.code == 1 and "another apimon apply holds the lock" in r.stderr and "waited 0.5 s" in r.stderr
        assert took < 8 and SECRET not in r.output, took
        with psycopg.connect(postgres_db) as conn:
            assert conn.execute("SELECT count(*) FROM subscribers").fetchone()[0] == 2  # nothing changed


def test_an_unreachable_database_is_one_line_with_the_password_masked(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plan = plan_file(tmp_path, f"postgresql://postgres@127.0.0.1:{port}/nowhere")
    r = run_cli("apply", str(plan), "--auto-approve")
    assert r.code == 1 and "cannot open local gateway state postgresql://postgres:***@127.0.0.1" in r.stderr
    assert SECRET not in r.output
    r = run_cli("validate", str(write_plan(tmp_path / "bad.yaml", PLAN.format(url="mysql://x", limit=1, extra=""))))
    assert r.code == 1 and "target.local.database: must be a postgresql:// URL" in r.stderr


def test_a_wrong_scheme_names_the_field_and_its_line_and_masks_the_password(tmp_path):
    """target.local.database and target.local.limits.url of the wrong scheme: the error is the field's own
    (FILE:LINE:COL at the value), and the URL it quotes has its password masked."""
    import json

    bad = PLAN.format(url=f"mysql://ops:{SECRET}@db.internal/x", limit=1, extra="").replace(
        "    upstreams:", '    limits: {backend: redis, url: "http://:' + SECRET + '@127.0.0.1:1/0"}\n    upstreams:')
    plan = write_plan(tmp_path / "bad.yaml", bad)
    r = run_cli("validate", str(plan))
    assert r.code == 1 and SECRET not in r.output
    assert f"{plan}:5:15: error: target.local.database: must be a postgresql:// URL; got " \
           "'mysql://ops:***@db.internal/x'" in r.stderr
    assert f"{plan}:6:35: error: target.local.limits.url: must be a redis://, rediss:// or unix:// URL; got " \
           "'http://:***@127.0.0.1:1/0'" in r.stderr
    errors = json.loads(run_cli("validate", str(plan), "--json").stdout)["errors"]
    assert [(e["line"], e["field"]) for e in errors] == [(5, "target.local.database"), (6, "target.local.limits.url")]


def test_key_rotation_and_finish_on_postgresql(tmp_path, postgres_db):
    """`keys rotate` / `keys finish` on the local target with its state in PostgreSQL: the overlap serves
    both keys through a gateway reading that database, the old key stops at the overlap's end (moved into
    the past in the database, not waited for), finish removes it; no key value and no password printed."""
    import asyncio
    import json

    import aiohttp
    from conftest import load_example_upstream

    from apimon_cli.gateway import Gateway, GatewayConfig

    upstream = load_example_upstream()

    def current(conn) -> str:
        return conn.execute("SELECT api_key FROM subscribers WHERE id = 'acme'").fetchone()[0]

    async def scenario():
        up, port = await upstream.start()
        try:
            url = postgres_db.replace("postgres@", f"postgres:{SECRET}@", 1)
            plan = write_plan(tmp_path / "plan.yaml", PLAN.format(url=url, limit=100, extra="").replace(
                "http://127.0.0.1:9", f"http://127.0.0.1:{port}"))
            r = run_cli("apply", str(plan), "--auto-approve")
            assert r.code == 0, r.output
            with psycopg.connect(postgres_db) as conn:
                old = current(conn)
            r = run_cli("keys", "rotate", "acme", "--plan", str(plan), "--overlap", "1h")
            assert r.code == 0, r.output
            with psycopg.connect(postgres_db) as conn:
                new = current(conn)
                rotating = conn.execute("SELECT api_key FROM subscriber_keys WHERE subscriber = 'acme'").fetchall()
            assert new != old and (old,) in rotating
            assert old not in r.output and new not in r.output and SECRET not in r.output
            assert f"...{old[-4:]}" in r.output
            r = run_cli("keys", "list", str(plan), "--json", "--subscriber", "acme")
            assert r.code == 0, r.output
            assert [k["state"] for k in json.loads(r.stdout)["subscribers"][0]["keys"]] == ["rotating-out", "active"]
            config = GatewayConfig(tmp_path / "state", {"petstore": f"http://127.0.0.1:{port}"}, port=0,
                                   database=postgres_db)

            async def statuses(*keys: str) -> list[int]:
                gw = Gateway(config)  # a gateway reading the state from PostgreSQL
                await gw.start()
                try:
                    async with aiohttp.ClientSession() as s:
                        out = []
                        for key in keys:
                            async with s.get(f"{gw.url}/petstore/pets", headers={"x-api-key": key}) as resp:
                                await resp.read()
                                out.append(resp.status)
                        return out
                finally:
                    await gw.stop()

            assert await statuses(old, new) == [200, 200]  # the overlap: both keys work
            with psycopg.connect(postgres_db) as conn:  # the hour of overlap has passed
                conn.execute("UPDATE subscriber_keys SET expires_at = '2026-01-01T00:00:00+00:00' "
                             "WHERE api_key = %s", (old,))
            assert await statuses(old, new) == [403, 200]  # the old key ends with the overlap
            r = run_cli("keys", "finish", str(plan))
            assert r.code == 0 and "Finished 1 rotation." in r.output, r.output
            assert SECRET not in r.output
            with psycopg.connect(postgres_db) as conn:
                left = conn.execute("SELECT count(*) FROM subscriber_keys WHERE api_key = %s", (old,)).fetchone()[0]
                assert left == 0
                assert current(conn) == new
            r = run_cli("keys", "show", "acme", "--plan", str(plan))
            assert r.code == 0 and new in r.stdout
            assert run_cli("plan", str(plan), "--detailed-exitcode").code == 0
        finally:
            await up.cleanup()

    asyncio.run(scenario())
