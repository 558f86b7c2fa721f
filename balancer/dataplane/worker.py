"""A data-plane worker process: the proxy on its own uvloop loop, fed by the control process.

Started by `balancer.control.workers.WorkerSet` as ``python -m balancer.dataplane.worker``, with two inherited file
descriptors: a listening socket (one of the SO_REUSEPORT group the control process holds, so a
replacement accepts what queued while this one was gone) and its end of the channel
(`balancer.dataplane.channel`). It imports the request path and nothing of predictor/ or pools/.

What it does: apply every routing table the control process sends; count each request in a
`Tally` (per (source, type) rows and per-source type runs, no I/O); ship the tally with a snapshot
of its cumulative counters about once a second; with an access log, write its lines every quarter
second (`balancer.dataplane.access_log`); drain on SIGTERM, on ``("stop", grace)`` or when
the control process is gone (channel EOF, or the parent-death signal).
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import os
import signal
import socket
import sys
from bisect import bisect_left

import structlog

from balancer.dataplane.access_log import AccessLog
from balancer.dataplane.channel import ChannelClosed, decode_table, frame, read_message
from balancer.dataplane.counters import ABORTS, BYTES_IN, BYTES_OUT, ERRORS, HIST, LATENCY_BOUNDS, LATENCY_SUM, OTHER, REQUESTS, WIDTH
from balancer.logs import configure_logging
from balancer.dataplane.proxy import Proxy, make_ssl_context
from config.models import Limits, Timeouts

log = structlog.get_logger("warmfront.worker")

MAX_ROWS = 20_000        # distinct (source, type) rows per batch; beyond it new sources count as "other"
MAX_SESSION_SOURCES = 20_000   # sources whose type runs one batch carries (a flood of keys is cut here)
PR_SET_PDEATHSIG = 1


class Tally:
    """What the proxy's `history.record` calls in a worker: counters since the last batch, in the
    layout of `balancer.dataplane.counters`, and each source's request types in order as runs."""
    __slots__ = ("rows", "sessions")

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], list] = {}
        self.sessions: dict[str, list] = {}

    def record(self, source: str, rtype: str, status: int, bytes_in: int, bytes_out: int,
               latency: float, aborted: bool) -> None:
        runs = self.sessions.get(source)
        if runs is None:
            if len(self.sessions) < MAX_SESSION_SOURCES:
                self.sessions[source] = [rtype, 1]
        elif runs[-2] == rtype:
            runs[-1] += 1
        else:
            runs += (rtype, 1)
        key = (source, rtype)
        row = self.rows.get(key)
        if row is None:
            if len(self.rows) >= MAX_ROWS:
                key = (OTHER, rtype)
                row = self.rows.get(key)
            if row is None:
                row = self.rows[key] = [0] * WIDTH
        row[REQUESTS] += 1
        if status >= 500:
            row[ERRORS] += 1
        if aborted:
            row[ABORTS] += 1
        row[BYTES_IN] += bytes_in
        row[BYTES_OUT] += bytes_out
        row[LATENCY_SUM] += latency
        row[HIST + bisect_left(LATENCY_BOUNDS, latency)] += 1

    def take(self) -> tuple[list[tuple], dict[str, list]]:
        rows, self.rows = self.rows, {}
        sessions, self.sessions = self.sessions, {}
        return [(s, t, *row) for (s, t), row in rows.items()], sessions


def snapshot(proxy: Proxy) -> tuple:
    """The worker's cumulative counters and its members as it sees them (plain tuples)."""
    st = proxy.stats
    now = proxy.now
    requests = [(*key, n) for key, n in st.requests.items()]
    latency = [(pool, list(h.counts), h.total) for pool, h in st.latency.items()]
    members = []
    for mid in proxy.upstreams:
        m = proxy.member_stats(mid)
        if m is not None:
            members.append((mid, m.in_flight, m.requests, m.failures, max(0.0, m.ejected_until - now)))
    queue_wait = [(pool, list(h.counts), h.total) for pool, h in st.queue_wait.items()]
    return (sum(st.requests.values()), proxy.pending(), st.connections_open, st.connections_accepted,
            st.connections_refused, st.connections_evicted, requests, latency, members,
            [(*key, n) for key, n in st.retries.items()], list(st.ejections.items()), queue_wait,
            list(st.queue_timeouts.items()))


