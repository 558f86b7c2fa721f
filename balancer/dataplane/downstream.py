"""The downstream connection: parses requests, answers them in order (pipelining), forwards each
to a member through an `UpstreamConnection`, and applies the retry decision when one fails.

The request-smuggling and slow-client defences live here (framing headers, Host, Connection
options, head and body limits); see README, "HTTP hygiene".
"""
from __future__ import annotations

import asyncio
import math
from collections import deque
from time import perf_counter
from typing import Protocol, cast

import httptools
import structlog

from balancer.dataplane import retry
from balancer.dataplane.framing import Body
from balancer.dataplane.exchange import Exchange, UpstreamSide
from balancer.dataplane.headers import (CONNECTION_OPTIONS, FRAMING, HOP_BY_HOP, REASONS, STATUS_LINES,
                                        STRIPPED_UPGRADES, X_FORWARDED, StopParsing, is_host)
from balancer.dataplane.stats import RETRY_STALE_CONNECTION, ProxyStats
from balancer.dataplane.upstream import UpstreamPool
from balancer.dataplane.upstream_connection import UpstreamConnection, UpstreamHost
from config.models import Timeouts

log = structlog.get_logger("warmfront.balancer")

CLOSE_DELIMITED = Body.CLOSE   # looked up once, not per response (Enum member access is slow)
BODY_BUFFER_HIGH = 256 * 1024     # request body bytes held while an upstream is not writable
CAPPED_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 28\r\n"
                   b"Retry-After: 1\r\nConnection: close\r\n\r\n503 too many connections open\n")


class ProxyState(UpstreamHost, Protocol):
    """What a client connection reads and calls of the proxy (`Proxy` is the one implementation)."""
    clients: dict[ClientConnection, None]
    max_connections: int
    stats: ProxyStats
    closing: bool
    timeouts: Timeouts
    total_timeout: float
    max_header_bytes: int
    max_body_bytes: int
    plain_headers: frozenset[bytes]
    lower_names: dict[bytes, bytes]
    routed_names: frozenset[bytes]
    valid_hosts: set[bytes]
    pools: dict[str, UpstreamPool[UpstreamSide]]
    access_log: list | None

    def valid_host(self, value: bytes) -> bool: ...
    def make_room(self) -> bool: ...
    def finish(self, ex: Exchange) -> None: ...


