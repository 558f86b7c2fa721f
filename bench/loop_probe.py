"""Data-plane responsiveness while the control loop forecasts: a keep-alive probe's latency.

Starts a real `warmfront run` (a child process, as users run it) in front of a small keep-alive
HTTP backend process on 127.0.0.1, with sources named by the `X-Tenant` header. A load process
then sends `--load-rps` requests per second spread over `--sources` tenant names (every name
within the first few seconds, then each again and again), so the control loop admits that many
series and forecasts them every step. Meanwhile one keep-alive connection sends `--rate`
requests per second for `--duration` seconds and times each; `/admin/status` is fetched every
`--status-every` seconds on another connection. The probe starts with the load, so it also sees
the step that adds every new series at once.

    python bench/loop_probe.py                           # 1,000 sources, 70 s
    python bench/loop_probe.py --max-ms 20               # exit 1 when the worst probe exceeds 20 ms
    python bench/loop_probe.py --sources 300 --duration 20 --json

Reported: p50 / p99 / max latency of the probe requests, the worst gap between two probe
answers beyond the send interval (a stall shows in both), the /admin/status call times, and the
number of series the history tracks at the end. Traffic: 127.0.0.1 only; every process started
here is stopped on exit.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n"


# ---------------------------------------------------------------- backend (child process)
class _Backend(asyncio.Protocol):
    """Answers every request head with a fixed 200, keep-alive (requests carry no body)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        n = self.buf.count(b"\r\n\r\n")
        if n:
            self.buf = self.buf[self.buf.rfind(b"\r\n\r\n") + 4:]
            self.transport.write(RESPONSE * n)


def serve_backend(port: int) -> None:
    import uvloop

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Backend, "127.0.0.1", port)
        async with server:
            await server.serve_forever()
    uvloop.run(main())


# ---------------------------------------------------------------- load (child process)
def serve_load(port: int, sources: int, rps: float, connections: int) -> None:
    """`rps` requests per second over `connections` keep-alive connections, tenants in rotation."""
    import uvloop

    async def worker(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        interval = connections / rps
        i, t = k, time.monotonic()
        while True:
            head = f"GET /load HTTP/1.1\r\nHost: probe\r\nX-Tenant: tenant-{i % sources}\r\n\r\n".encode()
            writer.write(head)
            try:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(3)
            except (ConnectionError, asyncio.IncompleteReadError):
                return   # the proxy is stopping
            i += connections
            t += interval
            await asyncio.sleep(max(0.0, t - time.monotonic()))

    async def main() -> None:
        await asyncio.gather(*(worker(k) for k in range(connections)))
    uvloop.run(main())


# ---------------------------------------------------------------- the probe (this process)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_config(directory: Path, listen: int, admin: int, backend: int, max_sources: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "routing.yaml").write_text(f"""\
listen: 127.0.0.1:{listen}
admin:
  listen: 127.0.0.1:{admin}
sources:
  - header: X-Tenant
history:
  max_sources: {max_sources}
routes:
  - name: api
    pool: web
    type: api
""")
    (directory / "pools.yaml").write_text(f"""\
pools:
  web:
    backend: static
    servers: ["127.0.0.1:{backend}"]
""")


def _wait_port(port: int, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds:g}s")


def _read_response(sock: socket.socket, buf: bytearray) -> None:
    """Read one response with a Content-Length body (what the backend sends) off `sock`."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end]).lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
            if len(buf) >= end + 4 + length:
                del buf[:end + 4 + length]
                return
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the proxy closed the probe connection")
        buf += chunk


def probe(port: int, rate: float, duration: float) -> tuple[list[float], float]:
    """Latencies (s) of `rate` keep-alive requests a second for `duration` s, and the worst gap
    between two answers beyond the send interval."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = b"GET /probe HTTP/1.1\r\nHost: probe\r\nX-Tenant: probe\r\n\r\n"
    buf = bytearray()
    interval = 1.0 / rate
    latencies: list[float] = []
    worst_gap = 0.0
    start = last = time.perf_counter()
    due = start
    while due - start < duration:
        t0 = time.perf_counter()
        sock.sendall(request)
        _read_response(sock, buf)
        t1 = time.perf_counter()
        latencies.append(t1 - t0)
        worst_gap = max(worst_gap, t1 - last - interval)
        last = t1
        due += interval
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        else:
            due = time.perf_counter()   # fell behind (a stall): do not burst to catch up
    sock.close()
    return latencies, max(0.0, worst_gap)


def _status_calls(admin: int, every: float, stop: threading.Event, out: list[float]) -> None:
    while not stop.wait(every):
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/admin/status", timeout=30) as r:
                r.read()
        except OSError:
            continue
        out.append(time.perf_counter() - t0)


def _sources_recorded(db: Path) -> int:
    """Distinct source names in the history the run left behind ("other" included)."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(DISTINCT source) FROM minutes").fetchone()[0]


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else 0.0


