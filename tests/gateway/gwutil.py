"""Helpers for the gateway tests: a state made by `apimon apply`, an in-process gateway, raw HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from conftest import load_example_upstream, run_cli, write_plan

from apimon_cli.gateway import Gateway, GatewayConfig

upstream = load_example_upstream()

PLAN = """
apimon: 1
target:
  provider: local
  local:
    state_dir: state
    upstreams: {upstreams}
products:
{products}
subscribers:
{subscribers}
"""


def apply(tmp_path: Path, upstreams: dict[str, str], products: str, subscribers: str) -> dict[str, str]:
    ups = "{" + ", ".join(f'{k}: "{v}"' for k, v in upstreams.items()) + "}"
    text = PLAN.format(upstreams=ups, products=products, subscribers=subscribers)
    r = run_cli("apply", str(write_plan(tmp_path / "plan.yaml", text)), "--auto-approve")
    assert r.code == 0, r.output
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        return dict(conn.execute("SELECT id, api_key FROM subscribers"))


def simple_state(tmp_path: Path, up_port: int, **product_fields: str) -> tuple[dict[str, str], dict[str, str]]:
    """One product `p` (API `petstore`, plus `other` on the same upstream), subscribers bob and ann."""
    ups = {"petstore": f"http://127.0.0.1:{up_port}", "other": f"http://127.0.0.1:{up_port}"}
    extra = "".join(f"\n    {k}: {v}" for k, v in product_fields.items())
    products = f"  p:\n    display_name: P\n    apis: [petstore, other]\n    pricing: {{model: free}}{extra}"
    keys = apply(tmp_path, ups, products, "  bob: {product: p}\n  ann: {product: p}")
    return keys, ups


@contextlib.asynccontextmanager
async def running(tmp_path: Path, upstreams: dict[str, str], clock=None, **options):
    gw = Gateway(GatewayConfig(tmp_path / "state", upstreams, port=0, **options), clock=clock)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


async def raw(port: int, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send bytes on a fresh connection; everything the gateway answers until it closes (or the timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(read_timeout):
                while chunk := await reader.read(65536):
                    chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


class GatewayProcess:
    """`apimon gateway serve` in a child process; the bound URL is read from its 'listening on' line."""

    def __init__(self, plan: Path, *args: str, env: dict | None = None, python: list[str] | None = None,
                 preexec_fn=None, wait_ready: bool = True):
        import os
        import subprocess
        import sys
        import threading

        full_env = {k: v for k, v in os.environ.items() if not k.startswith("APIMON_")} | {"NO_COLOR": "1"}
        cmd = python or [sys.executable, "-m", "apimon_cli.cli"]
        self.proc = subprocess.Popen(
            [*cmd, "gateway", "serve", str(plan), "--listen", "127.0.0.1:0", *args],
            env=full_env | (env or {}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                self.lines.append(line)
                if "listening on" in line:
                    self.ready.set()
            self.ready.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        self.url = ""
        if wait_ready:
            assert self.ready.wait(15) and self.proc.poll() is None, "".join(self.lines)
            self.url = next(w for line in self.lines for w in line.split() if w.startswith("http://"))
            self.port = int(self.url.rsplit(":", 1)[1])

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def stop(self, sig=None, timeout: float = 30) -> int:
        import signal

        self.proc.send_signal(sig or signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=5)
        assert "Traceback" not in self.stderr, self.stderr
        return code

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