class ClientConnection(asyncio.Protocol):
    """A downstream connection: parses requests, answers them in order (pipelining)."""

    def __init__(self, proxy: ProxyState):
        self.proxy = proxy
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()   # head is being answered; the rest were pipelined
        self.cur: Exchange | None = None        # being parsed
        self.client_ip = ""
        self.forwarded = b""
        self.hdr_bytes = 0
        self.last_io = proxy.now
        self.requests = 0
        self.reading_paused = False
        self.writing_paused = False
        self.tunnel: UpstreamSide | None = None
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
    transport: asyncio.Transport   # set by connection_made, which the server calls at once

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        proxy = self.proxy
        if len(proxy.clients) >= proxy.max_connections and not proxy.make_room():
            self.refused = self.closed = True
            self.transport.write(CAPPED_RESPONSE)
            self.transport.close()
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
                ex.status = 0
                self.proxy.finish(ex)   # before the release: the access log names the member
                self._release(ex)
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
        if not self.reading_paused:
            self.reading_paused = True
            self.paused_at = self.proxy.now
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closed and self.held is None:
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
            self.tunnel.write(data)
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
            self._reject(431)
        elif data.endswith(b"\n") and self.parser.get_http_version() == "0.0":
            # A request line that ended without a version: HTTP/0.9 (llhttp waits for headers).
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
        if not ex.t_begin:
            ex.t_begin = perf_counter()
        if not hasattr(ex, "method"):
            ex.method = b""          # refused before the request line was whole: no method known
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
            raise StopParsing

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.cur
        assert ex is not None   # on_url began it
        self.hdr_bytes += len(name) + len(value) + 4
        if self.hdr_bytes > self.proxy.max_header_bytes:
            ex.error = 431
            raise StopParsing
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
                raise StopParsing
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
                    raise StopParsing
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
        assert ex is not None
        proxy = self.proxy
        p = self.parser
        method = ex.method = p.get_method()
        version = ex.version = p.get_http_version()
        ex.keep_alive = p.should_keep_alive() and not proxy.closing
        ex.is_head = method == b"HEAD"
        now = ex.t_start = proxy.now
        if proxy.access_log is not None:
            ex.t_begin = perf_counter()   # `now` is the sweeper's 100 ms clock: too coarse to log
        ex.body_t0 = 0.0 if ex.expect else now
        self.requests += 1
        self.in_head = False
        self.head_t0 = 0.0
        hdrs = ex.hdrs
        if version != "1.1" or ex.url[:1] != b"/" or b"host" not in hdrs or method == b"CONNECT":
            self._check_request(ex)      # the common case (1.1, origin-form, Host) needs no more
        if ex.upgrade is not None:
            if b"upgrade" in ex.conn_tokens:
                self._offer_upgrade(ex, ex.upgrade)
            else:
                ex.upgrade = None
        limit = proxy.max_body_bytes
        if limit and ex.content_length > limit:
            ex.error = 413
            raise StopParsing
        if ex.conn_tokens:
            # Headers named in Connection are hop-by-hop too (RFC 9110 §7.6.1) — except the ones
            # that frame or direct the message: dropping those would forward it unframed.
            named = set(ex.conn_tokens) - CONNECTION_OPTIONS
            if named:
                if not named.isdisjoint(FRAMING):
                    ex.error = 400
                    raise StopParsing
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
            raise StopParsing
        if ex.method == b"CONNECT":
            ex.error = 405           # a reverse proxy opens no tunnels to arbitrary authorities
            raise StopParsing
        if ex.chunked and version == "1.0":
            ex.error = 400           # RFC 9112 §6.1: chunked in a 1.0 request is faulty framing
            raise StopParsing
        if ex.url[:1] != b"/":
            self._non_origin_form(ex)
        elif version == "1.1" and b"host" not in ex.hdrs:
            ex.error = 400           # RFC 9112 §3.2: a 1.1 request without Host
            raise StopParsing

    def _non_origin_form(self, ex: Exchange) -> None:
        """Absolute-form targets are accepted and their authority replaces Host (RFC 9112 §3.2.2);
        `*` is for OPTIONS only; anything else is not a request target for this server."""
        url = ex.url
        if url == b"*" and ex.method == b"OPTIONS":
            return
        low = url[:8].lower()
        if not (low.startswith(b"http://") or low.startswith(b"https://")):
            ex.error = 400
            raise StopParsing
        try:
            u = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            ex.error = 400
            raise StopParsing from None
        if u.userinfo or not u.host:
            ex.error = 400           # RFC 9110 §4.2.4: userinfo in an http(s) URI is an error
            raise StopParsing
        authority = u.host if u.port is None else b"%s:%d" % (u.host, u.port)
        if not is_host(authority):
            ex.error = 400
            raise StopParsing
        ex.url = (u.path or b"/") + (b"?" + u.query if u.query else b"")
        h = ex.headers
        ex.headers = [x for i in range(0, len(h), 4) if h[i].lower() != b"host" for x in h[i:i + 4]]
        ex.headers += (b"Host", b": ", authority, b"\r\n")
        ex.hdrs[b"host"] = authority

    def _offer_upgrade(self, ex: Exchange, offered: bytes) -> None:
        """Keep the protocols warmfront can tunnel (not HTTP/2: it speaks 1.1 upstream)."""
        kept = [t for t in (t.strip() for t in offered.split(b",")) if t and t.lower() not in STRIPPED_UPGRADES]
        if not kept:
            ex.upgrade = None        # a plain request; the parser still stops, `_parser_stopped` goes on
            return
        ex.upgrade = b", ".join(kept)
        self.upgrading = ex

    def on_body(self, body: bytes) -> None:
        ex = self.cur
        assert ex is not None
        ex.bytes_in += len(body)
        ex.last_io = self.proxy.now
        if not ex.body_t0:
            ex.body_t0 = self.proxy.now   # Expect: 100-continue: the body clock starts with the body
        limit = self.proxy.max_body_bytes
        if limit and ex.bytes_in > limit:
            ex.error = 413
            raise StopParsing
        if ex.chunked:
            body = b"%x\r\n%b\r\n" % (len(body), body)
        self._send_body(ex, body)

    def on_message_complete(self) -> None:
        ex = self.cur
        assert ex is not None
        self.cur = None
        ex.body_done = True
        if ex.chunked:
            self._send_body(ex, b"0\r\n\r\n")

    def _send_body(self, ex: Exchange, data: bytes) -> None:
        uc = ex.uconn
        if ex.sent and uc is not None and not uc.connecting and not ex.body and not ex.done:
            uc.write(data)
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
        if pool is None:
            self.reply_error(ex, 503)
            return
        up = pool.choose(proxy.now, ex.tried)
        if up is None:
            if ex.tried and pool.members:
                # Every member was tried: nothing left to retry on.
                self.reply_error(ex, 502)
                return
            if not ex.wait_until:
                ex.wait_until = proxy.now + proxy.timeouts.queue
                ex.queued_at = proxy.loop.time()   # the coarse clock would round most waits to 0 or 0.1 s
            if pool.conf is None or pool.conf.waits:
                pool.waiters.append(ex)
            else:
                self.reply_error(ex, 503)
            return
        if not ex.tried and not ex.fresh:
            # The first send: its wait for a member is observed (a retry's is not counted again).
            queue_wait = pool.queue_wait
            if ex.queued_at:
                queue_wait.observe(proxy.loop.time() - ex.queued_at)
            else:
                queue_wait.counts[0] += 1   # sent at once: the first bucket, without a bisect
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
        if status == 503 and pool is not None and not pool.members and pool.conf is not None and pool.conf.unready:
            body = b"503 %s\n" % pool.conf.unready.encode()   # why none is ready, as the control process put it
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

    def upstream_failed(self, ex: Exchange, failure: retry.Failure) -> None:
        """The member failed this exchange: retry where `retry.decide` allows, else answer."""
        uc = ex.uconn
        up = ex.upstream
        verdict = retry.decide(retry.Attempt(
            failure, ex.method, ex.sent, ex.bytes_in == 0 and ex.body_done,
            ex.status != 0 or ex.head_sent, uc is not None and uc.reused, len(ex.tried), ex.stale_retries))
        if uc is not None:
            uc.abandon()
        self._release(ex)
        if verdict is retry.RECONNECT:
            self.proxy.stats.retried(ex.pool, RETRY_STALE_CONNECTION)
            ex.stale_retries += 1
            ex.sent = False
            ex.fresh = True
            self.dispatch(ex)
            return
        if up is not None:
            ex.tried += (up,)
            pool = self.proxy.pools.get(up.pool)
            if pool is not None and pool.report_failure(up, self.proxy.now):
                self.proxy.stats.ejected(up.pool)
        if verdict is retry.NEXT_MEMBER:
            self.proxy.stats.retried(ex.pool, failure.value)
            ex.sent = False   # a buffered body is still in ex.body and goes to the next member
            self.dispatch(ex)
            return
        self.reply_error(ex, verdict.status)

    def tunnel_closed(self) -> None:
        """The member closed a tunnel: so does the client's side."""
        self.tunnel = None
        self.close()

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
        ex.uconn = None   # ex.upstream stays: the exchange is done, and the access log names the member
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
        self._complete(ex, ex.keep_alive and ex.body_done and ex.resp_body is not CLOSE_DELIMITED)

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
        if not self.transport.is_closing():
            self.transport.close()

    def become_tunnel(self, uc: UpstreamSide, ex: Exchange) -> None:
        """101 Switching Protocols: from here on bytes pass through untouched both ways."""
        self.tunnel = uc
        if ex.body:
            uc.write(b"".join(ex.body))
            ex.body.clear()
        held, self.held, self.upgrading = self.held, None, None
        if held:
            uc.write(held)   # the first bytes of the new protocol, held until now
        self.proxy.finish(ex)
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        self.resume_reading()

