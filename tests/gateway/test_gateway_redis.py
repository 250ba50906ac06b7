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
def own_redis(*options: str):
    """A redis-server of this test's own on a free port (the machine's Redis is never stopped)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (needed to stop a Redis mid-traffic)")
    port = _free_port()
    procs = []

    def start():
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 *options],
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


# ---------------------------------------------------------------- the back end's own connection (redis_limits)


def _key_state(rate: float = 0.0, burst: float = 0.0, quota: int | None = None, subscriber: str = "bob"):
    from apimon_cli.gateway.limits import Counters, KeyState, ProductLimits, ProductSlot

    lim = ProductLimits("gold", frozenset({"petstore"}), rate=rate, burst=burst, quota_limit=quota, quota_period="day")
    return KeyState(subscriber, True, ProductSlot(lim), Counters(burst, 0.0))


async def _backend(url: str, prefix: str = "t:", **options):
    from apimon_cli.gateway.clock import windows_at
    from apimon_cli.gateway.redis_limits import RedisLimits

    backend = RedisLimits(url, prefix=prefix, **options)
    win = windows_at(time.time())
    await backend.start(None, win)
    return backend, win


def test_one_batch_of_concurrent_requests_keeps_every_decision_exact(redis_prefix):
    """All the admits of one loop iteration go out in one write; each is still its own atomic decision."""
    url, prefix = redis_prefix

    async def body():
        backend, win = await _backend(url, prefix)
        try:
            bucket = _key_state(rate=0.001, burst=10)  # no refill during the test
            results = await asyncio.gather(*(backend.admit(bucket, 0.0, win, time.time()) for _ in range(40)))
            assert backend._wire is not None and backend._wire.sent == 1 + 40  # SCRIPT LOAD, then one batch
            assert sum(r is None for r in results) == 10
            refusals = [r for r in results if r is not None]
            assert len(refusals) == 30 and all(r[0] == 429 and r[2]["RateLimit-Limit"] == "10" for r in refusals)

            quota = _key_state(rate=1e6, burst=1e6, quota=7, subscriber="carol")
            results = await asyncio.gather(*(backend.admit(quota, 0.0, win, time.time()) for _ in range(25)))
            assert sum(r is None for r in results) == 7
            assert all(b"quota_exceeded" in r[1] for r in results if r is not None)
            assert backend.quota_count(("carol", win.window["day"])) == 7 and backend.errors == 0
        finally:
            await backend.close()

    asyncio.run(body())


def test_a_redis_that_lost_its_scripts_is_answered_with_eval_and_counts_stay_exact():
    import redis

    async def body(url):
        backend, win = await _backend(url)
        try:
            ks = _key_state(quota=100)
            assert await backend.admit(ks, 0.0, win, time.time()) is None
            redis.Redis.from_url(url).script_flush()  # what a Redis restart does to the script cache
            results = await asyncio.gather(*(backend.admit(ks, 0.0, win, time.time()) for _ in range(5)))
            assert results == [None] * 5 and backend.errors == 0 and backend.outages == 0
            assert backend.quota_count(("bob", win.window["day"])) == 6
            assert redis.Redis.from_url(url).script_exists(backend._sha) == [True]  # EVAL loaded it again
        finally:
            await backend.close()

    with own_redis() as (url, start):
        start()
        asyncio.run(body(url))


def test_password_and_database_from_the_url_over_tcp_and_a_unix_socket(tmp_path):
    import redis

    async def body(url):
        over_unix, win = await _backend(f"unix://{sock}?db=3&password=s3cret")
        try:
            assert await over_unix.admit(_key_state(quota=5, subscriber="ann"), 0.0, win, time.time()) is None
            assert over_unix.errors == 0
        finally:
            await over_unix.close()
        good, win = await _backend(db3)
        bad, _ = await _backend(url.replace("redis://", "redis://:wrong@"), on_error="deny")
        try:
            assert await good.admit(_key_state(quota=5), 0.0, win, time.time()) is None and good.errors == 0
            assert (await bad.admit(_key_state(quota=5), 0.0, win, time.time()))[0] == 503  # AUTH refused
            assert bad.outages == 1
        finally:
            await good.close()
            await bad.close()
        client = redis.Redis.from_url(db3)
        assert sorted(k.decode() for k in client.scan_iter(match="t:q:*")) == [
            f"t:q:gold:{who}:{win.window['day']}" for who in ("ann", "bob")]

    sock = tmp_path / "redis.sock"
    with own_redis("--requirepass", "s3cret", "--unixsocket", str(sock), "--unixsocketperm", "700") as (url, start):
        start()
        db3 = url.replace("redis://", "redis://:s3cret@").replace("/0", "/3")
        asyncio.run(body(url))


def test_the_password_is_masked_in_the_authority_and_in_a_query_parameter():
    """A Unix socket's password can only be a ``password=`` query parameter: the outage line masks it too."""
    from apimon_cli.gateway.redis_limits import RedisLimits

    shown = {url: RedisLimits(url).display_url for url in (
        "unix:///run/redis.sock?db=3&password=s3cret-pw", "redis://:s3cret-pw@h:6379/0",
        "rediss://ops:s3cret-pw@h:6380/1?ssl_ca_certs=/etc/ca.pem", "redis://h:6379/0?password=s3cret-pw")}
    assert list(shown.values()) == ["unix:///run/redis.sock?db=3&password=***", "redis://:***@h:6379/0",
                                    "rediss://ops:***@h:6380/1?ssl_ca_certs=/etc/ca.pem",
                                    "redis://h:6379/0?password=***"]

    class Log(list):
        write = list.append

    async def body(log):
        backend, win = await _backend("unix:///nonexistent/redis.sock?password=s3cret-pw", on_error="deny", log=log)
        try:
            assert (await backend.admit(_key_state(quota=5), 0.0, win, time.time()))[0] == 503
        finally:
            await backend.close()

    asyncio.run(body(log := Log()))
    assert len(log) == 1 and "unix:///nonexistent/redis.sock?password=*** is unreachable" in log[0], log


