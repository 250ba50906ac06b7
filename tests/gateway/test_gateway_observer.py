"""The per-request observer hook: called once per answered metered request, with what the usage table
counts (and never for requests without a valid key); a failing observer never affects a request."""

from __future__ import annotations

import asyncio
import sqlite3

import aiohttp
from gwutil import running, simple_state, upstream

from apimon_cli.gateway import MeteredRequest


def test_observers_see_every_metered_request_once(tmp_path, capfd):
    async def body():
        up, port = await upstream.start()
        keys, ups = simple_state(tmp_path, port)
        seen: list[MeteredRequest] = []
        try:
            async with running(tmp_path, ups) as gw, aiohttp.ClientSession() as s:
                gw.add_observer(seen.append)
                gw.add_observer(lambda event: 1 / 0)  # a broken observer: reported once, harmless

                async def call(path, key, **kw):
                    async with s.request(kw.pop("method", "GET"), gw.url + path,
                                         headers={"x-api-key": key} if key else {}, **kw) as r:
                        return r.status, await r.read()

                assert (await call("/petstore/pets/1", keys["bob"]))[0] == 200
                assert (await call("/petstore/upload", keys["ann"], method="POST", data=b"x" * 1000))[0] == 200
                assert (await call("/petstore/status/404", keys["bob"]))[0] == 404
                assert (await call("/nope/x", keys["bob"]))[0] == 403
                assert (await call("/petstore/pets", None))[0] == 403  # no key: no subscriber, no event
                assert (await call("/petstore/pets", "bogus"))[0] == 403
                status, big = await call("/petstore/large?bytes=200000", keys["bob"])  # streamed
                assert status == 200 and len(big) == 200_000
                await gw.flush()
        finally:
            await up.cleanup()
        by = [(e.subscriber, e.product, e.api, e.method, e.status, e.outcome) for e in seen]
        assert by == [
            ("bob", "p", "petstore", "GET", 200, "success"),
            ("ann", "p", "petstore", "POST", 200, "success"),
            ("bob", "p", "petstore", "GET", 404, "other"),
            ("bob", "p", "nope", "GET", 403, "blocked"),
            ("bob", "p", "petstore", "GET", 200, "success"),
        ]
        assert seen[0].bytes_in == 0 and seen[0].bytes_out == len(b'{"id": 1, "name": "Rex", "tag": "dog"}')
        assert seen[1].bytes_in == 1000 and seen[1].bytes_out == len(b'{"bytes": 1000}')
        assert seen[4].bytes_out == 200_000
        assert all(0 < e.latency < 5 for e in seen)
        with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
            total = conn.execute("SELECT SUM(count) FROM usage WHERE metric = 'total'").fetchone()[0]
        assert total == len(seen)  # the hook sees exactly what is metered
        err = capfd.readouterr().err
        assert err.count("a metering observer failed") == 1 and "ZeroDivisionError" in err

    asyncio.run(body())