class Worker:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.tally = Tally()
        self.proxy: Proxy   # set by `start`, before anything reads it
        self.access_log: AccessLog | None = None
        self.version = 0
        self.grace = 30.0
        self.interval = 1.0   # seconds between reports (the control process says)
        self.stopping = asyncio.Event()

    def send(self, message: tuple) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame(message))

    def report(self) -> None:
        rows, sessions = self.tally.take()
        self.send(("report", self.version, rows, sessions, snapshot(self.proxy)))

    async def start(self, listen_fd: int) -> None:
        kind, timeouts, limits, scheme, tls, self.interval, access_log = await read_message(self.reader)
        if kind != "settings":
            raise ChannelClosed(f"expected settings, got {kind}")
        if access_log is not None:
            try:
                self.access_log = AccessLog(access_log)
            except OSError as e:
                raise ChannelClosed(f"cannot open the access log {access_log}: {e}") from None
        kind, self.version, wire = await read_message(self.reader)
        if kind != "table":
            raise ChannelClosed(f"expected a table, got {kind}")
        ssl_ctx = make_ssl_context(*tls) if tls else None
        self.proxy = Proxy(decode_table(wire), Timeouts.model_validate(timeouts), Limits.model_validate(limits),
                           self.tally, scheme=scheme,
                           access_log=self.access_log.entries if self.access_log is not None else None)
        sock = socket.socket(fileno=listen_fd)
        await self.proxy.start("", 0, ssl_ctx, sock=sock)   # the socket says where
        self.send(("hello", os.getpid()))
        self.report()

    async def commands(self) -> None:
        try:
            while True:
                message = await read_message(self.reader)
                kind = message[0]
                if kind == "table":
                    _, self.version, wire = message
                    self.proxy.set_table(decode_table(wire))
                    self.report()   # tells the control side this worker routes by `version` now
                elif kind == "flush":
                    self.report()
                elif kind == "stop":
                    self.grace = float(message[1])
                    self.stopping.set()
                    return
        except ChannelClosed:
            log.warning("worker.control_gone", pid=os.getpid())
            self.stopping.set()

    async def reports(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.report()

    async def run(self, listen_fd: int) -> None:
        await self.start(listen_fd)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        gc.freeze()   # the settled heap of start-up stays out of the collector's passes
        tasks = [asyncio.create_task(self.commands()), asyncio.create_task(self.reports())]
        if self.access_log is not None:
            tasks.append(asyncio.create_task(self.access_log.run()))
        await self.stopping.wait()
        await self.proxy.stop(grace=self.grace)
        for t in tasks:
            t.cancel()
        if self.access_log is not None:
            await self.access_log.close()   # the lines of the drain too
        self.report()
        self.send(("bye",))
        try:
            async with asyncio.timeout(5.0):
                await self.writer.drain()
        except (ConnectionError, asyncio.TimeoutError):
            pass
        self.writer.close()


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the control process dies, however it dies (Linux); EOF on the channel is the
    portable backstop."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:   # it died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


async def _main(args: argparse.Namespace) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=args.channel_fd))
    await Worker(reader, writer).run(args.listen_fd)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="warmfront-worker")
    p.add_argument("--listen-fd", type=int, required=True)
    p.add_argument("--channel-fd", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", choices=("json", "text"))
    args = p.parse_args(argv)
    _die_with_parent(args.parent)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)   # reloads reach workers as tables from the control process
    configure_logging(args.log_level, json=None if args.log_format is None else args.log_format == "json")
    import uvloop
    try:
        uvloop.run(_main(args))
    except ChannelClosed as e:
        log.error("worker.start_failed", error=str(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
