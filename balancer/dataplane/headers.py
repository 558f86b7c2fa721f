"""Header-name sets, Host validation and status lines: what both connection sides read by name."""
from __future__ import annotations

import re
from http import HTTPStatus

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


def spellings(names: frozenset[bytes] | set[bytes]) -> dict[bytes, bytes]:
    """Common exact-case spellings of lower-case names, mapped to them: a dict lookup instead of lower()."""
    return {v: n for n in names for v in (n, b"-".join(w.capitalize() for w in n.split(b"-")))}


LOWER_NAMES = spellings(SPECIAL_REQUEST_HEADERS)
LOWER_NAMES[b"TE"] = b"te"
REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
STATUS_LINES = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in REASONS.items()}


def status_line(status: int) -> bytes:
    return STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status


def is_host(value: bytes) -> bool:
    """Whether a Host value (or an absolute-form authority) is host[:port]."""
    return HOST_RE.fullmatch(value) is not None


class StopParsing(Exception):
    """Raised from a parser callback to end parsing (HEAD responses, rejected messages)."""
