"""Counters the data plane writes and the control loop reads (metrics, status, drain decisions).

The request path only does dict increments here; everything else reads these at its own pace.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

# Upstream latency buckets in seconds (Prometheus-style upper bounds; the last bucket is +Inf).
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Waits for a member, in seconds. A request sent at once lands in the first bucket; the default
# `timeouts.queue` (5 s) ends a wait inside the last finite one.
QUEUE_WAIT_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The `method` label: the methods of RFC 9110 and PATCH, each one str object (a dict key whose hash
# is cached); anything else is `other`, so a client cannot grow the label set.
METHOD_LABELS: dict[bytes, str] = {m.encode(): m for m in (
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")}
OTHER_METHOD = "other"

# `warmfront_upstream_retries_total` reasons: a failure the retry decision sent to another member
# (`retry.Failure` values: `refused`, `broken`), or a kept-alive connection found dead and the same
# member tried again on a new one.
RETRY_STALE_CONNECTION = "stale_connection"


@dataclass(slots=True)
class Histogram:
    """Counts per bucket of `bounds` (upper bounds; the last count is +Inf) and their sum."""
    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def add(self, counts: list[int], total: float) -> None:
        self.counts = [a + b for a, b in zip(self.counts, counts)]
        self.total += total


@dataclass(slots=True)
class ProxyStats:
    # (pool, request type, method label, status code) -> requests answered; pool "-" when no route matched
    requests: dict[tuple[str, str, str, int], int] = field(default_factory=dict)
    # pool -> upstream latency (request sent to response head received)
    latency: dict[str, Histogram] = field(default_factory=dict)
    # pool -> how long requests waited for a member before their first send (0 for most)
    queue_wait: dict[str, Histogram] = field(default_factory=dict)
    queue_timeouts: dict[str, int] = field(default_factory=dict)   # pool -> 503s after `timeouts.queue`
    retries: dict[tuple[str, str], int] = field(default_factory=dict)   # (pool, reason) -> retries
    ejections: dict[str, int] = field(default_factory=dict)    # pool -> members passively ejected
    connections_accepted: int = 0
    connections_open: int = 0
    connections_refused: int = 0   # at `limits.max_connections` with nothing to make room
    connections_evicted: int = 0   # idle or head-trickling connections closed to make room

    def answered(self, pool: str, rtype: str, method: bytes, code: int, latency: float) -> None:
        """One exchange ended: counted, and its upstream latency (0: none) observed. The request
        path's one call into the stats per request."""
        key = (pool, rtype, METHOD_LABELS.get(method, OTHER_METHOD), code)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        if latency:
            h = self.latency.get(pool)
            if h is None:
                h = self.latency[pool] = Histogram()
            h.observe(latency)

    def queue_wait_of(self, pool: str) -> Histogram:
        """The pool's queue-wait histogram, made on first use (the proxy keeps it on its
        `UpstreamPool`, so a dispatch does not look it up)."""
        h = self.queue_wait.get(pool)
        if h is None:
            h = self.queue_wait[pool] = Histogram(QUEUE_WAIT_BUCKETS)
        return h

    # Rare events, counted where they happen (a failure, a timeout), never per request.
    def retried(self, pool: str, reason: str) -> None:
        key = (pool, reason)
        self.retries[key] = self.retries.get(key, 0) + 1

    def ejected(self, pool: str) -> None:
        self.ejections[pool] = self.ejections.get(pool, 0) + 1

    def queue_timed_out(self, pool: str) -> None:
        self.queue_timeouts[pool] = self.queue_timeouts.get(pool, 0) + 1


@dataclass(frozen=True, slots=True)
class UpstreamStats:
    """One member as the data plane sees it."""
    in_flight: int
    requests: int
    failures: int            # consecutive failures (connect errors, resets, timeouts)
    ejected_until: float     # monotonic time; 0 when not ejected
