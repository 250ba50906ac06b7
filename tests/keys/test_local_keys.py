"""Key lifecycle on the local target, end to end: `apimon keys ...` as a user runs it, and the local gateway
(in this process, real sockets) answering the keys during and after a rotation's overlap."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

import aiohttp
from conftest import load_example_upstream, run_cli, write_plan

from apimon_cli.gateway import Gateway, GatewayConfig

upstream = load_example_upstream()

PLAN = """
apimon: 1
target:
  provider: local
  local:
    state_dir: state
    upstreams: {{petstore: "http://127.0.0.1:{port}"}}
products:
  pro:
    display_name: Pro
    apis: [petstore]
    rate_limit: {{rate: 100, burst: 100}}
    quota: {{limit: {quota}, period: day}}
    pricing: {{model: free}}
subscribers:
  acme: {{product: pro{acme}}}
  bob: {{product: pro}}
"""


def setup(tmp_path: Path, port: int = 9, quota: int = 1000, acme: str = "", env: dict | None = None) -> Path:
    plan = write_plan(tmp_path / "plan.yaml", PLAN.format(port=port, quota=quota, acme=acme))
    r = run_cli("apply", str(plan), "--auto-approve", env=env)
    assert r.code == 0, r.output
    return plan


def state_keys(tmp_path: Path) -> dict[str, str]:
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        return dict(conn.execute("SELECT id, api_key FROM subscribers"))


def keys_list(plan: Path) -> list[dict]:
    r = run_cli("keys", "list", str(plan), "--json", "--subscriber", "acme")
    assert r.code == 0, r.output
    return json.loads(r.stdout)["subscribers"][0]["keys"]


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, port: int):
    gw = Gateway(GatewayConfig(tmp_path / "state", {"petstore": f"http://127.0.0.1:{port}"}, port=0))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def call(session: aiohttp.ClientSession, gw: Gateway, key: str) -> int:
    async with session.get(f"{gw.url}/petstore/pets", headers={"x-api-key": key}) as resp:
        await resp.read()
        return resp.status


def test_rotation_both_keys_work_on_one_quota_then_only_the_new_one(tmp_path):
    async def scenario():
        up, port = await upstream.start()
        plan = setup(tmp_path, port=port, quota=5)
        old = state_keys(tmp_path)["acme"]
        r = run_cli("keys", "rotate", "acme", "--plan", str(plan), "--overlap", "3s")
        assert r.code == 0, r.output
        assert old not in r.output and f"...{old[-4:]}" in r.output
        assert "keys show acme" in r.output  # how to fetch the new key: it is not printed without --reveal
        new = state_keys(tmp_path)["acme"]
        assert new != old and new not in r.output
        async with gateway(tmp_path, port) as gw, aiohttp.ClientSession() as s:
            # during the overlap both keys work, and count against acme's one daily quota of 5
            assert [await call(s, gw, k) for k in (old, new, old, new, old)] == [200] * 5
            assert await call(s, gw, new) == 429 and await call(s, gw, old) == 429
            # the old key stops at the overlap's end, even before `keys finish` removes it
            await asyncio.sleep(3.5)
            assert await call(s, gw, old) == 403
            assert await call(s, gw, new) == 429  # the new key is still acme's: still over the quota
        r = run_cli("keys", "finish", str(plan))
        assert r.code == 0 and "Finished 1 rotation." in r.output, r.output
        assert [k["state"] for k in keys_list(plan)] == ["active"]
        with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
            assert conn.execute("SELECT api_key FROM subscriber_keys WHERE api_key = ?", (old,)).fetchone() is None
        await up.cleanup()

    asyncio.run(scenario())


def test_keys_list_masks_and_shows_states(tmp_path):
    plan = setup(tmp_path)
    run_cli("keys", "rotate", "acme", "--plan", str(plan), "--overlap", "1h")
    keys = state_keys(tmp_path)
    r = run_cli("keys", "list", str(plan))
    assert r.code == 0, r.output
    assert keys["acme"] not in r.output and keys["bob"] not in r.output
    assert "rotating-out" in r.output and f"...{keys['acme'][-4:]}" in r.output
    listed = keys_list(plan)
    assert [k["state"] for k in listed] == ["rotating-out", "active"]
    assert all(len(k["last4"]) == 4 for k in listed) and listed[0]["expires"]


def test_a_second_rotation_during_the_overlap_is_refused(tmp_path):
    plan = setup(tmp_path)
    assert run_cli("keys", "rotate", "acme", "--plan", str(plan)).code == 0
    r = run_cli("keys", "rotate", "acme", "--plan", str(plan))
    assert r.code == 1 and "already rotating" in r.output and "keys revoke acme --key" in r.output


def test_revoke_refuses_to_leave_no_key_unless_all(tmp_path):
    async def scenario():
        up, port = await upstream.start()
        plan = setup(tmp_path, port=port)
        r = run_cli("keys", "revoke", "acme", "--plan", str(plan))
        assert r.code == 1 and "without a key" in r.output
        old = state_keys(tmp_path)["acme"]
        run_cli("keys", "rotate", "acme", "--plan", str(plan), "--overlap", "1h")
        new = state_keys(tmp_path)["acme"]
        r = run_cli("keys", "revoke", "acme", "--plan", str(plan), "--key", new[-4:])
        assert r.code == 1 and "without a working key" in r.output  # the old one is on its way out
        r = run_cli("keys", "revoke", "acme", "--plan", str(plan), "--key", old[-4:])
        assert r.code == 0, r.output
        async with gateway(tmp_path, port) as gw, aiohttp.ClientSession() as s:
            assert await call(s, gw, old) == 403 and await call(s, gw, new) == 200
        r = run_cli("keys", "revoke", "acme", "--plan", str(plan), "--all")
        assert r.code == 0 and f"no working key now; `apimon keys rotate acme --plan {plan}`" in r.output, r.output
        async with gateway(tmp_path, port) as gw, aiohttp.ClientSession() as s:
            assert await call(s, gw, new) == 403
        assert run_cli("keys", "show", "acme", "--plan", str(plan)).code == 1
        # a rotation issues a fresh key again
        assert run_cli("keys", "rotate", "acme", "--plan", str(plan)).code == 0
        assert [k["state"] for k in keys_list(plan)] == ["active"]
        await up.cleanup()

    asyncio.run(scenario())


def test_audit_log_records_who_did_what_without_values(tmp_path):
    plan = setup(tmp_path)
    old = state_keys(tmp_path)["acme"]
    run_cli("keys", "rotate", "acme", "--plan", str(plan), "--overlap", "1h")
    run_cli("keys", "revoke", "acme", "--plan", str(plan))
    new = state_keys(tmp_path)["acme"]
    r = run_cli("keys", "audit", str(plan), "--json")
    assert r.code == 0, r.output
    entries = json.loads(r.stdout)["entries"]
    assert [(e["action"], e["last4"]) for e in entries] == [("created", new[-4:]), ("rotated", old[-4:]),
                                                           ("revoked", old[-4:])]
    assert all(e["who"] and e["subscriber"] == "acme" for e in entries)
    text = run_cli("keys", "audit", str(plan)).output
    assert old not in text and new not in text


def test_rotate_refuses_a_key_from_the_environment_and_apply_rotates_it_with_overlap(tmp_path):
    async def scenario():
        up, port = await upstream.start()
        acme = ", key: {from_env: ACME_KEY, overlap: 1h}"
        plan = setup(tmp_path, port=port, acme=acme, env={"ACME_KEY": "first-value-0001"})
        r = run_cli("keys", "rotate", "acme", "--plan", str(plan), env={"ACME_KEY": "first-value-0001"})
        assert r.code == 1 and "key.from_env" in r.output and "apimon apply" in r.output
        r = run_cli("apply", str(plan), "--auto-approve", env={"ACME_KEY": "second-value-0002"})
        assert r.code == 0, r.output
        assert "first-value" not in r.output and "second-value" not in r.output
        async with gateway(tmp_path, port) as gw, aiohttp.ClientSession() as s:
            assert await call(s, gw, "first-value-0001") == 200  # still works for the overlap
            assert await call(s, gw, "second-value-0002") == 200
        await up.cleanup()

    asyncio.run(scenario())


def test_max_age_shows_in_plan_and_apply_rotates(tmp_path):
    plan = setup(tmp_path, acme=", key: {max_age: 90d}")
    r = run_cli("plan", str(plan), "--detailed-exitcode")
    assert r.code == 0, r.output
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        conn.execute("UPDATE subscriber_keys SET created_at = '2026-01-01T00:00:00+00:00'")
    r = run_cli("plan", str(plan), "--detailed-exitcode")
    assert r.code == 2 and "rotate key of acme:" in r.output and "days old" in r.output, r.output
    assert "rotate key of bob" not in r.output
    assert "No changes" not in r.output  # a key to rotate is a change
    r = run_cli("plan", str(plan), "--json", "--detailed-exitcode")
    assert r.code == 2, r.output
    rotations = json.loads(r.stdout)["key_rotations"]
    assert [(k["subscriber"], k["max_age"], k["overlap"]) for k in rotations] == [("acme", "90d", "1d")]
    assert rotations[0]["age_days"] > 90
    r = run_cli("plan", str(plan), "--format", "markdown")
    assert "rotate key of acme:" in r.stdout and "No changes" not in r.stdout, r.stdout
    old = state_keys(tmp_path)["acme"]
    r = run_cli("apply", str(plan), "--auto-approve")
    assert r.code == 0 and "rotated" in r.output, r.output
    assert f"apimon keys show acme --plan {plan}`" in r.output  # a command that works as printed
    assert state_keys(tmp_path)["acme"] != old
    assert [k["state"] for k in keys_list(plan)] == ["rotating-out", "active"]
    assert run_cli("plan", str(plan), "--detailed-exitcode").code == 0
    assert json.loads(run_cli("plan", str(plan), "--json").stdout)["key_rotations"] == []


def test_reveal_needs_a_terminal_and_out_writes_an_owner_only_file(tmp_path):
    plan = setup(tmp_path)
    r = run_cli("keys", "rotate", "acme", "--plan", str(plan), "--reveal")
    assert r.code == 1 and "--out" in r.output
    target = tmp_path / "acme.key"
    r = run_cli("keys", "rotate", "acme", "--plan", str(plan), "--out", str(target))
    assert r.code == 0, r.output
    assert target.read_text().strip() == state_keys(tmp_path)["acme"]
    assert target.stat().st_mode & 0o077 == 0


def test_overlap_duration_is_validated(tmp_path):
    plan = setup(tmp_path)
    r = run_cli("keys", "rotate", "acme", "--plan", str(plan), "--overlap", "1 week")
    assert r.code == 1 and "30s, 15m, 24h, 7d" in r.output
    bad = write_plan(tmp_path / "bad.yaml", PLAN.format(port=9, quota=5, acme=", key: {max_age: 90 days}"))
    r = run_cli("validate", str(bad))
    assert r.code == 1 and "subscribers.acme.key.max_age" in r.output and "7d" in r.output


def test_unmanaged_or_unknown_subscriber_is_refused(tmp_path):
    plan = setup(tmp_path)
    r = run_cli("keys", "rotate", "nobody", "--plan", str(plan))
    assert r.code == 1 and "not in the plan" in r.output
    r = run_cli("keys", "show", "nobody", "--plan", str(plan))
    assert r.code == 1 and "not in the plan" in r.output
    r = run_cli("keys", "list", str(plan), "--subscriber", "nobody")
    assert r.code == 1 and "not in the plan" in r.output, r.output



def test_keys_audit_and_finish_on_a_postgresql_ledger(tmp_path, postgres_db):
    """--ledger postgresql://...: `keys audit` on a database without a ledger says so and creates nothing,
    `keys rotate` records there, `keys audit` reads it back (both used to fail with an unexpected
    AttributeError: the ledger's "does it exist" asked a URL for a file)."""
    import psycopg

    def tables() -> list[str]:
        with psycopg.connect(postgres_db) as conn:
            return [t for (t,) in conn.execute("SELECT table_name FROM information_schema.tables "
                                               "WHERE table_schema = current_schema()")]

    secret = "audit-Secret-pw"
    url = postgres_db.replace("postgres@", f"postgres:{secret}@", 1)  # trust auth: only there to hide
    plan = setup(tmp_path)
    r = run_cli("keys", "audit", str(plan), "--ledger", url)
    assert (r.code, r.stdout.strip()) == (0, "No key actions recorded.") and tables() == []
    r = run_cli("keys", "rotate", "acme", "--plan", str(plan), "--ledger", url, "--overlap", "1h")
    assert r.code == 0, r.output
    r = run_cli("keys", "audit", str(plan), "--json", env={"APIMON_LEDGER": url})
    assert r.code == 0, r.output
    assert [e["action"] for e in json.loads(r.stdout)["entries"]] == ["created", "rotated"]
    assert run_cli("keys", "finish", str(plan), "--ledger", url).code == 0
    assert secret not in r.output
