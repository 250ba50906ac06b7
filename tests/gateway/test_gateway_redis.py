"""target.local.limits backend redis: GCRA buckets and quota counters in a real Redis (issue 13)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from test_gateway_inprocess import apply, get, upstream, upstreams_of

from apimon_cli.gateway import Gateway, GatewayConfig


def limits(url: str, prefix: str, **extra) -> dict:
    return {"backend": "redis", "url": url, "key_prefix": prefix, **extra}


@contextlib.asynccontextmanager
async def running(tmp_path: Path, lim: dict, **options):
    gw = Gateway(GatewayConfig(tmp_path / "state", upstreams_of(tmp_path), port=0, limits=lim, **options))
    await gw.start()
    try:
        yield gw
    finally:
        gw.summary = await gw.stop()


def test_burst_plus_k_admits_exactly_burst_and_two_gateways_share_the_bucket(tmp_path, redis_prefix):
    url, prefix = redis_prefix
    burst, extra = 12, 8

    async def body():
        up, port = await upstream.start()
        keys = apply(tmp_path, port, rate=1, burst=burst)
        try:
            async with running(tmp_path, limits(url, prefix)) as a, running(tmp_path, limits(url, prefix)) as b, \
                    aiohttp.ClientSession() as s:
                assert not a.limits.exclusive_state  # two gateways on one state: allowed with Redis
                urls = [f"{gw.url}/petstore/pets/1" for gw in (a, b)]
                started = time.monotonic()
                results = await asyncio.gather(*(get(s, urls[i % 2], keys["bob"]) for i in range(burst + extra)))
                refilled = int(time.monotonic() - started)
                admitted = sum(r[0] == 200 for r in results)
                assert burst <= admitted <= burst + refilled, (admitted, refilled)
                limited = next(r for r in results if r[0] == 429)
                assert limited[1]["RateLimit-Limit"] == str(burst) and int(limited[1]["Retry-After"]) >= 1
                assert b"rate_limited" in limited[2]
                assert (await get(s, urls[0], keys["acme"]))[0] == 200  # another subscriber: its own bucket
        finally:
            await up.cleanup()

    asyncio.run(body())


def test_quota_is_exact_survives_a_restart_and_its_keys_expire(tmp_path, redis_prefix):
    import redis

    url, prefix = redis_prefix

    async def body():
        up, port = await upstream.start()
        keys = apply(tmp_path, port, quota="quota: {limit: 7, period: day}")
        try:
            async with running(tmp_path, limits(url, prefix)) as gw, aiohttp.ClientSession() as s:
                results = await asyncio.gather(*(get(s, f"{gw.url}/petstore/pets/1", keys["bob"]) for _ in range(11)))
                assert sorted(r[0] for r in results) == [200] * 7 + [429] * 4
                assert b"quota_exceeded" in next(r[2] for r in results if r[0] == 429)
            async with running(tmp_path, limits(url, prefix)) as gw, aiohttp.ClientSession() as s:  # a restart
                assert (await get(s, f"{gw.url}/petstore/pets/1", keys["bob"]))[0] == 429
        finally:
            await up.cleanup()

    asyncio.run(body())
    client = redis.Redis.from_url(url)
    qkeys = list(client.scan_iter(match=prefix + "q:*"))
    assert len(qkeys) == 1 and client.get(qkeys[0]) == b"7"
    assert 0 < client.ttl(qkeys[0]) <= 2 * 86400  # the day window's end plus a day of grace
    for k in client.scan_iter(match=prefix + "r:*"):
        assert client.pttl(k) > 0  # bucket keys expire once full again


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def own_redis():
    """A redis-server of this test's own on a free port (the machine's Redis is never stopped)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (needed to stop a Redis mid-traffic)")
    port = _free_port()
    procs = []

    def start():
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                return proc
            time.sleep(0.05)
        raise AssertionError("own redis-server did not start")

    try:
        yield f"redis://127.0.0.1:{port}/0", start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


@pytest.mark.parametrize("on_error", ["allow", "deny"])
def test_redis_stopped_mid_traffic(tmp_path, on_error, capfd):
    async def body(url, start):
        server = start()
        up, port = await upstream.start()
        keys = apply(tmp_path, port, rate=1000, burst=1000)
        try:
            async with running(tmp_path, limits(url, "t:", on_error=on_error, timeout=0.2)) as gw, \
                    aiohttp.ClientSession() as s:
                target = f"{gw.url}/petstore/pets/1"
                assert (await get(s, target, keys["bob"]))[0] == 200
                server.terminate()
                server.wait(10)
                started = time.monotonic()
                statuses = [(await get(s, target, keys["bob"]))[0] for _ in range(30)]
                took = time.monotonic() - started
                assert statuses == ([200] * 30 if on_error == "allow" else [503] * 30)
                assert took < 3.0, took  # never waiting on a dead Redis per request
                start()  # back
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    if (await get(s, target, keys["bob"]))[0] == 200 and gw.limits._down_since is None:
                        break
                    await asyncio.sleep(0.2)
                assert gw.limits._down_since is None
            return gw
        finally:
            await up.cleanup()

    with own_redis() as (url, start):
        gw = asyncio.run(body(url, start))
    err = capfd.readouterr().err
    assert err.count("is unreachable") == 1 and err.count("answers again after") == 1, err
    assert gw.summary.limits_errors >= 30 and gw.limits.outages == 1
