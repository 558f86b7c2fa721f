"""Replay a trace through four capacity policies on a virtual clock: the engine of `warmfront simulate`.

The predictive policy is warmfront itself: the live `Forecaster` (observing each finished bin,
refitting when `refit_due`), the anomaly detector, service times learned per request type, and
the live loop's step (`pools.step`: demand, `pools.planner.plan`, `Desired`). The others are
yardsticks: `static` (sized for the training peak), `reactive` (Kubernetes HPA defaults) and
`oracle` (exact future demand at 100 % utilisation, launched just in time: the cost floor).

Every policy but the oracle publishes its `Desired` to the real `PoolManager` (reconcile decision,
boot waits, activations, drains), acting on `SimulatedBackend` with `SimulatedHealth`, all on one
`pools.virtual.VirtualClockLoop` per replay: what a manager does between two steps happens at the
virtual instant it would live (a member booted 12 s into a step is routed then, not at the next step).

Fluid model per step: the requests arriving in it (a trace bin spread evenly over its steps) meet
`ready member-seconds × member_rate` of capacity; the rest are cold requests. The first `train_s`
seconds are for learning only; every policy runs through them, but only later steps are scored.

Resource mode (`simulate --resources`, a trace with per-request costs: `pools.trace_costs`): every
member also has `SimPool.cpus` cores, and a step's CPU demand (the core-seconds of the requests
arriving in it) meets `ready member-seconds × cpus` of CPU, fluid as well. Work beyond it is
CPU-starved, and the step's requests count as cold by the larger shortfall of the two (a request
needs a slot and the CPU to run in it). The predictive policy learns each type's core-seconds per
request from the bins that have ended and hands them, with the members' `CpuBudget`, to the same
planner the live loop runs; reactive is HPA on CPU utilisation; the oracle holds exactly what the
binding resource needs.

No peeking: the forecaster is fed a bin only once it has ended, and a policy deciding at step `i`
reads demand and capacity of steps before `i` only.
"""
from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from config.models import Pool
from pools.backends.simulated import Delays, SimulatedBackend, SimulatedHealth
from pools.manager import PoolManager
from pools.members import MemberState, MemberView
from pools.planner import CpuBudget, Plan, PlannerState, TypeDemand
from pools.reconciler import Desired, DesiredState
from pools.step import (HORIZONS_S, SENSITIVITIES, BinScores, BurstHeights, LoadSamples, PoolObservation,
                        SeriesForecasts, plan_pool, pool_demand)
from pools.virtual import run_virtual
from predictor.engine import Forecaster
from predictor.profiles import ResourceProfile, SourceClusters
from predictor.series import Series

POLICIES = ("static", "reactive", "predictive", "oracle")
Progress = Callable[[float], None]

# Kubernetes HorizontalPodAutoscaler defaults (autoscaling/v2).
HPA_TARGET = 0.7
HPA_TOLERANCE = 0.1
HPA_WINDOW_S = 60.0
HPA_DOWN_STABILISATION_S = 300.0
# Without a change to act on, a live manager looks again every half second; the simulated backend
# changes only when the manager acts, so its periodic pass would find nothing: an hour is plenty.
IDLE_PASS_S = 3600.0
_COSTS_FULL = (MemberState.LAUNCHING, MemberState.WARMING, MemberState.READY, MemberState.DRAINING)


@dataclass(frozen=True, slots=True)
class SimPool:
    name: str
    spec: Pool            # scaling.service_time is such that concurrency / service_time == member_rate
    member_rate: float    # requests per second one member serves at 100 % utilisation
    sources: tuple[tuple[int, str], ...]   # (trace series index, request type) feeding the pool
    cpus: float | None = None   # resource mode: cores each member has (None: requests are the only resource)


@dataclass(frozen=True, slots=True)
class SimConfig:
    train_s: float
    step_s: float = 15.0
    delays: Delays = field(default_factory=Delays)
    shadow_cost: float = 0.2
    forecast_bin_s: float = 300.0
    refit_every_s: float = 900.0   # the live default of `predictor.refit_every`
    reactive_target: float = 0.7   # the HPA policy's target utilisation (Kubernetes' common 70 %)


