"""A small sample upstream API for `apimon gateway serve` (the quick-start plan's `petstore`).

Run: ``.venv/bin/python examples/upstream.py [--host 127.0.0.1] [--port 9000]`` (port 0: any free port;
the bound address is printed as ``listening on http://HOST:PORT``).

Routes
  GET  /pets                 a small JSON list
  GET  /pets/{id}            one pet, 404 for an unknown id
  POST /pets                 echoes the JSON body back with 201
  GET  /headers              the request headers it received, as JSON (what the gateway forwarded)
  GET  /slow?seconds=S       answers after S seconds
  GET  /status/{code}        answers with that status code
  GET  /large?bytes=N        streams N bytes (64 KiB chunks)
  GET  /broken               promises 1 MiB, sends 128 KiB, then drops the connection
  POST /upload               reads the body as a stream and answers {"bytes": N}
  POST /echo                 streams the request body back
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web

PETS = {
    1: {"id": 1, "name": "Rex", "tag": "dog"},
    2: {"id": 2, "name": "Tom", "tag": "cat"},
    3: {"id": 3, "name": "Nemo", "tag": "fish"},
}
CHUNK = 64 * 1024
_PETS_BODY = json.dumps(list(PETS.values())).encode()
_PET_BODIES = {str(k): json.dumps(v).encode() for k, v in PETS.items()}


async def list_pets(request: web.Request) -> web.Response:
    return web.Response(body=_PETS_BODY, content_type="application/json")


async def get_pet(request: web.Request) -> web.Response:
    body = _PET_BODIES.get(request.match_info["id"])
    if body is None:
        return web.json_response({"error": "no such pet"}, status=404)
    return web.Response(body=body, content_type="application/json")


async def create_pet(request: web.Request) -> web.Response:
    try:
        pet = await request.json()
    except ValueError:
        return web.json_response({"error": "body is not JSON"}, status=400)
    return web.json_response(pet, status=201)


async def headers(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "method": request.method,
            "path_qs": request.raw_path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
        }
    )


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("seconds", "1")))
    return web.json_response({"slept": float(request.query.get("seconds", "1"))})


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    return web.json_response({"status": code}, status=code)


async def large(request: web.Request) -> web.StreamResponse:
    total = int(request.query.get("bytes", str(CHUNK)))
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = total
    await resp.prepare(request)
    chunk = b"x" * CHUNK
    left = total
    while left > 0:
        part = chunk if left >= CHUNK else chunk[:left]
        await resp.write(part)
        left -= len(part)
    await resp.write_eof()
    return resp


async def broken(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = 1 << 20
    await resp.prepare(request)
    await resp.write(b"z" * (128 * 1024))
    await asyncio.sleep(0.05)
    if request.transport is not None:
        request.transport.abort()
    return resp


async def upload(request: web.Request) -> web.Response:
    n = 0
    async for part in request.content.iter_chunked(CHUNK):
        n += len(part)
    return web.json_response({"bytes": n})


async def echo(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": request.content_type or "application/octet-stream"})
    await resp.prepare(request)
    async for part in request.content.iter_chunked(CHUNK):
        await resp.write(part)
    await resp.write_eof()
    return resp


def make_app() -> web.Application:
    app = web.Application(client_max_size=1024**3)
    app.router.add_get("/pets", list_pets)
    app.router.add_get("/pets/{id}", get_pet)
    app.router.add_post("/pets", create_pet)
    app.router.add_get("/headers", headers)
    app.router.add_get("/slow", slow)
    app.router.add_route("*", "/status/{code:[0-9]{3}}", status)
    app.router.add_get("/large", large)
    app.router.add_get("/broken", broken)
    app.router.add_post("/upload", upload)
    app.router.add_post("/echo", echo)
    return app


async def start(host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Start the upstream on the running loop; returns the runner (cleanup() stops it) and the bound port."""
    runner = web.AppRunner(make_app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, bound


async def _main(host: str, port: int) -> None:
    runner, bound = await start(host, port)
    print(f"listening on http://{host}:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    try:
        asyncio.run(_main(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
