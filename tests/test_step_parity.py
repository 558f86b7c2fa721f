"""The live control loop and `warmfront simulate` plan the same, step for step, on the same trace.

Thirty hours of the NASA trace are replayed twice, each on its own virtual clock
(`pools.virtual.VirtualClockLoop`) with the real `PoolManager` acting on `SimulatedBackend`:

- live: the `ControlLoop` that `warmfront run` builds, stepped every 15 s. Its History is fed each
  trace minute once it has closed (`add_minute`, every request taking the pool's service time, as
  the simulated members serve it); the in-flight count it samples is the trace's arrivals over the
  last step × the service time (Little's law), carried by one ready member; the manager reaches
  the `DesiredState` the loop publishes.
- simulate: `pools.simulate.Predictive` on the same slice (`replay_policy`), as `warmfront simulate`
  runs it, the pool built by `simulate_cli.build_pools`.

Made equal, because they are inputs and not the step: the cadence (the live `plan_interval` is
simulate's 15 s step, both from time 0, so every 5-minute forecaster boundary is a step of both),
the start (empty history), no statsmodels tier (`statsmodels_top_n: 0`; simulate has none), no
events, no per-request session taps, no operator bounds. What the test pins: with those equal,
the rest of a step is the same code on the same observations — the forecaster fed per minute
(live) or per trace bin (simulate) gives the same forecasts at every boundary, refits at the same
times, the same anomalies (`BinScores`), the same burst heights (`BurstHeights`), the same learned
service time, the same live-load samples and ready members, the same measured lead times, hence the
same `Plan` at each of the 7,200 steps.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from balancer.control.history import History
from balancer.control.loop import ControlLoop
from config.models import Config, Route, RoutingConfig
from pools.backends.simulated import Delays, SimulatedBackend, SimulatedHealth
from pools.manager import PoolManager
from pools.members import MemberState
from pools.planner import Plan
from pools.simulate import (IDLE_PASS_S, Predictive, SimConfig, SimPool, arrivals_per_step, forecast_path,
                            replay_policy)
from pools.simulate_cli import FORECAST_BIN_S, STEP_S, build_pools
from pools.virtual import run_virtual
from predictor.series import Series, load_trace

TRACE = Path(__file__).resolve().parents[1] / "traces" / "nasa_http_jul95_7d.csv"   # in the repo: never skipped
MINUTES = 30 * 60
COLD_S = 60.0


@pytest.fixture(scope="module")
def trace() -> Series:
    if not TRACE.exists():
        pytest.skip(f"{TRACE} is not here")
    full = load_trace(str(TRACE))
    return Series(full.ids, full.values[:, :MINUTES], full.bin_s, 0.0)


def simulated_plans(pool: SimPool, series: Series, demand: np.ndarray) -> list[Plan]:
    policy = Predictive(pool, forecast_path(series, FORECAST_BIN_S), series, record=True)
    replay_policy(pool, policy, demand, SimConfig(train_s=0.0, step_s=STEP_S, delays=Delays(cold=COLD_S)), 0)
    assert policy.plans is not None
    return policy.plans


async def live_plans(pool: SimPool, series: Series, demand: np.ndarray, state_dir: Path) -> list[Plan]:
    loop = asyncio.get_running_loop()
    spec, st = pool.spec, pool.spec.scaling.service_time
    [(row, rtype)] = pool.sources
    source = series.ids[row]
    routing = RoutingConfig(routes=[Route(name=rtype, pool=pool.name, type=rtype)],
                            predictor={"statsmodels_top_n": 0})
    history = History(state_dir / "history.sqlite3", clock=loop.time)
    backend = SimulatedBackend(Delays(cold=COLD_S), loop.time)
    manager = PoolManager(pool.name, spec, backend, clock=loop.time, checker=SimulatedHealth(backend),
                          interval=IDLE_PASS_S, wall_clock=loop.time)
    step = [0]

    def in_flight(member: str) -> float:
        ready = sorted(m.id for m in manager.members() if m.state is MemberState.READY)
        i = step[0]
        return float(demand[max(0, i - 1):i].sum()) / STEP_S * st if ready and member == ready[0] else 0.0

    control = ControlLoop(Config(routing=routing, pools={pool.name: spec}), history,
                          lambda: {pool.name: manager.members()}, in_flight, {pool.name: manager},
                          clock=loop.time, plan_interval=STEP_S)
    plans: list[Plan] = []
    fed = 0
    task: asyncio.Task | None = None
    try:
        for i in range(len(demand)):
            now = i * STEP_S
            await asyncio.sleep(now - loop.time())
            while (fed + 1) * series.bin_s <= now:   # the minutes that have closed, as the proxy records them
                n = float(series.values[row, fed])
                history.add_minute(fed * series.bin_s, source, rtype, int(n), n * st)
                fed += 1
            step[0] = i
            await control.step()
            plan = control.plan_of(pool.name)
            assert plan is not None
            plans.append(plan)
            if task is None:
                task = asyncio.create_task(manager.run())
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        control.close()
        history.close()
    return plans


def test_live_loop_and_simulate_plan_the_same_step_for_step(trace, tmp_path):
    [pool], _ = build_pools(trace, None, None, COLD_S)
    demand = arrivals_per_step(trace, pool, STEP_S)
    sim = simulated_plans(pool, trace, demand)
    live = run_virtual(live_plans(pool, trace, demand, tmp_path))
    assert len(live) == len(sim) == MINUTES * 4
    first = next((i for i, (a, b) in enumerate(zip(live, sim)) if a != b), None)
    assert first is None, f"step {first} (t={first * STEP_S:.0f}s): live {live[first]}\nsimulate {sim[first]}"
    # Not a trivial agreement: the plans follow the day, with shadows ahead of its ramps.
    assert len({p.ready for p in sim}) > 5 and max(p.shadow for p in sim) > 0 and max(p.predictive for p in sim) > 0
    assert max(p.burst_shadow for p in sim) > 0, "the burst heights reached the plans"
