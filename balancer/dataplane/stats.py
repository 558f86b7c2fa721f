"""Counters the data plane writes and the control loop reads (metrics, status, drain decisions).

The request path only does dict increments here; everything else reads these at its own pace.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

# Upstream latency buckets in seconds (Prometheus-style upper bounds; the last bucket is +Inf).
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class LatencyHistogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds


@dataclass(slots=True)
class ProxyStats:
    # (pool, request type, status code) -> requests answered; pool "-" when no route matched
    requests: dict[tuple[str, str, int], int] = field(default_factory=dict)
    # pool -> upstream latency (request sent to response head received)
    latency: dict[str, LatencyHistogram] = field(default_factory=dict)
    connections_accepted: int = 0
    connections_open: int = 0
    connections_refused: int = 0   # at `limits.max_connections` with nothing to make room
    connections_evicted: int = 0   # idle or head-trickling connections closed to make room

    def answered(self, pool: str, rtype: str, code: int, latency: float) -> None:
        """One exchange ended: counted, and its upstream latency (0: none) observed. The request
        path's one call into the stats per request."""
        key = (pool, rtype, code)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        if latency:
            h = self.latency.get(pool)
            if h is None:
                h = self.latency[pool] = LatencyHistogram()
            h.observe(latency)


@dataclass(frozen=True, slots=True)
class UpstreamStats:
    """One member as the data plane sees it."""
    in_flight: int
    requests: int
    failures: int            # consecutive failures (connect errors, resets, timeouts)
    ejected_until: float     # monotonic time; 0 when not ejected
