"""`warmfront simulate`: the replay drives the live predictor, planner and reconcile decision on a virtual clock."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from config.models import Pool, Shadow
from pools.backends.simulated import Delays, SimulatedBackend, SimulatedHealth
from pools.manager import PoolManager
from pools.members import MemberState
from pools.reconciler import Desired, DesiredState
from pools.simulate import forecast_path, pool_anomalies
from pools.simulate_cli import main
from pools.virtual import run_virtual
from predictor.series import Series

DAY_MIN = 1440


def daily(days: int, seed: int = 1) -> np.ndarray:
    """Per-minute counts with a smooth daily cycle (20 to 100 per minute) and Poisson noise."""
    t = np.arange(days * DAY_MIN)
    rate = 60 - 40 * np.cos(2 * np.pi * t / DAY_MIN)
    return np.random.default_rng(seed).poisson(rate).astype(float)


def write_trace(path: Path, counts: np.ndarray, bin_min: int = 1, source: str = "web") -> Path:
    lines = ["minute,source,count"] + [f"{i * bin_min},{source},{int(c)}" for i, c in enumerate(counts)]
    path.write_text("\n".join(lines) + "\n")
    return path


def simulate(capsys, *args: str) -> dict:
    assert main([*args, "--json"]) == 0
    out = capsys.readouterr().out
    return json.loads(out)   # stdout holds the JSON and nothing else


@pytest.fixture
def spike_trace(tmp_path) -> tuple[Path, np.ndarray]:
    counts = daily(3)
    # Unannounced: 10x the usual level for 20 minutes on day 3, at a quiet hour.
    at = 2 * DAY_MIN + 6 * 60
    counts[at:at + 20] = 1000
    return write_trace(tmp_path / "spike.csv", counts), counts


def test_json_has_every_policy_with_every_metric(capsys, spike_trace):
    path, counts = spike_trace
    out = simulate(capsys, "--trace", str(path), "--train", "2d")
    assert set(out["policies"]) == {"static", "reactive", "predictive", "oracle"}
    for name, row in out["policies"].items():
        assert {"requests", "cold_requests", "cold_rate", "container_minutes", "cost_vs_oracle",
                "scale_events"} <= set(row), name
        assert row["requests"] == int(counts[2 * DAY_MIN:].sum())   # only the scored day counts
    assert out["policies"]["oracle"]["cost_vs_oracle"] == 1.0
    assert out["simulation"]["bin_s"] == 60.0 and out["simulation"]["train_s"] == 2 * 86_400
    assert "needs 30 members" in out["simulation"]["notes"][0]


def test_unannounced_spike_is_cold_for_every_policy_but_the_oracle(capsys, spike_trace):
    path, _ = spike_trace
    policies = simulate(capsys, "--trace", str(path), "--train", "2d")["policies"]
    for name in ("static", "reactive", "predictive"):
        assert policies[name]["cold_requests"] > 1000, name
    assert policies["oracle"]["cold_requests"] == 0


def test_forecasts_see_only_the_past():
    base = daily(3)
    changed = base.copy()
    cut = 2 * DAY_MIN + 600          # minute 600 of day 3: forecaster bin 120 of that day
    changed[cut:] *= 5
    paths = [forecast_path(Series(("web",), v[None, :], 60.0, 0.0), 300.0) for v in (base, changed)]
    boundary = cut // 5               # the forecast made when minute `cut` begins
    np.testing.assert_array_equal(paths[0].point[:boundary + 1], paths[1].point[:boundary + 1])
    np.testing.assert_array_equal(paths[0].upper[:boundary + 1], paths[1].upper[:boundary + 1])
    assert not np.array_equal(paths[0].point[boundary + 2:], paths[1].point[boundary + 2:])


def test_a_surprise_on_a_small_source_does_not_put_the_pool_in_anomaly():
    # Two sources into one pool: `big` carries ~99 % of it. A 10x jump on `small` on day 3 is an
    # anomaly of `small`, but within the pool it hides inside the pool's interval, as the live loop
    # judges it; the same jump on `big` is a pool anomaly.
    big, small = daily(3, seed=1) * 10, daily(3, seed=2) / 10
    cut = 2 * DAY_MIN + 600
    jumped = lambda v: np.concatenate([v[:cut], v[cut:] * 10])  # noqa: E731
    after = cut // 5                  # forecaster boundaries from the jump on
    paths = {name: forecast_path(Series(("big", "small"), np.vstack(v), 60.0, 0.0), 300.0)
             for name, v in (("none", (big, small)), ("small", (big, jumped(small))), ("big", (jumped(big), small)))}
    assert pool_anomalies(paths["small"], [1], "small")[after:].any()
    calm = pool_anomalies(paths["none"], [0, 1], "pool")[after:]
    np.testing.assert_array_equal(pool_anomalies(paths["small"], [0, 1], "pool")[after:], calm)
    assert (pool_anomalies(paths["big"], [0, 1], "pool")[after:] & ~calm).any()


def test_five_minute_and_one_minute_traces_both_work(capsys, tmp_path):
    minutes = daily(3)
    fine = write_trace(tmp_path / "fine.csv", minutes)
    coarse = write_trace(tmp_path / "coarse.csv", minutes.reshape(-1, 5).sum(axis=1), bin_min=5)
    a = simulate(capsys, "--trace", str(fine), "--train", "2d")
    b = simulate(capsys, "--trace", str(coarse), "--train", "2d")
    assert (a["simulation"]["bin_s"], b["simulation"]["bin_s"]) == (60.0, 300.0)
    assert a["policies"]["predictive"]["requests"] == b["policies"]["predictive"]["requests"]
    for out in (a, b):
        assert out["policies"]["predictive"]["container_minutes"] > 0


def daily_step(days: int, seed: int = 1) -> np.ndarray:
    """Per-minute counts: 20 a minute, and 100 from 12:00 to 14:00 every day (Poisson noise)."""
    tod = np.arange(days * DAY_MIN) % DAY_MIN
    rate = 20 + 80 * ((tod >= 12 * 60) & (tod < 14 * 60))
    return np.random.default_rng(seed).poisson(rate).astype(float)


def test_forecast_ramps_are_served_by_activating_shadows(capsys, tmp_path):
    # A ramp from 6 to 30 members within a minute at noon, in the two training days too: the
    # planner's shadow tier (the forecast peak over the next 15 minutes) is launched before noon
    # and activated at it, where HPA launches cold after the fact. (A smooth daily cycle does
    # not prove this: there the ready tier's 5-minute lead covers a 60 s launch by itself and
    # HPA has no cold requests either.)
    path = write_trace(tmp_path / "step.csv", daily_step(3))
    policies = simulate(capsys, "--trace", str(path), "--train", "2d")["policies"]
    predictive, reactive = policies["predictive"], policies["reactive"]
    assert reactive["shadow_activations"] == 0 and reactive["cold_requests"] > 100
    assert predictive["shadow_activations"] >= 8
    assert predictive["cold_requests"] < 0.25 * reactive["cold_requests"]


def test_pool_manager_on_the_simulated_backend_boots_cold_and_activates_paused_shadows_fast():
    # The real PoolManager, on a virtual clock: a minute's boot and a day's wait cost no real time.
    spec = Pool(command="simulated --port {port}", shadow=Shadow(state="paused"), startup_timeout=120,
                health={"interval": 3600})

    def want(ready: int, shadow: int) -> DesiredState:
        return DesiredState.of({"web": Desired(ready, shadow, "paused", 10, spec.drain_timeout)})

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        backend = SimulatedBackend(Delays(cold=60.0), loop.time)
        ready_at: dict[str, float] = {}

        def on_change(pool: str, members: list) -> None:
            for m in members:
                if m.state is MemberState.READY:
                    ready_at.setdefault(m.id, loop.time())

        manager = PoolManager("web", spec, backend, clock=loop.time, on_change=on_change,
                              checker=SimulatedHealth(backend), interval=3600, desired=want(1, 2))
        task = asyncio.create_task(manager.run())
        states = lambda: sorted(m.state for m in manager.members())  # noqa: E731
        await asyncio.sleep(59.9)
        assert states() == [MemberState.LAUNCHING] * 3 and not ready_at
        await asyncio.sleep(0.2)   # booted at 60 s: one routed at once (nothing else is), two parked
        assert states() == [MemberState.READY, MemberState.SHADOW, MemberState.SHADOW]
        assert {i.status.value for i in backend.instances.values()} == {"running", "paused"}
        assert list(ready_at.values()) == [60.0] and manager.measured_lead("cold") == 60.0
        await asyncio.sleep(3600 - loop.time())
        manager.set_desired(want(3, 0))   # the two paused shadows resume, one after the other
        await asyncio.sleep(1.0)
        assert states() == [MemberState.READY] * 3
        assert sorted(ready_at.values())[1:] == pytest.approx([3600.015, 3600.030])
        assert manager.measured_lead("paused") == pytest.approx(0.015)
        manager.set_desired(want(1, 0))   # drained (nothing in flight) and retired in the same instant
        await asyncio.sleep(0.001)
        assert states() == [MemberState.READY] and len(backend.instances) == 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    started = time.perf_counter()
    run_virtual(scenario())
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("args, message", [
    (["--trace", "/nonexistent.csv"], "not found"),
    (["--trace", "{trace}", "--train", "9d"], "nothing to score"),
    (["--trace", "{trace}", "--member-rate", "0"], "--member-rate"),
    (["--trace", "{trace}", "--cold-delay", "soon"], "bad duration"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, args, message):
    trace = write_trace(tmp_path / "t.csv", daily(1))
    assert main([a.format(trace=trace) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("warmfront simulate:")


def test_plot_draws_demand_and_each_policy(capsys, tmp_path):
    path = write_trace(tmp_path / "daily.csv", daily(2))
    svg = tmp_path / "sim.svg"
    simulate(capsys, "--trace", str(path), "--plot", str(svg))
    text = svg.read_text()
    assert text.startswith("<svg") and text.count("<polyline") >= 5
    assert all(name in text for name in ("demand", "static", "reactive", "predictive", "oracle"))


def test_folds_and_sweep_report_every_window_and_the_frontier(capsys, tmp_path):
    counts = daily(2, seed=4)
    counts[DAY_MIN + 1000:DAY_MIN + 1015] *= 6   # a burst in the second fold (the scored day's last 12 h)
    path = write_trace(tmp_path / "two_days.csv", counts)
    plot = tmp_path / "frontier.svg"
    out = simulate(capsys, "--trace", str(path), "--train", "1d", "--folds", "2", "--sweep", "--sweep-plot", str(plot))
    folds = out["folds"]
    assert len(folds) == 2 and folds[0]["to_s"] == folds[1]["from_s"] == 43_200
    for name in ("static", "reactive", "predictive", "oracle"):
        assert sum(f["policies"][name]["requests"] for f in folds) == pytest.approx(out["policies"][name]["requests"], abs=2)
        spread = out["over_folds"][name]["cost_vs_oracle"]
        assert spread["min"] <= spread["median"] <= spread["max"] and spread["folds"] == 2
    for name in ("reactive", "predictive"):   # where the cost above the oracle goes adds up
        row = out["policies"][name]
        assert sum(row["over_oracle"].values()) == pytest.approx(row["cost_vs_oracle"] - 1, abs=0.01)
    assert folds[1]["policies"]["reactive"]["cold_requests"] > folds[0]["policies"]["reactive"]["cold_requests"]
    sweep = out["sweep"]
    knobs = [(p["policy"], tuple(sorted(p["knobs"].items()))) for p in sweep["points"]]
    from config.models import Scaling
    from pools.sweep import PREDICTIVE_QUANTILES, PREDICTIVE_TARGETS, REACTIVE_TARGETS
    quantiles = set(PREDICTIVE_QUANTILES) | {Scaling().quantile}   # the default is always swept
    # targets; quantiles x utilisations; one more shadow size at the default
    assert len(knobs) == len(set(knobs)) == len(REACTIVE_TARGETS) + len(quantiles) * len(PREDICTIVE_TARGETS) + 1
    assert [p["knobs"]["target"] for p in sweep["points"] if p["policy"] == "reactive"] == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert sum(p["default"] for p in sweep["points"]) == 2
    reactive = sorted((p for p in sweep["points"] if p["policy"] == "reactive"), key=lambda p: p["knobs"]["target"])
    # a higher target utilisation buys fewer containers with more cold requests
    minutes = [p["total"]["container_minutes"] for p in reactive]
    assert minutes == sorted(minutes, reverse=True)
    assert reactive[-1]["total"]["cold_requests"] >= reactive[0]["total"]["cold_requests"]
    default = next(p for p in reactive if p["default"])
    assert default["total"]["container_minutes"] == pytest.approx(out["policies"]["reactive"]["container_minutes"], rel=1e-6)
    assert len(sweep["verdict"]) == len(sweep["oracle"]) == 2
    assert {"goal_met", "default_on_frontier", "cold_share_at_reactive_cost",
            "cost_vs_oracle_at_reactive_cold"} <= set(sweep["verdict"][0])
    svg = plot.read_text()
    assert "cold requests (% of requests)" in svg and "oracle" in svg and "predictive, fold 2" in svg


def test_frontier_keeps_the_pareto_points_and_reads_them_between():
    from pools.sweep import cold_at, cost_at, frontier
    front = frontier([(10, 5), (12, 2), (11, 6), (15, 0), (14, 3)])
    assert front == [(10, 5), (12, 2), (15, 0)]
    assert cold_at(front, 9) is None and cold_at(front, 11) == pytest.approx(3.5) and cold_at(front, 20) == 0
    assert cost_at(front, 1) == pytest.approx(13.5) and cost_at(front, 9) == 10
