"""Resource profiles, live: what members use, what each request type costs, what the pools will need.

Every `resources.interval` (10 s) the control process asks each managed pool's backend what its
members use (`Backend.usage`: cgroup files for containers, /proc for processes; never the request
path) and keeps, per pool:

- one *sample* per interval: CPU-seconds used by the pool's members in it, their summed resident
  memory, member-seconds, and the requests of each type routed to the pool in it (the difference of
  `History.type_requests` between two samples). The last `resources.window` of samples is what
  `predictor.resources.estimate_costs` regresses (NNLS, an idle baseline per member-second as the
  intercept) into CPU-seconds and memory per request of each type, with bootstrap uncertainty;
- per-member cores and memory for `predictor.resources.Recommender` (a high percentile plus a margin,
  raised after an OOM kill or CPU throttling), the `cpus` and `memory` recommendation per pool. With
  `scaling.rightsize: apply` the pool's manager launches new members (and resizes activated shadows)
  with it: `PoolManager.limits`;
- a row per (minute, pool) in the history store (`History.write_usage`) beside the request counters,
  so costs and restarts see what was used.

Paused and stopped shadows use no CPU and are left out of the samples (a running shadow is in them:
it is the idle baseline). The estimates are read by the control loop's worker thread through
`cpu_profile` (a value replaced whole, never mutated), which turns them into the planner's
`CpuBudget`: a pool whose members run out of CPU before concurrency slots gets more members.
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from balancer.control.history import History
from balancer.control.history_store import StoreError, UsageRows
from config.models import Config, Pool
from pools.backends.base import Backend, BackendError
from pools.manager import PoolManager
from pools.members import MemberState
from pools.planner import CpuBudget, TypeDemand
from pools.usage import MemberUsage, ResourceLimits
from predictor.resources import CostEstimate, Recommendation, Recommender, estimate_costs, resource_demand

log = structlog.get_logger()

MEASURED = frozenset({MemberState.LAUNCHING, MemberState.WARMING, MemberState.SHADOW, MemberState.READY,
                      MemberState.DRAINING})
SERVING = frozenset({MemberState.READY, MemberState.DRAINING})   # what the recommendation is sized on
THROTTLED_SHARE = 0.1     # throttled for a tenth of an interval: the limit is too low
REFIT_EVERY_S = 10.0      # the cost regression is refitted at most this often
RIGHTSIZED_BACKENDS = frozenset({"docker", "swarm"})   # where a launch can carry limits
GIB = float(1 << 30)


@dataclass(frozen=True, slots=True)
class Sample:
    """One interval of one pool: a row of the cost regression."""
    t: float
    seconds: float
    counts: Mapping[str, float]   # requests per type routed to the pool
    cpu_s: float
    memory_bytes: float           # summed resident memory of the measured members at the sample
    member_s: float


@dataclass(frozen=True, slots=True)
class MemberReading:
    """A member's latest measurement and what it used since the one before (for status and /metrics)."""
    usage: MemberUsage
    cores: float | None           # CPU over the last interval; None on its first sample
    state: str


@dataclass(slots=True)
class _PoolTrack:
    recommender: Recommender
    samples: deque[Sample]
    readings: dict[str, MemberReading] = field(default_factory=dict)
    last_at: dict[str, float] = field(default_factory=dict)     # member -> monotonic time of its last reading
    minute: int | None = None
    row: list[float] = field(default_factory=lambda: [0.0] * 7)   # USAGE_COLUMNS of the open minute
    estimate: CostEstimate | None = None
    refitted: float = -math.inf
    recommendation: Recommendation | None = None
    applied: ResourceLimits | None = None
    oom_kills: int = 0
    cores: float = 0.0             # the pool's last interval
    memory_bytes: float = 0.0
    net_rx_rate: float | None = None
    net_tx_rate: float | None = None