@dataclass(slots=True)
class PolicyRun:
    """One policy on one pool, step by step over the scored part, so any window of it can be
    scored (`totals`): the folds of `simulate --folds` are windows of one replay."""
    step_s: float
    member_rate: float             # requests per second one member serves at 100 % utilisation
    target: float | None           # the utilisation it plans ready members at (None: it does not)
    shadow_cost: float
    demand: np.ndarray             # requests arriving per step
    capacity: np.ndarray           # requests the ready members could serve per step
    ready_s: np.ndarray            # member-seconds per step: ready,
    boot_s: np.ndarray             # launching or warming,
    drain_s: np.ndarray            # draining,
    shadow_s: np.ndarray           # and kept as shadows
    ready: np.ndarray              # ready members at the end of each step
    activations: np.ndarray        # shadows made ready per step
    before: int = 0                # ready members just before the first step (scale events count from it)
    cpus: float | None = None              # resource mode: cores per member
    cpu_demand: np.ndarray | None = None   # resource mode: core-seconds arriving per step,
    cpu_capacity: np.ndarray | None = None  # and the core-seconds the ready members could give

    def window(self, s: slice) -> PolicyRun:
        start = s.start or 0
        before = int(self.ready[start - 1]) if start > 0 else self.before
        cut = {name: getattr(self, name)[s] for name in _STEP_ARRAYS}
        if self.cpu_demand is not None and self.cpu_capacity is not None:
            cut.update(cpu_demand=self.cpu_demand[s], cpu_capacity=self.cpu_capacity[s])
        return replace(self, **cut, before=before)

    def need(self, utilisation: float = 1.0) -> np.ndarray:
        """Members each step's demand needs at `utilisation`: of requests, or in resource mode of
        whichever resource binds (slots or CPU)."""
        need = np.ceil(self.demand / (self.member_rate * utilisation * self.step_s) - 1e-9)
        if self.cpus is not None and self.cpu_demand is not None:
            need = np.maximum(need, np.ceil(self.cpu_demand / (self.cpus * utilisation * self.step_s) - 1e-9))
        return need

    def totals(self) -> dict:
        step_min = self.step_s / 60.0
        served = np.minimum(self.demand, self.capacity)
        full = (self.ready_s + self.boot_s + self.drain_s).sum() + self.shadow_cost * self.shadow_s.sum()
        need = self.need()
        headroom = 0.0
        if self.target is not None:
            headroom = float((self.need(self.target) - need).sum() * step_min)
        ready_min = float(self.ready_s.sum() / 60.0)
        cold = self.demand - served
        minutes = {"at_need": float(need.sum() * step_min), "target_headroom": headroom,
                   "excess_ready": ready_min - float(need.sum() * step_min) - headroom,
                   "launch": float(self.boot_s.sum() / 60.0), "drain": float(self.drain_s.sum() / 60.0),
                   "shadow": float(self.shadow_cost * self.shadow_s.sum() / 60.0)}
        out: dict = {"requests": float(self.demand.sum()), "cold_requests": 0.0,
                     "container_minutes": float(full / 60.0),
                     "scale_events": int(np.count_nonzero(np.diff(np.concatenate([[self.before], self.ready])))),
                     "shadow_activations": int(self.activations.sum()),
                     "minutes": minutes}   # where the container-minutes go (they add up to container_minutes)
        if self.cpus is not None and self.cpu_demand is not None and self.cpu_capacity is not None:
            cold = np.maximum(cold, self.demand * self._starved_share())
            out["resources"] = self._cpu_totals(float(full), minutes)
        out["cold_requests"] = float(cold.sum())
        return out

    def _starved_share(self) -> np.ndarray:
        """Per step, the share of its CPU demand the ready members could not give."""
        assert self.cpu_demand is not None and self.cpu_capacity is not None
        starved = np.maximum(0.0, self.cpu_demand - self.cpu_capacity)
        return np.divide(starved, self.cpu_demand, out=np.zeros(len(starved)), where=self.cpu_demand > 0)

    def _cpu_totals(self, member_s: float, minutes: dict[str, float]) -> dict:
        """Core-seconds reserved (every member-second costed in container-minutes, times the member's
        cores, with the same split), used (the CPU demand the ready members gave) and starved."""
        assert self.cpus is not None and self.cpu_demand is not None and self.cpu_capacity is not None
        return {"core_seconds_reserved": member_s * self.cpus,
                "core_seconds_used": float(np.minimum(self.cpu_demand, self.cpu_capacity).sum()),
                "cpu_starved_core_seconds": float(np.maximum(0.0, self.cpu_demand - self.cpu_capacity).sum()),
                "core_seconds": {k: v * 60.0 * self.cpus for k, v in minutes.items()}}


OVER_ORACLE = ("target_headroom", "excess_ready", "launch", "drain", "shadow")
_STEP_ARRAYS = ("demand", "capacity", "ready_s", "boot_s", "drain_s", "shadow_s", "ready", "activations")


@dataclass(frozen=True, slots=True)
class LearnedCpu:
    """Resource mode: the CPU per request the predictive policy had learned by its last step."""
    costs: dict[str, float]   # request type -> mean core-seconds per request over the bins seen
    bins_seen: int            # trace bins it had folded in (the first `bins_seen`)


