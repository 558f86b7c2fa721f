"""The request path: HTTP/1.1 reverse proxy on asyncio transports and protocols with httptools.

One `ClientConnection` per downstream connection parses requests; each request becomes an
`Exchange`; an `UpstreamConnection` (pooled per member, keep-alive) carries it to a member chosen
from the routing table and parses the response, which is streamed back. Bodies stream both ways
with flow control (a full write buffer on one side pauses reading on the other), so memory stays
bounded whatever the body size.

Costs that matter here (see measurements.md): every Python call per request counts; writes to the
client are coalesced to one per upstream read; timeouts are checked by one sweeper task against a
coarse clock instead of a timer per request.
"""
from __future__ import annotations

import asyncio
import errno
import math
import re
import resource
import socket
import ssl
from time import perf_counter
from collections import deque
from http import HTTPStatus

import httptools
import structlog

from balancer.dataplane.routing import CompiledRoute, RoutingTable
from balancer.dataplane.stats import ProxyStats, UpstreamStats
from balancer.dataplane.upstream import Upstream, UpstreamPool
from config.models import Limits, Timeouts

log = structlog.get_logger("warmfront.balancer")

# RFC 9110 §7.6.1: connection-specific fields are not forwarded (plus headers named in Connection).
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade"})
X_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
# Fields that decide where a message ends or where it goes. A Connection header naming one of them
# asks the proxy to drop it, which would forward the body unframed (request smuggling): refused.
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})
CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})
# Connection values that name no header (llhttp's should_keep_alive() reads the option itself).
PLAIN_CONNECTION = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close"})
# Upgrades warmfront does not offer upstream (it speaks HTTP/1.1 to members): removed, as nginx does.
STRIPPED_UPGRADES = frozenset({b"h2c", b"h2"})
NO_NAMES: frozenset[bytes] = frozenset()
# RFC 9110 §7.2 / RFC 3986 §3.2.2: reg-name or IP literal, optional port.
HOST_RE = re.compile(rb"(?:[A-Za-z0-9._~!$&'()*+,;=%-]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?")
# Exact-case names of common headers that are forwarded as they are: one set lookup instead of
# lower() and several comparisons (each header costs per request, see measurements.md).
PLAIN_REQUEST_HEADERS = frozenset({
    b"User-Agent", b"Accept", b"Accept-Encoding", b"Accept-Language", b"Content-Type",
    b"Cache-Control", b"Pragma", b"Referer", b"Origin", b"If-None-Match", b"If-Modified-Since",
    b"Authorization", b"Sec-Fetch-Site", b"Sec-Fetch-Mode", b"Sec-Fetch-Dest", b"Sec-Fetch-User",
    b"Upgrade-Insecure-Requests", b"DNT", b"Priority", b"Sec-WebSocket-Key", b"Sec-WebSocket-Version",
    b"Sec-WebSocket-Extensions", b"Sec-WebSocket-Protocol", b"Range", b"If-Range",
    b"user-agent", b"accept", b"accept-encoding", b"content-type", b"authorization",
})
PLAIN_RESPONSE_HEADERS = frozenset({
    b"Server", b"Date", b"Content-Type", b"Last-Modified", b"ETag", b"Accept-Ranges",
    b"Cache-Control", b"Expires", b"Vary", b"Set-Cookie", b"Location", b"Content-Encoding",
    b"Access-Control-Allow-Origin", b"X-Backend-Port", b"Sec-WebSocket-Accept", b"Age",
    b"server", b"date", b"content-type", b"set-cookie", b"etag", b"vary",
})
# Request headers `ClientConnection.on_header` handles by name (routing rules cannot claim them).
SPECIAL_REQUEST_HEADERS = HOP_BY_HOP | X_FORWARDED | {b"host", b"content-length", b"expect"}
# Common spellings of the names the header callbacks look for: a dict lookup instead of lower().
LOWER_NAMES = {v: n for n in SPECIAL_REQUEST_HEADERS
               for v in (n, b"-".join(w.capitalize() for w in n.split(b"-")))}
LOWER_NAMES[b"TE"] = b"te"
MAX_VALID_HOSTS = 1024
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in REASONS.items()}
MAX_ATTEMPTS = 3
BODY_BUFFER_HIGH = 256 * 1024     # request body bytes held while an upstream is not writable
CLIENT_ABORTED = 499              # nginx's convention for "client closed the connection first"
FD_RESERVE = 256                  # open files kept out of the client cap (listeners, logs, SQLite, health checks)
CAPPED_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 28\r\n"
                   b"Retry-After: 1\r\nConnection: close\r\n\r\n503 too many connections open\n")


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


class _StopParsing(Exception):
    """Raised from a parser callback to end parsing (HEAD responses, rejected requests)."""


