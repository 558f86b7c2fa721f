"""The data-plane workers as the control process sees them: started, fed, heard, replaced.

`WorkerSet` holds one listening socket per worker slot (all bound to the same address with
SO_REUSEPORT, so the kernel spreads new connections over them) and starts one worker process per
slot (`balancer.dataplane.worker`) with that socket and its end of a channel (`balancer.dataplane.channel`). Holding
the sockets here means a worker that dies loses only what it had accepted: connections queued on
its socket wait for the replacement, which inherits the same socket.

The control process reads the data plane only through what workers report: summed counters for
/metrics, per-member in-flight for drains, per-worker rows for /admin/status, and the history
batches it merges into `History`. A member counts as idle only when every live worker has
reported since the table that stopped routing to it, with nothing in flight on it.
"""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

import balancer
from balancer.control.history import History
from balancer.dataplane.channel import ChannelClosed, encode_table, frame, read_message, table_members
from balancer.dataplane.routing import RoutingTable
from balancer.dataplane.stats import LATENCY_BUCKETS, QUEUE_WAIT_BUCKETS, Histogram, ProxyStats, UpstreamStats
from config.models import Limits, Timeouts

# The directory holding the `balancer` package: the worker's cwd, so `python -m` puts it (and not a
# directory inside the package, whose `operator` room would shadow the standard library's) first.
PACKAGE_ROOT = str(Path(balancer.__file__).resolve().parent.parent)
log = structlog.get_logger("warmfront.workers")

START_TIMEOUT_S = 20.0     # a worker that has not said hello by then is killed and replaced
SILENT_S = 10.0            # a worker that has not reported for this long is hung: killed, replaced
BACKOFF_S = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0)   # restart delays after quick deaths in a row
QUICK_DEATH_S = 2.0
STOP_EXTRA_S = 5.0         # beyond the drain grace, before a worker that does not exit is killed