@dataclass(slots=True)
class SimResult:
    step_s: float
    scored_from: int                 # first scored step
    demand: np.ndarray               # all pools, requests per second per scored step
    runs: dict[str, list[PolicyRun]]   # policy -> one run per pool (the oracle's over the whole scored part)
    cold_s: float = 60.0             # the oracle's launch time
    learned_cpu: dict[str, LearnedCpu] = field(default_factory=dict)   # resource mode: pool -> what predictive learned

    def summary(self, window: slice | None = None) -> dict[str, dict]:
        """Per policy over the scored part, or a window of it (scored steps, 0-based): requests, cold
        requests and rate, container-minutes, cost against the oracle of that same window, scale
        events, and where the minutes above the oracle's go."""
        w = window or slice(0, len(self.demand))
        totals = {}
        for name, runs in self.runs.items():
            if name == "oracle":   # the floor of this window, planned for this window alone
                parts = [oracle(r.demand[w], r.member_rate, self.step_s, self.cold_s, 0,
                                None if r.cpu_demand is None else r.cpu_demand[w], r.cpus) for r in runs]
            else:
                parts = [r.window(w) for r in runs]
            totals[name] = _total([p.totals() for p in parts])
        floor = totals["oracle"]["container_minutes"]
        base = totals["oracle"]["minutes"]
        core_floor = totals["oracle"].get("core_seconds_reserved", 0.0)
        for name, t in totals.items():
            t["cost_vs_oracle"] = round(t["container_minutes"] / floor, 3) if floor > 0 else None
            if "core_seconds_reserved" in t:
                t["core_seconds_vs_oracle"] = (round(t["core_seconds_reserved"] / core_floor, 3)
                                               if core_floor > 0 else None)
            minutes = t.pop("minutes")
            if name != "oracle" and floor > 0:
                # The minutes above the oracle's by cause, as shares of the oracle's (they add up
                # to cost_vs_oracle - 1): the utilisation target's headroom, ready members beyond
                # it (forecast error, stabilisation, lag), launches, drains and shadows.
                t["over_oracle"] = {k: round((minutes[k] - base[k]) / floor, 4) for k in OVER_ORACLE}
        return totals

    def windows(self, k: int) -> list[slice]:
        """The scored part cut into `k` consecutive windows of equal length (the folds)."""
        n = len(self.demand)
        if not 1 <= k <= n:
            raise ValueError(f"cannot cut {n} scored steps into {k} folds")
        edges = [round(i * n / k) for i in range(k + 1)]
        return [slice(a, b) for a, b in zip(edges, edges[1:])]


def _total(parts: list[dict]) -> dict:
    requests = sum(p["requests"] for p in parts)
    cold = sum(p["cold_requests"] for p in parts)
    minutes = {key: sum(p["minutes"][key] for p in parts) for key in parts[0]["minutes"]} if parts else {}
    out = {"requests": int(round(requests)), "cold_requests": int(round(cold)),
           "cold_rate": round(cold / requests, 6) if requests else 0.0,
           "container_minutes": round(sum(p["container_minutes"] for p in parts), 1),
           "scale_events": sum(p["scale_events"] for p in parts),
           "shadow_activations": sum(p["shadow_activations"] for p in parts), "minutes": minutes}
    if parts and all("resources" in p for p in parts):
        out.update(_cpu_total([p["resources"] for p in parts]))
    return out


def _cpu_total(parts: list[dict]) -> dict:
    """Resource mode: the pools' core-seconds summed (each pool's at its own members' cores)."""
    out: dict = {key: round(sum(p[key] for p in parts), 3)
                 for key in ("core_seconds_reserved", "core_seconds_used", "cpu_starved_core_seconds")}
    out["core_seconds"] = {key: round(sum(p["core_seconds"][key] for p in parts), 3) for key in parts[0]["core_seconds"]}
    return out


# ---------------------------------------------------------------------------------------- predictor
@dataclass(frozen=True, slots=True)
class ForecastPath:
    """What the live predictor said at each forecaster-bin boundary `j` (time j × bin_s), from data
    that had ended by then, at the live loop's horizons (`pools.step.HORIZONS_S`) and quantiles:
    rates in requests per second per series and horizon, and the interval (requests) it gave the
    bin that opened at `j`, which that bin's actual is judged by."""
    bin_s: float
    horizons: tuple[float, ...]
    band_quantile: float   # the quantile of `upper`
    point: np.ndarray      # [boundary, series, horizon]
    upper: np.ndarray
    band: np.ndarray       # [boundary, series, 2] lower and upper bound of the bin opened at the boundary
    actual: np.ndarray     # [boundary, series] requests in the bin that ended at the boundary


def forecast_path(series: Series, bin_s: float, refit_every_s: float = 900.0) -> ForecastPath:
    """Run the live Forecaster along the trace, one forecaster bin at a time, as the live loop
    runs it: same quantiles, horizons and refit cadence."""
    now = [0.0]
    clusters = SourceClusters()   # young series borrow their cluster's daily shape, as live
    fc = Forecaster(lambda: now[0], bin_s=bin_s, refit_every_s=refit_every_s, shape_for=clusters.shape_for)
    per = int(round(bin_s / series.bin_s))
    n_bounds = math.ceil(series.length / per) + 1
    point = np.zeros((n_bounds, series.n, len(HORIZONS_S)))
    upper = np.zeros_like(point)
    band = np.zeros((n_bounds, series.n, 2))
    actual = np.zeros((n_bounds, series.n))
    index = {sid: i for i, sid in enumerate(series.ids)}
    # The live loop's first step comes at the start, with nothing observed: the refit clock starts there.
    fc.observe(0.0, {})
    if fc.refit_due():
        clusters.update(fc.ids, *fc.daily_profiles())
        fc.refit()
    for j in range(1, n_bounds):
        now[0] = j * bin_s
        lo, hi = (j - 1) * per, min(j * per, series.length)
        for b in range(lo, hi):
            fc.observe(b * series.bin_s, dict(zip(series.ids, series.values[:, b].tolist())))
        fc.observe(now[0], {})   # the bin has ended: close it before forecasting
        actual[j] = series.values[:, lo:hi].sum(axis=1)
        if fc.refit_due():
            clusters.update(fc.ids, *fc.daily_profiles())
            fc.refit()
        fa = fc.forecast_arrays(HORIZONS_S)
        if fa is None:
            continue
        rows = [index[sid] for sid in fa.ids]
        window = np.asarray(fa.window_s)
        point[j, rows] = fa.point / window
        upper[j, rows] = fa.upper / window
        band[j, rows, 0], band[j, rows, 1] = fa.lower[:, 0], fa.upper[:, 0]
    return ForecastPath(bin_s, HORIZONS_S, fc.quantiles[1], point, upper, band, actual)


