"""Hot reload off the event loop (issue 21): the key table is built on the database thread from the rows
SQLite reports as changed, unchanged keys keep their KeyState (and buckets), product limits change through
their slot, and the swap is one step on the loop; at 90,000 keys a reload does not stall requests."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time

import aiohttp
from gwutil import apply, running, upstream

PRODUCTS = (
    "  p: {display_name: P, apis: [petstore], rate_limit: {rate: 1, burst: 5}, pricing: {model: free}}\n"
    "  q: {display_name: Q, apis: [petstore], pricing: {model: free}}"
)


def bump(db, sql: str, *args) -> None:
    with sqlite3.connect(db, timeout=30) as conn:
        conn.execute(sql, args)
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'revision'")


def test_reload_is_incremental_and_keeps_buckets(tmp_path):
    async def body():
        up, port = await upstream.start()
        ups = {"petstore": f"http://127.0.0.1:{port}"}
        keys = apply(tmp_path, ups, PRODUCTS, "  a: {product: p}\n  b: {product: p}\n  c: {product: q}\n"
                     "  d: {product: q}")
        db = tmp_path / "state" / "state.db"
        try:
            async with running(tmp_path, ups) as gw, aiohttp.ClientSession() as s:
                url = f"{gw.url}/petstore/pets"

                async def call(key):
                    async with s.get(url, headers={"x-api-key": key}) as r:
                        return r.status

                assert [await call(keys["a"]) for _ in range(6)] == [200] * 5 + [429]  # burst 5 used up
                before = dict(gw.keys)
                # a product's limits change, one key is disabled, one removed, one added, one moves product
                with sqlite3.connect(db) as conn:
                    spec = json.loads(conn.execute("SELECT spec FROM products WHERE id = 'p'").fetchone()[0])
                spec["rate_limit"] = {"rate": 1, "burst": 3}
                bump(db, "UPDATE products SET spec = ? WHERE id = 'p'", json.dumps(spec))
                bump(db, "UPDATE subscribers SET enabled = 0 WHERE id = 'c'")
                bump(db, "DELETE FROM subscribers WHERE id = 'd'")
                bump(db, "UPDATE subscribers SET product = 'q' WHERE id = 'b'")
                bump(db, "INSERT INTO subscribers (id, owner, product, enabled, api_key, updated_at) "
                     "VALUES ('e', 'apimon', 'p', 1, 'key-of-e-0123456789abcdef', 'now')")
                await gw.reload()
                after = gw.keys
                assert after[keys["a"]] is before[keys["a"]]  # unchanged row: the same object
                assert after[keys["a"]].limits.burst == 3  # the product's new limits, through its slot
                assert after[keys["a"]].counters.tokens < 1  # its bucket was not refilled by the reload
                assert await call(keys["a"]) == 429
                assert after[keys["b"]] is not before[keys["b"]] and after[keys["b"]].product == "q"
                assert after[keys["b"]].counters is before[keys["b"]].counters  # its bucket goes along
                assert keys["d"] not in after and not after[keys["c"]].enabled
                assert await call(keys["c"]) == 403 and await call(keys["d"]) == 403
                assert after["key-of-e-0123456789abcdef"].counters.tokens == 3  # a new key: a full bucket
                assert await call("key-of-e-0123456789abcdef") == 200
                assert set(after) == {keys["a"], keys["b"], keys["c"], "key-of-e-0123456789abcdef"}
                # a reload with no change reuses every object
                bump(db, "UPDATE meta SET value = value")
                unchanged = dict(gw.keys)
                await gw.reload()
                assert all(gw.keys[k] is v for k, v in unchanged.items()) and gw.keys.keys() == unchanged.keys()
        finally:
            await up.cleanup()

    asyncio.run(body())


def test_a_reload_of_90000_keys_does_not_stall_the_event_loop(tmp_path):
    n = 90_000

    async def body():
        up, port = await upstream.start()
        ups = {"petstore": f"http://127.0.0.1:{port}"}
        apply(tmp_path, ups, PRODUCTS, "  a: {product: p}")
        db = tmp_path / "state" / "state.db"
        with sqlite3.connect(db) as conn:
            conn.executemany(
                "INSERT INTO subscribers (id, owner, product, enabled, api_key, updated_at) "
                "VALUES (?, 'apimon', 'p', 1, ?, 'now')",
                ((f"s{i:06d}", secrets.token_urlsafe(30)) for i in range(n - 1)),
            )
        try:
            async with running(tmp_path, ups) as gw:
                assert len(gw.keys) == n
                loop = asyncio.get_running_loop()
                lags: list[float] = []
                done = asyncio.Event()

                async def ticker():
                    while not done.is_set():
                        t = loop.time()
                        await asyncio.sleep(0.001)
                        lags.append(loop.time() - t - 0.001)

                tick = asyncio.create_task(ticker())
                worst = []
                for rate in (2, 3, 4):  # every key's product changes: the worst case for a rebuild
                    with sqlite3.connect(db) as conn:
                        spec = json.loads(conn.execute("SELECT spec FROM products WHERE id = 'p'").fetchone()[0])
                    spec["rate_limit"] = {"rate": rate, "burst": 5}
                    lags.clear()
                    bump(db, "UPDATE products SET spec = ? WHERE id = 'p'", json.dumps(spec))
                    with sqlite3.connect(db) as conn:
                        revision = conn.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0]
                    started = time.monotonic()
                    while gw.revision != revision:  # the gateway's own poll picks the change up
                        assert time.monotonic() - started < 30
                        await asyncio.sleep(0.01)
                    await asyncio.sleep(0.05)
                    worst.append(max(lags))
                    ks = next(iter(gw.keys.values()))
                    assert getattr(ks, "limits", ks).rate == rate
                done.set()
                await tick
                # rebuilding 90,000 keys on the loop stalled it for 150-700 ms; off the loop the longest
                # pause is a GIL hand-over or two
                assert sorted(worst)[1] < 0.12, [f"{w * 1000:.0f} ms" for w in worst]
        finally:
            await up.cleanup()

    asyncio.run(body())
