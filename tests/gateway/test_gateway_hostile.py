"""Hostile clients against the gateway in this process (issue 18 item 5, issue 20 item 5): oversized request
lines, headers and bodies get 414/431/413 without buffering them; slowloris clients (trickled heads, idle
connections, stalled bodies) are cut by the header, keep-alive and body timeouts; over the connection limit a
client gets 503 at once and the log says so once, never with a traceback."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from gwutil import raw, running, simple_state, status_of, upstream


def head(target: str, key: str, extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\n{extra}Connection: close\r\n\r\n".encode()


def test_oversized_request_lines_and_headers_get_414_and_431(tmp_path):
    async def body():
        up, port = await upstream.start()
        keys, ups = simple_state(tmp_path, port)
        key = keys["bob"]
        try:
            async with running(tmp_path, ups) as gw:
                assert status_of(await raw(gw.port, head("/petstore/pets", key))) == 200
                # the request target: 16 KiB at most
                resp = await raw(gw.port, head("/petstore/pets?q=" + "a" * 17_000, key))
                assert status_of(resp) == 414 and b'"uri_too_long"' in resp
                assert status_of(await raw(gw.port, head("/petstore/pets?q=" + "a" * 8_000, key))) == 200
                # one header: 8 KiB at most
                resp = await raw(gw.port, head("/petstore/pets", key, "X-Big: " + "b" * 9000 + "\r\n"))
                assert status_of(resp) == 431 and b"request_header_fields_too_large" in resp
                # at most 100 headers
                many = "".join(f"X-H{i}: v\r\n" for i in range(120))
                resp = await raw(gw.port, head("/petstore/pets", key, many))
                assert status_of(resp) == 431
                # the whole head: 32 KiB at most, even when every header is within its own limit
                wide = "".join(f"X-W{i}: {'w' * 4000}\r\n" for i in range(10))
                resp = await raw(gw.port, head("/petstore/pets", key, wide))
                assert status_of(resp) == 431 and b"32768" in resp
                assert status_of(await raw(gw.port, head("/petstore/pets", key, wide[: 4 * 4010]))) == 200
                # error answers are JSON and announce no server software
                assert b"Content-Type: application/json" in resp and b"Server:" not in resp
        finally:
            await up.cleanup()

    asyncio.run(body())


def test_bodies_over_the_limit_get_413_declared_or_streamed(tmp_path):
    async def body():
        up, port = await upstream.start()
        keys, ups = simple_state(tmp_path, port)
        key = {"x-api-key": keys["bob"]}
        try:
            async with running(tmp_path, ups, max_body_size=100_000) as gw, aiohttp.ClientSession() as s:
                url = f"{gw.url}/petstore/upload"
                async with s.post(url, data=b"x" * 100_000, headers=key) as r:
                    assert r.status == 200 and json.loads(await r.read()) == {"bytes": 100_000}
                async with s.post(url, data=b"x" * 100_001, headers=key) as r:  # Content-Length
                    assert r.status == 413 and (await r.json())["error"] == "body_too_large"

                async def chunks():  # chunked, no Content-Length: counted as it streams
                    for _ in range(40):
                        yield b"y" * 10_000

                async with s.post(url, data=chunks(), headers=key) as r:
                    assert r.status == 413
                await gw.flush()
        finally:
            await up.cleanup()

    asyncio.run(body())


def test_slowloris_heads_idle_connections_and_stalled_bodies_are_cut(tmp_path):
    trickling = 20

    async def body():
        up, port = await upstream.start()
        keys, ups = simple_state(tmp_path, port)
        key = keys["bob"]
        try:
            async with running(tmp_path, ups, header_timeout=1.0, keepalive_timeout=1.5, body_timeout=0.5) as gw:

                async def trickle() -> tuple[float, bytes]:
                    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
                    started = time.monotonic()
                    request = head("/petstore/pets", key)
                    got = b""
                    try:
                        for i in range(len(request) - 4):  # never completes the head
                            writer.write(request[i : i + 1])
                            await writer.drain()
                            try:
                                got = await asyncio.wait_for(reader.read(4096), 0.1)
                            except TimeoutError:
                                continue
                            break  # answered or closed
                    except ConnectionError:
                        pass
                    finally:
                        writer.close()
                    return time.monotonic() - started, got

                clients = [asyncio.create_task(trickle()) for _ in range(trickling)]
                await asyncio.sleep(0.3)
                # meanwhile an ordinary client is served
                assert status_of(await raw(gw.port, head("/petstore/pets", key))) == 200
                results = await asyncio.gather(*clients)
                for took, got in results:
                    assert took < 2.5, took  # cut after the 1 s header timeout (however slow the trickle)
                    assert status_of(got) in (408, 0), got
                assert sum(status_of(got) == 408 for _, got in results) >= trickling // 2

                # a connection that never sends anything is closed after the keep-alive timeout
                reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
                started = time.monotonic()
                assert await asyncio.wait_for(reader.read(), 5) == b""
                assert 1.0 < time.monotonic() - started < 3.5
                writer.close()

                # a body that stops half-way: 408 after the body timeout
                reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
                writer.write(
                    f"POST /petstore/upload HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\n"
                    "Content-Length: 1000\r\n\r\n".encode() + b"z" * 10
                )
                started = time.monotonic()
                answer = await asyncio.wait_for(reader.read(), 5)
                assert status_of(answer) == 408 and b"body_timeout" in answer
                assert time.monotonic() - started < 2.5
                writer.close()
                assert gw._gate.open <= 1
        finally:
            await up.cleanup()

    asyncio.run(body())


def test_connection_limit_refuses_with_503_and_one_log_line(tmp_path, capfd):
    limit, extra = 10, 30

    async def body():
        up, port = await upstream.start()
        keys, ups = simple_state(tmp_path, port)
        key = keys["bob"]
        try:
            async with running(tmp_path, ups, max_connections=limit, keepalive_timeout=1.0) as gw:
                idle = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(limit)]
                await asyncio.sleep(0.1)
                started = time.monotonic()
                refused = await asyncio.gather(*(raw(gw.port, head("/petstore/pets", key)) for _ in range(extra)))
                assert time.monotonic() - started < 2.0  # answered at once, not left to time out
                assert all(status_of(r) == 503 and b"Retry-After: 1" in r for r in refused), refused[:2]
                assert all(b"too_many_connections" in r for r in refused)
                await asyncio.sleep(1.5)  # the idle connections hit the keep-alive timeout
                for reader, writer in idle:
                    assert await asyncio.wait_for(reader.read(), 2) == b""
                    writer.close()
                assert status_of(await raw(gw.port, head("/petstore/pets", key))) == 200
        finally:
            await up.cleanup()

    asyncio.run(body())
    err = capfd.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "connection limit reached" in line]
    assert len(lines) == 1, err
    assert f"{limit} client connections open" in lines[0]
