"""The local gateway in this process, over real sockets on 127.0.0.1: keys, API scoping, rate limit, quota
across a period boundary (injected clock), metering, upstream failures. The state is made by `apimon apply`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest
import yarl
from conftest import load_example_upstream, run_cli, write_plan

from apimon_cli.gateway import FakeClock, Gateway, GatewayConfig
from apimon_cli.gateway.clock import windows_at
from apimon_cli.gateway.metering import metric_of

upstream = load_example_upstream()

PLAN = """
apimon: 1
target:
  provider: local
  local:
    state_dir: state
    upstreams: {{petstore: "{up}", orders: "{up}/", down: "http://127.0.0.1:{dead}"}}
products:
  free:
    display_name: Free
    apis: [petstore, down]
    rate_limit: {{rate: {rate}, burst: {burst}}}
    {quota}
    pricing: {{model: free}}
  pro:
    display_name: Pro
    apis: [petstore, orders, nowhere]
    pricing: {{model: free}}
subscribers:
  bob: {{product: free}}
  acme: {{product: pro}}
  gone: {{product: pro, enabled: false}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def apply(tmp_path: Path, up_port: int, *, rate: int = 1000, burst: int = 1000, quota: str = "") -> dict[str, str]:
    text = PLAN.format(up=f"http://127.0.0.1:{up_port}", dead=free_port(), rate=rate, burst=burst, quota=quota)
    plan = write_plan(tmp_path / "plan.yaml", text)
    r = run_cli("apply", str(plan), "--auto-approve")
    assert r.code == 0, r.output
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        return dict(conn.execute("SELECT id, api_key FROM subscribers"))


def upstreams_of(tmp_path: Path) -> dict[str, str]:
    import yaml

    return yaml.safe_load((tmp_path / "plan.yaml").read_text())["target"]["local"]["upstreams"]


def usage(tmp_path: Path) -> dict[tuple[str, str, str, str], int]:
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        return {tuple(r[:4]): r[4] for r in conn.execute("SELECT subscriber, product, day, metric, count FROM usage")}


@contextlib.asynccontextmanager
async def running(tmp_path: Path, clock=None, **options):
    gw = Gateway(GatewayConfig(tmp_path / "state", upstreams_of(tmp_path), port=0, **options), clock=clock)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def get(session: aiohttp.ClientSession, url: str, key: str | None = None, **kw):
    headers = {"x-api-key": key} if key else {}
    async with session.request(kw.pop("method", "GET"), url, headers=headers, **kw) as r:
        return r.status, r.headers, await r.read()


def test_status_codes_map_to_azure_metrics():
    assert [metric_of(s) for s in (200, 201, 204, 301, 304, 307)] == [0] * 6
    assert [metric_of(s) for s in (401, 403, 429)] == [1] * 3
    assert [metric_of(s) for s in (400, 500, 502, 504)] == [2] * 4
    assert [metric_of(s) for s in (302, 404, 409, 422)] == [3] * 4


def test_windows_follow_utc_calendar():
    w = windows_at(FakeClock("2026-12-31T23:30:00Z")())
    assert (w.day, w.window["week"], w.window["month"]) == ("2026-12-31", "week:2026-W53", "month:2026-12")
    assert w.resets["month"] == FakeClock("2027-01-01T00:00:00Z")()
    assert w.resets["week"] == FakeClock("2027-01-04T00:00:00Z")()  # the next Monday
    assert windows_at(FakeClock("2027-01-01T00:00:00Z")()).window["week"] == "week:2026-W53"


def test_keys_api_scoping_forwarding_and_metering(tmp_path):
    async def body():
        up, port = await upstream.start()
        keys = apply(tmp_path, port)
        try:
            async with running(tmp_path) as gw, aiohttp.ClientSession() as s:
                base = gw.url
                # missing, unknown, disabled keys; an API outside the product
                status, _, raw = await get(s, f"{base}/petstore/pets")
                assert status == 403 and b'"missing_key"' in raw
                status, headers, raw = await get(s, f"{base}/petstore/pets", "not-a-key")
                assert status == 403 and headers["Content-Type"] == "application/json"
                assert b'"invalid_key"' in raw
                assert (await get(s, f"{base}/petstore/pets", keys["gone"]))[0] == 403
                status, _, raw = await get(s, f"{base}/orders/pets", keys["bob"])
                assert status == 403 and b"api_not_in_product" in raw and b"orders" in raw
                # allowed: method, path, query and body go through; the key does not
                status, _, raw = await get(s, f"{base}/petstore/pets/2", keys["bob"])
                assert status == 200 and b'"Tom"' in raw
                status, _, raw = await get(s, f"{base}/orders/headers?a=1&b=%20x", keys["acme"])
                seen = __import__("json").loads(raw)
                assert seen["path_qs"] == "/headers?a=1&b=%20x"
                assert "x-api-key" not in seen["headers"]
                assert seen["headers"]["x-apimon-subscriber"] == "acme"
                assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
                status, _, raw = await get(
                    s, f"{base}/petstore/pets", keys["acme"], method="POST", json={"name": "Kit"}
                )
                assert status == 201 and b'"Kit"' in raw
                assert (await get(s, f"{base}/petstore/status/404", keys["acme"]))[0] == 404  # other
                assert (await get(s, f"{base}/petstore/status/500", keys["acme"]))[0] == 500  # failed
                climb = yarl.URL(f"{base}/petstore/%2E%2E/admin", encoded=True)
                assert (await get(s, climb, keys["acme"]))[0] == 400  # failed
                assert (await get(s, f"{base}/nowhere/x", keys["acme"]))[0] == 502  # no upstream: failed
                status, _, raw = await get(s, f"{base}/down/pets", keys["bob"])  # nothing listens there
                assert status == 502 and b"upstream_unreachable" in raw
                await gw.flush()
                day = windows_at(time.time()).day
                assert usage(tmp_path) == {
                    ("gone", "pro", day, "blocked"): 1,
                    ("gone", "pro", day, "total"): 1,
                    ("bob", "free", day, "blocked"): 1,
                    ("bob", "free", day, "success"): 1,
                    ("bob", "free", day, "failed"): 1,
                    ("bob", "free", day, "total"): 3,
                    ("acme", "pro", day, "success"): 2,
                    ("acme", "pro", day, "other"): 1,
                    ("acme", "pro", day, "failed"): 3,
                    ("acme", "pro", day, "total"): 6,
                }
                assert gw.meter.unauthenticated == 2  # no subscriber: counted nowhere
        finally:
            await up.cleanup()

    asyncio.run(body())


def test_rate_limit_burst_plus_n_gives_n_429s(tmp_path):
    burst, extra = 20, 10

    async def body():
        up, port = await upstream.start()
        keys = apply(tmp_path, port, rate=1, burst=burst)
        try:
            async with running(tmp_path) as gw, aiohttp.ClientSession() as s:
                url = f"{gw.url}/petstore/pets/1"
                started = time.monotonic()
                results = await asyncio.gather(*(get(s, url, keys["bob"]) for _ in range(burst + extra)))
                refilled = int(time.monotonic() - started)  # at 1 request/s, tokens that came back meanwhile
                statuses = [r[0] for r in results]
                limited = [r for r in results if r[0] == 429]
                assert set(statuses) == {200, 429}
                assert extra - refilled <= len(limited) <= extra, (len(limited), refilled)
                _, headers, raw = limited[0]
                assert headers["RateLimit-Limit"] == str(burst) and headers["RateLimit-Remaining"] == "0"
                assert int(headers["Retry-After"]) >= 1 and int(headers["RateLimit-Reset"]) >= 1
                assert b"rate_limited" in raw and b"quota" not in raw
                await asyncio.sleep(1.05)  # one token back
                assert (await get(s, url, keys["bob"]))[0] == 200
                # a different key has its own bucket
                assert (await get(s, url, keys["acme"]))[0] == 200
        finally:
            await up.cleanup()

    asyncio.run(body())


def test_quota_exhaustion_persists_and_resets_at_the_period_boundary(tmp_path):
    clock = FakeClock("2026-11-30T23:59:58Z")

    async def body():
        up, port = await upstream.start()
        keys = apply(tmp_path, port, quota="quota: {limit: 3, period: month}")
        try:
            async with running(tmp_path, clock=clock) as gw, aiohttp.ClientSession() as s:
                url = f"{gw.url}/petstore/pets"
                assert [(await get(s, url, keys["bob"]))[0] for _ in range(3)] == [200] * 3
                status, headers, raw = await get(s, url, keys["bob"])
                doc = __import__("json").loads(raw)
                assert status == 429 and doc["error"] == "quota_exceeded"
                assert "quota" in doc["message"] and "not the rate limit" in doc["message"]
                assert doc["quota"] == {"limit": 3, "period": "month", "resets_at": "2026-12-01T00:00:00Z"}
                assert headers["Retry-After"] == "2"
                assert (await get(s, url, keys["acme"]))[0] == 200  # pro has no quota
            # a restart remembers the count (quota_counters)
            async with running(tmp_path, clock=clock) as gw, aiohttp.ClientSession() as s:
                url = f"{gw.url}/petstore/pets"
                assert (await get(s, url, keys["bob"]))[0] == 429
                clock.set("2026-12-01T00:00:01Z")  # a new month
                assert [(await get(s, url, keys["bob"]))[0] for _ in range(4)] == [200, 200, 200, 429]
            with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
                assert conn.execute('SELECT "window", count FROM quota_counters').fetchall() == [("month:2026-12", 3)]
            counts = usage(tmp_path)
            assert counts[("bob", "free", "2026-11-30", "success")] == 3
            assert counts[("bob", "free", "2026-11-30", "blocked")] == 2
            assert counts[("bob", "free", "2026-12-01", "success")] == 3
            assert counts[("bob", "free", "2026-12-01", "blocked")] == 1
        finally:
            await up.cleanup()

    asyncio.run(body())


def test_upstream_slow_or_broken_gives_504_502_never_a_hang(tmp_path):
    async def body():
        up, port = await upstream.start()
        keys = apply(tmp_path, port)
        try:
            async with running(tmp_path, upstream_timeout=0.5, connect_timeout=0.5) as gw, aiohttp.ClientSession() as s:
                started = time.monotonic()
                status, _, raw = await get(s, f"{gw.url}/petstore/slow?seconds=3", keys["bob"])
                assert status == 504 and b"upstream_timeout" in raw
                assert time.monotonic() - started < 1.5
                started = time.monotonic()
                status, _, raw = await get(s, f"{gw.url}/down/x", keys["bob"])
                assert status == 502 and time.monotonic() - started < 1.0
                # a body the upstream breaks off is cut for the client too (never completed), metered failed
                async with s.get(f"{gw.url}/petstore/broken", headers={"x-api-key": keys["acme"]}) as r:
                    assert r.status == 200
                    with pytest.raises(aiohttp.ClientPayloadError):
                        await r.read()
                await gw.flush()
                day = windows_at(time.time()).day
                assert usage(tmp_path)[("acme", "pro", day, "failed")] == 1
                # still fine afterwards
                assert (await get(s, f"{gw.url}/petstore/slow?seconds=0.1", keys["bob"]))[0] == 200
        finally:
            await up.cleanup()

    asyncio.run(body())


def test_connect_timeout_gives_504(tmp_path):
    """An upstream whose listen backlog is full never completes the TCP handshake."""

    async def body():
        up, port = await upstream.start()
        keys = apply(tmp_path, port)
        stuck = socket.socket()
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(0)
        fillers = []
        for _ in range(8):  # fill the accept queue; later SYNs are dropped
            c = socket.socket()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(stuck.getsockname())
            fillers.append(c)
        plan = tmp_path / "plan.yaml"
        ups = upstreams_of(tmp_path) | {"petstore": f"http://127.0.0.1:{stuck.getsockname()[1]}"}
        try:
            gw = Gateway(GatewayConfig(tmp_path / "state", ups, port=0, connect_timeout=0.3))
            await gw.start()
            try:
                async with aiohttp.ClientSession() as s:
                    started = time.monotonic()
                    status, _, raw = await get(s, f"{gw.url}/petstore/pets", keys["bob"])
                    assert time.monotonic() - started < 1.5
                    assert status == 504 and b"upstream_timeout" in raw, raw
            finally:
                await gw.stop()
        finally:
            for c in fillers:
                c.close()
            stuck.close()
            await up.cleanup()
        assert plan.exists()

    asyncio.run(body())
