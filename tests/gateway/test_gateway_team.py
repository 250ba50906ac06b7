"""Several gateway processes on one state and one Redis (issue 13): burst and quota exact across processes,
metering adds up, an apply reaches every process, `--workers N` on one port."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from conftest import ROOT, run_cli, write_plan
from gwutil import GatewayProcess

PLAN = """
apimon: 1
target:
  provider: local
  local:
    {state}
    upstreams: {{petstore: "{up}"}}
    limits: {{backend: {backend}, url: "{redis}", key_prefix: "{prefix}"}}
products:
  burst:
    display_name: Burst
    apis: [petstore]
    rate_limit: {{rate: 1, burst: {burst}}}
    pricing: {{model: free}}
  quota:
    display_name: Quota
    apis: [petstore]
    rate_limit: {{rate: 1000, burst: 1000}}
    quota: {{limit: {quota}, period: day}}
    pricing: {{model: free}}
subscribers:
  bob: {{product: burst}}
  ann: {{product: quota}}
  cid: {{product: quota, enabled: {cid_enabled}}}
"""


@pytest.fixture
def upstream_url():
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "upstream.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "listening on" in line, line
    yield line.split()[-1]
    proc.terminate()
    proc.wait(10)


DATABASES: dict[Path, str] = {}  # tmp_path -> the PostgreSQL state of the test (the state_location fixture)


@pytest.fixture(params=["sqlite", "postgresql"])
def state_location(request, tmp_path):
    """The local state in state_dir (SQLite) or in a fresh PostgreSQL database (target.local.database)."""
    if request.param == "postgresql":
        DATABASES[tmp_path] = request.getfixturevalue("postgres_db")
    yield request.param
    DATABASES.pop(tmp_path, None)


def plan(tmp_path: Path, up: str, redis: tuple[str, str], *, backend="redis", burst=15, quota=20, cid=True) -> Path:
    database = DATABASES.get(tmp_path)
    state = f'database: "{database}"' if database else "state_dir: state"
    text = PLAN.format(up=up, backend=backend, redis=redis[0], prefix=redis[1], burst=burst, quota=quota,
                       cid_enabled=str(cid).lower(), state=state)
    path = write_plan(tmp_path / "plan.yaml", text)
    r = run_cli("apply", str(path), "--auto-approve")
    assert r.code == 0, r.output
    return path


def _query(tmp_path: Path, sql: str) -> dict:
    database = DATABASES.get(tmp_path)
    if database:
        import psycopg

        with psycopg.connect(database) as conn:
            return {k: int(v) for k, v in conn.execute(sql).fetchall()} if "sum(" in sql else \
                dict(conn.execute(sql).fetchall())
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        return dict(conn.execute(sql))


def keys(tmp_path: Path) -> dict[str, str]:
    return _query(tmp_path, "SELECT id, api_key FROM subscribers")


def totals(tmp_path: Path) -> dict[str, int]:
    return _query(tmp_path, "SELECT subscriber, sum(count) FROM usage WHERE metric = 'total' GROUP BY subscriber")


async def burst_of(urls: list[str], key: str, n: int) -> list[int]:
    async with aiohttp.ClientSession() as s:
        async def one(i: int) -> int:
            async with s.get(f"{urls[i % len(urls)]}/petstore/pets/1", headers={"x-api-key": key}) as r:
                await r.read()
                return r.status
        return list(await asyncio.gather(*(one(i) for i in range(n))))


def serve(path: Path, *args: str, timeout: float = 90) -> GatewayProcess:
    """`gateway serve` in a child process; generous start-up time (spawned workers import under load)."""
    gw = GatewayProcess(path, *args, wait_ready=False)
    if not (gw.ready.wait(timeout) and gw.proc.poll() is None):
        gw.kill()
        raise AssertionError("gateway did not start: " + gw.stderr)
    gw.url = next(w for line in gw.lines for w in line.split() if w.startswith("http://"))
    gw.port = int(gw.url.rsplit(":", 1)[1])
    return gw


def test_workers_refused_with_the_memory_back_end(tmp_path, upstream_url):
    path = plan(tmp_path, upstream_url, ("redis://127.0.0.1:6379/0", "x:"), backend="memory")
    r = run_cli("gateway", "serve", str(path), "--listen", "127.0.0.1:0", "--workers", "2")
    assert r.code == 1
    assert "--workers 2 needs shared limits" in r.stderr and "would not be shared" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_workers_that_cannot_open_the_state_fail_at_once(tmp_path, upstream_url):
    """Every worker fails to start (the state database does not exist): the error, exit 1, within seconds. A
    worker was SIGTERMed while its queue's feeder thread held the queue's lock, so the others hung at exit
    and the parent waited 60 s for them."""
    path = plan(tmp_path, upstream_url, ("redis://127.0.0.1:6379/0", "x:"))
    text = path.read_text().replace("state_dir: state", 'database: "postgresql://postgres@127.0.0.1:5432/'
                                                        'apimon_no_such_database"')
    path.write_text(text)
    started = time.monotonic()
    r = run_cli("gateway", "serve", str(path), "--listen", "127.0.0.1:0", "--workers", "3", timeout=120)
    took = time.monotonic() - started
    assert r.code == 1 and "cannot open local gateway state postgresql://" in r.stderr, r.output
    assert took < 20, took


def test_three_gateways_on_one_state_and_one_redis(tmp_path, state_location, upstream_url, redis_prefix):
    path = plan(tmp_path, upstream_url, redis_prefix, burst=15, quota=20)
    k = keys(tmp_path)
    gws = [serve(path) for _ in range(3)]
    try:
        urls = [g.url for g in gws]
        started = time.monotonic()
        statuses = asyncio.run(burst_of(urls, k["bob"], 15 + 9))  # burst + k, spread over the three
        refilled = int(time.monotonic() - started) + 1
        assert 15 <= statuses.count(200) <= 15 + refilled and statuses.count(429) >= 9 - refilled, statuses
        statuses = asyncio.run(burst_of(urls, k["ann"], 31))  # a day's quota of 20, in total
        assert statuses.count(200) == 20 and statuses.count(429) == 11
        # an apply reaches every process within about a second: cid is disabled
        assert asyncio.run(burst_of(urls, k["cid"], 3)) == [200] * 3
        plan(tmp_path, upstream_url, redis_prefix, burst=15, quota=20, cid=False)
        time.sleep(1.2)
        assert asyncio.run(burst_of(urls, k["cid"], 3)) == [403] * 3
    finally:
        codes = [g.stop() for g in gws]
    assert codes == [0, 0, 0]
    # each process added its own counts: the state holds the sum, nothing twice
    assert totals(tmp_path) == {"bob": 24, "ann": 31, "cid": 6}
    # a restarted gateway adds only what it serves after the restart
    again = serve(path)
    try:
        assert asyncio.run(burst_of([again.url], k["ann"], 2)) == [429, 429]
    finally:
        assert again.stop() == 0
    assert totals(tmp_path) == {"bob": 24, "ann": 33, "cid": 6}
    if state_location == "postgresql":
        assert not (tmp_path / "state").exists()  # nothing of the state on this host's disk
    r = run_cli("usage", "pull", str(path), "--from", time.strftime("%Y-%m-%d", time.gmtime()),
                "--to", time.strftime("%Y-%m-%d", time.gmtime()), "--ledger", str(tmp_path / "l.db"))
    assert r.code == 0 and "new" in r.stdout


def test_workers_on_one_port_share_quota_and_sum_their_summaries(tmp_path, state_location, upstream_url,
                                                                 redis_prefix):
    path = plan(tmp_path, upstream_url, redis_prefix, quota=40)
    k = keys(tmp_path)
    gw = serve(path, "--workers", "3")
    try:
        assert "(3 workers;" in gw.stderr

        async def many():
            results = []
            for _ in range(6):  # fresh connections each round: the kernel spreads them over the workers
                results += await burst_of([gw.url], k["ann"], 10)
            return results

        statuses = asyncio.run(many())
        assert statuses.count(200) == 40 and statuses.count(429) == 20
    finally:
        code = gw.stop()
    assert code == 0
    assert "60 metered requests written to the usage table" in gw.stderr, gw.stderr
    assert totals(tmp_path) == {"ann": 60}
