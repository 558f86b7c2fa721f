"""The planner: forecasts, live load and the pool spec in; desired members per tier out. Pure.

Sizing is Little's law: requests in service = arrival rate × service time, so a pool needs
ceil(Σ_type rate_q(type) × service_time(type) / (concurrency × target_utilization)) ready members,
where rate_q is the forecast rate at the configured quantile (the risk knob) and the service time
per request type is learned from observed upstream latency.

Tiers:
- baseline   `capacity.min`, always on;
- predictive forecast-driven: ready members for the near future (the horizon that covers the
             shadow state's activation lead), and a shadow pool that covers the forecast peak over
             the cold-launch lead time, so what the forecast says may come can be activated in
             milliseconds instead of launched in seconds;
- burst      reactive, HPA-style on live in-flight requests, sized at `burst_utilization` rather than
             the pool's target: the forecast already holds the planned headroom, live load lags, and
             what the burst tier adds is activated from the shadow pool in milliseconds, so it only
             has to catch what the forecast missed. It scales up on the in-flight averaged over the
             short `scale_up_window` and down on `stable_window` (Knative's two windows): the first
             seconds of a burst count at once instead of a sixtieth at a time. Knative-like panic
             mode: in-flight above `panic_threshold` × target capacity over the short `panic_window`
             scales at once and never scales down while panicking. An anomaly (actuals outside the
             forecast interval) switches the pool to burst sizing: live load adds members and nothing
             the forecast prepared is given back until it clears.

The shadow pool is the largest of `shadow.size`, the forecast peak over the launch lead, and the
bursts the forecast does not see: a high quantile (`shadow.burst_quantile`) of the burst heights of
recent history (`pools.step.BurstHeights`), so what the burst tier activates is there to activate.

Scale-down is stabilised: the highest recommendation of the last `scale_down_delay` wins (HPA's
stabilisation window), and a member that became ready less than `cooldown` ago is not retired.
The caller keeps `PlannerState` between calls; the same code serves `run` and `simulate`.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from config.models import Pool


@dataclass(frozen=True, slots=True)
class TypeDemand:
    """Forecast arrivals of one request type into a pool, at one horizon."""
    rtype: str
    horizon_s: float
    rate: float                      # requests per second, point forecast
    rate_upper: float                # requests per second at the planning quantile
    service_time: float | None = None   # learned seconds per request; None: the pool's prior
    cpu_per_request: float | None = None   # measured CPU-seconds per request (resource profiles); None: unknown


@dataclass(frozen=True, slots=True)
class CpuBudget:
    """What a pool's members can give in CPU, from the measured resource profile: a pool whose members
    run out of CPU before they run out of concurrency slots is sized by CPU."""
    cores_per_member: float      # the CPU limit each member runs with (the pool's `cpus` or the applied recommendation)
    baseline_cores: float = 0.0  # what an idle member uses


@dataclass(frozen=True, slots=True)
class LiveLoad:
    """What the proxy sees now, averaged by the caller over the two windows."""
    in_flight_stable: float = 0.0    # mean in-flight requests over `stable_window`
    in_flight_panic: float = 0.0     # mean in-flight requests over `panic_window`
    anomaly: bool = False
    in_flight_recent: float = 0.0    # mean in-flight requests over `scale_up_window`


@dataclass(frozen=True, slots=True)
class PlanInputs:
    now: float
    demand: tuple[TypeDemand, ...] = ()
    live: LiveLoad = LiveLoad()
    ready_since: tuple[float, ...] = ()   # when each currently ready member became ready
    shadow_lead: float = 0.02             # measured activation lead of the shadow state, seconds
    burst_rate: float = 0.0               # capacity (req/s at 100 %) bursts beyond the forecast need (BurstHeights)
    cpu: CpuBudget | None = None          # members' CPU, when the pool has a limit and a measured profile


@dataclass(frozen=True, slots=True)
class Plan:
    ready: int            # desired ready members, all tiers, stabilised and capped
    shadow: int           # desired shadow members
    baseline: int
    predictive: int       # ready members above baseline the forecast asks for
    burst: int            # ready members above baseline + predictive live load asks for
    forecast_ready: int   # what the forecast alone asks for (shown in forecast-only mode)
    burst_shadow: int     # shadow members the burst heights of recent history ask for
    wanted: int           # before the `max` cap
    capped: bool
    panic: bool
    reasons: tuple[str, ...]


@dataclass(slots=True)
class PlannerState:
    recommendations: deque = field(default_factory=deque)   # (time, ready) for stabilisation
    panic_until: float = 0.0
    panic_floor: int = 0
    last: Plan | None = None


def members_for(load: float, spec: Pool, utilization: float | None = None) -> int:
    """Members needed to keep `load` requests in service at `utilization` (default: the pool's target)."""
    per_member = spec.concurrency * (utilization or spec.capacity.target_utilization)
    return math.ceil(load / per_member - 1e-9) if load > 0 else 0


def load_at(demand: tuple[TypeDemand, ...], spec: Pool, max_horizon: float, upper: bool = True) -> float:
    """Peak over horizons <= max_horizon of Σ_type rate × service time (Little's law)."""
    by_h: dict[float, float] = {}
    for d in demand:
        if d.horizon_s <= max_horizon:
            st = d.service_time if d.service_time else spec.scaling.service_time
            by_h[d.horizon_s] = by_h.get(d.horizon_s, 0.0) + (d.rate_upper if upper else d.rate) * st
    return max(by_h.values(), default=0.0)


def cpu_at(demand: tuple[TypeDemand, ...], max_horizon: float) -> float:
    """Peak over horizons <= max_horizon of the CPU cores the forecast (at the planning quantile) needs."""
    by_h: dict[float, float] = {}
    for d in demand:
        if d.horizon_s <= max_horizon and d.cpu_per_request:
            by_h[d.horizon_s] = by_h.get(d.horizon_s, 0.0) + d.rate_upper * d.cpu_per_request
    return max(by_h.values(), default=0.0)


def members_for_cpu(cores: float, budget: CpuBudget | None, spec: Pool) -> int:
    """Members whose CPU limits hold `cores` of request work at the pool's target utilisation, each
    also running its idle baseline; 0 when the budget cannot tell (no limit, or a baseline above it)."""
    if budget is None or cores <= 0:
        return 0
    usable = budget.cores_per_member * spec.capacity.target_utilization - budget.baseline_cores
    if usable <= 0:
        return 0
    return math.ceil(cores / usable - 1e-9)


def service_time(demand: tuple[TypeDemand, ...], spec: Pool) -> float:
    """Seconds per request of the pool's forecast mix at its nearest horizon (the prior without one)."""
    near = min((d.horizon_s for d in demand), default=None)
    rate = sum(d.rate_upper for d in demand if d.horizon_s == near)
    if rate <= 0:
        return spec.scaling.service_time
    return sum(d.rate_upper * (d.service_time or spec.scaling.service_time) for d in demand if d.horizon_s == near) / rate


def highest_recent(recommendations: deque, now: float, window: float) -> int:
    """Scale-down stabilisation: drop (time, ready) entries older than `window`; the highest left
    wins (0 when none is left). The planner's own decreases and the release of an operator's bound
    (balancer.operator.controls.Release) both go through it."""
    while recommendations and recommendations[0][0] < now - window:
        recommendations.popleft()
    return max((ready for _, ready in recommendations), default=0)


def plan(spec: Pool, inputs: PlanInputs, state: PlannerState) -> Plan:
    sc = spec.scaling
    now = inputs.now
    reasons: list[str] = []
    baseline = spec.capacity.min
    per_member = spec.concurrency * spec.capacity.target_utilization

    # Predictive: ready for the first horizon that covers the shadow activation lead; shadow for the
    # peak over the cold-launch lead (at least 15 minutes of forecast).
    horizons = sorted({d.horizon_s for d in inputs.demand})
    near = next((h for h in horizons if h >= inputs.shadow_lead), horizons[-1]) if horizons else 0.0
    forecast_ready = members_for(load_at(inputs.demand, spec, near), spec) if horizons else 0
    peak_ready = members_for(load_at(inputs.demand, spec, max(sc.launch_lead, 900.0)), spec) if horizons else 0
    if inputs.cpu is not None and horizons:
        # The binding resource: concurrency slots or CPU, whichever runs out first.
        cores = cpu_at(inputs.demand, near)
        cpu_ready = members_for_cpu(cores, inputs.cpu, spec)
        if cpu_ready > forecast_ready:
            reasons.append(f"cpu-bound: {cores:.2f} cores forecast need {cpu_ready} members of "
                           f"{inputs.cpu.cores_per_member:g} cpus (concurrency alone: {forecast_ready})")
            forecast_ready = cpu_ready
        peak_ready = max(peak_ready, members_for_cpu(cpu_at(inputs.demand, max(sc.launch_lead, 900.0)), inputs.cpu,
                                                     spec))

    # Burst: live in-flight, HPA-style, with Knative's panic mode.
    current = len(inputs.ready_since)
    # Up on the short window, down on the long one: stabilisation keeps what the short one added.
    reactive = members_for(max(inputs.live.in_flight_stable, inputs.live.in_flight_recent), spec,
                           sc.burst_utilization)
    capacity_now = max(current, 1) * per_member
    if inputs.live.in_flight_panic >= sc.panic_threshold * capacity_now:
        if state.panic_until <= now:
            reasons.append(f"panic: {inputs.live.in_flight_panic:.0f} in flight > "
                           f"{sc.panic_threshold:g}x capacity {capacity_now:.0f}")
        state.panic_until = now + sc.stable_window
        state.panic_floor = max(state.panic_floor, members_for(inputs.live.in_flight_panic, spec), current)
    panic = state.panic_until > now
    if not panic:
        state.panic_floor = 0
    burst_need = max(reactive, state.panic_floor if panic else 0)

    predictive_on = sc.mode == "forecast-and-scale"
    if inputs.live.anomaly:
        # The forecast is wrong right now: live load sizes the pool, and nothing the forecast
        # prepared (ready or shadow) is given back until the anomaly clears.
        reasons.append("anomaly: burst sizing until it clears")
        burst_need = max(burst_need, current)
    want = max(baseline, forecast_ready if predictive_on else 0, burst_need)
    if sc.mode == "forecast-only" and forecast_ready != want:
        reasons.append(f"forecast-only: forecast wants {forecast_ready} ready, acting on {want}")

    # Stabilise scale-down: the highest recommendation of the window wins; panic never scales down.
    state.recommendations.append((now, want))
    stable = highest_recent(state.recommendations, now, sc.scale_down_delay)
    if panic:
        stable = max(stable, state.last.ready if state.last else 0)
    # Members that became ready within the cool-down are not retired.
    recent = sum(1 for t in inputs.ready_since if now - t < sc.cooldown)
    stable = max(stable, min(recent, current))

    cap = spec.capacity.max
    capped = stable > cap
    if capped:
        reasons.append(f"capped: wants {stable} ready, max is {cap}")
    ready = min(stable, cap)

    shadow = burst_shadow = 0
    if spec.shadow.state != "none":
        forecast_shadow = max(0, peak_ready - ready) if predictive_on else 0
        if inputs.live.anomaly and state.last is not None:
            forecast_shadow = max(forecast_shadow, state.last.shadow)
        if predictive_on:
            burst_shadow = members_for(inputs.burst_rate * service_time(inputs.demand, spec), spec, 1.0)
        shadow = min(max(spec.shadow.size, forecast_shadow, burst_shadow), cap - ready)
        if forecast_shadow > max(spec.shadow.size, burst_shadow) and predictive_on:
            reasons.append(f"shadow {shadow}: forecast peak needs {peak_ready} within "
                           f"{max(sc.launch_lead, 900.0):.0f}s")
        elif burst_shadow > max(spec.shadow.size, forecast_shadow):
            reasons.append(f"shadow {shadow}: bursts beyond the forecast need {burst_shadow} "
                           f"(p{spec.shadow.burst_quantile * 100:g} of recent history)")

    predictive = max(0, min(ready, forecast_ready if predictive_on else 0) - baseline)
    burst = max(0, ready - baseline - predictive)
    result = Plan(ready=ready, shadow=shadow, baseline=min(baseline, ready), predictive=predictive, burst=burst,
                  forecast_ready=forecast_ready, burst_shadow=burst_shadow, wanted=stable, capped=capped, panic=panic,
                  reasons=tuple(reasons))
    state.last = result
    return result
