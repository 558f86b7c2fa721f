"""Backends and clients for the hostile-input tests: every byte on loopback, nothing mocked.

`LoggingBackend` parses what the proxy forwards with h11 — a strict HTTP/1.1 parser that is not
the proxy's own (llhttp) — and logs every request it parses, so a smuggled request shows up as a
request of its own. It answers each with an echo that names the request, so a client can tell its
own response from someone else's. `ScriptedBackend` writes whatever a test scripts, in pieces.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11
import httptools

from pools.ports import free_port


@dataclass
class Seen:
    """One request as the backend parsed it."""
    method: str
    target: str
    headers: dict[str, str]        # lower-case names; repeated names joined with ", "
    body: bytes
    conn: int                      # which upstream connection carried it

    @property
    def rid(self) -> str:
        return self.headers.get("x-id", "")


class LoggingBackend:
    """h11 echo server. `upgrade`: what to do with an upgrade offer — "refuse" (answer 200 as
    HTTP/1.1), "reject" (426), or "accept" (101, then echo raw bytes back)."""

    def __init__(self, upgrade: str = "refuse"):
        self.port = free_port()
        self.upgrade = upgrade
        self.seen: list[Seen] = []
        self.errors: list[str] = []
        self._conns = 0
        self.server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> "LoggingBackend":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> "LoggingBackend":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        self._conns += 1
        conn_no = self._conns
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    if not data and conn.their_state is not h11.DONE:
                        return
                    continue
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    if event is h11.PAUSED and conn.our_state is h11.SEND_RESPONSE:
                        pass
                    else:
                        return
                if isinstance(event, h11.Request):
                    req = event
                    body = b""
                    while True:
                        ev = conn.next_event()
                        if ev is h11.NEED_DATA:
                            data = await reader.read(65536)
                            if not data:
                                return
                            conn.receive_data(data)
                            continue
                        if isinstance(ev, h11.Data):
                            body += ev.data
                            continue
                        if isinstance(ev, h11.EndOfMessage) or ev is h11.PAUSED:
                            break
                        return
                    headers: dict[str, str] = {}
                    for name, value in req.headers:
                        n, v = name.decode().lower(), value.decode("latin-1")
                        headers[n] = f"{headers[n]}, {v}" if n in headers else v
                    seen = Seen(req.method.decode(), req.target.decode("latin-1"), headers, body, conn_no)
                    self.seen.append(seen)
                    wants_upgrade = "upgrade" in headers and "upgrade" in headers.get("connection", "").lower()
                    if wants_upgrade and self.upgrade == "accept":
                        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: "
                                     + headers["upgrade"].encode() + b"\r\nConnection: Upgrade\r\n\r\n")
                        rest, _ = conn.trailing_data
                        if rest:
                            writer.write(b"echo:" + rest)
                        await writer.drain()
                        while data := await reader.read(65536):
                            writer.write(b"echo:" + data)
                            await writer.drain()
                        return
                    status = 426 if wants_upgrade and self.upgrade == "reject" else 200
                    payload = json.dumps({"id": seen.rid, "method": seen.method, "target": seen.target,
                                          "body": len(body), "conn": conn_no}).encode()
                    if event is h11.PAUSED or conn.our_state is not h11.SEND_RESPONSE:
                        pass
                    resp_headers = [("Content-Length", str(len(payload))), ("Content-Type", "application/json")]
                    if req.method == b"HEAD":
                        resp_headers = [("Content-Length", str(len(payload)))]
                    writer.write(conn.send(h11.Response(status_code=status, headers=resp_headers)))
                    if req.method != b"HEAD":
                        writer.write(conn.send(h11.Data(data=payload)))
                    writer.write(conn.send(h11.EndOfMessage()))
                    await writer.drain()
                    if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                        return
                    if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                        conn.start_next_cycle()
                    elif conn.their_state is h11.MIGHT_SWITCH_PROTOCOL or conn.their_state is h11.SWITCHED_PROTOCOL:
                        return
        except h11.RemoteProtocolError as e:
            self.errors.append(str(e))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)


class ScriptedBackend:
    """Runs `script(head, writer)` for every request head it reads (bodies by Content-Length)."""

    def __init__(self, script: Callable[[bytes, asyncio.StreamWriter], Awaitable[bool | None]],
                 read_body: bool = True):
        self.port = free_port()
        self.read_body = read_body
        self.script = script
        self.heads: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> "ScriptedBackend":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:") and self.read_body:
                        await reader.readexactly(int(line.split(b":", 1)[1]))
                if await self.script(head, writer) is False:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.decode().lower() == name.lower():
                return v.decode("latin-1")
        return None

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class _Collector:
    responses: list[Response] = field(default_factory=list)
    status: int = 0
    headers: list = field(default_factory=list)
    body: bytes = b""
    parser: object = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.responses.append(Response(self.status, self.headers, self.body))
        self.headers, self.body = [], b""


def parse_responses(data: bytes, head_requests: int = 0) -> list[Response]:
    """Every complete response in `data`, interim (1xx) ones included, in order. Responses to HEAD
    have no body: the first `head_requests` ones are parsed as such."""
    c = _Collector()
    parser = httptools.HttpResponseParser(c)
    c.parser = parser
    try:
        parser.feed_data(data)
    except httptools.HttpParserError:
        pass
    return c.responses


async def exchange(port: int, pieces: list[bytes], gap: float = 0.0, timeout: float = 5.0,
                   until: Callable[[bytes], bool] | None = None) -> tuple[bytes, float]:
    """Send `pieces` (with `gap` seconds between them) on one connection; return everything that
    came back until the proxy closed it, `until(received)` held or `timeout` passed, and when."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = bytearray()

    async def send() -> None:
        try:
            for i, piece in enumerate(pieces):
                if i and gap:
                    await asyncio.sleep(gap)
                writer.write(piece)
                await writer.drain()
        except ConnectionError:
            pass

    sender = asyncio.create_task(send())
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                got += chunk
                if until is not None and until(bytes(got)):
                    break
    except (TimeoutError, ConnectionError):
        pass
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)
    writer.close()
    return bytes(got), loop.time() - t0
