"""One control step for `run` and `simulate`: forecasts and observations in, `Desired` per pool out.

`balancer.control.loop.ControlLoop` (live) and `pools.simulate` (replay) both call `pool_demand` and
`plan_pool` for every pool they plan, and both judge anomalies with `BinScores`, so what simulate measures is what run
does. The callers only differ in where observations come from: History, the proxy's in-flight
counters and the pool managers live; the trace, the simulated backend and a virtual clock in a
replay. Everything here is typed, frozen data in and out; the only state is what the caller keeps
between steps (`PlannerState`, `BinScores`).

Forecast → demand, per pool and (request type, horizon):
- the predictor's band is at its own quantile; a series is planned at `scaling.quantile` moved by
  its source's latency sensitivity (`planning_quantile`), read off the same band assuming it is
  roughly normal;
- a young series of a source with a declared workload profile forecasts at least the profile;
- sources opted out of the predictive tier add nothing (baseline and burst serve them);
- what sessions under way will send next is a floor under the nearest horizon.

Bursts the forecast does not see (`BurstHeights`): per pool, each closed forecaster bin's busiest
rate against the rate its plan was made for; a high quantile of recent heights sizes the shadow pool.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from config.models import Pool, Scaling, Shadow
from pools.planner import CpuBudget, LiveLoad, Plan, PlanInputs, PlannerState, TypeDemand, plan
from pools.reconciler import Desired
from predictor.anomaly import AnomalyDetector

HORIZONS_S = (300.0, 900.0, 1800.0, 3600.0, 86400.0)
SENSITIVITIES = ("low", "normal", "high")
# Activation lead per shadow state until a pool measures its own: medians of the activation
# benchmark (README, "Activation", app booting in 0 s). A stopped shadow boots again: cold.
ACTIVATION_LEAD_S = {"running": 0.001, "paused": 0.0175}


def planning_quantile(quantile: float, sensitivity: str) -> float:
    """The forecast quantile a source's load is planned at: `high` halves the uncovered tail
    (0.9 → 0.95), `low` halves the distance to the median (0.9 → 0.7)."""
    if sensitivity == "high":
        return 1.0 - (1.0 - quantile) / 2.0
    if sensitivity == "low":
        return 0.5 + (quantile - 0.5) / 2.0
    return quantile


@dataclass(frozen=True, slots=True)
class SeriesForecasts:
    """Every series' forecast at `horizons`, requests per second; rows are series."""
    types: tuple[str, ...]          # request type of each row
    rate: np.ndarray                # [series, horizon] point forecast
    upper: np.ndarray               # [series, horizon] upper bound of the predictor's band
    band_quantile: float            # the quantile that upper bound is at
    predictive: np.ndarray          # [series] bool: the source is planned (not opted out)
    sensitivity: np.ndarray         # [series] index into SENSITIVITIES
    prior: np.ndarray | None = None  # [series, horizon] a declared profile's rate for young series
    horizons: tuple[float, ...] = HORIZONS_S


@dataclass(frozen=True, slots=True)
class PoolObservation:
    """What one pool's plan reads besides the forecasts."""
    spec: Pool
    types: frozenset[str]                                  # request types routed to the pool
    live: LiveLoad = LiveLoad()
    ready_since: tuple[float, ...] = ()                    # when each ready member became ready
    sessions: Mapping[str, float] = field(default_factory=dict)        # type -> req/s sessions will send next
    service_times: Mapping[str, float] = field(default_factory=dict)   # type -> learned seconds per request
    cold_lead: float | None = None      # measured launch-to-ready of this pool's members
    shadow_lead: float | None = None    # measured activation of its shadow state
    burst_rate: float = 0.0             # capacity bursts beyond the forecast need (`BurstHeights.rate`)
    cpu_costs: Mapping[str, float] = field(default_factory=dict)   # type -> measured CPU-seconds per request
    cpu: CpuBudget | None = None        # members' CPU limit and idle use, when measured


@dataclass(frozen=True, slots=True)
class PoolStep:
    demand: tuple[TypeDemand, ...]
    plan: Plan
    desired: Desired