def default_workers() -> int:
    """One worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(slots=True)
class WorkerInfo:
    """One worker as last reported (what /admin/status lists)."""
    slot: int
    pid: int
    started: float                  # wall-clock time it was started
    version: int = -1               # routing table version it has applied (-1: none yet)
    reported: float = 0.0           # monotonic time of its last report
    reports: int = 0                # reports received
    requests: int = 0
    in_flight: int = 0
    connections: int = 0
    snapshot: tuple | None = None
    members: dict[str, tuple] = field(default_factory=dict)   # id -> (in_flight, requests, failures, ejected_for_s)


class WorkerSet:
    """N data-plane workers behind one listen address, supervised by the control process."""

    def __init__(self, count: int, listen: tuple[str, int], timeouts: Timeouts, limits: Limits,
                 history: History, tls: tuple[str, str] | None = None, log_level: str = "info",
                 report_interval: float = 1.0, access_log: str | None = None, log_format: str | None = None) -> None:
        self.count = count
        self.listen = listen
        self.settings = ("settings", timeouts.model_dump(), limits.model_dump(),
                         b"https" if tls else b"http", tls, report_interval, access_log)
        self.history = history
        self.log_level, self.log_format = log_level, log_format
        self.sockets: list[socket.socket] = []
        self.workers: dict[int, WorkerInfo] = {}             # slot -> the live worker in it
        self._procs: dict[int, subprocess.Popen] = {}
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._tasks: dict[int, asyncio.Task] = {}
        self._quick_deaths: dict[int, int] = {}
        self.restarts: dict[int, int] = dict.fromkeys(range(count), 0)   # slot -> replacements started
        self.version = 0
        self._wire: tuple | None = None
        self._routed: frozenset[str] = frozenset()
        self._left_at: dict[str, int] = {}                    # member id -> version that stopped routing it
        self._retired = ProxyStats()                          # cumulative counters of workers gone
        self._stopping = False
        self._supervisor: asyncio.Task | None = None

    # ------------------------------------------------------------------ the table, down
    def set_table(self, table: RoutingTable) -> None:
        """Send every worker the new table (encoded once); workers started later get it too."""
        wire = encode_table(table)
        if wire == self._wire:
            return
        self.version += 1
        routed = table_members(wire)
        for mid in self._routed - routed:
            self._left_at[mid] = self.version
        for mid in routed:
            self._left_at.pop(mid, None)
        self._routed, self._wire = routed, wire
        message = frame(("table", self.version, wire))
        for slot, w in list(self._writers.items()):
            self._write(slot, w, message)

    def _write(self, slot: int, writer: asyncio.StreamWriter, data: bytes) -> None:
        if not writer.is_closing():
            try:
                writer.write(data)
            except (ConnectionError, RuntimeError):
                pass   # the reader task sees it die and replaces it

    # ------------------------------------------------------------------ what workers report, up
    def in_flight(self, member_id: str) -> int:
        """Requests on `member_id` over every worker. A member that has left routing counts as busy
        until every live worker has reported on a table without it."""
        total = sum(w.members.get(member_id, (0,))[0] for w in self.workers.values())
        left = self._left_at.get(member_id)
        if left is not None and total == 0 and any(w.version < left for w in self.workers.values()):
            return 1
        return total

    def member_stats(self, member_id: str) -> UpstreamStats | None:
        rows = [w.members[member_id] for w in self.workers.values() if member_id in w.members]
        if not rows:
            return None
        ejected = max(r[3] for r in rows)
        return UpstreamStats(sum(r[0] for r in rows), sum(r[1] for r in rows), max(r[2] for r in rows),
                             time.monotonic() + ejected if ejected else 0.0)

    @property
    def now(self) -> float:
        return time.monotonic()

    def pending(self) -> int:
        return sum(w.in_flight for w in self.workers.values())

    @property
    def stats(self) -> ProxyStats:
        """Counters summed over the live workers and every worker that has gone (monotonic)."""
        total = ProxyStats()
        _add_stats(total, self._retired)
        for w in self.workers.values():
            if w.snapshot is not None:
                _add_snapshot(total, w.snapshot)
        return total

    def status(self) -> list[dict[str, Any]]:
        return [{"slot": w.slot, "pid": w.pid, "started": round(w.started, 3), "requests": w.requests,
                 "in_flight": w.in_flight, "connections": w.connections, "restarts": self.restarts.get(w.slot, 0)}
                for w in sorted(self.workers.values(), key=lambda w: w.slot)]

    def _on_report(self, w: WorkerInfo, message: tuple) -> None:
        _, version, rows, sessions, snap = message
        w.version, w.reported, w.snapshot = version, time.monotonic(), snap
        w.reports += 1
        w.requests, w.in_flight, w.connections = snap[0], snap[1], snap[2]
        w.members = {m[0]: m[1:] for m in snap[8]}
        if rows or sessions:
            self.history.merge(rows, sessions)

    async def flush(self, timeout: float = 5.0) -> None:
        """Have every worker report now, and return once each has: what was counted before the
        call is in the history after it (tests and the demo, whose clocks jump, use this)."""
        seen = {slot: w.reports for slot, w in self.workers.items()}
        message = frame(("flush",))
        for slot in seen:
            writer = self._writers.get(slot)
            if writer is not None:
                self._write(slot, writer, message)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(
                slot in self.workers and self.workers[slot].reports <= n for slot, n in seen.items()):
            await asyncio.sleep(0.005)

    # ------------------------------------------------------------------ lifecycle
    def bind(self) -> None:
        """One listening socket per slot on the same address (port 0: the first picks, the rest follow)."""
        host, port = self.listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if port:
            # SO_REUSEPORT would let a second warmfront (or anything else with the option) share the
            # port and take half its connections: a plain bind first fails if anyone holds it.
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        for _ in range(self.count):
            s = socket.socket(family, socket.SOCK_STREAM)
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                s.bind((host, port))
                s.listen(2048)
            except OSError:
                s.close()
                self.close_sockets()
                raise
            s.set_inheritable(True)
            port = s.getsockname()[1]
            self.sockets.append(s)
        self.listen = (host, port)

    async def start(self) -> None:
        """Bind, start every worker, and wait until each listens with the current table."""
        if not self.sockets:
            self.bind()
        hellos = [asyncio.get_running_loop().create_future() for _ in range(self.count)]
        for slot in range(self.count):
            self._spawn(slot, hellos[slot])
        done, _ = await asyncio.wait(hellos, timeout=START_TIMEOUT_S)
        failed = [slot for slot, f in enumerate(hellos) if f not in done or f.exception() is not None
                  or not f.result()]
        if failed:
            await self.stop(grace=0)
            raise RuntimeError(f"data-plane worker(s) {failed} did not start (see the log above)")
        self._supervisor = asyncio.create_task(self._watch())

    def _spawn(self, slot: int, hello: asyncio.Future | None = None) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        listen_fd = self.sockets[slot].fileno()
        child_end.set_inheritable(True)
        cmd = [sys.executable, "-m", "balancer.dataplane.worker", "--listen-fd", str(listen_fd),
               "--channel-fd", str(child_end.fileno()), "--parent", str(os.getpid()),
               "--log-level", self.log_level, *(["--log-format", self.log_format] if self.log_format else [])]
        try:
            proc = subprocess.Popen(cmd, pass_fds=(listen_fd, child_end.fileno()), stdin=subprocess.DEVNULL,
                                    cwd=PACKAGE_ROOT)
        finally:
            child_end.close()
        self._procs[slot] = proc
        info = WorkerInfo(slot, proc.pid, time.time())
        self._tasks[slot] = asyncio.create_task(self._serve(slot, info, proc, parent_end, hello))
        log.info("worker.started", slot=slot, pid=proc.pid)

    async def _serve(self, slot: int, info: WorkerInfo, proc: subprocess.Popen, sock: socket.socket,
                     hello: asyncio.Future | None) -> None:
        """Feed one worker and read its reports until it goes; then replace it (unless stopping)."""
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        self._writers[slot] = writer
        started = time.monotonic()
        try:
            writer.write(frame(self.settings))
            writer.write(frame(("table", self.version, self._wire)))
            async with asyncio.timeout(START_TIMEOUT_S):
                message = await read_message(reader)
            if message[0] != "hello":
                raise ChannelClosed(f"expected hello, got {message[0]}")
            self.workers[slot] = info
            info.reported = time.monotonic()
            if hello is not None and not hello.done():
                hello.set_result(True)
            if self.version != info.version:   # a table changed while it started
                self._write(slot, writer, frame(("table", self.version, self._wire)))
            while True:
                message = await read_message(reader)
                if message[0] == "report":
                    self._on_report(info, message)
                elif message[0] == "bye":
                    break
        except (ChannelClosed, asyncio.TimeoutError, ConnectionError) as e:
            if not self._stopping:
                log.error("worker.lost", slot=slot, pid=info.pid, error=str(e) or type(e).__name__)
        finally:
            if hello is not None and not hello.done():
                hello.set_result(False)
            self._writers.pop(slot, None)
            writer.close()
            gone = self.workers.pop(slot, None)
            if gone is not None and gone.snapshot is not None:
                _add_snapshot(self._retired, gone.snapshot, gauges=False)
            code = await _reap(proc, STOP_EXTRA_S if self._stopping else 0.5)
            if self._procs.get(slot) is proc:
                del self._procs[slot]
            log.info("worker.exited", slot=slot, pid=info.pid, code=code)
        if not self._stopping:
            quick = self._quick_deaths[slot] = (self._quick_deaths.get(slot, 0) + 1
                                               if time.monotonic() - started < QUICK_DEATH_S else 0)
            await asyncio.sleep(BACKOFF_S[min(quick, len(BACKOFF_S) - 1)])
            if not self._stopping:
                self.restarts[slot] = self.restarts.get(slot, 0) + 1
                self._spawn(slot)

    async def _watch(self) -> None:
        """Kill a worker that stopped reporting (hung loop); `_serve` replaces it."""
        while not self._stopping:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for slot, w in list(self.workers.items()):
                if now - w.reported > SILENT_S and (proc := self._procs.get(slot)) is not None:
                    log.error("worker.hung", slot=slot, pid=w.pid, silent_s=round(now - w.reported, 1))
                    proc.kill()

    async def stop(self, grace: float = 30.0) -> None:
        """Drain every worker (stop accepting, finish in flight within `grace`), wait for their
        last reports, and close the listening sockets."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
        message = frame(("stop", grace))
        for slot, proc in list(self._procs.items()):
            writer = self._writers.get(slot)
            if writer is not None:
                self._write(slot, writer, message)
            else:   # not connected yet: SIGTERM drains it just the same
                proc.terminate()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=grace + 2 * STOP_EXTRA_S)
        for proc in list(self._procs.values()):
            proc.kill()
        self.close_sockets()

    def close_sockets(self) -> None:
        for s in self.sockets:
            s.close()
        self.sockets = []


