"""Prometheus exposition of the data plane's counters, read at scrape time.

The request path only touches `ProxyStats` dicts; this collector turns them into metric families
when /metrics is scraped, so no prometheus-client object sits on the hot path. Labels stay
low-cardinality on purpose: per-source numbers live in `History` and /admin/status.
"""
from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from balancer.dataplane.stats import LATENCY_BUCKETS, QUEUE_WAIT_BUCKETS, Histogram, ProxyStats
from balancer.version import version
from pools.members import MemberState, MemberView

StatsFn = Callable[[], ProxyStats]          # the data plane's counters, summed over workers
RestartsFn = Callable[[], dict[int, int]]   # worker slot -> replacements started
MembersFn = Callable[[], dict[str, list[MemberView]]]
# pool -> the control loop's view: {"desired": {...}, "forecast": [{"horizon_s", "rate", "lower", "upper"}]}
ControlFn = Callable[[], dict[str, dict[str, Any]]]
# The rest of what the control process knows: worker pids, reload outcomes, health-check failures per
# pool and member state, live forecast errors per (source, type) row. Each read at scrape time.
ProcessFn = Callable[[], dict[str, Any]]
DESIRED_TIERS = ("ready", "shadow", "baseline", "predictive", "burst", "forecast_ready", "burst_shadow")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def horizon_label(seconds: float) -> str:
    """A horizon with its unit, as people write it: 30s, 5m, 1h, 24h."""
    s = int(round(seconds))
    if s and s % 3600 == 0:
        return f"{s // 3600}h"
    if s and s % 60 == 0:
        return f"{s // 60}m"
    return f"{seconds:g}s"


class ProxyCollector(Collector):
    def __init__(self, stats_fn: StatsFn, members_fn: MembersFn, control_fn: ControlFn | None = None,
                 restarts_fn: RestartsFn | None = None, process_fn: ProcessFn | None = None) -> None:
        self._stats_fn = stats_fn
        self._members_fn = members_fn
        self._control_fn = control_fn
        self._restarts_fn = restarts_fn
        self._process_fn = process_fn

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("warmfront_build_info", "The running warmfront: always 1, labelled with its version.",
                                 labels=["version", "python"])
        info.add_metric([version(), platform.python_version()], 1)
        yield info
        stats = self._stats_fn()
        requests = CounterMetricFamily(
            "warmfront_requests", "Requests answered, by pool, request type, method (other: outside the standard "
                                  "set) and status code.",
            labels=["pool", "type", "method", "code"],
        )
        for (pool, rtype, method, code), n in sorted(stats.requests.items()):
            requests.add_metric([pool, rtype, method, str(code)], n)
        yield requests
        yield _histogram("warmfront_upstream_latency_seconds",
                         "Upstream latency per pool: request sent to response head received.",
                         LATENCY_BUCKETS, stats.latency)
        yield _histogram("warmfront_queue_wait_seconds",
                         "Time requests waited for a routable member before their first send, per pool "
                         "(most are sent at once and count in the first bucket).",
                         QUEUE_WAIT_BUCKETS, stats.queue_wait)
        yield _per_pool("warmfront_queue_timeouts",
                        "Requests answered 503 after waiting timeouts.queue for a member, per pool.",
                        stats.queue_timeouts)
        retries = CounterMetricFamily(
            "warmfront_upstream_retries",
            "Requests tried again after a failed attempt, per pool and reason: refused (the connect failed) or "
            "broken (the connection died before a response) sent it to another member; stale_connection retried "
            "the same member on a new connection after a kept-alive one was found closed.",
            labels=["pool", "reason"],
        )
        for (pool, reason), n in sorted(stats.retries.items()):
            retries.add_metric([pool, reason], n)
        yield retries
        yield _per_pool("warmfront_member_ejections",
                        "Members passively ejected after consecutive failures (ejection.consecutive_failures), "
                        "per pool.", stats.ejections)

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
        if self._process_fn is not None:
            yield from _process_metrics(self._process_fn())


def _histogram(name: str, documentation: str, bounds: tuple[float, ...],
               by_pool: Mapping[str, Histogram]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=["pool"])
    for pool, hist in sorted(by_pool.items()):
        buckets, cumulative = [], 0
        for bound, n in zip((*bounds, float("inf")), hist.counts):
            cumulative += n
            buckets.append((floatToGoString(bound), cumulative))
        family.add_metric([pool], buckets, sum_value=hist.total)
    return family


