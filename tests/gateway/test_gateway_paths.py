"""Request targets that try to leave an upstream's base path (issue 20 item 1, issue 18 item 5).

The upstream here behaves like nginx: it percent-decodes the path (``%2F`` included), then resolves ``.``
and ``..`` segments (and ``..;`` like Tomcat), and serves ``/public/...`` and, next to it, ``/admin/...``.
The gateway's upstream for the API is ``http://host/public``: nothing must ever reach ``/admin``."""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import socket
import sqlite3
from pathlib import Path
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp import web
from conftest import run_cli, write_plan
from hypothesis import given, settings
from hypothesis import strategies as st

from apimon_cli.gateway import Gateway, GatewayConfig
from apimon_cli.gateway.paths import PathRefused, check_rest, confined, split_target

ATTACKS = [
    "/..%2fadmin/",  # the issue's own forms (issue 20 item 1): /ngx/..%2fadmin/ and .%2e%2fadmin
    "/.%2e%2fadmin",
    "/..%2fadmin/secret",
    "/.%2e%2fadmin/secret",
    "/%2e%2e%2fadmin/secret",
    "/..%2Fadmin/secret",
    "/x/..%2f..%2fadmin/secret",
    "/%2e%2e/admin/secret",
    "/.%2E/admin/secret",
    "/..;/admin/secret",
    "/%2e%2e;x/admin/secret",
    "/..%5cadmin/secret",
    "/..\\admin/secret",
    "/%252e%252e%252fadmin/secret",
    "/..%252fadmin/secret",
    "/%00/../../admin",
    "/../admin/secret",
    "/./../admin/secret",
]


def nginx_like(raw: str) -> str:
    """What a decoding, normalising upstream serves for a raw path."""
    path = unquote(raw.split("?", 1)[0]).replace("\\", "/")
    return posixpath.normpath("/" + "/".join(s.split(";", 1)[0] for s in path.split("/")).lstrip("/"))


class Upstream:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.admin_hits = 0

    async def handle(self, request: web.BaseRequest) -> web.Response:
        self.seen.append(request.raw_path)
        served = nginx_like(request.raw_path)
        if served == "/admin" or served.startswith("/admin/"):
            self.admin_hits += 1
            return web.Response(text="ADMIN AREA")
        return web.Response(text=f"public {served}")

    async def start(self) -> tuple[web.ServerRunner, int]:
        runner = web.ServerRunner(web.Server(self.handle))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


PLAN = """
apimon: 1
target:
  provider: local
  local: {{state_dir: state, upstreams: {{pub: "http://127.0.0.1:{port}/public"}}}}
products:
  p: {{display_name: P, apis: [pub], pricing: {{model: free}}}}
subscribers:
  bob: {{product: p}}
"""


def apply(tmp_path: Path, port: int) -> str:
    r = run_cli("apply", str(write_plan(tmp_path / "plan.yaml", PLAN.format(port=port))), "--auto-approve")
    assert r.code == 0, r.output
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        return conn.execute("SELECT api_key FROM subscribers").fetchone()[0]


async def raw_request(port: int, target: str, key: str) -> tuple[int, bytes]:
    """One request with the target exactly as given (no client-side normalisation)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nx-api-key: {key}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_encoded_traversal_never_reaches_a_sibling_of_the_base_path(tmp_path):
    async def body():
        up = Upstream()
        runner, port = await up.start()
        key = apply(tmp_path, port)
        gw = Gateway(GatewayConfig(tmp_path / "state", {"pub": f"http://127.0.0.1:{port}/public"}, port=0))
        await gw.start()
        try:
            status, text = await raw_request(gw.port, "/pub/docs/a%20b.txt?q=%2e%2e", key)
            assert status == 200 and text == b"public /public/docs/a b.txt"  # ordinary paths pass unchanged
            assert up.seen == ["/public/docs/a%20b.txt?q=%2e%2e"]
            for attack in ATTACKS:
                status, text = await raw_request(gw.port, "/pub" + attack, key)
                assert status == 400 and b"bad_path" in text, (attack, status, text)
            # absolute-form, authority-form and asterisk targets are not proxied anywhere
            for target in (f"http://127.0.0.1:{port}/admin/secret", "//127.0.0.1/admin/secret", "*"):
                status, text = await raw_request(gw.port, target, key)
                assert status in (400, 404), (target, status, text)
            assert up.admin_hits == 0
            assert up.seen == ["/public/docs/a%20b.txt?q=%2e%2e"]  # none of the attacks was forwarded
        finally:
            await gw.stop()
            await runner.cleanup()

    asyncio.run(body())


@pytest.mark.parametrize("attack", ATTACKS)
def test_check_rest_refuses_every_attack(attack):
    with pytest.raises(PathRefused):
        check_rest(attack)
    assert not confined("/public", "/public" + attack)  # the attack would have worked


@pytest.mark.parametrize(
    "rest", ["/", "/pets/2", "/v1.2/x", "/a..b/c", "/.well-known/x", "/x?a=../..", "/%41%42", "/...", "/a;b=1/c"]
)
def test_check_rest_passes_ordinary_paths(rest):
    if rest.startswith("/.well-known"):  # a dot-prefixed name is not a dot segment
        check_rest(rest)
    else:
        check_rest(rest)
    assert confined("/public", "/public" + rest)


def test_split_target():
    assert split_target("/petstore/pets?x=1") == ("petstore", "/pets?x=1")
    assert split_target("/petstore?x=1") == ("petstore", "/?x=1")
    assert split_target("/petstore") == ("petstore", "/")
    assert split_target("http://h/petstore/x") is None
    assert split_target("//h/petstore/x") is None
    assert split_target("*") is None


_alphabet = st.sampled_from(["/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", ";", "a", "%25", "2e", "%", "x"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(_alphabet, max_size=14))
def test_whatever_passes_the_check_stays_below_the_base_path(parts):
    rest = "/" + "".join(parts)
    try:
        check_rest(rest)
    except PathRefused:
        return
    assert confined("/public", "/public" + rest), rest


def free_port() -> int:
    with contextlib.closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_aiohttp_client_sees_400_for_an_encoded_climb(tmp_path):
    """The same through an ordinary client that keeps the encoding (yarl encoded=True)."""

    async def body():
        up = Upstream()
        runner, port = await up.start()
        key = apply(tmp_path, port)
        gw = Gateway(GatewayConfig(tmp_path / "state", {"pub": f"http://127.0.0.1:{port}/public"}, port=0))
        await gw.start()
        try:
            async with aiohttp.ClientSession() as s:
                url = aiohttp.client.URL(f"{gw.url}/pub/..%2fadmin/", encoded=True)
                async with s.get(url, headers={"x-api-key": key}) as r:
                    assert r.status == 400
            assert up.admin_hits == 0
        finally:
            await gw.stop()
            await runner.cleanup()

    asyncio.run(body())
