"""Bursts the forecast cannot see: burst heights size the shadow pool, the short window scales up."""
from __future__ import annotations

import pytest

from config.models import Capacity, Pool, Scaling, Shadow
from pools.planner import LiveLoad, PlanInputs, PlannerState, TypeDemand, plan
from pools.step import BurstHeights, LoadSamples

BIN_S = 300.0


def pool(max_: int = 100, shadow: str = "paused", mode: str = "forecast-and-scale", burst_quantile: float = 0.99,
         burst_history: float = 7 * 86400.0, **scaling) -> Pool:
    # concurrency 10, service time 0.1 s: a member serves 100 req/s at 100 %; target 0.7, burst tier at 0.8
    return Pool(command="app --port {port}", concurrency=10, capacity=Capacity(min=1, max=max_),
                shadow=Shadow(state=shadow, burst_quantile=burst_quantile, burst_history=burst_history),
                scaling=Scaling(mode=mode, service_time=0.1, **scaling))


def planned(rate: float) -> tuple[TypeDemand, ...]:
    return (TypeDemand("default", 300.0, rate, rate), TypeDemand("default", 900.0, rate, rate))


def feed(heights: BurstHeights, spec: Pool, b: int, planned_rate: float, actual_rate: float) -> None:
    heights.expect("p", b, planned(planned_rate))
    heights.add("p", b, actual_rate * BIN_S / 2)   # two halves of the bin, as History's minutes add up
    heights.add("p", b, actual_rate * BIN_S / 2)
    heights.close_before(b + 1, {"p": spec})


def test_burst_height_is_the_quantile_of_the_excess_over_what_the_plan_held():
    spec, heights = pool(), BurstHeights(BIN_S)
    # Planned 70 req/s holds 100 req/s of capacity at the 0.7 target; an actual of 80 + 0.8 h needs
    # h more at the burst tier's 0.8: heights 0, 1, ..., 99 req/s of capacity.
    for b in range(100):
        feed(heights, spec, b, 70.0, 80.0 + 0.8 * b)
    assert heights.rate("p", Shadow(state="paused", burst_quantile=0.95)) == pytest.approx(94.05)
    assert heights.rate("p", spec.shadow) == pytest.approx(98.01)
    assert heights.rate("p", Shadow(state="paused", burst_quantile=0.0)) == 0.0


def test_bins_at_or_under_the_plan_are_height_zero_and_count():
    spec, heights = pool(), BurstHeights(BIN_S)
    for b in range(99):
        feed(heights, spec, b, 70.0, 50.0)
    feed(heights, spec, 99, 70.0, 180.0)   # one burst in a hundred bins: 180 / 0.8 - 70 / 0.7 = 125
    assert heights.rate("p", Shadow(state="paused", burst_quantile=0.5)) == 0.0
    # p99.5 of 99 zeros and one 125, interpolated linearly: 0.505 of the way from 0 to 125
    assert heights.rate("p", Shadow(state="paused", burst_quantile=0.995)) == pytest.approx(0.505 * 125.0)


def test_only_the_first_plan_made_for_a_bin_counts():
    spec, heights = pool(), BurstHeights(BIN_S)
    heights.expect("p", 0, planned(70.0))
    heights.expect("p", 0, planned(700.0))   # a later step re-forecast the open bin: too late to count
    heights.add("p", 0, 160.0 * BIN_S)
    heights.close_before(1, {"p": spec})
    assert heights.rate("p", spec.shadow) == pytest.approx(160.0 / 0.8 - 100.0)


def test_heights_older_than_the_burst_history_are_forgotten():
    spec, heights = pool(burst_history=86400.0), BurstHeights(BIN_S)
    feed(heights, spec, 0, 0.0, 800.0)
    assert heights.rate("p", spec.shadow) == pytest.approx(1000.0)
    for b in range(1, 289):   # a day of quiet bins later
        feed(heights, spec, b, 70.0, 50.0)
    assert heights.rate("p", spec.shadow) == 0.0


def test_a_pool_gone_from_the_config_is_forgotten():
    spec, heights = pool(), BurstHeights(BIN_S)
    feed(heights, spec, 0, 0.0, 800.0)
    heights.close_before(2, {})
    assert heights.rate("p", spec.shadow) == 0.0


def test_shadow_pool_covers_the_burst_heights_in_members():
    # 250 req/s of capacity × 0.1 s = 25 requests in service: 3 members of concurrency 10
    p = plan(pool(), PlanInputs(now=0.0, demand=planned(70.0), burst_rate=250.0), PlannerState())
    assert (p.ready, p.burst_shadow, p.shadow) == (1, 3, 3)
    assert any("bursts beyond the forecast" in r for r in p.reasons)


def test_burst_shadow_is_bounded_by_capacity_and_needs_a_shadow_state_and_the_forecast():
    inputs = PlanInputs(now=0.0, demand=planned(70.0), burst_rate=250.0)
    assert plan(pool(max_=3), inputs, PlannerState()).shadow == 2
    assert plan(pool(shadow="none"), inputs, PlannerState()).shadow == 0
    assert plan(pool(mode="reactive"), inputs, PlannerState()).shadow == 0


def test_forecast_shadow_still_wins_when_it_is_larger():
    d = (TypeDemand("default", 300.0, 70.0, 70.0), TypeDemand("default", 600.0, 700.0, 700.0))
    p = plan(pool(), PlanInputs(now=0.0, demand=d, burst_rate=250.0), PlannerState())
    assert (p.burst_shadow, p.shadow) == (3, 10 - 1)


def test_burst_tier_scales_up_on_the_short_window_and_down_on_the_long_one():
    spec, state = pool(scale_down_delay=0.0, cooldown=0.0), PlannerState()
    ready_since = (0.0, 0.0)
    # 60 s average 14 in flight (2 members at 0.8 of 10), the last 10 s 56: up to 7 at once,
    # below the panic threshold (2x the 14 two members hold at target).
    burst = LiveLoad(in_flight_stable=14.0, in_flight_panic=20.0, in_flight_recent=56.0)
    p = plan(spec, PlanInputs(now=100.0, live=burst, ready_since=ready_since), state)
    assert (p.ready, p.burst, p.panic) == (7, 6, False)
    calm = LiveLoad(in_flight_stable=14.0, in_flight_panic=0.0, in_flight_recent=0.0)
    p = plan(spec, PlanInputs(now=200.0, live=calm, ready_since=(0.0,) * 7), state)
    assert p.ready == 2   # down on the long window only


def test_load_samples_average_the_scale_up_window():
    samples = LoadSamples()
    for t, v in ((0.0, 10.0), (15.0, 10.0), (30.0, 10.0), (45.0, 10.0), (60.0, 70.0)):
        samples.sample(t, ["m"], v)
    live = samples.live(60.0, Scaling(stable_window=60.0, scale_up_window=10.0), False)
    assert live.in_flight_stable == pytest.approx(22.0)
    assert live.in_flight_recent == pytest.approx(70.0)