class Exchange:
    """One request/response pair travelling through the proxy."""

    __slots__ = ("client", "method", "url", "version", "headers", "hdrs", "conn_tokens", "chunked",
                 "content_length", "keep_alive", "upgrade", "route", "pool", "source", "rtype",
                 "upstream", "uconn", "tried", "body", "body_buffered", "body_done", "sent",
                 "head_sent", "status", "bytes_in", "bytes_out", "t_start", "t_sent", "latency",
                 "wait_until", "last_io", "deadline", "done", "error", "resp_mode", "is_head",
                 "response_complete", "fresh", "stale_retries", "body_t0", "expect")

    def __init__(self, client: "ClientConnection"):
        self.client = client
        self.url = b""
        self.headers: list[bytes] = []    # flat: name, b": ", value, b"\r\n", ...
        self.hdrs: dict[bytes, bytes] = {}
        self.conn_tokens: tuple[bytes, ...] = ()
        self.chunked = False
        self.content_length = -1
        self.upgrade: bytes | None = None
        self.route: CompiledRoute | None = None
        self.pool = "-"
        self.source = ""
        self.rtype = "-"
        self.upstream: Upstream | None = None
        self.uconn: UpstreamConnection | None = None
        self.tried: tuple[Upstream, ...] = ()
        self.body: list[bytes] = []        # framed body bytes not yet written upstream
        self.body_buffered = 0
        self.body_done = False
        self.sent = False                  # request head written to an upstream
        self.head_sent = False             # response head written to the client
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.t_start = 0.0
        self.t_sent = 0.0
        self.latency = 0.0
        self.wait_until = 0.0
        self.last_io = 0.0
        self.deadline = 0.0
        self.done = False
        self.error = 0                     # status of a request rejected while parsing
        self.resp_mode = 0                 # 0 length/none, 1 re-chunk, 2 close-delimited
        self.is_head = False
        self.response_complete = False
        self.fresh = False                 # next attempt must open a new connection
        self.stale_retries = 0
        self.body_t0 = 0.0                 # when the body clock started (0: not yet)
        self.expect = False                # Expect: 100-continue (the body waits for the member)


class Proxy:
    """The data plane: listens, routes, forwards. Reads a routing table; writes counters."""

    def __init__(self, table: RoutingTable, timeouts: Timeouts, limits: Limits, history=None,
                 stats: ProxyStats | None = None, scheme: bytes = b"http"):
        self.loop = asyncio.get_event_loop()
        self.table = table
        self.timeouts = timeouts
        self.limits = limits
        self.history = history
        self.record = history.record if history is not None else None   # bound once: called per request
        self.stats = stats or ProxyStats()
        self.scheme = scheme
        self.pools: dict[str, UpstreamPool] = {}
        self.upstreams: dict[str, Upstream] = {}
        self.clients: dict[ClientConnection, None] = {}   # insertion order: oldest first
        self.max_connections = limits.max_connections or default_max_connections()
        # Limits read on every request, one attribute away instead of two.
        self.max_header_bytes = limits.max_header_bytes
        self.max_body_bytes = limits.max_body_bytes
        self.max_response_header_bytes = limits.max_response_header_bytes
        self.total_timeout = timeouts.total
        self.valid_hosts: set[bytes] = set()
        self.capped = False            # in an episode at max_connections (logged once per episode)
        self.fd_exhausted = False      # in an episode of EMFILE/ENFILE (logged once per episode)
        self.now = self.loop.time()
        self.closing = False
        self.servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.Task | None = None
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
        self.lower_names = {**LOWER_NAMES, **{v: n for n in self.routed_names
                                              for v in (n, b"-".join(w.capitalize() for w in n.split(b"-")))}}
        now = self.loop.time()
        seen: set[str] = set()
        for name, conf in table.pools.items():
            pool = self.pools.get(name) or UpstreamPool(name)
            self.pools[name] = pool
            pool.conf = conf
            members = []
            for t in conf.targets:
                up = self.upstreams.get(t.id)
                if up is None or (up.host, up.port) != (t.host, t.port):
                    up = Upstream(t, name, now)
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
        if not HOST_RE.fullmatch(value):
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
                        ex.client.reply_error(ex, 503)
                elif ex.uconn is not None and ex.uconn.connecting:
                    if now - ex.last_io >= t.connect:
                        ex.uconn.abort_connect()
                elif not ex.response_complete and t.read and now - ex.last_io >= t.read:
                    ex.client.upstream_failed(ex, 504, timeout=True)
                elif t.total and ex.deadline and now >= ex.deadline:
                    ex.client.upstream_failed(ex, 504, timeout=True)

    # ------------------------------------------------------------------ accounting
    def finish(self, ex: Exchange) -> None:
        ex.done = True
        status = ex.status or CLIENT_ABORTED
        self.stats.answered(ex.pool, ex.rtype, status, ex.latency)
        if self.record is not None and ex.route is not None:
            self.record(ex.source, ex.rtype, status, ex.bytes_in, ex.bytes_out, ex.latency, status == CLIENT_ABORTED)


