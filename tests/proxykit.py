"""Test helpers for the data plane: real backends on loopback and a proxy in front of them."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

from balancer.dataplane.proxy import Proxy
from pools.ports import free_port

_HELD: list[socket.socket] = []


def refused_port() -> int:
    """A port that refuses connections for the rest of the session: bound but never listening, so
    unlike a merely free port it cannot be handed to a listener started later (warmfront's own)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    _HELD.append(s)
    return s.getsockname()[1]
from balancer.dataplane.routing import CompiledRoute, PoolTargets, RoutingTable, SourceExtractor, Target
from config.models import Limits, Route, SourceRule, Timeouts

ROOT = Path(__file__).resolve().parent.parent


def wait_port(port: int, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


class DemoBackend:
    """`python -m balancer.demo.backend` as a real child process."""

    def __init__(self, *args: str):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "balancer.demo.backend", "--port", str(self.port), *args],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class PlainHTTPServer:
    """`python3 -m http.server` as a real child process: an ordinary server with no health endpoint
    (every path but what `directory` holds is a 404). `port` lets a test bring one up where another was."""

    def __init__(self, directory: Path, port: int | None = None):
        self.port = port or free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
                                      "--directory", str(directory)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class RecordingHistory:
    """Stands in for History where a test wants to see exactly what the request path recorded."""

    def __init__(self):
        self.rows: list[tuple] = []

    def record(self, *row) -> None:
        self.rows.append(row)


class RawBackend:
    """An asyncio server that records raw request heads and answers with a canned response.

    `respond(head: bytes) -> bytes | None` builds the response (None: close without answering).
    """

    def __init__(self, respond=None):
        self.port = free_port()
        self.heads: list[bytes] = []
        self.respond = respond or (lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> "RawBackend":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                out = self.respond(head)
                if out is None:
                    break
                writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()


def table_for(pools: dict[str, list[tuple[str, int] | Target]], routes: list[Route] | None = None,
              sources: list[SourceRule] | None = None, slow_start: float = 0.0,
              eject_after: int = 5) -> RoutingTable:
    routes = routes or [Route(name="all", pool=next(iter(pools)), type="page")]
    sources = sources or [SourceRule(header="X-Tenant"), SourceRule(client_ip=True)]
    built = {}
    for name, members in pools.items():
        targets = tuple(m if isinstance(m, Target) else Target(f"{name}-{i}", m[0], m[1], prewarmed=True)
                        for i, m in enumerate(members))
        built[name] = PoolTargets(name, targets, slow_start=slow_start, eject_after=eject_after)
    return RoutingTable([CompiledRoute(r) for r in routes], SourceExtractor(sources), built)


@asynccontextmanager
async def running_proxy(table: RoutingTable, timeouts: Timeouts | None = None, limits: Limits | None = None,
                        history=None):
    proxy = Proxy(table, timeouts or Timeouts(), limits or Limits(), history)
    port = free_port()
    await proxy.start("127.0.0.1", port)
    proxy.port = port
    proxy.url = f"http://127.0.0.1:{port}"
    try:
        yield proxy
    finally:
        await proxy.stop(grace=1.0)


async def raw_exchange(port: int, data: bytes, read_until_close: bool = True, timeout: float = 5.0) -> bytes:
    """Send raw bytes to the proxy and return what comes back (until close or timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    chunks = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if not read_until_close:
                    break
    except TimeoutError:
        pass
    writer.close()
    return b"".join(chunks)


def proc_rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (/proc/PID/task/*/children)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
