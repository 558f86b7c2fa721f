"""The planner as a pure function: forecasts, live load and the pool spec in, desired members out."""
from __future__ import annotations

import math

from config.models import Capacity, Pool, Scaling, Shadow
from pools.planner import CpuBudget, LiveLoad, PlanInputs, PlannerState, TypeDemand, members_for, plan


def pool(min_: int = 1, max_: int = 100, shadow: str = "paused", mode: str = "forecast-and-scale",
         **scaling) -> Pool:
    # concurrency 10 at 70 % target: 7 requests in service per member
    return Pool(command="app --port {port}", concurrency=10, capacity=Capacity(min=min_, max=max_),
                shadow=Shadow(state=shadow), scaling=Scaling(mode=mode, service_time=0.1, **scaling))


def demand(rate: float, upper: float | None = None, horizons=(300.0, 600.0, 900.0),
           rtype: str = "default", service_time: float | None = None) -> tuple[TypeDemand, ...]:
    return tuple(TypeDemand(rtype, h, rate, upper if upper is not None else rate, service_time) for h in horizons)


def inputs(now: float = 1000.0, demand_=(), live: LiveLoad = LiveLoad(), ready: int = 0,
           ready_since: float = 0.0) -> PlanInputs:
    return PlanInputs(now=now, demand=tuple(demand_), live=live, ready_since=(ready_since,) * ready)


def test_littles_law_sizes_ready_members_from_rate_and_service_time():
    # 700 req/s × 0.1 s = 70 in service; 7 per member at 70 % of 10
    p = plan(pool(), inputs(demand_=demand(rate=700.0)), PlannerState())
    assert p.ready == math.ceil(700.0 * 0.1 / 7) == 10
    assert p.forecast_ready == 10 and p.baseline == 1 and p.predictive == 9


def test_learned_service_time_per_type_overrides_the_prior_and_types_add_up():
    d = demand(70.0, rtype="fast") + demand(70.0, rtype="slow", service_time=0.5)
    p = plan(pool(), inputs(demand_=d), PlannerState())
    assert p.ready == math.ceil((70 * 0.1 + 70 * 0.5) / 7) == 6


def test_quantile_knob_plans_for_the_upper_bound_not_the_point():
    d = demand(rate=70.0, upper=140.0)
    p = plan(pool(), inputs(demand_=d), PlannerState())
    assert p.ready == 2           # 140 × 0.1 / 7, not the point's 1
    assert members_for(70.0 * 0.1, pool()) == 1


def test_shadow_covers_the_forecast_peak_within_the_launch_lead():
    # Now 70 req/s; in 10 minutes 350 req/s: ready for now, shadow for the peak ahead.
    d = (TypeDemand("default", 300.0, 70.0, 70.0), TypeDemand("default", 600.0, 350.0, 350.0),
         TypeDemand("default", 900.0, 70.0, 70.0))
    p = plan(pool(), inputs(demand_=d), PlannerState())
    assert p.ready == 1
    assert p.shadow == 5 - 1
    assert any("shadow" in r for r in p.reasons)


def test_peak_beyond_the_lead_is_not_shadowed():
    d = (TypeDemand("default", 300.0, 70.0, 70.0), TypeDemand("default", 3600.0, 700.0, 700.0))
    p = plan(pool(launch_lead=60.0), inputs(demand_=d), PlannerState())
    assert (p.ready, p.shadow) == (1, 0)


def test_no_shadow_tier_without_a_shadow_state():
    d = (TypeDemand("default", 300.0, 70.0, 70.0), TypeDemand("default", 600.0, 350.0, 350.0))
    assert plan(pool(shadow="none"), inputs(demand_=d), PlannerState()).shadow == 0


def test_scale_down_waits_for_the_stabilisation_window():
    spec, state = pool(scale_down_delay=300.0, cooldown=0.0), PlannerState()
    assert plan(spec, inputs(now=0.0, demand_=demand(700.0)), state).ready == 10
    assert plan(spec, inputs(now=200.0, demand_=demand(70.0), ready=10), state).ready == 10
    assert plan(spec, inputs(now=301.0, demand_=demand(70.0), ready=10), state).ready == 1


def test_members_ready_within_the_cooldown_are_not_retired():
    spec = pool(scale_down_delay=0.0, cooldown=60.0)
    p = plan(spec, inputs(now=1000.0, demand_=demand(70.0), ready=4, ready_since=970.0), PlannerState())
    assert p.ready == 4
    p = plan(spec, inputs(now=1000.0, demand_=demand(70.0), ready=4, ready_since=900.0), PlannerState())
    assert p.ready == 1


