"""A small HTTP service to put behind warmfront: the shipped demo and the proxy tests' backend.

Each request type does simulated work first (`--work page=5ms,api=20ms,static=0ms`): an async
sleep, or with `--cpu` a busy spin that holds the event loop like real CPU-bound work would. The
type comes from the path: /api/... is api, /static/... is static, anything else page. /healthz
does no work. /echo (and /echo/...) answers any method with what it received, byte for byte. Every response carries `X-Backend-Port` so a test can tell which member answered.

    python -m balancer.demo.backend --port 8001 [--host 127.0.0.1] [--work ...] [--cpu]
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import WSMsgType, web

from config.units import parse_duration

DEFAULT_WORK = "page=5ms,api=20ms,static=0ms"
CHUNK = 64 * 1024
PATTERN = bytes(range(256)) * (CHUNK // 256)  # /bytes body: position-dependent, so corruption shows

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_type(path: str) -> str:
    if path.startswith("/api/"):
        return "api"
    if path.startswith("/static/"):
        return "static"
    return "page"


def parse_work(spec: str) -> dict[str, float]:
    """`page=5ms,api=0.02s,static=0` -> seconds per request type."""
    work: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"work item {item!r} is not TYPE=DURATION")
        try:
            work[name.strip()] = parse_duration(value)
        except ValueError as exc:
            raise ValueError(f"work for {name.strip()!r} {exc}") from None
    return work


def make_app(port: int, work: dict[str, float] | None = None, cpu: bool = False) -> web.Application:
    work = parse_work(DEFAULT_WORK) if work is None else work

    @web.middleware
    async def simulate_work(request: web.Request, handler: Handler) -> web.StreamResponse:
        seconds = work.get(request_type(request.path), 0.0) if request.path != "/healthz" else 0.0
        if seconds > 0:
            if cpu:
                deadline = time.perf_counter() + seconds
                while time.perf_counter() < deadline:
                    pass
            else:
                await asyncio.sleep(seconds)
        return await handler(request)

    async def tag_port(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Backend-Port"] = str(port)

    app = web.Application(middlewares=[simulate_work], client_max_size=1024 ** 3)
    app.on_response_prepare.append(tag_port)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    app.router.add_get("/api/{rest:.*}", api)
    app.router.add_get("/static/{rest:.*}", static)
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/echo/{rest:.*}", echo)
    app.router.add_post("/upload", upload)
    app.router.add_get("/bytes/{n:\\d+}", nbytes)
    app.router.add_get("/stream/{n:\\d+}", stream)
    app.router.add_get("/sse", sse)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/status/{code:\\d+}", status)
    app.router.add_get("/sleep/{ms:\\d+}", sleep)
    app.router.add_get("/close", close_delimited)
    app.router.add_get("/pid", pid)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def index(request: web.Request) -> web.Response:
    return web.Response(
        text="<!doctype html><title>warmfront demo</title><h1>warmfront demo backend</h1>\n",
        content_type="text/html",
    )


async def api(request: web.Request) -> web.Response:
    return web.json_response({"type": "api", "path": request.path})


async def static(request: web.Request) -> web.Response:
    return web.Response(text="s" * 99 + "\n")


async def echo(request: web.Request) -> web.Response:
    digest, length = await _hash_body(request)
    return web.json_response({
        "method": request.method,
        "path": request.raw_path,
        # raw bytes as received, repeats and order kept; latin-1 maps every byte to one char
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers],
        "body_length": length,
        "body_sha256": digest,
    })


async def upload(request: web.Request) -> web.Response:
    digest, length = await _hash_body(request)
    return web.json_response({"bytes": length, "sha256": digest})


async def _hash_body(request: web.Request) -> tuple[str, int]:
    h, length = hashlib.sha256(), 0
    async for chunk in request.content.iter_chunked(CHUNK):
        h.update(chunk)
        length += len(chunk)
    return h.hexdigest(), length


async def nbytes(request: web.Request) -> web.StreamResponse:
    n = int(request.match_info["n"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = n
    await response.prepare(request)
    sent = n if request.method == "HEAD" else 0   # HEAD: the head only
    while sent < n:
        piece = PATTERN[: min(CHUNK, n - sent)]
        await response.write(piece)
        sent += len(piece)
    await response.write_eof()
    return response


async def stream(request: web.Request) -> web.StreamResponse:
    n = int(request.match_info["n"])
    interval = float(request.query.get("interval", "0")) / 1000
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for i in range(n):
        if i and interval:
            await asyncio.sleep(interval)
        await response.write(f"chunk {i}\n".encode())
    await response.write_eof()
    return response


async def sse(request: web.Request) -> web.StreamResponse:
    n = int(request.query.get("n", "5"))
    interval = float(request.query.get("interval", "100")) / 1000
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    for i in range(n):
        if i and interval:
            await asyncio.sleep(interval)
        await response.write(f"data: {i}\n\n".encode())
    await response.write_eof()
    return response


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def cookies(request: web.Request) -> web.Response:
    response = web.Response(text="three cookies\n")
    for cookie in ("a=1", "b=2", "c=3"):
        response.headers.add("Set-Cookie", cookie)
    return response


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    if not 200 <= code <= 599:
        return web.Response(status=400, text="status must be 200-599\n")
    if code in (204, 304):
        return web.Response(status=code)
    return web.Response(status=code, text=f"status {code}\n")


async def sleep(request: web.Request) -> web.Response:
    ms = int(request.match_info["ms"])
    await asyncio.sleep(ms / 1000)
    return web.Response(text=f"slept {ms} ms\n")


class _CloseDelimitedResponse(web.StreamResponse):
    # aiohttp picks chunked encoding for an HTTP/1.1 response without a length; turning the length
    # check off (as its WebSocketResponse does) leaves the body delimited by connection close.
    _length_check = False


async def close_delimited(request: web.Request) -> web.StreamResponse:
    response = _CloseDelimitedResponse(headers={"Content-Type": "text/plain"})
    response.force_close()
    await response.prepare(request)
    await response.write(b"body ends when the connection closes\n")
    await response.write_eof()
    return response


async def pid(request: web.Request) -> web.Response:
    return web.Response(text=f"{os.getpid()}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="warmfront demo-backend", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--work", default=DEFAULT_WORK, help=f"simulated work per request type (default {DEFAULT_WORK})")
    parser.add_argument("--cpu", action="store_true", help="spend the work spinning the CPU instead of sleeping")
    args = parser.parse_args(argv)
    try:
        work = parse_work(args.work)
    except ValueError as exc:
        parser.error(str(exc))
    web.run_app(make_app(args.port, work, args.cpu), host=args.host, port=args.port, access_log=None, print=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
