"""No response of the gateway announces the server software (issue 20 item 11: `Server: Python/3.11
aiohttp/...`): neither its own answers (400, 403, 408, 413, 414, 431, 503) nor a proxied one."""

from __future__ import annotations

import asyncio

from gwutil import raw, running, simple_state, status_of, upstream


def _head(target: str, key: str, extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\n{extra}Connection: close\r\n\r\n".encode()


def test_no_answer_carries_a_server_header(tmp_path):
    async def body():
        up, port = await upstream.start()
        keys, ups = simple_state(tmp_path, port, max_concurrent="1")
        key = keys["bob"]
        try:
            async with running(tmp_path, ups, header_timeout=0.5, max_body_size=10) as gw:
                parked = asyncio.create_task(raw(gw.port, _head("/petstore/slow?seconds=1.5", key)))
                await asyncio.sleep(0.4)
                cases = {
                    200: _head("/petstore/pets", keys["ann"]),
                    400: _head("/petstore/..%2fadmin/", key),
                    403: _head("/petstore/pets", "not-a-key"),
                    413: (f"POST /petstore/upload HTTP/1.1\r\nHost: gw\r\nx-api-key: {key}\r\nContent-Length: 11\r\n"
                          "Connection: close\r\n\r\n").encode() + b"x" * 11,
                    414: _head("/petstore/pets?q=" + "a" * 17_000, key),
                    431: _head("/petstore/pets", key, "X-Big: " + "b" * 9000 + "\r\n"),
                    503: _head("/petstore/pets", key),  # bob already has 1 request in flight: max_concurrent 1
                    408: b"GET /petstore/pets HTTP/1.1\r\nHost: gw\r\n",  # the head never completes
                }
                seen = {}
                for want, data in cases.items():
                    answer = await raw(gw.port, data, read_timeout=3)
                    seen[want] = status_of(answer)
                    head = answer.partition(b"\r\n\r\n")[0].lower()
                    assert b"\r\nserver:" not in head, (want, answer[:300])
                    assert b"aiohttp" not in head and b"python/" not in head, (want, answer[:300])
                assert seen == {k: k for k in cases}, seen
                first = await parked
                assert status_of(first) == 200 and b"\r\nserver:" not in first.partition(b"\r\n\r\n")[0].lower()
        finally:
            await up.cleanup()

    asyncio.run(body())