def test_no_answer_within_the_timeout_fails_the_waiting_requests_and_drops_the_connection():
    """A Redis that accepts and then stays silent: the requests wait ``timeout`` once (one timer, not one
    per request), on_error decides, and the connection is closed (a late reply must not answer another
    request); the next request after the back-off opens a new connection."""
    connections: list[asyncio.Event] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        closed = asyncio.Event()
        connections.append(closed)
        data = await reader.read(65536)
        if b"SCRIPT" in data:
            writer.write(b"$40\r\n" + b"0" * 40 + b"\r\n")  # answers the SCRIPT LOAD of start(), then nothing
        while await reader.read(65536):
            pass
        closed.set()
        writer.close()

    async def body():
        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        backend, win = await _backend(f"redis://127.0.0.1:{port}/0", on_error="deny", timeout=0.2)
        try:
            assert backend.outages == 0
            ks = _key_state(quota=5)
            started = time.monotonic()
            results = await asyncio.gather(*(backend.admit(ks, 0.0, win, time.time()) for _ in range(20)))
            took = time.monotonic() - started
            assert [r[0] for r in results] == [503] * 20 and 0.15 < took < 1.0, took
            assert backend.outages == 1 and backend.errors == 20 and backend._wire is None
            await asyncio.wait_for(connections[0].wait(), 2)  # the silent connection was closed
            backend._retry_at = 0.0  # the back-off is over
            assert (await backend.admit(ks, 0.0, win, time.time()))[0] == 503
            assert len(connections) == 2  # a new connection, not the one that may still answer late
        finally:
            await backend.close()
            server.close()
            await server.wait_closed()

    asyncio.run(body())


REPLIES = [b"*2\r\n:0\r\n:5\r\n", b"*3\r\n:1\r\n:1000000\r\n:2000000\r\n", b"-NOSCRIPT No matching script.\r\n",
           b"+OK\r\n", b"$40\r\n" + b"a" * 40 + b"\r\n", b"$-1\r\n", b"*0\r\n", b"*2\r\n*1\r\n:-1\r\n$3\r\nabc\r\n",
           b"*2\r\n:2\r\n:7\r\n"]


def test_the_pure_python_reply_reader_reads_what_hiredis_reads():
    from apimon_cli.gateway.redis_limits import ReplyError, _PyReader

    expected = [[0, 5], [1, 1000000, 2000000], ReplyError("NOSCRIPT No matching script."), b"OK", b"a" * 40,
                None, [], [[-1], b"abc"], [2, 7]]

    def norm(replies):
        return [(type(r).__name__, str(r)) if isinstance(r, Exception) else r for r in replies]

    def read_all(reader, stream: bytes, step: int) -> list:
        out = []
        for i in range(0, len(stream), step):  # replies split anywhere, several in one chunk
            reader.feed(stream[i:i + step])
            while (reply := reader.gets()) is not False:
                out.append(reply)
        return out

    stream = b"".join(REPLIES)
    for step in (1, 3, 7, len(stream)):
        assert norm(read_all(_PyReader(), stream, step)) == norm(expected)
    try:
        import hiredis
    except ImportError:
        return
    assert norm(read_all(hiredis.Reader(replyError=ReplyError), stream, 5)) == norm(expected)


