"""The routing table: which pool and request type a request belongs to, and whose it is (its source).

The control loop builds a `RoutingTable` from the config and the pools' ready members and swaps it
into the data plane whole; the request path only reads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from config.models import Pool, Route, SourceRule


@dataclass(frozen=True, slots=True)
class Target:
    """A routable member of a pool."""
    id: str
    host: str
    port: int
    prewarmed: bool = False


@dataclass(frozen=True, slots=True)
class PoolTargets:
    name: str
    targets: tuple[Target, ...]
    slow_start: float = 0.0
    eject_after: int = 5              # consecutive failures
    eject_base: float = 10.0          # seconds, doubled per repeated ejection
    eject_max: float = 300.0
    # With no targets: what the 503s it answers meanwhile say, built by the control process from its
    # members' states (`no ready member in pool "web" (1 member: failed health checks: ...)`).
    unready: str = ""
    # False when no member is on its way (a static pool whose every server fails its checks): a
    # request is answered at once rather than after waiting the queue timeout for nothing.
    waits: bool = True

    @classmethod
    def from_spec(cls, name: str, spec: Pool, targets: tuple[Target, ...], unready: str = "",
                  waits: bool = True) -> "PoolTargets":
        return cls(name, targets, spec.slow_start, spec.ejection.consecutive_failures,
                   spec.ejection.base_time, spec.ejection.max_time, unready, waits)


class CompiledRoute:
    __slots__ = ("name", "host", "host_suffix", "prefix", "methods", "headers", "pool", "rtype")

    def __init__(self, route: Route):
        m = route.match
        self.name = route.name
        host = (m.host or "").lower().encode()
        self.host_suffix = host[1:] if host.startswith(b"*.") else None
        self.host = None if self.host_suffix is not None or not host else host
        self.prefix = m.path_prefix.encode()
        self.methods = frozenset(x.upper().encode() for x in m.methods) if m.methods else None
        self.headers = tuple((k.lower().encode(), None if v == "*" else v.encode())
                             for k, v in (m.headers or {}).items())
        self.pool = route.pool
        self.rtype = route.type

    @property
    def catch_all(self) -> bool:
        """Matches every request."""
        return (not self.prefix and self.methods is None and self.host is None and self.host_suffix is None
                and not self.headers)

    def matches(self, method: bytes, host: bytes, path: bytes, headers: dict[bytes, bytes]) -> bool:
        if not path.startswith(self.prefix):
            return False
        if self.methods is not None and method not in self.methods:
            return False
        if self.host is not None or self.host_suffix is not None:
            h = host.split(b":", 1)[0].lower()
            if self.host is not None and h != self.host:
                return False
            if self.host_suffix is not None and not h.endswith(b"." + self.host_suffix):
                return False
        for name, want in self.headers:
            got = headers.get(name)
            if got is None or (want is not None and got != want):
                return False
        return True


class SourceExtractor:
    """Source key of a request: the first non-empty value among the configured rules."""

    def __init__(self, rules: list[SourceRule]):
        # (kind, header name, query or cookie name, path segment): each kind reads its own slot.
        self.rules: list[tuple[str, bytes, str, int]] = []
        for r in rules:
            if r.header is not None:
                self.rules.append(("header", r.header.lower().encode(), "", 0))
            elif r.query is not None:
                self.rules.append(("query", b"", r.query, 0))
            elif r.cookie is not None:
                self.rules.append(("cookie", b"", r.cookie, 0))
            elif r.path_segment is not None:
                self.rules.append(("segment", b"", "", r.path_segment))
            elif r.client_ip:
                self.rules.append(("ip", b"", "", 0))
        # Headers the request path must keep by lower-cased name for the rules above.
        self.header_names = frozenset(header for kind, header, _, _ in self.rules if kind == "header")

    def extract(self, path: bytes, query: bytes, headers: dict[bytes, bytes], client_ip: str) -> str:
        for kind, header, name, segment in self.rules:
            value = ""
            if kind == "header":
                value = headers.get(header, b"").decode("latin-1").strip()
            elif kind == "ip":
                value = client_ip
            elif kind == "query":
                if query:
                    for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=False):
                        if k == name:
                            value = v
                            break
            elif kind == "cookie":
                raw = headers.get(b"cookie")
                if raw:
                    for part in raw.decode("latin-1").split(";"):
                        k, _, v = part.strip().partition("=")
                        if k == name:
                            value = v
                            break
            elif kind == "segment":
                segs = [s for s in path.split(b"/") if s]
                if segment < len(segs):
                    value = unquote(segs[segment].decode("latin-1"))
            if value:
                return value
        return "unknown"


@dataclass(slots=True)
class RoutingTable:
    routes: list[CompiledRoute]
    sources: SourceExtractor
    pools: dict[str, PoolTargets] = field(default_factory=dict)
    preserve_host: bool = True
    # `routes` up to the first that matches everything, and that one: a request that reaches the
    # catch-all needs no call to know it matches (the table is never changed after it is built).
    _tested: tuple[CompiledRoute, ...] = field(init=False, repr=False, compare=False)
    _fallback: CompiledRoute | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        end = next((i for i, r in enumerate(self.routes) if r.catch_all), len(self.routes))
        self._tested = tuple(self.routes[:end])
        self._fallback = self.routes[end] if end < len(self.routes) else None

    def match(self, method: bytes, host: bytes, path: bytes, headers: dict[bytes, bytes]) -> CompiledRoute | None:
        for route in self._tested:
            if route.matches(method, host, path, headers):
                return route
        return self._fallback

    @property
    def header_names(self) -> frozenset[bytes]:
        """Lower-cased request header names that routing or source rules read."""
        names = set(self.sources.header_names)
        names.add(b"cookie")
        for r in self.routes:
            names.update(n for n, _ in r.headers)
        return frozenset(names)