class ClientConnection(asyncio.Protocol):
    """A downstream connection: parses requests, answers them in order (pipelining)."""

    def __init__(self, proxy: Proxy):
        self.proxy = proxy
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[Exchange] = deque()   # head is being answered; the rest were pipelined
        self.cur: Exchange | None = None        # being parsed
        self.client_ip = ""
        self.forwarded = b""
        self.hdr_bytes = 0
        self.last_io = proxy.now
        self.requests = 0
        self.reading_paused = False
        self.writing_paused = False
        self.tunnel: UpstreamConnection | None = None
        self.closed = False
        self.refused = False
        self.evicted = False
        # Hostile-input state. A head has a deadline from its first byte (`head_t0`) and its size
        # is counted as the bytes arrive (`head_seen`), not once a header line has ended.
        self.in_head = False
        self.head_t0 = 0.0
        self.head_seen = 0
        self.paused_at = 0.0
        # An Upgrade request is plain HTTP/1.1 until the member answers 101: the bytes after its
        # head wait here, unforwarded, and are parsed as HTTP again if the answer is not 101.
        self.upgrading: Exchange | None = None
        self.held: bytes | None = None

    # ---------------------------------------------------------------- transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        proxy = self.proxy
        if len(proxy.clients) >= proxy.max_connections and not proxy.make_room():
            self.refused = self.closed = True
            transport.write(CAPPED_RESPONSE)  # type: ignore[attr-defined]
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if peer else ""
        # X-Forwarded-For/-Proto as sent when the client sent none: built once per connection.
        self.forwarded = b"X-Forwarded-For: %b\r\nX-Forwarded-Proto: %b\r\n" % (
            self.client_ip.encode(), self.proxy.scheme)
        self.proxy.clients[self] = None
        self.proxy.stats.connections_accepted += 1
        self.proxy.stats.connections_open += 1
        if self.proxy.closing:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.refused:
            return
        self.closed = True
        self.proxy.clients.pop(self, None)
        self.proxy.stats.connections_open -= 1
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None
        for ex in self.queue:
            if not ex.done:
                if ex.uconn is not None:
                    ex.uconn.abandon()
                self._release(ex)
                ex.status = 0
                self.proxy.finish(ex)
        self.queue.clear()

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.tunnel is not None:
            self.tunnel.pause_reading()
        elif self.queue and self.queue[0].uconn is not None:
            self.queue[0].uconn.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.tunnel is not None:
            self.tunnel.resume_reading()
        elif self.queue and self.queue[0].uconn is not None:
            self.queue[0].uconn.resume_reading()

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.paused_at = self.proxy.now
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed and self.held is None:
            self.reading_paused = False
            # Time the proxy held reading back is not the client's: its head and body clocks move on.
            held_back = self.proxy.now - self.paused_at
            if self.head_t0:
                self.head_t0 += held_back
            cur = self.cur
            if cur is not None and cur.body_t0:
                cur.body_t0 += held_back
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        now = self.last_io = self.proxy.now
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            return
        if self.held is not None:   # an Upgrade awaits its answer (reading is paused; be safe)
            self.held += data
            return
        if not self.head_t0 and self.cur is None:
            self.head_t0 = now      # a head starts with this read: its deadline runs from here
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._parser_stopped(data[e.args[0]:])
            return
        except httptools.HttpParserCallbackError:
            cur = self.cur
            if cur is None or not cur.error:
                log.exception("proxy.request_error")
            self._reject(cur.error if cur is not None and cur.error else 400)
            return
        except httptools.HttpParserError as e:
            # llhttp knows the version only as "invalid": a major version it does not speak is 505.
            self._reject(505 if "HTTP version" in str(e) else 400)
            return
        if self.in_head:
            self._head_growing(data)

    def _head_growing(self, data: bytes) -> None:
        """A head is still incomplete after this read: count what arrived, refuse it as soon as it
        passes the limit (httptools buffers a header line until it ends, so waiting for the line is
        quadratic in its length), and answer an HTTP/0.9 request line instead of waiting for
        headers it will never send."""
        if self.head_seen < 0:
            self.head_seen = 0      # the head began in this read: part of it was someone else's
        else:
            self.head_seen += len(data)
        if self.head_seen > self.proxy.max_header_bytes:
            self.cur.error = 431
            self._reject(431)
        elif data.endswith(b"\n") and self.parser.get_http_version() == "0.0":
            # A request line that ended without a version: HTTP/0.9 (llhttp waits for headers).
            self.cur.error = 400
            self._reject(400)

    def _parser_stopped(self, rest: bytes) -> None:
        """httptools stops at a request carrying Connection: upgrade. With an upgrade on offer the
        bytes after it wait for the member's answer; otherwise (h2c removed) parsing goes on."""
        if self.upgrading is not None:
            self.held = rest
            self.pause_reading()
            return
        self.parser = httptools.HttpRequestParser(self)
        if rest:
            self.data_received(rest)

    def timed_out(self) -> None:
        """A head past `client_header`, or a body slower than `min_body_rate`: 408, then close."""
        ex = self.cur
        self.head_t0 = 0.0
        if ex is not None and not self.in_head:
            # A body in progress, perhaps already streaming to a member: it will never be whole.
            self.cur = None
            ex.keep_alive = False
            self.pause_reading()
            if ex.uconn is not None:
                ex.uconn.abandon()
                self._release(ex)
            if ex.head_sent:
                self._complete(ex, False)
            else:
                self.reply_error(ex, 408, retry_after=False)
            return
        self._reject(408)

    def _reject(self, status: int) -> None:
        """A request that cannot be parsed or exceeds a limit: answer in order, then close."""
        ex = self.cur if self.cur is not None and not self.cur.done else Exchange(self)
        self.cur = None
        ex.keep_alive = False
        ex.error = status
        ex.t_start = self.proxy.loop.time()
        self.in_head = False
        self.head_t0 = 0.0
        self.pause_reading()
        if ex not in self.queue:
            self.queue.append(ex)
        if self.queue[0] is ex:
            self.reply_error(ex, status)

    # ---------------------------------------------------------------- request parser callbacks
    def on_url(self, url: bytes) -> None:
        # The first callback of every request (no on_message_begin: one call less per request).
        ex = self.cur
        if ex is None:
            ex = self.cur = Exchange(self)
            ex.url = url
            self.hdr_bytes = len(url)
            self.in_head = True
            self.head_seen = -1
            if not self.head_t0:
                self.head_t0 = self.proxy.now   # a pipelined head that began mid-read
        else:
            ex.url += url
            self.hdr_bytes += len(url)
        if self.hdr_bytes > self.proxy.max_header_bytes:
            ex.error = 414
            raise _StopParsing

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.cur
        self.hdr_bytes += len(name) + len(value) + 4
        if self.hdr_bytes > self.proxy.max_header_bytes:
            ex.error = 431
            raise _StopParsing
        proxy = self.proxy
        if name in proxy.plain_headers:
            ex.headers += (name, b": ", value, b"\r\n")
            return
        lname = proxy.lower_names.get(name) or name.lower()
        # Host and the routed names first: they are in nearly every request, and none of them is
        # one of the names the tests after them look for.
        if lname == b"host":
            if b"host" in ex.hdrs or (value not in proxy.valid_hosts and not proxy.valid_host(value)):
                ex.error = 400
                raise _StopParsing
            ex.hdrs[b"host"] = value
            ex.headers += (name, b": ", value, b"\r\n")
            return
        if lname in proxy.routed_names:
            ex.hdrs[lname] = value
            ex.headers += (name, b": ", value, b"\r\n")
            return
        if lname in HOP_BY_HOP:
            if lname == b"connection":
                ex.conn_tokens += tuple(t.strip().lower() for t in value.split(b","))
            elif lname == b"transfer-encoding":
                # Only `chunked` is re-framed faithfully; another coding would be lost (RFC 9112 §6.1).
                if value.strip().lower() != b"chunked":
                    ex.error = 501
                    raise _StopParsing
                ex.chunked = True
            elif lname == b"upgrade":
                ex.upgrade = value
            return
        if lname in X_FORWARDED:
            ex.hdrs[lname] = value
            return
        if b"_" in lname and lname.replace(b"_", b"-") in X_FORWARDED:
            return   # X_Forwarded_For: CGI-style backends read it as the header warmfront sets
        if lname == b"content-length":
            ex.content_length = int(value)
        elif lname == b"expect":
            ex.expect = value.lower() == b"100-continue"
        ex.headers += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        ex = self.cur
        proxy = self.proxy
        p = self.parser
        method = ex.method = p.get_method()
        version = ex.version = p.get_http_version()
        ex.keep_alive = p.should_keep_alive() and not proxy.closing
        ex.is_head = method == b"HEAD"
        now = ex.t_start = proxy.now
        ex.body_t0 = 0.0 if ex.expect else now
        self.requests += 1
        self.in_head = False
        self.head_t0 = 0.0
        hdrs = ex.hdrs
        if version != "1.1" or ex.url[:1] != b"/" or b"host" not in hdrs or method == b"CONNECT":
            self._check_request(ex)      # the common case (1.1, origin-form, Host) needs no more
        if ex.upgrade is not None:
            if b"upgrade" in ex.conn_tokens:
                self._offer_upgrade(ex)
            else:
                ex.upgrade = None
        limit = proxy.max_body_bytes
        if limit and ex.content_length > limit:
            ex.error = 413
            raise _StopParsing
        if ex.conn_tokens:
            # Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1) — except the ones
            # that frame or direct the message: dropping those would forward it unframed.
            named = set(ex.conn_tokens) - CONNECTION_OPTIONS
            if named:
                if not named.isdisjoint(FRAMING):
                    ex.error = 400
                    raise _StopParsing
                h = ex.headers
                ex.headers = [x for i in range(0, len(h), 4) if h[i].lower() not in named for x in h[i:i + 4]]
        path, _, query = ex.url.partition(b"?")
        if path == b"*":
            path = b"/"              # OPTIONS * asks about the server: routed as its root
        table = proxy.table
        route = table.match(method, hdrs.get(b"host", b""), path, hdrs)
        queue = self.queue
        queue.append(ex)
        if route is not None:
            ex.route = route
            ex.pool = route.pool
            ex.rtype = route.rtype
            ex.source = table.sources.extract(path, query, hdrs, self.client_ip)
            if queue[0] is ex:
                # `start` without its checks: nothing is wrong with this request.
                if proxy.total_timeout:
                    ex.deadline = now + proxy.total_timeout
                self.dispatch(ex)
                return
        if queue[0] is ex:
            self.start(ex)
        elif len(queue) > 16:
            self.pause_reading()

    def _check_request(self, ex: Exchange) -> None:
        """RFC 9112 rules on the request line, Host and framing; `ex.error` and stop on a breach."""
        version = ex.version
        if version != "1.1" and version != "1.0":
            ex.error = 505 if version[:1] not in ("0", "1") else 400
            raise _StopParsing
        if ex.method == b"CONNECT":
            ex.error = 405           # a reverse proxy opens no tunnels to arbitrary authorities
            raise _StopParsing
        if ex.chunked and version == "1.0":
            ex.error = 400           # RFC 9112 §6.1: chunked in a 1.0 request is faulty framing
            raise _StopParsing
        if ex.url[:1] != b"/":
            self._non_origin_form(ex)
        elif version == "1.1" and b"host" not in ex.hdrs:
            ex.error = 400           # RFC 9112 §3.2: a 1.1 request without Host
            raise _StopParsing

    def _non_origin_form(self, ex: Exchange) -> None:
        """Absolute-form targets are accepted and their authority replaces Host (RFC 9112 §3.2.2);
        `*` is for OPTIONS only; anything else is not a request target for this server."""
        url = ex.url
        if url == b"*" and ex.method == b"OPTIONS":
            return
        low = url[:8].lower()
        if not (low.startswith(b"http://") or low.startswith(b"https://")):
            ex.error = 400
            raise _StopParsing
        try:
            u = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            ex.error = 400
            raise _StopParsing from None
        if u.userinfo or not u.host:
            ex.error = 400           # RFC 9110 §4.2.4: userinfo in an http(s) URI is an error
            raise _StopParsing
        authority = u.host if u.port is None else b"%s:%d" % (u.host, u.port)
        if not HOST_RE.fullmatch(authority):
            ex.error = 400
            raise _StopParsing
        ex.url = (u.path or b"/") + (b"?" + u.query if u.query else b"")
        h = ex.headers
        ex.headers = [x for i in range(0, len(h), 4) if h[i].lower() != b"host" for x in h[i:i + 4]]
        ex.headers += (b"Host", b": ", authority, b"\r\n")
        ex.hdrs[b"host"] = authority

    def _offer_upgrade(self, ex: Exchange) -> None:
        """Keep the protocols warmfront can tunnel (not HTTP/2: it speaks 1.1 upstream)."""
        kept = [t for t in (t.strip() for t in ex.upgrade.split(b",")) if t and t.lower() not in STRIPPED_UPGRADES]
        if not kept:
            ex.upgrade = None        # a plain request; the parser still stops, `_parser_stopped` goes on
            return
        ex.upgrade = b", ".join(kept)
        self.upgrading = ex

    def on_body(self, body: bytes) -> None:
        ex = self.cur
        ex.bytes_in += len(body)
        ex.last_io = self.proxy.now
        if not ex.body_t0:
            ex.body_t0 = self.proxy.now   # Expect: 100-continue: the body clock starts with the body
        limit = self.proxy.max_body_bytes
        if limit and ex.bytes_in > limit:
            ex.error = 413
            raise _StopParsing
        if ex.chunked:
            body = b"%x\r\n%b\r\n" % (len(body), body)
        self._send_body(ex, body)

    def on_message_complete(self) -> None:
        ex = self.cur
        self.cur = None
        ex.body_done = True
        if ex.chunked:
            self._send_body(ex, b"0\r\n\r\n")

    def _send_body(self, ex: Exchange, data: bytes) -> None:
        uc = ex.uconn
        if ex.sent and uc is not None and not uc.connecting and not ex.body and not ex.done:
            uc.transport.write(data)
            return
        ex.body.append(data)
        ex.body_buffered += len(data)
        if ex.body_buffered > BODY_BUFFER_HIGH:
            self.pause_reading()

    # ---------------------------------------------------------------- forwarding
    def start(self, ex: Exchange) -> None:
        """Begin answering `ex`, now at the head of the queue."""
        if ex.error:
            self.reply_error(ex, ex.error)
            return
        if ex.route is None:
            self.reply_error(ex, 404)
            return
        if self.proxy.total_timeout:
            ex.deadline = ex.t_start + self.proxy.total_timeout
        self.dispatch(ex)

    def dispatch(self, ex: Exchange) -> None:
        """Pick a member and send; with none ready, wait (bounded) for the control loop."""
        proxy = self.proxy
        pool = proxy.pools.get(ex.pool)
        up = pool.choose(proxy.now, ex.tried) if pool is not None else None
        if up is None:
            if pool is not None and ex.tried and pool.members:
                # Every member was tried: nothing left to retry on.
                self.reply_error(ex, 502)
                return
            if not ex.wait_until:
                ex.wait_until = proxy.now + proxy.timeouts.queue
            if pool is not None:
                pool.waiters.append(ex)
            else:
                self.reply_error(ex, 503)
            return
        ex.upstream = up
        up.in_flight += 1
        up.requests += 1
        ex.last_io = proxy.now
        uc = None if ex.fresh else up.take_idle()
        if uc is None:
            UpstreamConnection(proxy, up).connect(ex)
        else:
            uc.ex = ex
            uc.reused = True
            ex.uconn = uc
            uc.send_request(ex)

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def reply_error(self, ex: Exchange, status: int, retry_after: bool = True) -> None:
        """A proxy-generated response (4xx/5xx), answered in order on this connection."""
        if ex.done:
            return
        if ex.head_sent:
            # Part of a response is already out: the only honest signal left is to cut it short.
            ex.status = ex.status or status
            self._complete(ex, False)
            return
        proxy = self.proxy
        pool = proxy.pools.get(ex.pool)
        if pool is not None and ex in pool.waiters:
            pool.waiters.remove(ex)
        if self.queue and self.queue[0] is not ex:
            ex.error = status    # answered when it reaches the head of the queue
            return
        body = b"%d %s\n" % (status, REASONS.get(status, b"Error"))
        keep = ex.keep_alive and ex.body_done and not ex.error
        extra = b""
        if status == 503 and retry_after:
            extra = b"Retry-After: %d\r\n" % max(1, math.ceil(proxy.timeouts.queue))
        head = b"%sContent-Type: text/plain\r\nContent-Length: %d\r\n%s%s\r\n" % (
            STATUS_LINES.get(status, b"HTTP/1.1 %d Error\r\n" % status), len(body), extra,
            b"" if keep else b"Connection: close\r\n")
        ex.status = status
        ex.head_sent = True
        ex.response_complete = True
        self.write(head if ex.is_head else head + body)
        self._complete(ex, keep)

    def upstream_failed(self, ex: Exchange, status: int, timeout: bool = False) -> None:
        """The member failed this exchange: retry where safe, else answer `status`."""
        uc = ex.uconn
        up = ex.upstream
        # A kept-alive connection that dies before any response is most likely one the member
        # closed as idle while we reused it: not the member's fault; retried on a new connection.
        stale = uc is not None and uc.reused and ex.status == 0 and not timeout
        if uc is not None:
            uc.abandon()
        self._release(ex)
        replayable = ex.method in IDEMPOTENT and ex.bytes_in == 0 and ex.body_done
        if stale and replayable and ex.stale_retries < MAX_ATTEMPTS:
            ex.stale_retries += 1
            ex.sent = False
            ex.fresh = True
            self.dispatch(ex)
            return
        if up is not None:
            ex.tried += (up,)
            pool = self.proxy.pools.get(up.pool)
            if pool is not None:
                pool.report_failure(up, self.proxy.now)
        # A retry is safe when nothing reached the member (connect failed), or the request is
        # idempotent, carried no body and no response byte came back.
        retry = (not ex.head_sent and len(ex.tried) < MAX_ATTEMPTS and not timeout and
                 (not ex.sent or replayable))
        if retry:
            ex.sent = False   # a buffered body is still in ex.body and goes to the next member
            self.dispatch(ex)
            return
        self.reply_error(ex, status)

    def _release(self, ex: Exchange) -> None:
        up = ex.upstream
        if up is not None:
            up.in_flight -= 1
            if not up.routed and up.in_flight == 0:
                self.proxy.upstreams.pop(up.id, None)
        ex.upstream = None
        ex.uconn = None

    def response_done(self, ex: Exchange, reusable: bool) -> None:
        """The upstream response is complete: return its connection, finish the exchange."""
        uc = ex.uconn
        up = ex.upstream
        ex.uconn = None
        ex.upstream = None
        if uc is not None:
            uc.ex = None
            if reusable and ex.body_done and not ex.body and up is not None:
                up.give_back(uc)
            else:
                uc.close()
        if up is not None:
            if up.failures:
                UpstreamPool.report_success(up)
            up.in_flight -= 1
            if not up.routed and up.in_flight == 0:
                self.proxy.upstreams.pop(up.id, None)
        self._complete(ex, ex.keep_alive and ex.body_done and ex.resp_mode != 2)

    def _complete(self, ex: Exchange, keep_alive: bool) -> None:
        if ex.done:
            return
        if ex.uconn is not None:
            ex.uconn.abandon()
            self._release(ex)
        proxy = self.proxy
        proxy.finish(ex)
        queue = self.queue
        if queue and queue[0] is ex:
            queue.popleft()
        if not keep_alive or proxy.closing:
            self.close()
            return
        if ex is self.upgrading:
            # Answered without 101: the connection stays HTTP/1.1 and what the client sent after
            # the head is its next request, parsed afresh (it was never forwarded).
            self.upgrading = None
            held, self.held = self.held, None
            self.parser = httptools.HttpRequestParser(self)
            self.resume_reading()
            if held:
                self.data_received(held)
            return
        if queue:
            self.start(queue[0])
        if self.reading_paused and len(queue) <= 16 and (not queue or queue[-1].body_buffered <= BODY_BUFFER_HIGH):
            self.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def become_tunnel(self, uc: "UpstreamConnection", ex: Exchange) -> None:
        """101 Switching Protocols: from here on bytes pass through untouched both ways."""
        self.tunnel = uc
        if ex.body:
            uc.transport.write(b"".join(ex.body))
            ex.body.clear()
        held, self.held, self.upgrading = self.held, None, None
        if held:
            uc.transport.write(held)   # the first bytes of the new protocol, held until now
        self.proxy.finish(ex)
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        self.resume_reading()