def _per_pool(name: str, documentation: str, by_pool: Mapping[str, int]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=["pool"])
    for pool, n in sorted(by_pool.items()):
        family.add_metric([pool], n)
    return family


def _process_metrics(view: Mapping[str, Any]) -> Iterator[Metric]:
    rss = GaugeMetricFamily("warmfront_worker_resident_memory_bytes",
                            "Resident memory of each data-plane worker process (process_* is the control process).",
                            labels=["worker"])
    for slot, pid in sorted(view.get("workers", {}).items()):
        try:
            with open(f"/proc/{pid}/statm") as f:
                rss.add_metric([str(slot)], int(f.read().split()[1]) * _PAGE)
        except (OSError, ValueError, IndexError):
            continue   # it just exited: its replacement is reported next time
    yield rss
    reloads = CounterMetricFamily("warmfront_reloads", "Config reloads (SIGHUP, POST /admin/reload) by outcome.",
                                  labels=["outcome"])
    for outcome in ("applied", "rejected"):
        reloads.add_metric([outcome], view.get("reloads", {}).get(outcome, 0))
    yield reloads
    checks = CounterMetricFamily("warmfront_health_check_failures",
                                 "Failed active health checks by pool and the state the member was in.",
                                 labels=["pool", "state"])
    for pool, by_state in sorted(view.get("check_failures", {}).items()):
        for state, n in sorted(by_state.items()):
            checks.add_metric([pool, state], n)
    yield checks
    errors = GaugeMetricFamily(
        "warmfront_pool_forecast_error_mase",
        "Live forecast error per pool and horizon: the median MASE (error over a naive forecast's; below 1 beats "
        "it) over the pool's (source, type) series /admin/status lists.", labels=["pool", "horizon"])
    for (pool, horizon), values in sorted(view.get("forecast_errors", {}).items()):
        errors.add_metric([pool, horizon], statistics.median(values))
    yield errors
    yield from _resource_metrics(view.get("resources", {}))


def _resource_metrics(pools: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    """Measured member use and the right-sizing recommendation (balancer.control.resources)."""
    cpu = CounterMetricFamily("warmfront_member_cpu_seconds", "CPU seconds a member has used since it started "
                              "(its cgroup, or /proc for a process member).", labels=["pool", "member"])
    memory = GaugeMetricFamily("warmfront_member_memory_bytes", "Resident memory of a member at its last sample.",
                               labels=["pool", "member"])
    cpus = GaugeMetricFamily("warmfront_pool_recommended_cpus", "CPU limit per member recommended from measured "
                             "use (a high percentile plus a margin; raised after throttling).", labels=["pool"])
    mem = GaugeMetricFamily("warmfront_pool_recommended_memory_bytes", "Memory limit per member recommended from "
                            "measured use (the peak plus a margin; raised after an OOM kill).", labels=["pool"])
    for pool, view in sorted(pools.items()):
        for member, (cpu_s, rss) in sorted(view.get("members", {}).items()):
            cpu.add_metric([pool, member], cpu_s)
            memory.add_metric([pool, member], rss)
        if view.get("recommended_cpus") is not None:
            cpus.add_metric([pool], view["recommended_cpus"])
        if view.get("recommended_memory") is not None:
            mem.add_metric([pool], view["recommended_memory"])
    yield from (cpu, memory, cpus, mem)


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
        "Forecast arrivals per pool at each horizon ahead (30s, 5m, 1h, ...), point and interval bounds.",
        labels=["pool", "horizon", "bound"],
    )
    for pool, view in sorted(control.items()):
        for tier in DESIRED_TIERS:
            if "desired" in view:
                desired.add_metric([pool, tier], view["desired"][tier])
        for f in view.get("forecast", ()):
            horizon = horizon_label(f["horizon_s"])
            for bound, key in (("point", "rate"), ("lower", "lower"), ("upper", "upper")):
                forecast.add_metric([pool, horizon, bound], f[key])
    yield desired
    yield forecast


def make_registry(stats_fn: StatsFn, members_fn: MembersFn, control_fn: ControlFn | None = None,
                  restarts_fn: RestartsFn | None = None, process_fn: ProcessFn | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(stats_fn, members_fn, control_fn, restarts_fn, process_fn))
    ProcessCollector(registry=registry)   # process_*: the control process's CPU, memory, open files
    return registry
