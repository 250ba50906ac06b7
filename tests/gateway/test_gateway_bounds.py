"""One tenant cannot take the gateway down (issue 20 item 4): each upstream has its own pool and bound,
each subscriber a bound on requests in flight (the product's max_concurrent); over a bound the answer is
503 with Retry-After at once, and other upstreams are served all along."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from gwutil import apply, running, upstream


def test_a_parked_request_flood_on_one_upstream_leaves_the_others_served(tmp_path):
    flooders, each = 9, 60  # 540 requests parked on the slow upstream: more than the old shared pool (512)

    async def body():
        slow_up, slow_port = await upstream.start()
        fast_up, fast_port = await upstream.start()
        ups = {"slow": f"http://127.0.0.1:{slow_port}", "fast": f"http://127.0.0.1:{fast_port}"}
        subscribers = "\n".join(f"  f{i}: {{product: flood}}" for i in range(flooders))
        keys = apply(
            tmp_path,
            ups,
            "  flood: {display_name: F, apis: [slow, fast], pricing: {model: free}}\n"
            "  capped: {display_name: C, apis: [slow, fast], max_concurrent: 5, pricing: {model: free}}",
            subscribers + "\n  cap: {product: capped}\n  calm: {product: flood}",
        )
        try:
            async with running(tmp_path, ups) as gw, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0)
            ) as flood, aiohttp.ClientSession() as calm:

                async def call(session, url, key):
                    async with session.get(url, headers={"x-api-key": key}) as r:
                        return r.status, r.headers.get("Retry-After"), await r.read()

                parked = [
                    asyncio.create_task(call(flood, f"{gw.url}/slow/slow?seconds=8", keys[f"f{i}"]))
                    for i in range(flooders)
                    for _ in range(each)
                ]
                capped = [
                    asyncio.create_task(call(flood, f"{gw.url}/slow/slow?seconds=8", keys["cap"])) for _ in range(20)
                ]
                pool = gw.upstream_pools["slow"]
                deadline = time.monotonic() + 6
                while pool.inflight < 256 and time.monotonic() < deadline:  # 540 connections take a moment
                    await asyncio.sleep(0.05)
                assert pool.inflight == 256  # the slow upstream's own bound, reached
                assert not any(t.done() and t.result()[0] == 200 for t in parked)  # all still parked
                started = time.monotonic()
                status, _, raw = await call(calm, f"{gw.url}/fast/pets/1", keys["calm"])
                assert status == 200 and b"Rex" in raw
                assert time.monotonic() - started < 1.0  # served at once, not after a pool wait
                status, retry, raw = await call(calm, f"{gw.url}/slow/pets/1", keys["calm"])
                assert status == 503 and retry == "1" and b"upstream_busy" in raw

                results = await asyncio.gather(*parked)
                statuses = [s for s, _, _ in results]
                assert statuses.count(200) + statuses.count(503) == len(results)
                assert statuses.count(200) + sum(s == 200 for s, _, _ in await asyncio.gather(*capped)) == 256
                assert all(r == "1" for s, r, _ in results if s == 503)
                capped_results = await asyncio.gather(*capped)
                capped_ok = [s for s, _, _ in capped_results if s == 200]
                assert len(capped_ok) <= 5  # the product's max_concurrent
                refused = [raw for s, _, raw in capped_results if s == 503]
                assert refused and all(b"too_many_in_flight" in raw or b"upstream_busy" in raw for raw in refused)
                # every request was answered; nothing was left in flight
                assert gw.upstream_pools["slow"].inflight == 0
                assert all(ks.counters.inflight == 0 for ks in gw.keys.values())
        finally:
            await slow_up.cleanup()
            await fast_up.cleanup()

    asyncio.run(body())


def test_max_concurrent_bounds_one_subscriber_and_not_the_others(tmp_path):
    async def body():
        up, port = await upstream.start()
        ups = {"petstore": f"http://127.0.0.1:{port}"}
        keys = apply(
            tmp_path,
            ups,
            "  capped: {display_name: C, apis: [petstore], max_concurrent: 3, pricing: {model: free}}",
            "  cap: {product: capped}\n  other: {product: capped}",
        )
        try:
            async with running(tmp_path, ups) as gw, aiohttp.ClientSession() as s:

                async def call(key, path="/petstore/slow?seconds=1.5"):
                    async with s.get(gw.url + path, headers={"x-api-key": key}) as r:
                        return r.status, r.headers.get("Retry-After"), await r.read()

                parked = [asyncio.create_task(call(keys["cap"])) for _ in range(3)]
                await asyncio.sleep(0.5)
                status, retry, raw = await call(keys["cap"], "/petstore/pets")
                assert status == 503 and retry == "1" and b"too_many_in_flight" in raw and b"3 requests" in raw
                assert (await call(keys["other"], "/petstore/pets"))[0] == 200  # its own bound
                assert [r[0] for r in await asyncio.gather(*parked)] == [200, 200, 200]
                assert (await call(keys["cap"], "/petstore/pets"))[0] == 200  # free again
                await gw.flush()
        finally:
            await up.cleanup()

    asyncio.run(body())
