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
