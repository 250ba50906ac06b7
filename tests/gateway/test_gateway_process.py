"""`apimon gateway serve` as a process (python -m apimon_cli.cli): counts written on SIGTERM, hot reload
after `apimon apply`, a large body streamed both ways in constant memory."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import aiohttp
from conftest import load_example_upstream, run_cli, write_plan

upstream = load_example_upstream()

PLAN = """
apimon: 1
target:
  provider: local
  local: {{state_dir: state, upstreams: {{petstore: "{up}", orders: "{up}"}}}}
products:
  free:
    display_name: Free
    apis: [{apis}]
    rate_limit: {{rate: 1000, burst: 1000}}
    pricing: {{model: free}}
subscribers:
  bob: {{product: free}}
  carl: {{product: free, enabled: {carl_enabled}}}
{more}"""


def plan_text(up_port: int, apis: str = "petstore", carl_enabled: str = "true", more: str = "") -> str:
    return PLAN.format(up=f"http://127.0.0.1:{up_port}", apis=apis, carl_enabled=carl_enabled, more=more)


def apply(path: Path, text: str) -> None:
    r = run_cli("apply", str(write_plan(path, text)), "--auto-approve")
    assert r.code == 0, r.output


def keys(tmp_path: Path) -> dict[str, str]:
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        return dict(conn.execute("SELECT id, api_key FROM subscribers"))


class GatewayProcess:
    """The CLI's gateway in a child process; the bound URL is read from its 'listening on' line."""

    def __init__(self, plan: Path, *args: str, env: dict | None = None):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")} | {"NO_COLOR": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apimon_cli.cli", "gateway", "serve", str(plan), "--listen", "127.0.0.1:0", *args],
            env=full_env | (env or {}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                self.lines.append(line)
                if "listening on" in line:
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        assert ready.wait(15) and self.proc.poll() is None, "".join(self.lines)
        self.url = next(w for line in self.lines for w in line.split() if w.startswith("http://"))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=20)
        self.reader.join(timeout=5)
        self.stderr = "".join(self.lines)
        assert "Traceback" not in self.stderr, self.stderr
        return code

    def peak_rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def call(session: aiohttp.ClientSession, url: str, key: str | None = None) -> int:
    async with session.get(url, headers={"x-api-key": key} if key else {}, allow_redirects=False) as r:
        await r.read()
        return r.status


def test_sigterm_writes_every_count_and_usage_pull_reads_them(tmp_path):
    async def body():
        up, port = await upstream.start()
        plan = tmp_path / "plan.yaml"
        await asyncio.to_thread(apply, plan, plan_text(port))
        k = keys(tmp_path)
        gw = await asyncio.to_thread(GatewayProcess, plan, env={"APIMON_GATEWAY_FAKE_NOW": "2026-03-15T12:00:00Z"})
        try:
            async with aiohttp.ClientSession() as s:
                base = gw.url
                plan_calls = (
                    [(f"{base}/petstore/pets/1", k["bob"])] * 40
                    + [(f"{base}/petstore/status/404", k["bob"])] * 5
                    + [(f"{base}/petstore/status/503", k["bob"])] * 5
                    + [(f"{base}/orders/x", k["bob"])] * 3
                    + [(f"{base}/petstore/status/301", k["carl"])] * 2
                    + [(f"{base}/petstore/pets", None)] * 4
                    + [(f"{base}/petstore/pets", "bogus")] * 2
                )
                statuses = await asyncio.gather(*(call(s, u, key) for u, key in plan_calls))
                assert statuses.count(200) == 40 and statuses.count(403) == 9
                # a request still in flight at SIGTERM finishes and is counted
                slow = asyncio.create_task(call(s, f"{base}/petstore/slow?seconds=0.8", k["carl"]))
                await asyncio.sleep(0.3)
                code = await asyncio.to_thread(gw.stop)
                assert code == 0, gw.stderr
                assert await slow == 200
            assert "56 metered requests" in gw.stderr and "6 without a valid key" in gw.stderr
            expected = {
                ("bob", "free", "2026-03-15", "success"): 40,
                ("bob", "free", "2026-03-15", "other"): 5,
                ("bob", "free", "2026-03-15", "failed"): 5,
                ("bob", "free", "2026-03-15", "blocked"): 3,
                ("bob", "free", "2026-03-15", "total"): 53,
                ("carl", "free", "2026-03-15", "success"): 3,
                ("carl", "free", "2026-03-15", "total"): 3,
            }
            with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
                rows = conn.execute("SELECT subscriber, product, day, metric, count FROM usage").fetchall()
            assert {tuple(r[:4]): r[4] for r in rows} == expected

            from apimon_cli.planfile.loader import load_or_raise
            from apimon_cli.providers.local import LocalProvider

            provider = LocalProvider(load_or_raise([str(plan)]).desired)
            try:
                pulled = list(provider.pull_usage(date(2026, 3, 1), date(2026, 3, 31)))
            finally:
                provider.close()
            assert {(u.subscriber, u.product, u.day, u.metric): u.count for u in pulled} == expected
            r = run_cli("usage", "pull", str(plan), "--from", "2026-03-15", "--to", "2026-03-15")
            assert r.code == 0, r.output
            assert "7 new" in r.stdout and "2026-03-15 bob free success: 40" in r.stdout
        finally:
            gw.kill()
            await up.cleanup()

    asyncio.run(body())


