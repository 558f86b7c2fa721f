"""warmfront-testapp: the HTTP service the offline test image runs (stdlib only, Python 3.11).

It stands in for a real backend in tests and benchmarks: it can boot slowly (BOOT_DELAY) and make
every request cost time (WORK_MS), so what pre-warming saves is visible, and it counts the requests it
served (/hits) so a test can see warm-up traffic arrive.

Endpoints (every response has Content-Length and `X-Backend-Port`):
  GET /healthz        200 "ok"                       probe: no simulated work, not counted
  GET /hits           200 requests served so far      probe: no simulated work, not counted
  GET /               200 text naming the app, hostname and pid
  GET /pid            200 the process id
  GET /work?ms=N      sleeps N ms (on top of WORK_MS), then 200
  GET /sleep/N        same as /work?ms=N
  GET /burn?ms=N      burns N ms of the handling thread's CPU time (a busy loop), then 200
  GET /alloc?mb=N     allocates N MiB, touches every page and keeps it for the life of the process,
                      then 200 with the MiB held in total (resource-measurement tests)
  GET|POST /api/...   200 JSON describing the request and this process

Settings: PORT (or --port N, which wins; default 8080), HOST (default 127.0.0.1), WORK_MS (default 0),
BOOT_DELAY in seconds (default 0). SIGTERM or SIGINT: stop accepting, let in-flight requests finish
for up to DRAIN_SECONDS, exit 0.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

APP_NAME = "warmfront-testapp"
# Stays under the ~1 s a stopping container is expected to take, leaving room for interpreter exit.
DRAIN_SECONDS = 0.8
# A client asking for more than this is a bug in the test, not a slow service to simulate.
MAX_SLEEP_MS = 60_000
PROBE_PATHS = frozenset({"/healthz", "/hits"})
# Like MAX_SLEEP_MS: more than this in one request is a test bug (and would take the host's memory).
MAX_ALLOC_MB = 4096
PAGE = 4096
# What /alloc handed out: referenced until exit, so the memory stays resident.
HELD: list[bytearray] = []
HELD_LOCK = threading.Lock()


@dataclass(frozen=True)
class Settings:
    host: str
    port: int
    work_ms: float
    boot_delay: float


class Counters:
    """Requests served and in flight, shared by all connection threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.hits = 0
        self.in_flight = 0

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def count(self) -> None:
        with self._lock:
            self.hits += 1

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._lock:
            return self._idle.wait_for(lambda: self.in_flight == 0, timeout)


class TestAppServer(ThreadingHTTPServer):
    # Benchmarks open many connections at once; the default backlog of 5 would refuse some.
    request_queue_size = 1024
    daemon_threads = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.counters = Counters()
        self.stopping = threading.Event()
        self.hostname = socket.gethostname()
        super().__init__((settings.host, settings.port), Handler)


