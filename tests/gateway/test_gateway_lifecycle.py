"""The gateway as a process: one gateway per SQLite state (issue 20 item 9), the SIGTERM drain and an honest
final summary (items 10, 11), the total deadline against a trickling upstream, no Server header, uvloop with
a clean fallback (issue 21), and the open-file limit (item 5)."""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import sqlite3
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from gwutil import GatewayProcess, apply, raw, status_of, upstream


def state(tmp_path: Path, port: int, extra_ups: dict[str, str] | None = None) -> tuple[Path, dict[str, str]]:
    ups = {"petstore": f"http://127.0.0.1:{port}", **(extra_ups or {})}
    apis = ", ".join(ups)
    keys = apply(tmp_path, ups, f"  p: {{display_name: P, apis: [{apis}], pricing: {{model: free}}}}",
                 "  bob: {product: p}")
    return tmp_path / "plan.yaml", keys


async def get(session: aiohttp.ClientSession, url: str, key: str, **kw) -> tuple[int, bytes]:
    async with session.request(kw.pop("method", "GET"), url, headers={"x-api-key": key}, **kw) as r:
        return r.status, await r.read()


def usage_totals(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        return conn.execute("SELECT COALESCE(SUM(count), 0) FROM usage WHERE metric = 'total'").fetchone()[0]


def test_a_second_gateway_on_the_same_state_is_refused(tmp_path):
    async def body():
        up, port = await upstream.start()
        plan, keys = await asyncio.to_thread(state, tmp_path, port)
        first = await asyncio.to_thread(GatewayProcess, plan)
        try:
            second = await asyncio.to_thread(GatewayProcess, plan, wait_ready=False)
            assert await asyncio.to_thread(second.wait, 20) == 1
            err = second.stderr
            assert "another `apimon gateway serve` already serves the state" in err, err
            assert f"pid {first.proc.pid}" in err
            assert "PostgreSQL" in err and "Redis" in err and "Traceback" not in err
            assert len(err.strip().splitlines()) == 1
            async with aiohttp.ClientSession() as s:
                assert (await get(s, f"{first.url}/petstore/pets", keys["bob"]))[0] == 200
            assert await asyncio.to_thread(first.stop) == 0
            # the lock goes with the gateway: the next one starts (also after a kill -9)
            again = await asyncio.to_thread(GatewayProcess, plan)
            again.proc.kill()
            again.proc.wait()
            after_kill = await asyncio.to_thread(GatewayProcess, plan)
            assert await asyncio.to_thread(after_kill.stop) == 0
        finally:
            first.kill()
            await up.cleanup()

    asyncio.run(body())


def test_sigterm_drains_for_the_documented_10_s_then_writes_and_exits(tmp_path):
    async def body():
        up, port = await upstream.start()
        plan, keys = await asyncio.to_thread(state, tmp_path, port)
        key = keys["bob"]
        gw = await asyncio.to_thread(GatewayProcess, plan)
        try:
            async with aiohttp.ClientSession() as s, aiohttp.ClientSession() as idle:
                assert (await get(idle, f"{gw.url}/petstore/pets", key))[0] == 200  # a keep-alive connection

                async def upload():
                    async def chunks():
                        for _ in range(20):
                            yield b"u" * 1000
                            await asyncio.sleep(0.1)

                    return await get(s, f"{gw.url}/petstore/upload", key, method="POST", data=chunks())

                async def stuck():
                    started = time.monotonic()
                    try:
                        await get(s, f"{gw.url}/petstore/slow?seconds=60", key)
                        return "answered", time.monotonic() - started
                    except aiohttp.ClientError:
                        return "cut", time.monotonic() - started

                slow = asyncio.create_task(get(s, f"{gw.url}/petstore/slow?seconds=2", key))
                body_in_flight = asyncio.create_task(upload())
                hanging = asyncio.create_task(stuck())
                await asyncio.sleep(0.5)
                sent = time.monotonic()
                gw.proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                # new connections are refused; the idle keep-alive connection is closed, not served
                try:
                    fresh = await raw(gw.port, b"GET /petstore/pets HTTP/1.1\r\nHost: x\r\n\r\n", read_timeout=2)
                except ConnectionError:
                    fresh = b""
                assert status_of(fresh) in (0, 503), fresh
                try:
                    reused = (await get(idle, f"{gw.url}/petstore/pets", key))[0]
                except aiohttp.ClientError:
                    reused = "closed"
                assert reused in ("closed", 503)
                # requests in flight finish, request bodies still stream in
                assert await slow == (200, b'{"slept": 2.0}')
                status, raw_body = await body_in_flight
                assert status == 200 and json.loads(raw_body) == {"bytes": 20_000}
                outcome, _ = await hanging
                assert outcome == "cut"
                code = await asyncio.to_thread(gw.wait, 30)
                took = time.monotonic() - sent
            assert code == 0, gw.stderr
            assert 9.5 <= took <= 12.5, f"exited {took:.1f} s after SIGTERM; the drain is 10 s"
            assert "Traceback" not in gw.stderr
            # every answered or cut request was metered: 1 + slow + upload + the cut one (500)
            assert usage_totals(tmp_path) == 4
            assert "4 metered requests written to the usage table" in gw.stderr
        finally:
            gw.kill()
            await up.cleanup()

    asyncio.run(body())


def test_the_final_summary_never_claims_counts_it_could_not_write(tmp_path):
    async def body():
        up, port = await upstream.start()
        plan, keys = await asyncio.to_thread(state, tmp_path, port)
        gw = await asyncio.to_thread(GatewayProcess, plan)
        try:
            async with aiohttp.ClientSession() as s:
                for _ in range(5):
                    assert (await get(s, f"{gw.url}/petstore/pets", keys["bob"]))[0] == 200
                deadline = time.monotonic() + 10
                while usage_totals(tmp_path) < 5:  # the first five are flushed
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.1)
                with sqlite3.connect(tmp_path / "state" / "state.db") as conn:  # from now on writes fail
                    conn.execute(
                        "CREATE TRIGGER no_more BEFORE INSERT ON usage BEGIN SELECT RAISE(ABORT, 'disk full'); END"
                    )
                for _ in range(3):
                    assert (await get(s, f"{gw.url}/petstore/pets", keys["bob"]))[0] == 200
            code = await asyncio.to_thread(gw.stop)
        finally:
            gw.kill()
            await up.cleanup()
        assert code == 1
        err = gw.stderr
        assert "written to the usage table" in err
        assert "8 metered requests, 5 written to the usage table and 3 NOT written" in err, err
        assert "8 metered requests written" not in err
        unwritten = json.loads(gw.proc.stdout.read())["unwritten_usage"]
        assert sum(row[4] for row in unwritten if row[3] == "total") == 3
        assert usage_totals(tmp_path) == 5

    asyncio.run(body())