def test_apply_takes_effect_on_a_running_gateway_within_a_second(tmp_path):
    async def body():
        up, port = await upstream.start()
        plan = tmp_path / "plan.yaml"
        await asyncio.to_thread(apply, plan, plan_text(port))
        k = keys(tmp_path)
        gw = await asyncio.to_thread(GatewayProcess, plan)
        try:
            async with aiohttp.ClientSession() as s:
                orders = f"{gw.url}/orders/pets"
                assert await call(s, orders, k["bob"]) == 403
                assert await call(s, f"{gw.url}/petstore/pets", k["carl"]) == 200
                more = "  dana: {product: free}\n"
                await asyncio.to_thread(apply, plan, plan_text(port, "petstore, orders", "false", more))
                applied = time.monotonic()
                waited = 1
                while await call(s, orders, k["bob"]) != 200:
                    assert time.monotonic() - applied < 1.0, "the apply did not reach the gateway within 1 s"
                    await asyncio.sleep(0.02)
                    waited += 1
                assert await call(s, f"{gw.url}/petstore/pets", k["carl"]) == 403  # disabled
                assert await call(s, orders, keys(tmp_path)["dana"]) == 200  # a new key
            assert gw.stop(signal.SIGINT) == 0  # Ctrl-C also writes every count
            with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
                totals = dict(conn.execute("SELECT subscriber, count FROM usage WHERE metric = 'total'"))
            assert totals == {"bob": 1 + waited, "carl": 2, "dana": 1}
        finally:
            gw.kill()
            await up.cleanup()

    asyncio.run(body())


def test_large_bodies_stream_through_in_constant_memory(tmp_path):
    size = 50_000_000

    async def body():
        up, port = await upstream.start()
        plan = tmp_path / "plan.yaml"
        await asyncio.to_thread(apply, plan, plan_text(port))
        key = keys(tmp_path)["bob"]
        gw = await asyncio.to_thread(GatewayProcess, plan)
        try:
            async with aiohttp.ClientSession() as s:
                assert await call(s, f"{gw.url}/petstore/pets", key) == 200
                before = gw.peak_rss_kb()
                got = 0
                async with s.get(f"{gw.url}/petstore/large?bytes={size}", headers={"x-api-key": key}) as r:
                    assert r.status == 200 and r.headers["Content-Length"] == str(size)
                    async for chunk in r.content.iter_chunked(1 << 16):
                        got += len(chunk)
                assert got == size

                async def produce():
                    block = b"y" * (1 << 16)
                    for _ in range(size // len(block)):
                        yield block
                    yield b"y" * (size % len(block))

                async with s.post(f"{gw.url}/petstore/upload", data=produce(), headers={"x-api-key": key}) as r:
                    assert r.status == 200 and json.loads(await r.read()) == {"bytes": size}
                grown_mb = (gw.peak_rss_kb() - before) / 1024
                assert grown_mb < 20, f"the gateway's peak memory grew {grown_mb:.0f} MB for 2 x 50 MB"
            assert gw.stop() == 0
        finally:
            gw.kill()
            await up.cleanup()

    asyncio.run(body())


def test_serve_refuses_clearly_without_state_or_on_a_cloud_target(tmp_path):
    plan = write_plan(tmp_path / "plan.yaml", plan_text(9))
    r = run_cli("gateway", "serve", str(plan), "--listen", "127.0.0.1:0")
    assert r.code == 1 and "run `apimon apply` first" in r.stderr
    r = run_cli("gateway", "serve", str(plan), "--listen", "localhost:http")
    assert r.code == 1 and "--listen must be HOST:PORT" in r.stderr
    r = run_cli("gateway", "serve", str(plan), "--upstream-timeout", "0")
    assert r.code == 1 and "--upstream-timeout must be a positive number" in r.stderr
    aws = write_plan(tmp_path / "aws.yaml", "apimon: 1\ntarget: {provider: aws, aws: {region: us-east-1}}\n")
    r = run_cli("gateway", "serve", str(aws))
    assert r.code == 1 and "serves the local target" in r.stderr