class Handler(BaseHTTPRequestHandler):
    server: TestAppServer
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one send on flush; with Nagle off, keep-alive requests never wait
    # for a delayed ACK.
    wbufsize = -1
    disable_nagle_algorithm = True
    # Idle keep-alive connections each hold a thread; let forgotten ones go eventually.
    timeout = 120
    server_version = APP_NAME

    def do_GET(self) -> None:
        self._serve(body_in=b"")

    def do_HEAD(self) -> None:
        self._serve(body_in=b"")

    def do_POST(self) -> None:
        self._serve(body_in=self._read_body())

    do_PUT = do_POST

    def end_headers(self) -> None:
        self.send_header("X-Backend-Port", str(self.server.server_address[1]))
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        # Per-request logging would dominate the cost of a benchmark request.
        pass

    def _read_body(self) -> bytes:
        raw = self.headers.get("Content-Length") or "0"
        if not raw.isdigit() or "Transfer-Encoding" in self.headers:
            # A body this server does not delimit would desynchronise the next request on the connection.
            self.close_connection = True
            return b""
        return self.rfile.read(int(raw))

    def _serve(self, body_in: bytes) -> None:
        url = urlsplit(self.path)
        probe = url.path in PROBE_PATHS
        counters = self.server.counters
        counters.begin()
        try:
            if not probe:
                self._sleep_ms(self.server.settings.work_ms)
            try:
                status, content_type, body = self._route(url.path, parse_qs(url.query), body_in)
            except ValueError as exc:
                status, content_type, body = 400, "text/plain", f"bad request: {exc}\n".encode()
            if not probe:
                # Counted before the write: a client that reads the answer and then asks /hits
                # must see its own request.
                counters.count()
            self._respond(status, content_type, body)
        finally:
            # Out of flight only once written, so a drain waits for the bytes to leave too.
            counters.end()

    def _respond(self, status: int, content_type: str, body: bytes) -> None:
        if self.server.stopping.is_set():
            # Tell keep-alive clients to reconnect elsewhere instead of reusing a closing server.
            self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()

    def _route(self, path: str, query: dict[str, list[str]], body_in: bytes) -> tuple[int, str, bytes]:
        server = self.server
        if path == "/healthz":
            return 200, "text/plain", b"ok"
        if path == "/hits":
            return 200, "text/plain", f"{server.counters.hits}\n".encode()
        if path == "/":
            text = f"{APP_NAME} hostname={server.hostname} pid={os.getpid()} port={server.server_address[1]}\n"
            return 200, "text/plain", text.encode()
        if path == "/pid":
            return 200, "text/plain", f"{os.getpid()}\n".encode()
        if path == "/work":
            ms = _parse_ms(query.get("ms", ["0"])[0])
            self._sleep_ms(ms)
            return 200, "text/plain", f"worked {ms:g} ms\n".encode()
        if path.startswith("/sleep/"):
            ms = _parse_ms(path.removeprefix("/sleep/"))
            self._sleep_ms(ms)
            return 200, "text/plain", f"slept {ms:g} ms\n".encode()
        if path == "/burn":
            ms = _parse_ms(query.get("ms", ["0"])[0])
            _burn_cpu(ms)
            return 200, "text/plain", f"burned {ms:g} ms\n".encode()
        if path == "/alloc":
            held = _alloc(_parse_mb(query.get("mb", ["0"])[0]))
            return 200, "text/plain", f"holding {held} MiB\n".encode()
        if path == "/api" or path.startswith("/api/"):
            doc = {"app": APP_NAME, "method": self.command, "path": self.path, "hostname": server.hostname,
                   "pid": os.getpid(), "port": server.server_address[1], "hits": server.counters.hits,
                   "work_ms": server.settings.work_ms, "body_bytes": len(body_in)}
            return 200, "application/json", json.dumps(doc).encode()
        return 404, "text/plain", b"not found\n"

    def _sleep_ms(self, ms: float) -> None:
        if ms > 0:
            time.sleep(ms / 1000)


def _burn_cpu(ms: float) -> None:
    # Thread CPU time, not wall time: the burn is the same amount of CPU however contended the host is.
    until = time.thread_time() + ms / 1000
    while time.thread_time() < until:
        pass


def _alloc(mb: int) -> int:
    """Allocate and touch `mb` MiB (a page untouched is not resident); returns the MiB held in total."""
    block = bytearray(mb << 20)
    for offset in range(0, len(block), PAGE):
        block[offset] = 1
    with HELD_LOCK:
        HELD.append(block)
        return sum(len(b) for b in HELD) >> 20


def _parse_mb(raw: str) -> int:
    mb = int(raw)
    if not 0 <= mb <= MAX_ALLOC_MB:
        raise ValueError(f"mb must be between 0 and {MAX_ALLOC_MB}, got {raw}")
    return mb


def _parse_ms(raw: str) -> float:
    ms = float(raw)
    if not 0 <= ms <= MAX_SLEEP_MS:
        raise ValueError(f"ms must be between 0 and {MAX_SLEEP_MS}, got {raw}")
    return ms


def _env_float(env: dict[str, str], name: str) -> float:
    raw = env.get(name) or "0"
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{APP_NAME}: {name} must be a number, got {raw!r}") from None
    if value < 0:
        raise SystemExit(f"{APP_NAME}: {name} must not be negative, got {raw!r}")
    return value


def parse_settings(argv: list[str], env: dict[str, str]) -> Settings:
    parser = argparse.ArgumentParser(prog=APP_NAME, description="HTTP test service for warmfront")
    parser.add_argument("--port", type=int, help="port to listen on (overrides $PORT)")
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else int(env.get("PORT") or 8080)
    return Settings(host=env.get("HOST") or "127.0.0.1", port=port,
                    work_ms=_env_float(env, "WORK_MS"), boot_delay=_env_float(env, "BOOT_DELAY"))


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(sys.argv[1:] if argv is None else argv, dict(os.environ))
    stop = threading.Event()
    # The handler only flags; the main thread does the shutdown (server.shutdown() would deadlock if
    # called from the thread running serve_forever).
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    # A real service boots for seconds before it answers anything, health checks included.
    if stop.wait(settings.boot_delay):
        return 0
    server = TestAppServer(settings)
    # A short poll interval is what lets shutdown() return quickly after SIGTERM.
    threading.Thread(target=server.serve_forever, args=(0.05,), name="accept", daemon=True).start()
    stop.wait()

    server.stopping.set()
    server.shutdown()
    server.server_close()
    server.counters.wait_idle(DRAIN_SECONDS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
