"""The connection to one member: sends an exchange's request, parses and relays its response.

It reaches the client only through the exchange's `Downstream` and the proxy only through
`UpstreamHost`, so it imports neither module.
"""
from __future__ import annotations

import asyncio
import errno
from time import perf_counter
from typing import Protocol, cast

import httptools
import structlog

from balancer.dataplane import framing
from balancer.dataplane.exchange import Downstream, Exchange, Member
from balancer.dataplane.framing import Body, Interim
from balancer.dataplane.framing import final as final_framing
from balancer.dataplane.retry import Failure
from balancer.dataplane.headers import (CONNECTION_OPTIONS, FRAMING, HOP_BY_HOP, LOWER_NAMES, NO_NAMES,
                                        PLAIN_CONNECTION, PLAIN_RESPONSE_HEADERS, STATUS_LINES, StopParsing,
                                        status_line)
from balancer.dataplane.routing import RoutingTable

log = structlog.get_logger("warmfront.balancer")

CHUNKED = Body.CHUNKED
CLOSE = Body.CLOSE


class UpstreamHost(Protocol):
    """What an upstream connection reads of the proxy."""
    loop: asyncio.AbstractEventLoop
    now: float
    table: RoutingTable
    scheme: bytes
    max_response_header_bytes: int
    upstreams: dict[str, Member]

    def note_fd_exhausted(self, exc: OSError) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """A connection to one member; carries one exchange at a time, kept alive between them.

    The response head is assembled in `out` and written only once it is whole (a status line and
    its headers may arrive in any number of reads, and interim 1xx heads come before it); the
    body after it is written once per read. Bytes past the end of the response mean the member
    and warmfront disagree about framing: the connection is not reused and nothing past the end
    reaches the client.
    """

    def __init__(self, proxy: UpstreamHost, upstream: Member):
        self.proxy = proxy
        self.upstream = upstream
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.ex: Exchange | None = None
        self.connecting = False
        self.out: list[bytes] = []
        self.keep_alive = True
        self.tunnel: Downstream | None = None
        self._connect_task: asyncio.Task[None] | None = None
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
                ex.client.upstream_failed(ex, Failure.REFUSED)
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
        transport = self.transport
        assert transport is not None   # connected before anything is sent
        if ex.body:
            body, ex.body = ex.body, []
            ex.body_buffered = 0
            transport.writelines([head, *body])
            client.resume_reading()
        else:
            transport.write(head)
        if self.reading_paused:
            self.resume_reading()

    # ---------------------------------------------------------------- transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

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
        ex.client.upstream_failed(ex, Failure.BROKEN)

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
            client.tunnel_closed()
            return
        ex = self.ex
        if ex is None or ex.done:
            return
        if self.in_head:
            del self.out[self._head_at:]   # a head cut short is never forwarded
        self._flush()
        if ex.head_sent and ex.resp_body is CLOSE:
            # A close-delimited body ends when the member closes the connection.
            ex.response_complete = True
            ex.client.response_done(ex, False)
        elif ex.head_sent and ex.resp_body is CHUNKED and not ex.response_complete and self._close_delimited:
            ex.client.write(b"0\r\n\r\n")
            ex.response_complete = True
            ex.client.response_done(ex, False)
        else:
            ex.client.upstream_failed(ex, Failure.BROKEN)

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
        self._lengths = 0
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
            raise StopParsing

    def on_header(self, name: bytes, value: bytes) -> None:
        if name in PLAIN_RESPONSE_HEADERS:
            self.out += (name, b": ", value, b"\r\n")
            return
        lname = LOWER_NAMES.get(name) or name.lower()
        if lname == b"content-length":
            self._lengths += 1
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
                    raise StopParsing
                self._chunked = True
            elif lname == b"upgrade":
                self.out += (b"Upgrade", b": ", value, b"\r\n")
            return
        self.out += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        ex = self.ex
        assert ex is not None   # the parser is fed only while an exchange is attached
        p = self.parser
        status = p.get_status_code()
        self.in_head = False
        out = self.out
        idx = self._head_at
        limit = self.proxy.max_response_header_bytes
        if self.head_seen + self._read_len > limit and self.head_seen + sum(map(len, out[idx:])) > limit:
            self.bad = "response head over limits.max_response_header_bytes"
            raise StopParsing
        if self._named:
            # Fields the member named in Connection are hop-by-hop (RFC 9110 §7.6.1); framing stays.
            head = out[idx + 1:]
            out[idx + 1:] = [x for i in range(0, len(head), 4) if head[i].lower() not in self._named
                             for x in head[i:i + 4]]
        if not ex.latency:
            ex.latency = perf_counter() - ex.t_sent
        if status < 200:
            what = framing.interim(status, ex.upgrade is not None, ex.version)
            if what is Interim.RELAY:
                out[idx] = status_line(status)
                out.append(b"\r\n")
            elif what is Interim.DROP:
                del out[idx:]
            elif what is Interim.SWITCH:
                ex.status = 101
                out[idx] = status_line(status)
                out.append(b"Connection: Upgrade\r\n\r\n")
            else:
                self.bad = "101 Switching Protocols to a request that offered no upgrade"
                raise StopParsing
            return
        f = final_framing(status, ex.is_head, ex.version, ex.keep_alive and ex.body_done,
                                ex.upgrade is not None,
                                self.keep_alive and p.should_keep_alive() and p.get_http_version() != "1.0",
                                self._lengths, self._chunked)
        if f.refused:
            self.bad = f.refused
            raise StopParsing
        ex.status = status
        ex.head_sent = True
        ex.resp_body = f.body
        ex.keep_alive = f.client_keep_alive
        self.keep_alive = f.upstream_reusable
        self._close_delimited = f.until_close
        out[idx] = STATUS_LINES.get(status) or status_line(status)
        out.append(f.tail)
        if ex.is_head:
            ex.response_complete = True
            raise StopParsing

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        assert ex is not None
        ex.bytes_out += len(body)
        if ex.resp_body is CHUNKED:
            self.out.append(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        ex = self.ex
        assert ex is not None
        if ex.status == 0 or (ex.status < 200 and ex.status != 101):
            self.begin_response()   # end of an interim response; the final one follows
            return
        if ex.resp_body is CHUNKED:
            self.out.append(b"0\r\n\r\n")
        ex.response_complete = True
