"""One request/response pair, and the two connections it passes between as Protocols.

`ClientConnection` (downstream.py) creates `UpstreamConnection`s (upstream_connection.py); the
upstream side reaches back to its client only through `Downstream`, so neither module imports
the other back.
"""
from __future__ import annotations

import asyncio
from typing import Protocol

from balancer.dataplane.framing import Body
from balancer.dataplane.retry import Failure
from balancer.dataplane.routing import CompiledRoute
from balancer.dataplane.upstream import Upstream


class Downstream(Protocol):
    """What the upstream side and the proxy call on a client connection."""
    closed: bool
    transport: asyncio.Transport
    client_ip: str
    forwarded: bytes    # X-Forwarded-For/-Proto when the client sent none

    def dispatch(self, ex: Exchange) -> None: ...
    def reply_error(self, ex: Exchange, status: int, retry_after: bool = True) -> None: ...
    def upstream_failed(self, ex: Exchange, failure: Failure) -> None: ...
    def response_done(self, ex: Exchange, reusable: bool) -> None: ...
    def write(self, data: bytes) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def become_tunnel(self, uc: UpstreamSide, ex: Exchange) -> None: ...
    def tunnel_closed(self) -> None: ...


class UpstreamSide(Protocol):
    """What a client connection calls on the upstream connection carrying its exchange."""
    ex: Exchange | None
    reused: bool
    connecting: bool

    @property
    def transport(self) -> asyncio.Transport | None: ...
    def send_request(self, ex: Exchange) -> None: ...
    def write(self, data: bytes) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def abort_connect(self) -> None: ...
    def abandon(self) -> None: ...
    def close(self) -> None: ...


Member = Upstream[UpstreamSide]
NO_BODY = Body.NONE   # a member of an Enum costs a metaclass lookup per access: read once here


class Exchange:
    """One request/response pair travelling through the proxy."""

    __slots__ = ("client", "method", "url", "version", "headers", "hdrs", "conn_tokens", "chunked",
                 "content_length", "keep_alive", "upgrade", "route", "pool", "source", "rtype",
                 "upstream", "uconn", "tried", "body", "body_buffered", "body_done", "sent",
                 "head_sent", "status", "bytes_in", "bytes_out", "t_start", "t_begin", "t_sent", "latency",
                 "wait_until", "queued_at", "last_io", "deadline", "done", "error", "resp_body", "is_head",
                 "response_complete", "fresh", "stale_retries", "body_t0", "expect")

    # Set when the head is complete (or the request is rejected), never read before: no default.
    method: bytes
    version: str
    keep_alive: bool

    def __init__(self, client: Downstream):
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
        self.upstream: Member | None = None
        self.uconn: UpstreamSide | None = None
        self.tried: tuple[Member, ...] = ()
        self.body: list[bytes] = []        # framed body bytes not yet written upstream
        self.body_buffered = 0
        self.body_done = False
        self.sent = False                  # request head written to an upstream
        self.head_sent = False             # response head written to the client
        self.status = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.t_start = 0.0
        self.t_begin = 0.0                 # perf_counter at the head, only with an access log
        self.t_sent = 0.0
        self.latency = 0.0
        self.wait_until = 0.0
        self.queued_at = 0.0               # loop time it began waiting for a member (0: it did not)
        self.last_io = 0.0
        self.deadline = 0.0
        self.done = False
        self.error = 0                     # status of a request rejected while parsing
        self.resp_body = NO_BODY           # how the response body goes to the client (framing.final)
        self.is_head = False
        self.response_complete = False
        self.fresh = False                 # next attempt must open a new connection
        self.stale_retries = 0
        self.body_t0 = 0.0                 # when the body clock started (0: not yet)
        self.expect = False                # Expect: 100-continue (the body waits for the member)
