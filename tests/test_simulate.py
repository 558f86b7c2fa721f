"""`warmfront simulate`: the replay drives the live predictor, planner and reconcile decision on a virtual clock."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from config.models import Pool, Shadow
from pools.backends.simulated import Delays, SimulatedPool
from pools.members import MemberState
from pools.reconciler import Desired
from pools.simulate import forecast_path, pool_anomalies
from pools.simulate_cli import main
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


def test_forecast_ramps_are_served_by_activating_shadows(capsys, tmp_path):
    # The same decide() as live: the planner's shadow tier is launched ahead and activated on the ramp.
    path = write_trace(tmp_path / "daily.csv", daily(3))
    policies = simulate(capsys, "--trace", str(path), "--train", "2d")["policies"]
    assert policies["predictive"]["shadow_activations"] > 10
    assert policies["reactive"]["shadow_activations"] == 0
    assert policies["predictive"]["cold_rate"] < policies["reactive"]["cold_rate"] or \
        policies["reactive"]["cold_requests"] == 0


def test_simulated_pool_launches_cold_and_activates_paused_shadows_fast():
    pool = SimulatedPool(Delays(cold=60.0), shadow_cost=0.2)
    spec = Pool(command="app --port {port}", shadow=Shadow(state="paused"))
    want = Desired(ready=1, shadow=2, shadow_state="paused", max_members=10, drain_timeout=spec.drain_timeout)
    pool.reconcile(want, 0.0)
    assert pool.ready_count() == 0 and pool.cost_weight() == 3
    assert pool.ready_seconds(0.0, 15.0) == 0.0
    pool.reconcile(want, 60.0)    # booted: one activated (nothing routable), two parked
    states = sorted(m.state for m in pool.members.values())
    assert states == [MemberState.READY, MemberState.SHADOW, MemberState.SHADOW]
    assert pool.cost_weight() == pytest.approx(1.4)
    pool.reconcile(Desired(3, 0, "paused", 10, 30.0), 75.0)
    assert pool.activations == 2 and pool.ready_count() == 3
    assert pool.ready_seconds(75.0, 90.0) == pytest.approx(15.0 + 2 * (15.0 - 0.015))
    pool.reconcile(Desired(1, 0, "paused", 10, 30.0), 90.0)   # drains, then retires at once
    assert pool.ready_count() == 1 and len(pool.members) == 1


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
