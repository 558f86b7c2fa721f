import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import aiohttp
import pytest

from balancer.demo.backend import PATTERN, parse_work, request_type

API_WORK = 0.15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def backend():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "balancer.demo.backend", "--port", str(port),
         "--work", f"page=0ms,api={int(API_WORK * 1000)}ms,static=0"],
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("demo backend did not start")
                time.sleep(0.05)
        yield port, base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def raw_exchange(port: int, request: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """Send bytes exactly as given; read the response until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines)]
    return status, headers, body


async def test_echo_preserves_raw_path_and_repeated_headers(backend):
    port, _, _ = backend
    status, _, body = await raw_exchange(
        port,
        b"POST /echo/a%2Fb//c?b=2&a=%2F%20x&&a=1 HTTP/1.1\r\nHost: t\r\nX-Dup: one\r\n"
        b"x-dup: two\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    assert status == "HTTP/1.1 200 OK"
    echo = json.loads(body)
    assert echo["method"] == "POST"
    assert echo["path"] == "/echo/a%2Fb//c?b=2&a=%2F%20x&&a=1"
    assert [h for h in echo["headers"] if h[0].lower() == "x-dup"] == [["X-Dup", "one"], ["x-dup", "two"]]
    assert echo["body_length"] == 5
    assert echo["body_sha256"] == hashlib.sha256(b"hello").hexdigest()


async def test_upload_hashes_a_streamed_5mb_body(backend):
    _, base, _ = backend
    body = os.urandom(5 * 1024 * 1024)

    async def chunks():
        for i in range(0, len(body), 256 * 1024):
            yield body[i:i + 256 * 1024]

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/upload", data=chunks()) as resp:
            assert resp.status == 200
            assert await resp.json() == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}


async def test_cookies_come_as_three_set_cookie_headers(backend):
    _, base, _ = backend
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/cookies") as resp:
            assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2", "c=3"]


@pytest.mark.parametrize("code", [204, 304])
async def test_bodiless_statuses_have_no_body(backend, code):
    port, _, _ = backend
    status, headers, body = await raw_exchange(
        port, f"GET /status/{code} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    assert status.startswith(f"HTTP/1.1 {code} ")
    assert body == b""
    assert "transfer-encoding" not in dict(headers)


async def test_other_statuses_are_returned_with_a_body(backend):
    _, base, _ = backend
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/status/503") as resp:
            assert resp.status == 503
            assert await resp.text() == "status 503\n"


async def test_websocket_echoes_text_and_binary(backend):
    port, base, _ = backend
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{base}/ws") as ws:
            assert ws._response.headers["X-Backend-Port"] == str(port)
            await ws.send_str("ping")
            assert await ws.receive_str(timeout=5) == "ping"
            await ws.send_bytes(b"\x00\xff")
            assert await ws.receive_bytes(timeout=5) == b"\x00\xff"


async def test_close_endpoint_is_close_delimited(backend):
    port, _, _ = backend
    status, headers, body = await raw_exchange(port, b"GET /close HTTP/1.1\r\nHost: t\r\n\r\n")
    names = dict(headers)
    assert status == "HTTP/1.1 200 OK"
    assert "content-length" not in names and "transfer-encoding" not in names
    assert names["connection"] == "close"
    assert body == b"body ends when the connection closes\n"


async def test_bytes_has_length_and_the_pattern(backend):
    _, base, _ = backend
    n = 200_000
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/bytes/{n}") as resp:
            assert resp.headers["Content-Length"] == str(n)
            body = await resp.read()
    assert body == (PATTERN * 4)[:n]


async def test_stream_and_sse_arrive_chunk_by_chunk(backend):
    _, base, _ = backend
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/stream/3?interval=100") as resp:
            assert resp.headers["Transfer-Encoding"] == "chunked"
            first = await resp.content.readline()
            started = time.monotonic()
            rest = await resp.read()
            assert time.monotonic() - started >= 0.15  # later chunks were not sent with the first
        assert first + rest == b"chunk 0\nchunk 1\nchunk 2\n"
        async with session.get(f"{base}/sse?n=3&interval=0") as resp:
            assert resp.content_type == "text/event-stream"
            assert await resp.text() == "data: 0\n\ndata: 1\n\ndata: 2\n\n"


async def test_every_response_names_its_port_and_pid_is_the_process(backend):
    port, base, pid = backend
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/api/x", "/static/a.css", "/healthz", "/nope", "/pid"):
            async with session.get(f"{base}{path}") as resp:
                assert resp.headers["X-Backend-Port"] == str(port), path
                if path == "/pid":
                    assert int(await resp.text()) == pid
                if path == "/static/a.css":
                    assert len(await resp.read()) == 100


async def test_work_is_simulated_per_request_type(backend):
    _, base, _ = backend
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        async with session.get(f"{base}/api/orders") as resp:
            assert (await resp.json())["type"] == "api"
        api_time = time.monotonic() - started
        started = time.monotonic()
        async with session.get(f"{base}/") as resp:
            await resp.read()
        page_time = time.monotonic() - started
    assert api_time >= API_WORK
    assert page_time < API_WORK


def test_request_type_and_work_parsing():
    assert [request_type(p) for p in ("/api/a", "/static/x.js", "/", "/apiary")] == ["api", "static", "page", "page"]
    assert parse_work("page=5ms, api=0.02s,static=0") == {"page": 0.005, "api": 0.02, "static": 0.0}
    with pytest.raises(ValueError):
        parse_work("page")
    with pytest.raises(ValueError, match="'api'"):
        parse_work("api=fast")