class UpstreamConnection(asyncio.Protocol):
    """A connection to one member; carries one exchange at a time, kept alive between them.

    The response head is assembled in `out` and written only once it is whole (a status line and
    its headers may arrive in any number of reads, and interim 1xx heads come before it); the
    body after it is written once per read. Bytes past the end of the response mean the member
    and warmfront disagree about framing: the connection is not reused and nothing past the end
    reaches the client.
    """

    def __init__(self, proxy: Proxy, upstream: Upstream):
        self.proxy = proxy
        self.upstream = upstream
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.ex: Exchange | None = None
        self.connecting = False
        self.out: list[bytes] = []
        self.keep_alive = True
        self.tunnel: ClientConnection | None = None
        self._connect_task: asyncio.Task | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.reused = False
        self.in_head = False      # a response head is being parsed (not yet written)
        self.head_seen = 0        # bytes of response heads of this exchange so far
        self.bad = ""             # why the member's response is refused (502)

    # ---------------------------------------------------------------- connecting and sending
    def connect(self, ex: Exchange) -> None:
        self.ex = ex
        ex.uconn = self
        self.connecting = True
        self._connect_task = self.proxy.loop.create_task(self._connect())

    async def _connect(self) -> None:
        up = self.upstream
        try:
            await self.proxy.loop.create_connection(lambda: self, up.host, up.port)
        except (OSError, asyncio.CancelledError) as e:
            if isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE):
                self.proxy.note_fd_exhausted(e)
            self.connecting = False
            ex = self.ex
            self.ex = None
            if ex is not None and not ex.done and ex.uconn is self:
                ex.client.upstream_failed(ex, 502)
            return
        self.connecting = False
        ex = self.ex
        if ex is None or ex.done:
            self.close()
            return
        self.send_request(ex)

    def abort_connect(self) -> None:
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()

    def send_request(self, ex: Exchange) -> None:
        """Write the request head as it goes upstream — path byte-exact, hop-by-hop headers
        removed, X-Forwarded-* set, framing warmfront's own — and any body buffered so far."""
        client = ex.client
        proxy = self.proxy
        hdrs = ex.hdrs
        headers = ex.headers
        if not proxy.table.preserve_host:
            up = self.upstream
            h = headers
            headers = [x for i in range(0, len(h), 4) if h[i].lower() != b"host" for x in h[i:i + 4]]
            headers += (b"Host: ", b"%s:%d" % (up.host.encode(), up.port), b"\r\n")
        xff = hdrs.get(b"x-forwarded-for")
        if xff is None:
            fwd = client.forwarded
        else:
            fwd = b"X-Forwarded-For: %b, %b\r\nX-Forwarded-Proto: %b\r\n" % (
                xff, client.client_ip.encode(), proxy.scheme)
        if ex.upgrade is not None:
            framing = b"Connection: Upgrade\r\nUpgrade: " + ex.upgrade + b"\r\n\r\n"
        elif ex.chunked:
            framing = b"Transfer-Encoding: chunked\r\n\r\n"
        else:
            framing = b"\r\n"
        host = hdrs.get(b"host")
        if host is None:
            head = b"".join((ex.method, b" ", ex.url, b" HTTP/1.1\r\n", *headers, fwd, framing))
        else:
            head = b"".join((ex.method, b" ", ex.url, b" HTTP/1.1\r\n", *headers, fwd,
                             b"X-Forwarded-Host: ", host, b"\r\n", framing))
        ex.sent = True
        self.head_seen = 0
        self.begin_response()
        ex.t_sent = perf_counter()
        if ex.body:
            body, ex.body = ex.body, []
            ex.body_buffered = 0
            self.transport.writelines([head, *body])
            client.resume_reading()
        else:
            self.transport.write(head)
        if self.reading_paused:
            self.resume_reading()

    # ---------------------------------------------------------------- transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if ex is None:
            # Bytes on an idle connection (or after an exchange ended): it cannot be reused.
            self.close()
            return
        ex.last_io = self.proxy.now
        self._read_len = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._flush()
            if ex.status == 101:
                self.tunnel = ex.client
                rest = data[e.args[0]:]
                if rest:
                    ex.client.write(rest)
                ex.client.become_tunnel(self, ex)
                return
        except httptools.HttpParserCallbackError:
            # Raised on purpose: after the head of a response that has no body (HEAD), on bytes
            # past the end of the response, or on a response refused (`bad`).
            if self.ex is ex and ex.response_complete:
                self._flush()
                # Parsing stopped at the end, so what (if anything) follows is unknown: the
                # connection is not reused.
                ex.client.response_done(ex, False)
            elif not ex.done:
                self._refuse(ex)
            return
        except httptools.HttpParserError as e:
            if not ex.done:
                self.bad = self.bad or f"unparsable response: {e}"
                self._refuse(ex)
            return
        if self.in_head:
            self.head_seen += len(data)
            if self.head_seen > self.proxy.max_response_header_bytes:
                self.bad = "response head over limits.max_response_header_bytes"
                self._refuse(ex)
                return
            self._flush()   # interim (1xx) heads that are complete; the head in progress waits
        else:
            out = self.out
            if out:
                client = ex.client
                if not client.closed:
                    client.transport.write(b"".join(out))
                out.clear()
        if ex.response_complete and self.ex is ex:
            ex.client.response_done(ex, self.keep_alive)

    def _refuse(self, ex: Exchange) -> None:
        """The member's response cannot be forwarded: drop what is unsent of it, then 502 (or a
        cut connection if its head already went out)."""
        if not ex.head_sent:
            del self.out[self._head_at:]   # the refused head, whole or in part
            self.in_head = False
        self._flush()
        if self.bad:
            log.warning("proxy.bad_response", member=self.upstream.id, reason=self.bad)
        else:
            log.exception("proxy.response_error", member=self.upstream.id)
        self.keep_alive = False
        ex.client.upstream_failed(ex, 502)

    def _flush(self) -> None:
        """Write what is complete: everything, or only the interim heads before the one in progress."""
        out = self.out
        ex = self.ex
        if self.in_head:
            n = self._head_at
            if n and ex is not None:
                ex.client.write(b"".join(out[:n]))
                del out[:n]
                self._head_at = 0
            return
        if out:
            if ex is not None:
                ex.client.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tunnel is not None:
            client, self.tunnel = self.tunnel, None
            self.upstream.in_flight -= 1
            if not self.upstream.routed and self.upstream.in_flight == 0:
                self.proxy.upstreams.pop(self.upstream.id, None)
            client.tunnel = None
            client.close()
            return
        ex = self.ex
        if ex is None or ex.done:
            return
        if self.in_head:
            del self.out[self._head_at:]   # a head cut short is never forwarded
        self._flush()
        if ex.head_sent and ex.resp_mode == 2:
            # A close-delimited body ends when the member closes the connection.
            ex.response_complete = True
            ex.client.response_done(ex, False)
        elif ex.head_sent and ex.resp_mode == 1 and not ex.response_complete and self._close_delimited:
            ex.client.write(b"0\r\n\r\n")
            ex.response_complete = True
            ex.client.response_done(ex, False)
        else:
            ex.client.upstream_failed(ex, 502)

    def pause_writing(self) -> None:
        self.writing_paused = True
        ex = self.ex
        if ex is not None:
            ex.client.pause_reading()
        elif self.tunnel is not None:
            self.tunnel.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        ex = self.ex
        if ex is not None:
            ex.client.resume_reading()
        elif self.tunnel is not None:
            self.tunnel.resume_reading()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    def abandon(self) -> None:
        """Detach from an exchange that ended early: the connection state is unknown, close it."""
        self.ex = None
        self.abort_connect()
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # ---------------------------------------------------------------- response parser callbacks
    _close_delimited = False
    _head_at = 0
    _read_len = 0
    _named: frozenset[bytes] = NO_NAMES

    def begin_response(self) -> None:
        """Expect a response head (called when a request is sent and after an interim response)."""
        self.keep_alive = True
        self._close_delimited = False
        self._has_length = False
        self._chunked = False
        self._named = NO_NAMES
        self.in_head = True
        self._head_at = len(self.out)
        self.out.append(b"")   # placeholder for the status line

    def on_message_begin(self) -> None:
        ex = self.ex
        if ex is not None and ex.response_complete:
            # A second response to one request: the member's framing and ours disagree. Nothing
            # of it is forwarded and the connection is not reused.
            raise _StopParsing

    def on_header(self, name: bytes, value: bytes) -> None:
        if name in PLAIN_RESPONSE_HEADERS:
            self.out += (name, b": ", value, b"\r\n")
            return
        lname = LOWER_NAMES.get(name) or name.lower()
        if lname == b"content-length":
            self._has_length = True
            self.out += (name, b": ", value, b"\r\n")
            return
        if lname in HOP_BY_HOP:
            if lname == b"connection":
                if value in PLAIN_CONNECTION:
                    return    # keep-alive or close alone: should_keep_alive() has it
                tokens = {t.strip() for t in value.lower().split(b",")}
                if b"close" in tokens:
                    self.keep_alive = False
                named = tokens - CONNECTION_OPTIONS - FRAMING - {b""}
                if named:
                    self._named |= named
            elif lname == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    self.bad = f"transfer-encoding {value.decode('latin-1')!r} (only chunked is forwarded)"
                    raise _StopParsing
                self._chunked = True
            elif lname == b"upgrade":
                self.out += (b"Upgrade", b": ", value, b"\r\n")
            return
        self.out += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        ex = self.ex
        p = self.parser
        status = p.get_status_code()
        self.in_head = False
        out = self.out
        idx = self._head_at
        if self.head_seen + self._read_len > self.proxy.max_response_header_bytes and \
                self.head_seen + sum(map(len, out[idx:])) > self.proxy.max_response_header_bytes:
            self.bad = "response head over limits.max_response_header_bytes"
            raise _StopParsing
        if self._named:
            # Fields the member named in Connection are hop-by-hop (RFC 9110 §7.6.1); framing stays.
            head = out[idx + 1:]
            out[idx + 1:] = [x for i in range(0, len(head), 4) if head[i].lower() not in self._named
                             for x in head[i:i + 4]]
        if not ex.latency:
            ex.latency = perf_counter() - ex.t_sent
        if p.get_http_version() == "1.0" or not p.should_keep_alive():
            self.keep_alive = False
        line = STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
        if status < 200:
            if status == 101:
                if ex.upgrade is None:
                    self.bad = "101 Switching Protocols to a request that offered no upgrade"
                    raise _StopParsing
                ex.status = 101
                out[idx] = line
                out.append(b"Connection: Upgrade\r\n\r\n")
                return
            if ex.version == "1.0":
                del out[idx:]        # RFC 9110 §15.2: no 1xx to an HTTP/1.0 client
                return
            out[idx] = line          # interim (100 Continue, 103 Early Hints): relay as is
            out.append(b"\r\n")
            return
        ex.status = status
        ex.head_sent = True
        if ex.upgrade is not None:
            self.keep_alive = False  # the member saw an upgrade offer: its connection is not reused
        no_body = ex.is_head or status == 204 or status == 304
        tail = b"\r\n"
        client_keep = ex.keep_alive and ex.body_done
        if no_body or (self._has_length and not self._chunked):
            ex.resp_mode = 0
        elif ex.version == "1.1":
            ex.resp_mode = 1
            self._close_delimited = not self._chunked
            tail = b"Transfer-Encoding: chunked\r\n\r\n"
        else:
            ex.resp_mode = 2   # HTTP/1.0 client without a length: the close ends the body
            client_keep = False
        if not self._chunked and not self._has_length and not no_body:
            self.keep_alive = False
        if not client_keep:
            ex.keep_alive = False
            tail = b"Connection: close\r\n" + tail
        out[idx] = line
        out.append(tail)
        if ex.is_head:
            ex.response_complete = True
            raise _StopParsing

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        ex.bytes_out += len(body)
        if ex.resp_mode == 1:
            self.out.append(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        ex = self.ex
        if ex.status == 0 or (ex.status < 200 and ex.status != 101):
            self.begin_response()   # end of an interim response; the final one follows
            return
        if ex.resp_mode == 1:
            self.out.append(b"0\r\n\r\n")
        ex.response_complete = True


def make_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