@pytest.mark.parametrize("url, message", [
    ("redis://127.0.0.1:notaport/0", "the port must be a number in 0-65535; got 'redis://127.0.0.1:notaport/0'"),
    ("redis://127.0.0.1:99999", "the port must be a number in 0-65535"),
    ("redis://:s3cret-pw@127.0.0.1:6379/abc", "the database (the path) must be a number, e.g. redis://127.0.0.1:6379/0;"
                                              " got 'redis://:***@127.0.0.1:6379/abc'"),
    ("unix://", "unix:// needs the socket's path"),  # redis-py would take it for TCP to localhost:6379
    ("redis://127.0.0.1:6379/0?socket_timeout=abc", "Invalid value for 'socket_timeout' in connection URL"),
])
def test_a_redis_url_the_gateway_cannot_use_is_a_plan_error_at_its_line(tmp_path, url, message):
    """Found by validate (and plan, apply, gateway serve) with the field, line and column, the password masked;
    `gateway serve` used to fail with "unexpected error: ValueError: Port could not be cast ..." and a database
    that is not a number silently meant database 0."""
    from conftest import run_cli, write_plan

    plan = write_plan(tmp_path / "plan.yaml", "apimon: 1\ntarget:\n  provider: local\n  local:\n"
                      f"    limits: {{backend: redis, url: \"{url}\"}}\nproducts: {{}}\n")
    for command in (["validate", str(plan)], ["gateway", "serve", str(plan), "--listen", "127.0.0.1:0"]):
        r = run_cli(*command, timeout=30)
        assert r.code == 1 and f"{plan}:5:35: error: target.local.limits.url: {message}" in r.stderr, r.output
        assert "unexpected error" not in r.output and "s3cret-pw" not in r.output
    for good in ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/", "rediss://h:6380/3?ssl_cert_reqs=none",
                 "unix:///run/redis.sock?db=2&password=s3cret-pw"):
        plan.write_text(plan.read_text().replace(url, good))
        assert run_cli("validate", str(plan)).code == 0, good
        url = good


def test_rediss_verifies_the_servers_certificate_with_the_urls_ca(tmp_path):
    """rediss:// on the own connection: TLS with verification on (ssl_ca_certs from the URL), password and
    database over it; a certificate the client cannot verify is an outage (on_error decides), never a silent
    plain-text fallback; ssl_cert_reqs=none turns verification off as in redis-py."""
    import redis
    from test_gateway_tls import _ca, _leaf, _write

    ca_key, ca_cert = _ca("apimon test CA")
    server_key, server_cert = _leaf(ca_key, ca_cert, "localhost", server=True)
    cert, key = _write(tmp_path, "server", server_key, server_cert)
    ca, _ = _write(tmp_path, "ca", ca_key, ca_cert)
    tls_port = _free_port()

    async def body(base: str):
        good, win = await _backend(f"{base}?ssl_ca_certs={ca}")
        unverified, _ = await _backend(base, on_error="deny")  # the system CAs do not know the test CA
        unchecked, _ = await _backend(f"{base}?ssl_cert_reqs=none")
        try:
            assert await good.admit(_key_state(quota=3), 0.0, win, time.time()) is None and good.errors == 0
            assert (await unverified.admit(_key_state(quota=3), 0.0, win, time.time()))[0] == 503
            assert unverified.outages == 1
            assert await unchecked.admit(_key_state(quota=3), 0.0, win, time.time()) is None
            assert unchecked.errors == 0
        finally:
            for backend in (good, unverified, unchecked):
                await backend.close()
        return win

    with own_redis("--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                   "--tls-auth-clients", "no", "--requirepass", "s3cret") as (url, start):
        start()
        win = asyncio.run(body(f"rediss://:s3cret@localhost:{tls_port}/2"))
        plain = redis.Redis.from_url(url.replace("redis://", "redis://:s3cret@").replace("/0", "/2"))
        assert plain.get(f"t:q:gold:bob:{win.window['day']}") == b"2"  # the verified and the unchecked one