def pool_anomalies(path: ForecastPath, sources: list[int], name: str) -> np.ndarray:
    """Open upward anomalies per boundary, judged by the live loop's `BinScores`: the pool's actual
    against the sum of its sources' intervals, so a surprise on a source too small to matter does
    not switch the whole pool to burst sizing."""
    scores = BinScores(path.bin_s)
    open_up = np.zeros(len(path.actual), dtype=bool)
    for j in range(1, len(path.actual)):
        scores.add(name, j - 1, float(path.actual[j, sources].sum()))
        scores.close_before(j)
        open_up[j] = scores.anomaly_up(name)
        lower, upper = path.band[j, sources].sum(axis=0)
        scores.expect(name, j, float(lower), float(upper))
    return open_up


# ---------------------------------------------------------------------------------------- policies
class Replay:
    """Per-step record of one policy on one pool; a decision at step i may read entries < i only."""

    def __init__(self, demand: np.ndarray, step_s: float, cpu: np.ndarray | None = None) -> None:
        self.step_s = step_s
        self._demand = demand                    # requests per step
        self.capacity = np.zeros(len(demand))    # requests the ready members could serve per step
        self._cpu = cpu                          # resource mode: core-seconds arriving per step,
        self.cpu_capacity = np.zeros(len(demand))   # and what the ready members' cores could give

    def arrivals_before(self, i: int, steps: int) -> np.ndarray:
        return self._demand[max(0, i - steps):i]

    def utilisation_before(self, i: int, steps: int) -> float | None:
        """Mean busy share of the ready members (at most 1, as CPU is); None without ready members."""
        return _busy(self._demand[max(0, i - steps):i], self.capacity[max(0, i - steps):i])

    def cpu_utilisation_before(self, i: int, steps: int) -> float | None:
        """Mean CPU utilisation of the ready members, what HPA's CPU metric reads (at most 1: a
        member cannot use more than its limit); None without ready members or outside resource mode."""
        if self._cpu is None:
            return None
        return _busy(self._cpu[max(0, i - steps):i], self.cpu_capacity[max(0, i - steps):i])


def _busy(arrived: np.ndarray, capacity: np.ndarray) -> float | None:
    have = capacity > 0
    if not have.any():
        return None
    return float(np.mean(np.minimum(1.0, arrived[have] / capacity[have])))


class Members(Protocol):
    """A policy's pool as its decision may read it."""
    manager: PoolManager

    def ready_ids(self) -> list[str]: ...


class Static:
    def __init__(self, pool: SimPool, members: int) -> None:
        self.desired_ = Desired(members, 0, "none", max(members, pool.spec.capacity.max), pool.spec.drain_timeout)

    def desired(self, i: int, now: float, members: Members, replay: Replay) -> Desired:
        return self.desired_


class Reactive:
    """Kubernetes HPA: every sync, desired = ceil(ready × utilisation / target) outside a 10 %
    tolerance, scale-up limited to max(+100 %, +4), scale-down to the highest recommendation of the
    last 5 minutes. Utilisation is averaged over the last minute and cannot exceed 100 %. In resource
    mode (`on_cpu`) the utilisation is the ready members' CPU's, as HPA's usual CPU metric."""

    def __init__(self, pool: SimPool, step_s: float, target: float = HPA_TARGET, on_cpu: bool = False) -> None:
        self.spec = pool.spec
        self.target = target
        self.on_cpu = on_cpu
        self.window = max(1, int(round(HPA_WINDOW_S / step_s)))
        self.replicas = pool.spec.capacity.min
        self.recommendations: deque[tuple[float, int]] = deque()

    def desired(self, i: int, now: float, members: Members, replay: Replay) -> Desired:
        cap = self.spec.capacity
        util = (replay.cpu_utilisation_before if self.on_cpu else replay.utilisation_before)(i, self.window)
        rec = self.replicas
        if util is not None and abs(util / self.target - 1.0) > HPA_TOLERANCE:
            rec = math.ceil(len(members.ready_ids()) * util / self.target)
        rec = min(max(rec, cap.min), cap.max, max(2 * self.replicas, self.replicas + 4))
        q = self.recommendations
        q.append((now, rec))
        while q[0][0] <= now - HPA_DOWN_STABILISATION_S:
            q.popleft()
        self.replicas = rec if rec >= self.replicas else min(self.replicas, max(r for _, r in q))
        return Desired(self.replicas, 0, "none", cap.max, self.spec.drain_timeout)