async def _reap(proc: subprocess.Popen, wait_s: float) -> int | None:
    """Exit code of a worker whose channel closed: wait briefly, then kill it (a worker without a
    channel is of no use)."""
    deadline = time.monotonic() + wait_s
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        while proc.poll() is None:
            await asyncio.sleep(0.01)
    return proc.returncode


def _add_snapshot(into: ProxyStats, snap: tuple, gauges: bool = True) -> None:
    """Add one worker's report snapshot (`balancer.dataplane.worker.snapshot`) to `into`."""
    (_, _, open_, accepted, refused, evicted, requests, latency, _, retries, ejections, queue_wait,
     queue_timeouts) = snap
    if gauges:
        into.connections_open += open_
    into.connections_accepted += accepted
    into.connections_refused += refused
    into.connections_evicted += evicted
    _add_counts(into.requests, (((pool, rtype, method, code), n) for pool, rtype, method, code, n in requests))
    _add_counts(into.retries, (((pool, reason), n) for pool, reason, n in retries))
    _add_counts(into.ejections, ejections)
    _add_counts(into.queue_timeouts, queue_timeouts)
    for pool, counts, total in latency:
        _histogram(into.latency, pool, LATENCY_BUCKETS).add(counts, total)
    for pool, counts, total in queue_wait:
        _histogram(into.queue_wait, pool, QUEUE_WAIT_BUCKETS).add(counts, total)


def _add_stats(into: ProxyStats, other: ProxyStats) -> None:
    into.connections_accepted += other.connections_accepted
    into.connections_refused += other.connections_refused
    into.connections_evicted += other.connections_evicted
    _add_counts(into.requests, other.requests.items())
    _add_counts(into.retries, other.retries.items())
    _add_counts(into.ejections, other.ejections.items())
    _add_counts(into.queue_timeouts, other.queue_timeouts.items())
    for pool, h in other.latency.items():
        _histogram(into.latency, pool, LATENCY_BUCKETS).add(h.counts, h.total)
    for pool, h in other.queue_wait.items():
        _histogram(into.queue_wait, pool, QUEUE_WAIT_BUCKETS).add(h.counts, h.total)


K = TypeVar("K")


def _add_counts(into: dict[K, int], items: Iterable[tuple[K, int]]) -> None:
    for key, n in items:
        into[key] = into.get(key, 0) + n


def _histogram(into: dict[str, Histogram], pool: str, bounds: tuple[float, ...]) -> Histogram:
    h = into.get(pool)
    if h is None:
        h = into[pool] = Histogram(bounds)
    return h