def pool_demand(obs: PoolObservation, fc: SeriesForecasts) -> tuple[TypeDemand, ...]:
    """Demand per (type, horizon) of one pool: the routed, planned series summed at the quantile
    each is planned at, with the sessions' floor under the nearest horizon."""
    rate, upper = fc.rate, fc.upper
    if fc.prior is not None:
        bump = fc.prior > rate
        rate, upper = np.where(bump, fc.prior, rate), np.where(bump, np.maximum(upper, fc.prior), upper)
    z_hi = NormalDist().inv_cdf(fc.band_quantile)
    z_of = np.array([NormalDist().inv_cdf(planning_quantile(obs.spec.scaling.quantile, s)) for s in SENSITIVITIES])
    rate_q = np.maximum(rate, rate + (upper - rate) * (z_of[fc.sensitivity] / z_hi)[:, None]) if len(rate) else rate
    types = np.array(fc.types, dtype=object)
    by_type: dict[tuple[str, float], list[float]] = {}   # (type, horizon) -> [rate, rate_q]
    for rtype in sorted(set(fc.types) & obs.types):
        sel = fc.predictive & (types == rtype)
        if sel.any():
            r, rq = rate[sel].sum(axis=0), rate_q[sel].sum(axis=0)
            for c, h in enumerate(fc.horizons):
                by_type[(rtype, h)] = [float(r[c]), float(rq[c])]
    near = fc.horizons[0]
    for rtype, r in obs.sessions.items():
        if r > 0 and rtype in obs.types:
            acc = by_type.setdefault((rtype, near), [0.0, 0.0])
            acc[0], acc[1] = max(acc[0], r), max(acc[1], r)
    return tuple(TypeDemand(rtype, h, r, rq, obs.service_times.get(rtype), obs.cpu_costs.get(rtype))
                 for (rtype, h), (r, rq) in sorted(by_type.items()))


def plan_pool(now: float, obs: PoolObservation, demand: tuple[TypeDemand, ...], state: PlannerState) -> PoolStep:
    """One pool's plan and what its manager should reach, from its demand (`pool_demand`: the live
    loop sums demand in its worker thread and plans on the event loop; simulate at each boundary)."""
    spec = obs.spec
    # Lead times as measured on the pool's members; the activation benchmark's medians until then.
    if obs.cold_lead is not None and obs.cold_lead > spec.scaling.launch_lead:
        spec = spec.model_copy(update={"scaling": spec.scaling.model_copy(update={"launch_lead": obs.cold_lead})})
    lead = obs.shadow_lead or ACTIVATION_LEAD_S.get(spec.shadow.state, spec.scaling.launch_lead)
    p = plan(spec, PlanInputs(now, demand, obs.live, obs.ready_since, lead, obs.burst_rate, obs.cpu), state)
    return PoolStep(demand, p, Desired(ready=p.ready, shadow=p.shadow, shadow_state=spec.shadow.state,
                                       max_members=spec.capacity.max, drain_timeout=spec.drain_timeout))


class LoadSamples:
    """Live load of one pool as the step reads it: in-flight requests sampled over time (averaged
    over `stable_window` and `panic_window`) and when each ready member was first seen ready."""

    def __init__(self, maxlen: int = 600) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=maxlen)   # (time, in-flight)
        self.ready_since: dict[str, float] = {}

    def sample(self, now: float, ready: Collection[str], in_flight: float) -> None:
        self.samples.append((now, in_flight))
        for mid in ready:
            self.ready_since.setdefault(mid, now)
        for mid in set(self.ready_since) - set(ready):
            del self.ready_since[mid]

    def live(self, now: float, scaling: Scaling, anomaly: bool) -> LiveLoad:
        return LiveLoad(self._mean_since(now - scaling.stable_window), self._mean_since(now - scaling.panic_window),
                        anomaly, self._mean_since(now - scaling.scale_up_window))

    def _mean_since(self, since: float) -> float:
        """Mean of the samples taken at or after `since`; the latest one when the window holds none."""
        total, n = 0.0, 0
        for t, v in reversed(self.samples):   # in time order: only the window is read
            if t < since:
                break
            total, n = total + v, n + 1
        if n:
            return total / n
        return float(self.samples[-1][1]) if self.samples else 0.0