def _start(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run(opts: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="wf-loop-probe-"))
    listen, admin, backend_port = _free_port(), _free_port(), _free_port()
    _write_config(tmp / "config", listen, admin, backend_port, opts.max_sources)
    here = str(Path(__file__).resolve())
    procs: list[subprocess.Popen] = []
    try:
        procs.append(_start([here, "_backend", str(backend_port)], tmp / "backend.log"))
        _wait_port(backend_port, 10)
        procs.append(_start(["-m", "balancer.wiring.cli", "run", "--config", str(tmp / "config"), "--state-dir",
                             str(tmp / "state"), "--log-level", "warning"], tmp / "warmfront.log"))
        _wait_port(admin, 30)
        _wait_port(listen, 30)
        procs.append(_start([here, "_load", str(listen), str(opts.sources), str(opts.load_rps),
                             str(opts.connections)], tmp / "load.log"))
        stop = threading.Event()
        status_times: list[float] = []
        caller = threading.Thread(target=_status_calls, args=(admin, opts.status_every, stop, status_times), daemon=True)
        caller.start()
        latencies, gap = probe(listen, opts.rate, opts.duration)
        stop.set()
        caller.join(30)
        if procs[-1].poll() is not None:
            raise RuntimeError(f"the load generator died; see {tmp / 'load.log'}")
    finally:
        for p in reversed(procs):
            _stop(p)
    recorded = _sources_recorded(tmp / "state" / "history.sqlite3")
    ms = lambda v: round(v * 1000, 2)  # noqa: E731
    return {
        "sources": opts.sources, "load_rps": opts.load_rps, "probe_rps": opts.rate, "duration_s": opts.duration,
        "probes": len(latencies), "p50_ms": ms(_pct(latencies, 0.5)), "p99_ms": ms(_pct(latencies, 0.99)),
        "max_ms": ms(max(latencies)), "worst_gap_ms": ms(gap),
        "status_calls": len(status_times), "status_ms": [ms(t) for t in status_times],
        "sources_recorded": recorded, "load": os.getloadavg()[0], "logs": str(tmp),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_backend"]:
        serve_backend(int(argv[1]))
        return 0
    if argv[:1] == ["_load"]:
        serve_load(int(argv[1]), int(argv[2]), float(argv[3]), int(argv[4]))
        return 0
    if argv[:1] == ["_probe"]:   # a probe in a process of its own, printing what `probe` returns
        latencies, gap = probe(int(argv[1]), float(argv[2]), float(argv[3]))
        print(json.dumps({"latencies": latencies, "gap": gap}))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sources", type=int, default=1000, help="tenant names the load spreads over (default 1000)")
    p.add_argument("--max-sources", type=int, default=1000, help="history.max_sources of the warmfront run")
    p.add_argument("--load-rps", type=float, default=200.0, help="background requests per second (default 200)")
    p.add_argument("--connections", type=int, default=8, help="keep-alive connections of the load (default 8)")
    p.add_argument("--rate", type=float, default=50.0, help="probe requests per second (default 50)")
    p.add_argument("--duration", type=float, default=70.0,
                   help="seconds of probing, from the start of the load (default 70: a minute boundary, "
                        "where the new series enter the forecaster, falls inside)")
    p.add_argument("--status-every", type=float, default=7.0, help="seconds between /admin/status calls")
    p.add_argument("--max-ms", type=float, default=None, help="exit 1 when the worst probe latency exceeds this")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    opts = p.parse_args(argv)
    result = run(opts)
    if opts.json:
        print(json.dumps(result))
    else:
        print(f"loop probe: {result['sources']} sources at {result['load_rps']:g} rps, probe {result['probe_rps']:g} rps "
              f"for {result['duration_s']:g} s ({result['probes']} requests), load average {result['load']:.2f}")
        print(f"  probe latency  p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms  max {result['max_ms']} ms"
              f"  worst gap {result['worst_gap_ms']} ms")
        print(f"  /admin/status  {result['status_calls']} calls: {result['status_ms']} ms")
        print(f"  source names in history: {result['sources_recorded']}   logs: {result['logs']}")
    if opts.max_ms is not None and result["max_ms"] > opts.max_ms:
        print(f"FAIL: worst probe latency {result['max_ms']} ms > {opts.max_ms:g} ms", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
