"""How a response's body is delimited towards the client, and whether both connections stay reusable.

Pure decisions on what the member's head said; `UpstreamConnection.on_headers_complete` calls them
and writes what they return. See DESIGN.md, "Framing is warmfront's, never passed through".
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Interim(enum.Enum):
    """What becomes of a 1xx head."""
    RELAY = "relay"       # 100 Continue, 103 Early Hints: forwarded as is, the final head follows
    DROP = "drop"         # RFC 9110 §15.2: no 1xx to an HTTP/1.0 client
    SWITCH = "switch"     # 101 to a request that offered an upgrade: the connection becomes a tunnel
    REFUSE = "refuse"     # 101 to a request that offered none: 502


def interim(status: int, upgrade_offered: bool, client_version: str) -> Interim:
    if status == 101:
        return Interim.SWITCH if upgrade_offered else Interim.REFUSE
    return Interim.DROP if client_version == "1.0" else Interim.RELAY


class Body(enum.Enum):
    NONE = "none"         # no body: HEAD, 204, 304
    LENGTH = "length"     # the member's Content-Length, forwarded with its bytes as they are
    CHUNKED = "chunked"   # re-chunked by warmfront: the member's chunks, or a close-delimited body
    CLOSE = "close"       # an HTTP/1.0 client without a length: the end of the connection ends it


@dataclass(frozen=True, slots=True)
class Framing:
    body: Body
    until_close: bool       # the member's body ends when it closes the connection
    upstream_reusable: bool
    client_keep_alive: bool
    tail: bytes             # the head's last lines, after the member's headers
    refused: str = ""       # why the response is not forwarded at all (502)


def _tail(body: Body, keep: bool) -> bytes:
    tail = b"Transfer-Encoding: chunked\r\n\r\n" if body is Body.CHUNKED else b"\r\n"
    return tail if keep else b"Connection: close\r\n" + tail


# Every acceptable answer, built once and indexed by (body, until_close, reusable, keep) as bits (ints: an Enum's hash is a Python
# call, and this runs per response): `final` returns one of these, never a new object.
_BODIES = tuple(Body)
_FRAMINGS = tuple(Framing(b, c, u, k, _tail(b, k))
                  for b in _BODIES for c in (False, True) for u in (False, True) for k in (False, True))


assert [f.body for f in _FRAMINGS[::8]] == [Body.NONE, Body.LENGTH, Body.CHUNKED, Body.CLOSE]


def refused(reason: str) -> Framing:
    return Framing(Body.NONE, False, False, False, b"", reason)


AMBIGUOUS_LENGTH = refused("more than one Content-Length")
LENGTH_AND_CHUNKED = refused("both Content-Length and Transfer-Encoding")


def final(status: int, is_head: bool, client_version: str, client_keep_alive: bool,
          upgrade_offered: bool, member_keep_alive: bool, lengths: int, chunked: bool) -> Framing:
    """The final (≥ 200) head. `client_keep_alive`: the client asked for it and its request was
    read whole; `member_keep_alive`: HTTP/1.1 and no `Connection: close` from the member;
    `lengths`: how many Content-Length fields it sent; `chunked`: Transfer-Encoding: chunked.

    A head that could be read two ways (RFC 9112 §6.3: several lengths, or a length and chunked)
    is refused. llhttp refuses these (and a length that is not digits) before this runs; the
    decision does not rely on it."""
    if lengths > 1:
        return AMBIGUOUS_LENGTH
    if lengths and chunked:
        return LENGTH_AND_CHUNKED
    content_length = lengths == 1
    no_body = is_head or status == 204 or status == 304
    until_close = False
    if no_body or (content_length and not chunked):
        body = 0 if no_body else 1           # Body.NONE, Body.LENGTH
    elif client_version == "1.1":
        body = 2                             # Body.CHUNKED
        until_close = not chunked
    else:
        body = 3                             # Body.CLOSE
        client_keep_alive = False
    # A HEAD response stops the parser at its head, so what follows on the connection is unknown;
    # a member that saw an upgrade offer is not reused either; nor one whose body ends at its close.
    reusable = (member_keep_alive and not is_head and not upgrade_offered and
                (chunked or content_length or no_body))
    return _FRAMINGS[body * 8 + until_close * 4 + reusable * 2 + client_keep_alive]