class Predictive:
    """warmfront: the forecast path, service times learned from what the members served, live
    in-flight load and anomalies into the live loop's step (`pools.step.plan_pool`), with the lead
    times the manager measured; its `Desired` is what the manager reaches. `plans` keeps every
    step's `Plan` when asked (the parity test compares them with the live loop's). With `costs` (core-seconds
    per series and trace bin) and the pool's `cpus`, it learns CPU per request and plans for the binding
    resource, as the live loop does from measured resource profiles."""

    def __init__(self, pool: SimPool, path: ForecastPath, series: Series, record: bool = False,
                 costs: np.ndarray | None = None) -> None:
        self.pool = pool
        self.path = path
        self.state = PlannerState()
        self.load = LoadSamples()
        self._rows = [idx for idx, _ in pool.sources]
        self._types = tuple(rtype for _, rtype in pool.sources)
        self._obs = PoolObservation(pool.spec, frozenset(self._types))
        self._bound = -1
        self._demand: tuple[TypeDemand, ...] = ()
        self._anomalies = pool_anomalies(path, self._rows, pool.name)
        # Per request type, requests per trace bin: what History would hold for the members' minutes.
        self._bin_s = series.bin_s
        self._by_type = {t: series.values[[i for i, rt in pool.sources if rt == t]].sum(axis=0)
                         for t in sorted(set(self._types))}
        self._next_bin = 0
        self.profiles: dict[str, ResourceProfile] = {}
        self._service: dict[str, float] = {}
        # Burst heights from the pool's requests per trace bin, as the live loop's from History's minutes.
        self.bursts = BurstHeights(path.bin_s)
        self._pool_bins = series.values[self._rows].sum(axis=0)
        self._next_burst_bin = 0
        self.plans: list[Plan] | None = [] if record else None
        self.cpu = CpuLearner(self._by_type, costs, pool, self._bin_s)
        if self.cpu.on:
            assert pool.cpus is not None
            self._obs = replace(self._obs, cpu=CpuBudget(cores_per_member=pool.cpus, baseline_cores=0.0))
        self._cpu_costs: dict[str, float] = {}

    def desired(self, i: int, now: float, members: Members, replay: Replay) -> Desired:
        spec = self.pool.spec
        j = min(int(now // self.path.bin_s), len(self.path.point) - 1)   # the latest forecast made by `now`
        service = self._learn_service_times(now)
        cpu_costs = self.cpu.learn(now)
        if j != self._bound or service != self._service or cpu_costs != self._cpu_costs:
            self._bound, self._service, self._cpu_costs = j, service, cpu_costs
            self._demand = pool_demand(replace(self._obs, service_times=service, cpu_costs=cpu_costs),
                                       self.forecasts_at(j))
            if j > 0:   # the live loop forecasts nothing before a first bin has closed
                self.bursts.expect(self.pool.name, j, self._demand)
        self._observe_bursts(now)
        # Sampled as the live loop samples the proxy: the ready members now, and the requests in
        # flight at them over the last step (Little's law: arrival rate × service time); with no
        # member ready nothing is in flight (the proxy refuses the requests).
        arrived = float(replay.arrivals_before(i, 1).sum()) / replay.step_s
        ready = members.ready_ids()
        self.load.sample(now, ready, arrived * spec.scaling.service_time if ready else 0.0)
        live = self.load.live(now, spec.scaling, bool(self._anomalies[j]))
        measured = members.manager.measured_lead
        obs = replace(self._obs, live=live, ready_since=tuple(self.load.ready_since.values()),
                      service_times=service, cpu_costs=cpu_costs, cold_lead=measured("cold"),
                      shadow_lead=measured(spec.shadow.state),
                      burst_rate=self.bursts.rate(self.pool.name, spec.shadow))
        step = plan_pool(now, obs, self._demand, self.state)
        if self.plans is not None:
            self.plans.append(step.plan)
        return step.desired

    def _learn_service_times(self, now: float) -> dict[str, float]:
        """Fold every trace bin that has ended into the per-type profiles, as the live loop folds
        History's minutes: each request took the members' service time (the simulated members are
        the pool's members: `scaling.service_time` matches their rate)."""
        st = self.pool.spec.scaling.service_time
        while (self._next_bin + 1) * self._bin_s <= now and self._next_bin < len(next(iter(self._by_type.values()))):
            for rtype, counts in self._by_type.items():
                n = float(counts[self._next_bin])
                self.profiles.setdefault(rtype, ResourceProfile()).update(n, n * st)
            self._next_bin += 1
        return {t: p.service_time_s for t, p in self.profiles.items() if p.service_time_s is not None}

    def _observe_bursts(self, now: float) -> None:
        """Every trace bin that has ended into the burst heights, then close the forecaster bins
        before `now`'s, as the live loop does with History's minutes at each step."""
        while (self._next_burst_bin + 1) * self._bin_s <= now and self._next_burst_bin < len(self._pool_bins):
            b = self._next_burst_bin
            self.bursts.add(self.pool.name, int(b * self._bin_s // self.path.bin_s), float(self._pool_bins[b]))
            self._next_burst_bin += 1
        self.bursts.close_before(int(now // self.path.bin_s), {self.pool.name: self.pool.spec})

    def forecasts_at(self, j: int) -> SeriesForecasts:
        n = len(self._rows)
        return SeriesForecasts(self._types, self.path.point[j, self._rows], self.path.upper[j, self._rows],
                               self.path.band_quantile, np.ones(n, dtype=bool),
                               np.full(n, SENSITIVITIES.index("normal"), dtype=np.int64), horizons=self.path.horizons)


class CpuLearner:
    """Each request type's CPU cost, learned online: the mean core-seconds per request over the trace
    bins that have ended (no peeking), what a live pool reads off its members' CPU counters against
    the requests they served. Off (`on` False) outside resource mode: it then learns nothing."""

    def __init__(self, counts: dict[str, np.ndarray], costs: np.ndarray | None, pool: SimPool, bin_s: float) -> None:
        self.on = costs is not None and pool.cpus is not None
        self._counts = counts
        self._core_s = ({t: costs[[i for i, rt in pool.sources if rt == t]].sum(axis=0) for t in counts}
                        if costs is not None and self.on else {})
        self._bin_s = bin_s
        self._seen: dict[str, tuple[float, float]] = {}   # type -> (requests, core-seconds) over the bins seen
        self.bins_seen = 0
        self.costs: dict[str, float] = {}

    def learn(self, now: float) -> dict[str, float]:
        """Fold the bins that ended by `now` in; the per-type means (empty outside resource mode)."""
        if not self.on:
            return self.costs
        total = len(next(iter(self._counts.values())))
        moved = False
        while (self.bins_seen + 1) * self._bin_s <= now and self.bins_seen < total:
            b = self.bins_seen
            for rtype, core in self._core_s.items():
                n, c = self._seen.get(rtype, (0.0, 0.0))
                self._seen[rtype] = (n + float(self._counts[rtype][b]), c + float(core[b]))
            self.bins_seen += 1
            moved = True
        if moved:
            self.costs = {t: c / n for t, (n, c) in self._seen.items() if n > 0}
        return self.costs


Policy = Static | Reactive | Predictive


# ---------------------------------------------------------------------------------------- replay
def arrivals_per_step(series: Series, pool: SimPool, step_s: float) -> np.ndarray:
    """Requests arriving per step: each trace bin spread evenly over its steps."""
    return _per_step(series.values, series.bin_s, pool, step_s)


def cpu_per_step(core_s: np.ndarray, series: Series, pool: SimPool, step_s: float) -> np.ndarray:
    """Resource mode: core-seconds arriving per step, each trace bin's spread evenly as its requests are."""
    return _per_step(core_s, series.bin_s, pool, step_s)


def _per_step(values: np.ndarray, bin_s: float, pool: SimPool, step_s: float) -> np.ndarray:
    per = int(round(bin_s / step_s))
    bins = values[[idx for idx, _ in pool.sources]].sum(axis=0)
    return np.repeat(bins / per, per)


@dataclass(frozen=True, slots=True)
class Prepared:
    """What every policy of one simulation shares: per-pool arrivals, the first scored step and
    the live predictor's forecasts along the trace (computed once, read by every predictive run)."""
    series: Series
    pools: tuple[SimPool, ...]
    cfg: SimConfig
    demands: tuple[np.ndarray, ...]
    scored_from: int
    path: ForecastPath
    core_s: np.ndarray | None = None                    # resource mode: core-seconds per series and trace bin
    cpu_demands: tuple[np.ndarray, ...] | None = None   # resource mode: per pool, core-seconds per step

    def cpu_of(self, k: int) -> np.ndarray | None:
        """Pool `k`'s core-seconds per step in resource mode, else None."""
        return None if self.cpu_demands is None else self.cpu_demands[k]


def prepare(series: Series, pools: list[SimPool], cfg: SimConfig, core_s: np.ndarray | None = None) -> Prepared:
    """`core_s` (core-seconds per series and trace bin, `pools.trace_costs`) turns resource mode on."""
    demands = tuple(arrivals_per_step(series, p, cfg.step_s) for p in pools)
    n_steps = len(demands[0])
    scored_from = min(n_steps - 1, int(round(cfg.train_s / cfg.step_s)))
    cpu = None if core_s is None else tuple(cpu_per_step(core_s, series, p, cfg.step_s) for p in pools)
    return Prepared(series, tuple(pools), cfg, demands, scored_from,
                    forecast_path(series, cfg.forecast_bin_s, cfg.refit_every_s), core_s, cpu)


def make_policy(name: str, prepared: Prepared, k: int, pool: SimPool | None = None) -> Policy:
    """Policy `name` for pool `k` of `prepared` (or a variant of that pool's spec)."""
    pool = pool or prepared.pools[k]
    step, demand, cpu = prepared.cfg.step_s, prepared.demands[k], prepared.cpu_of(k)
    if name == "static":
        train = slice(0, max(1, prepared.scored_from))
        members = math.ceil(float(demand[train].max()) / step / pool.member_rate - 1e-9)
        if cpu is not None and pool.cpus is not None:   # sized for the training peak of the binding resource
            members = max(members, math.ceil(float(cpu[train].max()) / step / pool.cpus - 1e-9))
        return Static(pool, max(1, members))
    if name == "reactive":
        return Reactive(pool, step, prepared.cfg.reactive_target, on_cpu=cpu is not None)
    if name == "predictive":
        return Predictive(pool, prepared.path, prepared.series, costs=prepared.core_s)
    raise ValueError(f"no policy {name!r}")


def policy_target(policy: Policy, pool: SimPool) -> float | None:
    if isinstance(policy, Reactive):
        return policy.target
    if isinstance(policy, Predictive):
        return pool.spec.capacity.target_utilization
    return None


def run(series: Series, pools: list[SimPool], cfg: SimConfig, progress: Progress | None = None,
        prepared: Prepared | None = None) -> SimResult:
    prepared = prepared or prepare(series, pools, cfg)
    n_steps = len(prepared.demands[0])
    total = 3 * n_steps * len(pools)
    done = 0
    runs: dict[str, list[PolicyRun]] = {name: [] for name in POLICIES}
    learned: dict[str, LearnedCpu] = {}
    for k, (pool, demand) in enumerate(zip(pools, prepared.demands)):
        cpu = prepared.cpu_of(k)
        for name in ("static", "reactive", "predictive"):
            def tick(i: int, base: int = done) -> None:
                if progress is not None:
                    progress((base + i) / total)
            policy = make_policy(name, prepared, k)
            runs[name].append(replay_policy(pool, policy, demand, cfg, prepared.scored_from, tick, cpu=cpu))
            if isinstance(policy, Predictive) and policy.cpu.on:
                learned[pool.name] = LearnedCpu(dict(policy.cpu.costs), policy.cpu.bins_seen)
            done += n_steps
        runs["oracle"].append(oracle(demand, pool.member_rate, cfg.step_s, cfg.delays.cold, prepared.scored_from,
                                     cpu, pool.cpus))
    if progress is not None:
        progress(1.0)
    return SimResult(cfg.step_s, prepared.scored_from,
                     np.sum(prepared.demands, axis=0)[prepared.scored_from:] / cfg.step_s, runs, cfg.delays.cold,
                     learned)


class Ledger:
    """What one replay's members cost and serve, integrated per step from the member lists the
    manager publishes (its `on_change`): member-seconds by state (ready; launching or warming;
    draining; shadow) and the shadows made ready, per step."""

    def __init__(self, steps: int, step_s: float, clock: Callable[[], float]) -> None:
        self.step_s, self.clock = step_s, clock
        self.seconds = {key: np.zeros(steps) for key in ("ready", "boot", "drain", "shadow")}
        self.activations = np.zeros(steps, dtype=np.int64)
        self._ready: list[str] = []
        self._counts = dict.fromkeys(self.seconds, 0)
        self._states: dict[str, MemberState] = {}
        self._t = 0.0

    def ready_ids(self) -> list[str]:
        return self._ready

    def on_change(self, pool: str, members: Sequence[MemberView]) -> None:
        now = self.clock()
        self.accrue(now)
        states = {m.id: m.state for m in members}
        made_ready = sum(1 for mid, st in states.items()
                         if st is MemberState.READY and self._states.get(mid) is MemberState.SHADOW)
        if made_ready:
            self.activations[min(int(now // self.step_s), len(self.activations) - 1)] += made_ready
        self._states = states
        self._ready = [mid for mid, st in states.items() if st is MemberState.READY]
        counts = dict.fromkeys(self.seconds, 0)
        for st in states.values():
            key = _COST_KEY.get(st)
            if key is not None:
                counts[key] += 1
        self._counts = counts

    def accrue(self, until: float) -> None:
        """Add the members as they are now to every step from the last change to `until`."""
        steps = len(self.activations)
        while self._t < until:
            i = int(self._t // self.step_s)
            if i >= steps:
                break
            end = min(until, (i + 1) * self.step_s)
            for key, n in self._counts.items():
                if n:
                    self.seconds[key][i] += n * (end - self._t)
            self._t = end


_COST_KEY = {MemberState.READY: "ready", MemberState.LAUNCHING: "boot", MemberState.WARMING: "boot",
             MemberState.DRAINING: "drain", MemberState.SHADOW: "shadow"}


class SimMembers:
    """A replay's pool as a policy reads it: the manager (its measured lead times) and its members."""

    def __init__(self, manager: PoolManager, ledger: Ledger) -> None:
        self.manager, self.ledger = manager, ledger

    def ready_ids(self) -> list[str]:
        return self.ledger.ready_ids()


def replay_policy(pool: SimPool, policy: Policy, demand: np.ndarray, cfg: SimConfig, scored_from: int,
                  tick: Callable[[int], None] = lambda i: None, cpu: np.ndarray | None = None) -> PolicyRun:
    """One policy over the whole trace, its `PoolManager` on a virtual clock of its own; `cpu`
    (core-seconds per step, with the pool's `cpus`) scores it in resource mode."""
    return run_virtual(_replay(pool, policy, demand, cfg, scored_from, tick, cpu))


async def _replay(pool: SimPool, policy: Policy, demand: np.ndarray, cfg: SimConfig, scored_from: int,
                  tick: Callable[[int], None], cpu: np.ndarray | None = None) -> PolicyRun:
    loop = asyncio.get_running_loop()
    step = cfg.step_s
    n = len(demand)
    backend = SimulatedBackend(cfg.delays, loop.time)
    ledger = Ledger(n, step, loop.time)
    manager = PoolManager(pool.name, pool.spec, backend, clock=loop.time, on_change=ledger.on_change,
                          checker=SimulatedHealth(backend), interval=IDLE_PASS_S, wall_clock=loop.time)
    members = SimMembers(manager, ledger)
    cpus = pool.cpus if cpu is not None else None
    replay = Replay(demand, step, cpu if cpus is not None else None)
    ready = np.zeros(n, dtype=np.int64)
    every = max(1, n // 100)
    published: Desired | None = None
    task: asyncio.Task | None = None
    try:
        for i in range(n + 1):
            now = i * step
            await asyncio.sleep(now - loop.time())
            ledger.accrue(now)
            if i > 0:   # step i - 1 has ended: what it served is known
                replay.capacity[i - 1] = ledger.seconds["ready"][i - 1] * pool.member_rate
                if cpus is not None:
                    replay.cpu_capacity[i - 1] = ledger.seconds["ready"][i - 1] * cpus
                ready[i - 1] = len(ledger.ready_ids())
            if i == n:
                break
            desired = policy.desired(i, now, members, replay)
            if desired != published:
                manager.set_desired(DesiredState.of({pool.name: desired}, now))
                published = desired
            if task is None:   # the first pass already reaches the first decision, as `run` waits for the first plan
                task = asyncio.create_task(manager.run())
            if i % every == 0:
                tick(i)
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    s = slice(scored_from, n)
    sec = ledger.seconds
    on = cpus is not None and cpu is not None
    return PolicyRun(step, pool.member_rate, policy_target(policy, pool), cfg.shadow_cost, demand[s],
                     replay.capacity[s], sec["ready"][s], sec["boot"][s], sec["drain"][s], sec["shadow"][s],
                     ready[s], ledger.activations[s], before=int(ready[scored_from - 1]) if scored_from else 0,
                     cpus=cpus, cpu_demand=cpu[s] if on and cpu is not None else None,
                     cpu_capacity=replay.cpu_capacity[s] if on else None)


def oracle(demand: np.ndarray, member_rate: float, step_s: float, cold_s: float, scored_from: int,
           cpu: np.ndarray | None = None, cpus: float | None = None) -> PolicyRun:
    """Exactly enough members each step at 100 % utilisation, each launched `cold_s` before it is needed.
    Members are interchangeable, so each layer k (the k-th member) is costed alone: a gap in its need
    shorter than a launch is bridged by keeping the member, a longer one by retiring and relaunching.
    In resource mode (`cpu` core-seconds per step, `cpus` per member) the need is the binding
    resource's: exact future CPU demand at 100 %, so it is never CPU-starved."""
    d = demand[scored_from:]
    need = np.ceil(d / (member_rate * step_s) - 1e-9).astype(np.int64)
    c = None if cpu is None or cpus is None else cpu[scored_from:]
    if c is not None and cpus is not None:
        need = np.maximum(need, np.ceil(c / (cpus * step_s) - 1e-9).astype(np.int64))
    held = np.zeros(len(d), dtype=np.int64)
    boot_s = np.zeros(len(d))
    bridge = int(cold_s // step_s)
    for k in range(1, int(need.max(initial=0)) + 1):
        on = need >= k
        edges = np.diff(np.concatenate([[0], on.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        layer = on.copy()
        for gap_start, gap_end in zip(ends[:-1], starts[1:]):
            if gap_end - gap_start <= bridge:
                layer[gap_start:gap_end] = True
        held += layer
        launches = np.flatnonzero(np.diff(np.concatenate([[0], layer.astype(np.int8)])) == 1)
        np.add.at(boot_s, launches, cold_s)   # each launch's boot, charged where the member is needed
    zeros = np.zeros(len(d))
    return PolicyRun(step_s, member_rate, None, 0.0, d, held * member_rate * step_s, held * step_s, boot_s,
                     zeros, zeros, held, np.zeros(len(d), dtype=np.int64), cpus=cpus if c is not None else None,
                     cpu_demand=c, cpu_capacity=held * cpus * step_s if c is not None and cpus is not None else None)
