"""The request path: HTTP/1.1 reverse proxy on asyncio transports and protocols with httptools.

One `ClientConnection` (downstream.py) per downstream connection parses requests; each request
becomes an `Exchange` (exchange.py); an `UpstreamConnection` (upstream_connection.py, pooled per
member, keep-alive) carries it to a member chosen from the routing table and parses the response,
which is streamed back; `framing` decides how its body is delimited and `retry` what a failure
leads to. This module holds `Proxy`: the listener, the routing table, the sweeper, the counters. Bodies stream both ways
with flow control (a full write buffer on one side pauses reading on the other), so memory stays
bounded whatever the body size.

Costs that matter here (see measurements.md): every Python call per request counts; writes to the
client are coalesced to one per upstream read; timeouts are checked by one sweeper task against a
coarse clock instead of a timer per request.
"""
from __future__ import annotations

import asyncio
import resource
import socket
import ssl
from time import perf_counter
from typing import Any

import structlog

from balancer.dataplane.downstream import ClientConnection
from balancer.dataplane.exchange import Exchange, Member, UpstreamSide
from balancer.dataplane.headers import (LOWER_NAMES, PLAIN_REQUEST_HEADERS, SPECIAL_REQUEST_HEADERS,
                                        X_FORWARDED, is_host, spellings)
from balancer.dataplane.retry import Failure
from balancer.dataplane.routing import RoutingTable
from balancer.dataplane.stats import ProxyStats, UpstreamStats
from balancer.dataplane.upstream import Upstream, UpstreamPool
from balancer.dataplane.upstream_connection import UpstreamConnection
from config.models import Limits, Timeouts

__all__ = ["ClientConnection", "Proxy", "UpstreamConnection", "make_ssl_context", "default_max_connections",
           "raise_fd_limit", "FD_RESERVE"]

log = structlog.get_logger("warmfront.balancer")

MAX_VALID_HOSTS = 1024
CLIENT_ABORTED = 499              # nginx's convention for "client closed the connection first"
FD_RESERVE = 256                  # open files kept out of the client cap (listeners, logs, SQLite, health checks)


def default_max_connections() -> int:
    """Client connections the open-file limit allows: one upstream each, and headroom for the rest."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    return max(16, (soft - FD_RESERVE) // 2)


def raise_fd_limit() -> None:
    """Raise the soft open-file limit to the hard one, as nginx and HAProxy do at start."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