class ResourceWatch:
    def __init__(self, cfg: Config, history: History, managers: Mapping[str, PoolManager], *,
                 clock: Callable[[], float] = time.time,
                 flush: Callable[[], Awaitable[None]] | None = None) -> None:
        self.cfg, self.history, self.managers, self.clock = cfg, history, managers, clock
        # have the workers report before a round: the type counts then cover the same interval as the
        # CPU read just after (a worker otherwise reports up to a second late)
        self._flush = flush
        self._pools: dict[str, _PoolTrack] = {}
        self._types_at: dict[str, int] = dict(history.type_requests)
        self._sampled_at = time.monotonic()
        self._unwritten: UsageRows = {}
        self._subscriptions: dict[int, asyncio.Task] = {}
        self._writing: asyncio.Task | None = None
        # read by the control loop's worker thread: replaced whole
        self.profiles: Mapping[str, tuple[Mapping[str, float], CpuBudget | None]] = {}

    # ------------------------------------------------------------------ running
    async def run(self) -> None:
        """Sample every `resources.interval` until cancelled; a failing round is logged and retried."""
        try:
            while True:
                await asyncio.sleep(self.cfg.routing.resources.interval)
                try:
                    await self.sample()
                except Exception as e:   # measuring must never take the control process down
                    log.error("resources.sample_failed", error=repr(e))
        finally:
            for task in self._subscriptions.values():
                task.cancel()
            await asyncio.gather(*self._subscriptions.values(), return_exceptions=True)
            self._subscriptions.clear()
            if self._writing is not None:
                await asyncio.gather(self._writing, return_exceptions=True)

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        for name in set(self._pools) - set(cfg.pools):
            del self._pools[name]

    async def sample(self) -> None:
        """One round: every managed pool's members measured, samples and recommendations updated."""
        if self._flush is not None:
            try:
                await self._flush()
            except Exception as e:   # a round with late counts is better than none
                log.warning("resources.flush_failed", error=repr(e))
        now = time.monotonic()
        seconds = max(now - self._sampled_at, 1e-6)
        self._sampled_at = now
        totals = dict(self.history.type_requests)
        deltas = {t: n - self._types_at.get(t, 0) for t, n in totals.items()}
        self._types_at = totals
        wall = self.clock()
        types_of = self._types_of_pools()
        for name, manager in list(self.managers.items()):
            spec = manager.spec
            if spec.backend == "static" or not self.cfg.routing.resources.enabled:
                continue
            self._follow_events(manager.backend)
            track = self._track(name, spec)
            views = {m.id: m for m in manager.members() if m.state in MEASURED}
            try:
                usage = await manager.backend.usage(list(views))
            except BackendError as e:
                log.warning("resources.unmeasured", pool=name, error=str(e))
                continue
            counts = {t: float(deltas.get(t, 0)) for t in types_of.get(name, ())}
            self._record(name, track, spec, views, usage, counts, seconds, now, wall)
        self._write_closed(wall)
        await self._refit_due(wall)

    def _record(self, name: str, track: _PoolTrack, spec: Pool, views: Mapping[str, Any],
                usage: Mapping[str, MemberUsage], counts: Mapping[str, float], seconds: float,
                now: float, wall: float) -> None:
        cpu_s = member_s = memory = 0.0
        peak = 0
        rx = tx = 0.0
        net = False
        serving_cores: list[float] = []
        serving_memory: list[int] = []
        readings: dict[str, MemberReading] = {}
        for mid, u in usage.items():
            view = views.get(mid)
            if view is None:
                continue
            before = track.readings.get(mid)
            at = track.last_at.get(mid)
            parked = view.state is MemberState.SHADOW and view.shadow_state in ("paused", "stopped")
            cores = None
            if before is not None and at is not None and now > at:
                dt = now - at
                used = u.cpu_seconds - before.usage.cpu_seconds
                if used >= 0:   # a restarted member's counter starts again: its first interval is skipped
                    cores = used / dt
                    if not parked:
                        cpu_s += used
                        member_s += dt
                        memory += u.memory_bytes
                    if view.state in SERVING:
                        serving_cores.append(cores)
                        serving_memory.append(u.memory_bytes)
                    throttled = u.cpu_throttled_seconds - before.usage.cpu_throttled_seconds
                    if u.cpu_limit is not None and throttled > THROTTLED_SHARE * dt:
                        track.recommender.throttled(wall, u.cpu_limit)
                if u.net_rx_bytes is not None and before.usage.net_rx_bytes is not None:
                    rx += max(0, u.net_rx_bytes - before.usage.net_rx_bytes)
                    tx += max(0, (u.net_tx_bytes or 0) - (before.usage.net_tx_bytes or 0))
                    net = True
                if u.oom_kills > before.usage.oom_kills:
                    self._oom(name, track, wall, u.memory_limit)
            peak = max(peak, u.memory_peak_bytes)
            readings[mid] = MemberReading(u, cores, view.state.value)
            track.last_at[mid] = now
        track.readings = readings
        track.last_at = {mid: t for mid, t in track.last_at.items() if mid in readings}
        if serving_cores:
            track.recommender.observe(wall, serving_cores, serving_memory)
        track.cores, track.memory_bytes = cpu_s / seconds, memory
        track.net_rx_rate, track.net_tx_rate = (rx / seconds, tx / seconds) if net else (None, None)
        if member_s > 0:
            track.samples.append(Sample(wall, seconds, counts, cpu_s, memory, member_s))
        minute = int(wall // 60) * 60
        if track.minute is not None and track.minute != minute:
            self._close_minute(name, track)
        track.minute = minute
        r = track.row
        r[0] += cpu_s
        r[1] += member_s
        r[2] += memory * seconds
        r[3] = max(r[3], float(peak))
        r[4] += rx
        r[5] += tx
        r[6] += 1

    def _close_minute(self, name: str, track: _PoolTrack) -> None:
        if track.minute is None or not track.row[6]:
            return
        key = (track.minute, name)
        old = self._unwritten.get(key)
        self._unwritten[key] = track.row if old is None else [
            max(a, b) if i == 3 else a + b for i, (a, b) in enumerate(zip(old, track.row))]
        track.row = [0.0] * 7

    def _write_closed(self, wall: float) -> None:
        """Closed minutes go to the store in a thread; a failed write keeps them for the next round."""
        if not self._unwritten or (self._writing is not None and not self._writing.done()):
            return
        rows, self._unwritten = self._unwritten, {}

        async def write() -> None:
            try:
                await asyncio.to_thread(self.history.write_usage, rows)
            except StoreError as e:
                log.error("resources.write_failed", error=str(e), rows=len(rows))
                for key, row in rows.items():
                    self._unwritten.setdefault(key, row)
        self._writing = asyncio.create_task(write())

    async def _refit_due(self, wall: float) -> None:
        due = [(name, track) for name, track in self._pools.items()
               if wall - track.refitted >= max(REFIT_EVERY_S, self.cfg.routing.resources.interval)]
        if not due:
            return
        fitted = await asyncio.to_thread(lambda: [(name, track, _fit(track)) for name, track in due])
        profiles = dict(self.profiles)
        for name, track, estimate in fitted:
            track.refitted = wall
            track.estimate = estimate
            spec = self.cfg.pools.get(name)
            if spec is None:
                continue
            track.recommendation = track.recommender.recommend() if spec.scaling.rightsize != "off" else None
            self._apply(name, track, spec)
            profiles[name] = self._profile(track, spec)
        self.profiles = {name: p for name, p in profiles.items() if name in self._pools}

    def _apply(self, name: str, track: _PoolTrack, spec: Pool) -> None:
        manager = self.managers.get(name)
        rec = track.recommendation
        want = None
        if spec.scaling.rightsize == "apply" and spec.backend in RIGHTSIZED_BACKENDS and rec is not None:
            want = ResourceLimits(rec.cpus, rec.memory_bytes)
        if want != track.applied:
            track.applied = want
            if want is not None:
                log.info("pool.rightsized", pool=name, cpus=want.cpus, memory_bytes=want.memory_bytes,
                         reasons=list(rec.reasons) if rec is not None else [])
        if manager is not None:
            manager.limits = track.applied

    def _profile(self, track: _PoolTrack, spec: Pool) -> tuple[Mapping[str, float], CpuBudget | None]:
        """Per-type CPU-seconds and the members' CPU budget, for the planner."""
        est = track.estimate
        if est is None:
            return {}, None
        costs = dict(zip(est.types, (float(c) for c in est.cpu_per_request))) if est.separable else \
            {t: float(est.pooled_cpu_per_request) for t in est.types}
        limit = self._cpu_limit(track, spec)
        return costs, CpuBudget(limit, float(est.cpu_baseline_cores)) if limit else None

    def _cpu_limit(self, track: _PoolTrack, spec: Pool) -> float | None:
        if track.applied is not None and track.applied.cpus is not None:
            return track.applied.cpus
        section = spec.docker if spec.backend == "docker" else spec.swarm if spec.backend == "swarm" else None
        if section is not None and section.cpus is not None:
            return float(section.cpus)
        limits = [r.usage.cpu_limit for r in track.readings.values() if r.usage.cpu_limit]
        return float(np.median(limits)) if limits else None

    # ------------------------------------------------------------------ OOM kills
    def _follow_events(self, backend: Backend) -> None:
        key = id(backend)
        task = self._subscriptions.get(key)
        if task is None or task.done():
            self._subscriptions[key] = asyncio.create_task(self._watch(backend))

    async def _watch(self, backend: Backend) -> None:
        sub = backend.events()
        try:
            async for ev in sub:
                if getattr(ev, "reason", "") != "oom":
                    continue
                track = self._pools.get(ev.pool)
                if track is None:
                    continue
                before = track.readings.get(ev.instance_id)
                self._oom(ev.pool, track, self.clock(), before.usage.memory_limit if before else None)
        finally:
            sub.close()

    def _oom(self, pool: str, track: _PoolTrack, wall: float, limit: int | None) -> None:
        track.oom_kills += 1
        track.recommender.oom(wall, limit)
        spec = self.cfg.pools.get(pool)
        if spec is not None and spec.scaling.rightsize != "off":
            track.recommendation = track.recommender.recommend()
            self._apply(pool, track, spec)
        log.warning("resources.oom_killed", pool=pool, memory_limit=limit,
                    recommended_memory=track.recommendation.memory_bytes if track.recommendation else None)

    # ------------------------------------------------------------------ views
    def _track(self, name: str, spec: Pool) -> _PoolTrack:
        track = self._pools.get(name)
        r = self.cfg.routing.resources
        if track is None:
            track = self._pools[name] = _PoolTrack(
                Recommender(window_s=r.recommend_window),
                deque(maxlen=max(10, int(math.ceil(r.window / r.interval)))))
        return track

    def _types_of_pools(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for route in self.cfg.routing.routes:
            out.setdefault(route.pool, set()).add(route.type)
        return out

    def status(self, pool: str, demand: Sequence[TypeDemand] = (), forecast: Sequence[Any] = ()) -> dict[str, Any]:
        """/admin/status `resources` of one pool: measured use, per-type costs, forecast demand and the
        recommendation; `demand` and `forecast` are the control loop's latest for the pool."""
        track = self._pools.get(pool)
        spec = self.cfg.pools.get(pool)
        if track is None or spec is None:
            return {"measured": None}
        members = [{"id": mid, "state": r.state, "cores": _round(r.cores, 4),
                    "memory_bytes": r.usage.memory_bytes, "memory_peak_bytes": r.usage.memory_peak_bytes,
                    "cpu_limit": r.usage.cpu_limit, "memory_limit": r.usage.memory_limit,
                    "oom_kills": r.usage.oom_kills}
                   for mid, r in sorted(track.readings.items())]
        est = track.estimate
        rec = track.recommendation
        return {
            "measured": {"members": len(members), "cores": round(track.cores, 4),
                         "memory_bytes": int(track.memory_bytes),
                         "memory_peak_bytes": max((r.usage.memory_peak_bytes for r in track.readings.values()), default=0),
                         "net_rx_bytes_per_s": _round(track.net_rx_rate, 1),
                         "net_tx_bytes_per_s": _round(track.net_tx_rate, 1),
                         "oom_kills": track.oom_kills, "samples": len(track.samples)},
            "members": members,
            "costs": est.to_json() if est is not None else None,
            "forecast": self.forecast(pool, demand, forecast),
            "rightsize": spec.scaling.rightsize,
            "recommendation": rec.to_json() if rec is not None else None,
            "applied": {"cpus": track.applied.cpus, "memory_bytes": track.applied.memory_bytes}
            if track.applied is not None else None,
        }

    def forecast(self, pool: str, demand: Sequence[TypeDemand], forecast: Sequence[Any]) -> list[dict[str, Any]]:
        """Cores and memory the pool will need at each horizon: forecast rates per type x measured
        costs + the idle baseline of the members planned, with the forecast's band."""
        track = self._pools.get(pool)
        if track is None or track.estimate is None:
            return []
        by_h: dict[float, dict[str, tuple[float, float, float]]] = {}
        band = {f.horizon_s: (f.rate, f.lower) for f in forecast}
        for d in demand:
            rate, lower = band.get(d.horizon_s, (0.0, 0.0))
            low_share = lower / rate if rate > 0 else 1.0
            by_h.setdefault(d.horizon_s, {})[d.rtype] = (d.rate, d.rate * low_share, d.rate_upper)
        members = max(1, sum(1 for r in track.readings.values() if r.state in (s.value for s in SERVING)))
        out = []
        for h, rates in sorted(by_h.items()):
            dem = resource_demand(track.estimate, rates, members)
            out.append({"horizon": _horizon(h), "horizon_s": h, **dem.to_json()})
        return out

    def metrics(self) -> dict[str, dict[str, Any]]:
        """Per pool, for /metrics: per-member CPU seconds and memory, and the recommendation."""
        return {name: {"members": {mid: (r.usage.cpu_seconds, r.usage.memory_bytes) for mid, r in t.readings.items()},
                       "recommended_cpus": t.recommendation.cpus if t.recommendation else None,
                       "recommended_memory": t.recommendation.memory_bytes if t.recommendation else None}
                for name, t in self._pools.items()}

    def applied(self, pool: str) -> ResourceLimits | None:
        track = self._pools.get(pool)
        return track.applied if track is not None else None

    def cpu_profile(self, pool: str) -> tuple[Mapping[str, float], CpuBudget | None]:
        return self.profiles.get(pool, ({}, None))

    async def close(self) -> None:
        """Write what is measured of the open minutes (shutdown)."""
        for name, track in self._pools.items():
            self._close_minute(name, track)
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)
        if self._unwritten:
            with contextlib.suppress(StoreError):
                await asyncio.to_thread(self.history.write_usage, self._unwritten)
            self._unwritten = {}


def _fit(track: _PoolTrack) -> CostEstimate | None:
    samples = list(track.samples)
    if not samples:
        return None
    types = sorted({t for s in samples for t, n in s.counts.items() if n > 0})
    if not types:
        return None
    counts = np.array([[s.counts.get(t, 0.0) for t in types] for s in samples])
    cpu = np.array([s.cpu_s for s in samples])
    mem = np.array([s.memory_bytes for s in samples])
    member_s = np.array([s.member_s for s in samples])
    seconds = np.array([s.seconds for s in samples])
    # Rows are intervals of about `resources.interval`; normalised to the same length so rates and
    # members mean what the model says (the estimator's `minute_s` is the row length).
    length = float(np.median(seconds))
    scale = (length / seconds)[:, None]
    return estimate_costs(types, counts * scale, cpu * scale[:, 0], mem, member_s * scale[:, 0], minute_s=length)


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def _horizon(seconds: float) -> str:
    return f"{seconds / 3600:g}h" if seconds >= 3600 else f"{seconds / 60:g}m"
