"""Prometheus exposition of the data plane's counters, read at scrape time.

The request path only touches `ProxyStats` dicts; this collector turns them into metric families
when /metrics is scraped, so no prometheus-client object sits on the hot path. Labels stay
low-cardinality on purpose: per-source numbers live in `History` and /admin/status.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from balancer.dataplane.stats import LATENCY_BUCKETS, ProxyStats
from pools.members import MemberState, MemberView

StatsFn = Callable[[], ProxyStats]          # the data plane's counters, summed over workers
RestartsFn = Callable[[], dict[int, int]]   # worker slot -> replacements started
MembersFn = Callable[[], dict[str, list[MemberView]]]
# pool -> the control loop's view: {"desired": {...}, "forecast": [{"horizon_s", "rate", "lower", "upper"}]}
ControlFn = Callable[[], dict[str, dict[str, Any]]]
DESIRED_TIERS = ("ready", "shadow", "baseline", "predictive", "burst", "forecast_ready", "burst_shadow")


class ProxyCollector(Collector):
    def __init__(self, stats_fn: StatsFn, members_fn: MembersFn, control_fn: ControlFn | None = None,
                 restarts_fn: RestartsFn | None = None) -> None:
        self._stats_fn = stats_fn
        self._members_fn = members_fn
        self._control_fn = control_fn
        self._restarts_fn = restarts_fn

    def collect(self) -> Iterator[Metric]:
        stats = self._stats_fn()
        requests = CounterMetricFamily(
            "warmfront_requests", "Requests answered, by pool, request type and status code.",
            labels=["pool", "type", "code"],
        )
        for (pool, rtype, code), n in sorted(stats.requests.items()):
            requests.add_metric([pool, rtype, str(code)], n)
        yield requests

        latency = HistogramMetricFamily(
            "warmfront_upstream_latency_seconds",
            "Upstream latency per pool: request sent to response head received.",
            labels=["pool"],
        )
        for pool, hist in sorted(stats.latency.items()):
            buckets, cumulative = [], 0
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), hist.counts):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            latency.add_metric([pool], buckets, sum_value=hist.total)
        yield latency

        yield CounterMetricFamily(
            "warmfront_connections_accepted", "Client connections accepted.",
            value=stats.connections_accepted,
        )
        yield GaugeMetricFamily(
            "warmfront_connections_open", "Client connections open now.", value=stats.connections_open,
        )
        yield CounterMetricFamily(
            "warmfront_connections_refused", "Client connections refused at limits.max_connections.",
            value=stats.connections_refused,
        )
        yield CounterMetricFamily(
            "warmfront_connections_evicted",
            "Idle or head-trickling client connections closed to make room at limits.max_connections.",
            value=stats.connections_evicted,
        )
        if self._restarts_fn is not None:
            restarts = CounterMetricFamily(
                "warmfront_worker_restarts", "Data-plane workers replaced after they died, by worker slot.",
                labels=["worker"],
            )
            for slot, n in sorted(self._restarts_fn().items()):
                restarts.add_metric([str(slot)], n)
            yield restarts

        members = GaugeMetricFamily(
            "warmfront_pool_members", "Members per pool and state.", labels=["pool", "state"],
        )
        for pool, views in sorted(self._members_fn().items()):
            # every state is reported, zeros included, so dashboards see a drop to 0 as a value
            by_state = dict.fromkeys(MemberState, 0)
            for view in views:
                by_state[view.state] += 1
            for state, n in by_state.items():
                members.add_metric([pool, state.value], n)
        yield members
        if self._control_fn is not None:
            yield from _control_metrics(self._control_fn())


def _control_metrics(control: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    desired = GaugeMetricFamily(
        "warmfront_pool_desired_members",
        "Members the planner wants per pool and tier (ready and shadow are the totals acted on; "
        "forecast_ready is what the forecast alone asks for, shown in forecast-only mode too; "
        "burst_shadow the shadows the burst heights seen in history ask for).",
        labels=["pool", "tier"],
    )
    forecast = GaugeMetricFamily(
        "warmfront_pool_forecast_requests_per_second",
        "Forecast arrivals per pool at each horizon (seconds ahead), point and interval bounds.",
        labels=["pool", "horizon", "bound"],
    )
    for pool, view in sorted(control.items()):
        for tier in DESIRED_TIERS:
            if "desired" in view:
                desired.add_metric([pool, tier], view["desired"][tier])
        for f in view.get("forecast", ()):
            horizon = f"{f['horizon_s']:g}"
            for bound, key in (("point", "rate"), ("lower", "lower"), ("upper", "upper")):
                forecast.add_metric([pool, horizon, bound], f[key])
    yield desired
    yield forecast


def make_registry(stats_fn: StatsFn, members_fn: MembersFn, control_fn: ControlFn | None = None,
                  restarts_fn: RestartsFn | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(stats_fn, members_fn, control_fn, restarts_fn))
    return registry
