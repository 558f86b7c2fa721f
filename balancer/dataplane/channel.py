"""The channel between the control process and a data-plane worker: what crosses, and how.

One Unix socket pair per worker. Each message is a 4-byte big-endian length and a `marshal`led
tuple of plain values (str, bytes, int, float, bool, None, tuple, list, dict): no objects, no
pickle, so a message can only ever be data, and encoding one routing table for N workers is done
once.

Down (control → worker):
- ``("settings", timeouts, limits, scheme, tls, report_interval, access_log)`` — once at start: the
  request path's settings as plain dicts, the listener's scheme, the TLS certificate and key paths
  (or None), the seconds between reports and the access log's absolute path, `-` or None (off).
- ``("table", version, wire_table)`` — whenever the routing table changes (see `encode_table`).
- ``("flush",)`` — report now (the reply is the next report).
- ``("stop", grace)`` — drain: stop accepting, finish what is in flight within `grace` seconds.

Up (worker → control):
- ``("hello", pid)`` — the worker listens and has applied the first table.
- ``("report", version, rows, sessions, snapshot)`` — about once a second, and right after a
  table was applied (so the control side learns soon that a member left every worker's table):
  `rows` are the history counters since the last report, `sessions` the request types per source
  in order, `snapshot` the worker's cumulative counters and per-member state (see
  `balancer.dataplane.worker.Tally` and `balancer.dataplane.worker.snapshot`).
- ``("bye",)`` — drained; the worker exits next.
"""
from __future__ import annotations

import asyncio
import marshal
import struct
from dataclasses import fields
from typing import Any

from balancer.dataplane.routing import CompiledRoute, PoolTargets, RoutingTable, SourceExtractor, Target

HEADER = struct.Struct(">I")
MAX_MESSAGE = 256 * 1024 * 1024   # a report of a flood is big, never this big: beyond it the peer is broken
MARSHAL_VERSION = 4


class ChannelClosed(Exception):
    """The other end is gone (EOF, reset, or it sent something that is not a message)."""


def frame(message: tuple) -> bytes:
    body = marshal.dumps(message, MARSHAL_VERSION)
    return HEADER.pack(len(body)) + body


async def read_message(reader: asyncio.StreamReader) -> tuple:
    try:
        head = await reader.readexactly(HEADER.size)
        (size,) = HEADER.unpack(head)
        if size > MAX_MESSAGE:
            raise ChannelClosed(f"message of {size} bytes")
        body = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        raise ChannelClosed(str(e)) from None
    try:
        message = marshal.loads(body)
    except (EOFError, ValueError, TypeError) as e:
        raise ChannelClosed(f"undecodable message: {e}") from None
    if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
        raise ChannelClosed(f"not a message: {type(message).__name__}")
    return message


# ---------------------------------------------------------------------------- the routing table
# Generic over the compiled objects' slots and fields, so a field added to the request path's
# routing is carried without touching this codec (marshal takes frozensets, tuples and dicts).
def encode_table(table: RoutingTable) -> tuple:
    """A `RoutingTable` as plain values, rebuilt by `decode_table` in the worker exactly as compiled
    here (the worker never sees the config models the routes were compiled from)."""
    routes = tuple(tuple(getattr(r, f) for f in CompiledRoute.__slots__) for r in table.routes)
    pools = tuple((tuple(_fields(t) for t in p.targets), *_fields(p)) for p in table.pools.values())
    return routes, dict(vars(table.sources)), pools, table.preserve_host


def decode_table(wire: tuple) -> RoutingTable:
    routes_w, sources_w, pools_w, preserve_host = wire
    routes = []
    for values in routes_w:
        r = CompiledRoute.__new__(CompiledRoute)
        for name, value in zip(CompiledRoute.__slots__, values):
            setattr(r, name, value)
        routes.append(r)
    sources = SourceExtractor.__new__(SourceExtractor)
    vars(sources).update(sources_w)
    pools = {}
    for targets, *rest in pools_w:
        p = PoolTargets(rest[0], tuple(Target(*t) for t in targets), *rest[1:])
        pools[p.name] = p
    return RoutingTable(routes, sources, pools, preserve_host)


def _fields(obj: Any) -> tuple:
    """A dataclass's field values in order, the `targets` of a PoolTargets left out."""
    return tuple(getattr(obj, f.name) for f in fields(obj) if f.name != "targets")


def table_members(wire: tuple) -> frozenset[str]:
    """Ids of the members a wire table routes to."""
    return frozenset(t[0] for p in wire[2] for t in p[0])