class BurstHeights:
    """Bursts the forecast does not see, per pool, for `shadow.burst_quantile`.

    For each forecaster bin: its actual rate (`add`: the minutes of History live, the trace bins in
    simulate) against the rate the first plan made for it planned for (`expect`: the demand at the
    nearest horizon, at the planning quantile), as the capacity — requests per second at 100 %
    utilisation — the burst tier then wants beyond what the forecast tier holds:
    actual / `burst_utilization` − planned / target, or 0. Heights of bins closed within
    `shadow.burst_history` are kept; `rate` is their quantile (the planner turns it into members).
    The bin's rate, not its busiest minute: on NASA the busiest minute's heights are mostly Poisson
    noise the burst tier absorbs, and shadows sized on them cost 1.15x reactive's container-minutes
    against 1.07x for the bin's, for 266 instead of 369 cold requests.
    The live loop and simulate feed it the same observations at the same boundaries."""

    def __init__(self, bin_s: float) -> None:
        self.bin_s = bin_s
        self._planned: dict[str, dict[int, float]] = {}   # pool -> bin -> planned req/s
        self._actual: dict[str, dict[int, float]] = {}    # pool -> bin -> req/s seen in it so far
        self._heights: dict[str, deque[tuple[int, float]]] = {}   # pool -> (bin, height), oldest first
        self._rate: dict[str, tuple[float, float]] = {}   # pool -> (quantile, rate) as of the last close

    def expect(self, pool: str, b: int, demand: tuple[TypeDemand, ...]) -> None:
        """The plan for bin `b` (the first one made for it counts, as in `BinScores`)."""
        near = min((d.horizon_s for d in demand), default=None)
        if near is not None:
            self._planned.setdefault(pool, {}).setdefault(b, sum(d.rate_upper for d in demand if d.horizon_s == near))

    def add(self, pool: str, b: int, requests: float) -> None:
        """`requests` of the pool seen in bin `b`."""
        actual = self._actual.setdefault(pool, {})
        actual[b] = actual.get(b, 0.0) + requests / self.bin_s

    def close_before(self, b: int, specs: Mapping[str, Pool]) -> None:
        """Turn every planned bin before `b` into a height; forget pools not in `specs`."""
        for name in (set(self._planned) | set(self._actual) | set(self._heights)) - set(specs):
            for d in (self._planned, self._actual, self._heights, self._rate):
                d.pop(name, None)
        for name, planned in self._planned.items():
            done = sorted(k for k in planned if k < b)
            if not done:
                continue
            spec, actual = specs[name], self._actual.get(name, {})
            heights = self._heights.setdefault(name, deque())
            for k in done:
                height = (actual.get(k, 0.0) / spec.scaling.burst_utilization
                          - planned.pop(k) / spec.capacity.target_utilization)
                heights.append((k, max(0.0, height)))
            oldest = b - spec.shadow.burst_history / self.bin_s
            while heights and heights[0][0] < oldest:
                heights.popleft()
            self._rate.pop(name, None)
        for actual in self._actual.values():
            for k in [k for k in actual if k < b]:
                del actual[k]

    def rate(self, pool: str, shadow: Shadow) -> float:
        """The `burst_quantile` of the pool's recent heights, requests per second at 100 % utilisation."""
        heights = self._heights.get(pool)
        if not heights or shadow.burst_quantile <= 0:
            return 0.0
        cached = self._rate.get(pool)
        if cached is None or cached[0] != shadow.burst_quantile:
            cached = self._rate[pool] = (shadow.burst_quantile,
                                         float(np.quantile([h for _, h in heights], shadow.burst_quantile)))
        return cached[1]


@dataclass(slots=True)
class _Bins:
    expected: dict[int, tuple[float, float]] = field(default_factory=dict)  # bin -> (lower, upper) requests
    actual: dict[int, float] = field(default_factory=dict)                 # bin -> requests


class BinScores:
    """Anomalies per pool: each forecaster bin's actual against the first interval forecast made
    for it (not one made halfway in), the interval summing the pool's series' bands in requests."""

    def __init__(self, bin_s: float, detector: AnomalyDetector | None = None) -> None:
        self.bin_s = bin_s
        self.detector = detector if detector is not None else AnomalyDetector()
        self._pools: dict[str, _Bins] = {}

    def expect(self, pool: str, b: int, lower: float, upper: float) -> None:
        self._pools.setdefault(pool, _Bins()).expected.setdefault(b, (lower, upper))

    def add(self, pool: str, b: int, requests: float) -> None:
        sc = self._pools.setdefault(pool, _Bins())
        sc.actual[b] = sc.actual.get(b, 0.0) + requests

    def close_before(self, b: int, pools: Mapping[str, object] | None = None) -> None:
        """Judge every pool's bins before `b`; forget pools not in `pools` (when given)."""
        if pools is not None:
            for name in set(self._pools) - set(pools):
                del self._pools[name]
        for name, sc in self._pools.items():
            for done in sorted(k for k in sc.expected if k < b):
                lower, upper = sc.expected.pop(done)
                self.detector.update(name, done * self.bin_s, sc.actual.get(done, 0.0), lower, upper)
            for done in [k for k in sc.actual if k < b]:
                del sc.actual[done]

    def anomaly_up(self, pool: str) -> bool:
        return any(a.series_id == pool and a.direction == "up" for a in self.detector.active())