async def trickling_upstream() -> tuple[web.ServerRunner, int]:
    """Sends a byte every 0.3 s: streamed (chunked) or within a small Content-Length."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        resp = web.StreamResponse()
        if request.path.endswith("small"):
            resp.content_length = 100
        await resp.prepare(request)
        for _ in range(100):
            await resp.write(b"x")
            await asyncio.sleep(0.3)
        await resp.write_eof()
        return resp

    runner = web.ServerRunner(web.Server(handle))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def test_total_timeout_stops_an_upstream_that_trickles_and_no_server_header(tmp_path):
    async def body():
        up, port = await upstream.start()
        trickle, tport = await trickling_upstream()
        plan, keys = await asyncio.to_thread(state, tmp_path, port, {"drip": f"http://127.0.0.1:{tport}"})
        key = keys["bob"]
        gw = await asyncio.to_thread(GatewayProcess, plan, "--total-timeout", "2")
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{gw.url}/petstore/pets", headers={"x-api-key": key}) as r:
                    assert r.status == 200 and "Server" not in r.headers  # the upstream's is not passed on
                async with s.get(f"{gw.url}/petstore/pets") as r:
                    assert r.status == 403 and "Server" not in r.headers
                started = time.monotonic()
                status, raw_body = await get(s, f"{gw.url}/drip/small", key)  # nothing sent yet: a 504
                assert status == 504 and b"deadline_exceeded" in raw_body
                assert 1.9 < time.monotonic() - started < 4.0
                started = time.monotonic()
                async with s.get(f"{gw.url}/drip/stream", headers={"x-api-key": key}) as r:
                    assert r.status == 200  # the status line went out: the body is cut
                    try:
                        await r.read()
                        cut = False
                    except aiohttp.ClientPayloadError:
                        cut = True
                assert cut and 1.9 < time.monotonic() - started < 4.0
            assert await asyncio.to_thread(gw.stop) == 0
        finally:
            gw.kill()
            await trickle.cleanup()
            await up.cleanup()
        with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
            failed = conn.execute("SELECT SUM(count) FROM usage WHERE metric = 'failed'").fetchone()[0]
        assert failed == 2  # both metered as 504

    asyncio.run(body())


def test_uvloop_is_the_event_loop_and_asyncio_the_fallback(tmp_path):
    async def body():
        up, port = await upstream.start()
        plan, keys = await asyncio.to_thread(state, tmp_path, port)
        try:
            with_uvloop = await asyncio.to_thread(GatewayProcess, plan)
            assert "event loop: uvloop" in with_uvloop.stderr
            assert await asyncio.to_thread(with_uvloop.stop) == 0
            blocked = [sys.executable, "-c", "import sys; sys.modules['uvloop'] = None; sys.argv[0] = 'apimon'; "
                       "from apimon_cli.cli import main; main()"]
            without = await asyncio.to_thread(GatewayProcess, plan, python=blocked)
            assert "event loop: asyncio" in without.stderr
            async with aiohttp.ClientSession() as s:
                assert (await get(s, f"{without.url}/petstore/pets", keys["bob"]))[0] == 200
            assert await asyncio.to_thread(without.stop) == 0
        finally:
            await up.cleanup()

    asyncio.run(body())


def test_a_low_open_file_limit_bounds_connections_without_tracebacks(tmp_path):
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))

    async def body():
        up, port = await upstream.start()
        plan, keys = await asyncio.to_thread(state, tmp_path, port)
        gw = await asyncio.to_thread(GatewayProcess, plan, preexec_fn=low_limit)
        conns = []
        try:
            assert "the open-file limit (160) allows" in gw.stderr
            allowed = int(gw.stderr.split("the open-file limit (160) allows ")[1].split()[0])
            assert 0 < allowed < 160
            for _ in range(allowed + 100):  # far more than the process has descriptors for
                conns.append(await asyncio.open_connection("127.0.0.1", gw.port))
            await asyncio.sleep(0.5)
            refused = 0
            for reader, _ in conns:
                try:
                    data = await asyncio.wait_for(reader.read(200), 0.05)
                except TimeoutError:
                    continue
                refused += data.startswith(b"HTTP/1.1 503")
            assert refused >= 100
            for _, writer in conns:
                writer.close()
            conns.clear()
            await asyncio.sleep(0.5)
            async with aiohttp.ClientSession() as s:
                assert (await get(s, f"{gw.url}/petstore/pets", keys["bob"]))[0] == 200
            assert await asyncio.to_thread(gw.stop) == 0
        finally:
            for _, writer in conns:
                writer.close()
            gw.kill()
            await up.cleanup()
        err = gw.stderr
        assert "Traceback" not in err
        assert sum("connection limit reached" in line for line in err.splitlines()) == 1, err

    asyncio.run(body())