class Proxy:
    """The data plane: listens, routes, forwards. Reads a routing table; writes counters."""

    def __init__(self, table: RoutingTable, timeouts: Timeouts, limits: Limits, history: Any = None,
                 stats: ProxyStats | None = None, scheme: bytes = b"http", access_log: list | None = None):
        self.loop = asyncio.get_event_loop()
        self.table = table
        self.timeouts = timeouts
        self.limits = limits
        self.history = history
        self.record = history.record if history is not None else None   # bound once: called per request
        self.stats = stats or ProxyStats()
        self.scheme = scheme
        # `balancer.dataplane.access_log.AccessLog.entries`, or None: off costs one test per request.
        self.access_log = access_log
        self.pools: dict[str, UpstreamPool[UpstreamSide]] = {}
        self.upstreams: dict[str, Member] = {}
        self.clients: dict[ClientConnection, None] = {}   # insertion order: oldest first
        self.max_connections = limits.max_connections or default_max_connections()
        # Limits read on every request, one attribute away instead of two.
        self.max_header_bytes = limits.max_header_bytes
        self.max_body_bytes = limits.max_body_bytes
        self.max_response_header_bytes = limits.max_response_header_bytes
        self.total_timeout: float = timeouts.total
        self.valid_hosts: set[bytes] = set()
        self.capped = False            # in an episode at max_connections (logged once per episode)
        self.fd_exhausted = False      # in an episode of EMFILE/ENFILE (logged once per episode)
        self.now = self.loop.time()
        self.closing = False
        self.servers: list[asyncio.Server] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.set_table(table)

    # ------------------------------------------------------------------ control side
    def set_table(self, table: RoutingTable) -> None:
        """Swap in a new routing table. Members keep their counters and idle connections."""
        self.table = table
        names = table.header_names
        self.plain_headers = frozenset(n for n in PLAIN_REQUEST_HEADERS if n.lower() not in names)
        # Names routing or source rules read that nothing else handles: kept in `Exchange.hdrs`.
        self.routed_names = frozenset(n for n in names if n not in SPECIAL_REQUEST_HEADERS
                                      and n.replace(b"_", b"-") not in X_FORWARDED)
        # Exact-case spellings of those names and of the special ones, lower-cased without a call.
        self.lower_names = {**LOWER_NAMES, **spellings(self.routed_names)}
        now = self.loop.time()
        seen: set[str] = set()
        for name, conf in table.pools.items():
            pool = self.pools.get(name) or UpstreamPool[UpstreamSide](name, self.stats.queue_wait_of(name))
            self.pools[name] = pool
            pool.conf = conf
            members: list[Member] = []
            for t in conf.targets:
                up = self.upstreams.get(t.id)
                if up is None or (up.host, up.port) != (t.host, t.port):
                    up = Upstream[UpstreamSide](t, name, now)
                    self.upstreams[t.id] = up
                elif not up.routed:
                    up.routed = True
                    up.routable_since = now
                up.prewarmed = t.prewarmed
                members.append(up)
                seen.add(t.id)
            pool.members = members
            if members and pool.waiters:
                waiters, pool.waiters = pool.waiters, []
                for ex in waiters:
                    if not ex.done:
                        ex.client.dispatch(ex)
        for name in list(self.pools):
            if name not in table.pools:
                pool = self.pools.pop(name)
                for ex in pool.waiters:
                    ex.client.reply_error(ex, 503)
        for mid, up in list(self.upstreams.items()):
            if mid not in seen:
                up.routed = False
                up.close_idle()
                if up.in_flight == 0:
                    del self.upstreams[mid]

    def valid_host(self, value: bytes) -> bool:
        """Whether a Host value is host[:port]; good values are remembered (a bounded few), so the
        hosts a proxy serves are checked once rather than on every request."""
        if not is_host(value):
            return False
        if len(self.valid_hosts) < MAX_VALID_HOSTS:
            self.valid_hosts.add(value)
        return True

    def member_stats(self, member_id: str) -> UpstreamStats | None:
        up = self.upstreams.get(member_id)
        return up.stats() if up else None

    def in_flight(self, member_id: str) -> int:
        up = self.upstreams.get(member_id)
        return up.in_flight if up else 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None,
                    sock: socket.socket | None = None) -> None:
        """Listen on host:port with SO_REUSEPORT, the seam for several worker processes."""
        raise_fd_limit()
        if not self.limits.max_connections:
            self.max_connections = default_max_connections()
        if sock is not None:
            server = await self.loop.create_server(lambda: ClientConnection(self), sock=sock,
                                                   ssl=ssl_context, backlog=2048)
        else:
            server = await self.loop.create_server(lambda: ClientConnection(self), host, port,
                                                   ssl=ssl_context, reuse_port=True, backlog=2048)
        self.servers.append(server)
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep())

    @property
    def sockets(self) -> list[socket.socket]:
        return [s for srv in self.servers for s in srv.sockets]

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let in-flight requests finish (up to `grace`), close the rest."""
        self.closing = True
        for srv in self.servers:
            srv.close()
        for c in list(self.clients):
            if not c.queue:
                c.close()
        deadline = self.loop.time() + grace
        while self.pending() and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for c in list(self.clients):
            c.close()
        for up in self.upstreams.values():
            up.close_idle()
        if self._sweeper:
            self._sweeper.cancel()
            self._sweeper = None

    def pending(self) -> int:
        """Requests received and not yet answered."""
        return sum(len(c.queue) for c in self.clients)

    def make_room(self) -> bool:
        """At the connection cap: close the oldest connection that has nothing in progress (idle
        keep-alive, or still sending a head), as nginx reuses idle keep-alive connections when it
        runs out. False when every connection is busy."""
        if not self.capped:
            self.capped = True
            log.warning("proxy.connections_capped", max_connections=self.max_connections, open=len(self.clients))
        for c in self.clients:
            if not c.queue and c.tunnel is None and not c.evicted:
                c.evicted = True
                self.stats.connections_evicted += 1
                c.close()
                return True
        self.stats.connections_refused += 1
        return False

    def note_fd_exhausted(self, exc: OSError) -> None:
        if not self.fd_exhausted:
            self.fd_exhausted = True
            log.error("proxy.fd_exhausted", error=str(exc), open_clients=len(self.clients),
                      max_connections=self.max_connections,
                      nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0])

    async def _sweep(self) -> None:
        """Coarse clock and every timeout: head and body deadlines, queue wait, connect, upstream
        silence, total, idle; the end of a connection-cap or fd-exhaustion episode."""
        t = self.timeouts
        min_rate = self.limits.min_body_rate
        while True:
            await asyncio.sleep(0.1)
            now = self.now = self.loop.time()
            if self.capped and len(self.clients) < 0.9 * self.max_connections:
                self.capped = False
                log.info("proxy.connections_uncapped", open=len(self.clients))
            if self.fd_exhausted and len(self.clients) < 0.9 * self.max_connections:
                self.fd_exhausted = False
            for c in list(self.clients):
                if c.reading_paused or c.closed:
                    pass   # the proxy holds reading back: the client's clocks are stopped
                elif c.head_t0 and now - c.head_t0 >= t.client_header:
                    c.timed_out()
                    continue
                else:
                    cur = c.cur
                    if (cur is not None and cur.body_t0 and min_rate and not c.in_head and
                            now - cur.body_t0 > t.client_body + cur.bytes_in / min_rate):
                        c.timed_out()
                        continue
                if not c.queue:
                    if now - c.last_io >= (t.client_idle if c.requests else t.client_header):
                        c.close()
                    continue
                ex = c.queue[0]   # only the head of a connection's queue is in progress
                if ex.done:
                    continue
                if ex.upstream is None:
                    if ex.wait_until and now >= ex.wait_until:
                        self.stats.queue_timed_out(ex.pool)
                        ex.client.reply_error(ex, 503)
                elif ex.uconn is not None and ex.uconn.connecting:
                    if now - ex.last_io >= t.connect:
                        ex.uconn.abort_connect()
                elif not ex.response_complete and t.read and now - ex.last_io >= t.read:
                    ex.client.upstream_failed(ex, Failure.TIMEOUT)
                elif t.total and ex.deadline and now >= ex.deadline:
                    ex.client.upstream_failed(ex, Failure.TIMEOUT)

    # ------------------------------------------------------------------ accounting
    def finish(self, ex: Exchange) -> None:
        ex.done = True
        status = ex.status or CLIENT_ABORTED
        self.stats.answered(ex.pool, ex.rtype, ex.method, status, ex.latency)
        if self.record is not None and ex.route is not None:
            self.record(ex.source, ex.rtype, status, ex.bytes_in, ex.bytes_out, ex.latency, status == CLIENT_ABORTED)
        if self.access_log is not None:
            # The member that answered: the one the exchange is on, or, when a failure released it
            # after its response head (a body cut short), the last one tried. A response the proxy
            # made itself (502/503/504 and the 4xx) names none.
            up = ex.upstream
            if up is None and ex.latency and ex.tried:
                up = ex.tried[-1]
            self.access_log.append((perf_counter(), ex.t_begin, ex.method, ex.url, status, ex.latency, ex.source,
                                    ex.pool, ex.rtype, up.id if up is not None else None, ex.bytes_in,
                                    ex.bytes_out, ex.client.client_ip))


def make_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