def test_panic_scales_at_once_and_never_down_while_panicking():
    spec, state = pool(scale_down_delay=0.0, cooldown=0.0, panic_window=6.0, stable_window=60.0), PlannerState()
    # 2 ready members hold 14 in service at target; 70 in flight is 5x that.
    p = plan(spec, inputs(now=0.0, live=LiveLoad(in_flight_stable=10.0, in_flight_panic=70.0), ready=2), state)
    assert p.panic and p.ready == 10
    assert any(r.startswith("panic") for r in p.reasons)
    calm = LiveLoad(in_flight_stable=0.0, in_flight_panic=0.0)
    p = plan(spec, inputs(now=30.0, live=calm, ready=10), state)
    assert p.panic and p.ready == 10
    p = plan(spec, inputs(now=61.0, live=calm, ready=10), state)
    assert not p.panic and p.ready == 1


def test_burst_tier_follows_live_in_flight_without_a_forecast():
    p = plan(pool(), inputs(live=LiveLoad(in_flight_stable=35.0, in_flight_panic=35.0), ready=5), PlannerState())
    assert p.ready == 5 and p.burst == 4 and p.predictive == 0


def test_burst_tier_sizes_live_load_at_the_burst_utilization_not_the_target():
    # 56 in flight: 8 members at the 70 % target (7 each), 7 at an 80 % burst utilisation (8 each).
    live = LiveLoad(in_flight_stable=56.0, in_flight_panic=56.0)
    assert plan(pool(burst_utilization=0.8), inputs(live=live, ready=7), PlannerState()).ready == 7
    assert plan(pool(burst_utilization=0.7), inputs(live=live, ready=7), PlannerState()).ready == 8
    # The forecast still plans at the target: the burst tier catches only what it missed.
    assert plan(pool(burst_utilization=0.8), inputs(demand_=demand(560.0)), PlannerState()).ready == 8


def test_max_caps_the_plan_and_reports_it():
    p = plan(pool(max_=4), inputs(demand_=demand(700.0)), PlannerState())
    assert p.ready == 4 and p.capped and p.wanted == 10
    assert any("capped" in r for r in p.reasons)


def test_forecast_only_shows_the_forecast_without_acting_on_it():
    p = plan(pool(mode="forecast-only"), inputs(demand_=demand(700.0)), PlannerState())
    assert p.forecast_ready == 10
    assert p.ready == 1 and p.predictive == 0 and p.shadow == 0
    assert any(r.startswith("forecast-only") for r in p.reasons)


def test_reactive_mode_ignores_the_forecast():
    p = plan(pool(mode="reactive"), inputs(demand_=demand(700.0)), PlannerState())
    assert p.ready == 1 and p.forecast_ready == 10


def test_anomaly_switches_to_burst_sizing_and_holds_current_members():
    spec = pool(scale_down_delay=0.0, cooldown=0.0)
    low_forecast = demand(7.0)
    p = plan(spec, inputs(demand_=low_forecast, live=LiveLoad(in_flight_stable=42.0, in_flight_panic=42.0,
                                                               anomaly=True), ready=8), PlannerState())
    assert p.ready == 8                  # no forecast-led scale-down during the anomaly
    assert p.predictive == 0 and p.burst == 7
    assert any(r.startswith("anomaly") for r in p.reasons)
    p = plan(spec, inputs(demand_=low_forecast, live=LiveLoad(42.0, 42.0, anomaly=False), ready=8), PlannerState())
    assert p.ready == 6                  # burst sizing for 42 in flight once the forecast is trusted again


def test_a_pool_that_runs_out_of_cpu_before_concurrency_gets_more_members():
    # 70 req/s x 0.1 s = 7 in service: one member by concurrency. At 20 ms of CPU a request that is
    # 1.4 cores; members of 0.5 cpus at 70 % target, each idling at 0.05: 0.3 usable -> 5 members.
    d = tuple(TypeDemand("default", h, 70.0, 70.0, None, 0.02) for h in (300.0, 600.0, 900.0))
    base = plan(pool(), inputs(demand_=d), PlannerState())
    assert base.ready == 1   # no CPU budget: concurrency alone
    cpu = PlanInputs(now=1000.0, demand=d, cpu=CpuBudget(cores_per_member=0.5, baseline_cores=0.05))
    p = plan(pool(), cpu, PlannerState())
    assert p.ready == p.forecast_ready == math.ceil(1.4 / (0.5 * 0.7 - 0.05)) == 5
    assert any(r.startswith("cpu-bound: 1.40 cores") for r in p.reasons)
    # the shadow pool covers the CPU peak ahead too
    peak = d[:2] + (TypeDemand("default", 900.0, 140.0, 140.0, None, 0.02),)
    p = plan(pool(), PlanInputs(now=1000.0, demand=peak, cpu=CpuBudget(0.5, 0.05)), PlannerState())
    assert p.ready == 5 and p.ready + p.shadow == math.ceil(2.8 / 0.3) == 10
    # a budget whose idle baseline eats the target cannot size anything: concurrency decides
    p = plan(pool(), PlanInputs(now=1000.0, demand=d, cpu=CpuBudget(0.1, 0.2)), PlannerState())
    assert p.ready == 1
