"""Predictor core on series with known structure: series building, Holt-Winters, intervals,
model choice, the feedback loop, the live Forecaster and the `forecast` command."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from predictor import forecast_cli
from predictor.backtest import BacktestConfig, run, series_mase
from predictor.engine import Forecaster
from predictor.feedback import Feedback
from predictor.holtwinters import HoltWinters
from predictor.models import Naive, SeasonalNaive
from predictor.series import RingBuffer, aggregate, from_rows, load_trace

TRACES = Path(__file__).resolve().parent / "data"   # slices of the public traces (see its README)
REPO = Path(__file__).resolve().parents[1]


def seasonal_counts(n: int, days: int, period: int, seed: int = 0, level: float = 100.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(days * period)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    rate = level * (1.0 + 0.8 * np.sin(2 * np.pi * t / period + phase))
    return rng.poisson(rate).astype(float)


def test_gaps_become_zeros_and_bin_is_detected():
    s = from_rows([(0, "a", 3), (300, "a", 4), (1200, "a", 5), (600, "b", 1)])
    assert s.bin_s == 300
    assert s.ids == ("a", "b")
    np.testing.assert_array_equal(s.values, [[3, 4, 0, 0, 5], [0, 0, 1, 0, 0]])


def test_per_request_file_is_counted_per_bin(tmp_path):
    f = tmp_path / "req.csv"
    f.write_text("timestamp,source,type\n2023-01-01 00:00:01.5,web,get\n2023-01-01 00:00:59,web,get\n"
                 "2023-01-01 00:03:00,web,get\n2023-01-01 00:01:10,api,post\n")
    s = load_trace(f)
    assert s.ids == ("api/post", "web/get")
    np.testing.assert_array_equal(s.values, [[0, 1, 0, 0], [2, 0, 0, 1]])


def test_aggregate_sums_whole_coarse_bins_and_drops_partial_tail():
    s = from_rows([(60 * m, "a", 1) for m in range(12)])
    c = aggregate(s, 300)
    np.testing.assert_array_equal(c.values, [[5, 5]])


def test_ring_buffer_returns_last_bins_oldest_first():
    rb = RingBuffer(2, 3)
    for v in range(5):
        rb.append_bin(np.array([v, 10 * v]))
    np.testing.assert_array_equal(rb.window(), [[2, 3, 4], [20, 30, 40]])


def test_holt_winters_recovers_the_daily_period_shape():
    period = 48
    y = seasonal_counts(20, 6, period)
    hw = HoltWinters(period, smooth=3).fit(y[:, : 5 * period])
    point, _, _ = hw.predict(period)
    truth = y[:, 5 * period :]
    corr = [np.corrcoef(point[i], truth[i])[0, 1] for i in range(len(y))]
    assert np.median(corr) > 0.9
    # the live update advances state in step with the data
    before = hw.slot
    hw.update(truth[:, 0])
    assert hw.slot == (before + 1) % period


def test_intervals_are_calibrated_on_simulated_noise():
    period = 48
    y = seasonal_counts(400, 5, period, seed=3)
    hw = HoltWinters(period, smooth=5).fit(y[:, : 4 * period])
    _, lo, hi = hw.predict(6)
    actual = y[:, 4 * period : 4 * period + 6]
    coverage = np.mean((actual >= lo) & (actual <= hi))
    assert 0.84 <= coverage <= 0.96


def test_chooser_picks_seasonal_for_seasonal_data_and_naive_for_a_random_walk():
    period = 24  # hourly bins
    seasonal = seasonal_counts(3, 12, period, seed=5)
    rng = np.random.default_rng(7)
    walk = np.maximum(400 + np.cumsum(rng.normal(0, 30, (3, 12 * period)), axis=1), 0)
    y = np.concatenate([seasonal, walk])
    cfg = BacktestConfig(horizons=(1, 3), window=3 * period, step=6, max_origins=20, statsmodels_top_n=0)
    models = [Naive(), SeasonalNaive(period), HoltWinters(period, smooth=3)]
    res = run(y, tuple(f"s{i}" for i in range(6)), 3600.0, cfg, models=models)
    assert all(m in ("seasonal_naive", "holt_winters") for m in res.chosen[:3]), res.chosen
    assert res.chosen[3:] == ["naive"] * 3, res.chosen


def test_feedback_flags_a_series_whose_behaviour_changes():
    fb = Feedback(horizons=(1,), window=8, mase_threshold=1.5, min_scored=4)
    fb.resize(["steady", "shifts"])
    scale = np.array([10.0, 10.0])
    for b in range(20):
        forecast = np.array([100.0, 100.0])
        fb.register(b, 0, forecast, forecast - 20, forecast + 20)
        actual = np.array([100.0 + (b % 3), 100.0 if b < 10 else 200.0])
        fb.score(b, actual, scale)
    assert fb.flagged.tolist() == [False, True]
    snap = fb.snapshot(["holt_winters", "naive"])
    assert snap["shifts"]["horizons"][1]["mase"] > 1.5 > snap["steady"]["horizons"][1]["mase"]
    assert fb.take_flagged().tolist() == [1] and not fb.flagged.any()


def test_forecaster_learns_the_season_and_applies_event_multipliers():
    now = [0.0]
    period = 288
    y = seasonal_counts(2, 3, period, seed=11)

    def lift(series_id: str, bin_starts: np.ndarray) -> np.ndarray:
        return np.where(series_id == "b", 2.0, 1.0) * np.ones(len(bin_starts))

    fc = Forecaster(clock=lambda: now[0], multipliers=lift)
    for t in range(y.shape[1]):
        now[0] = t * 300.0
        fc.observe(now[0], {"a": y[0, t], "b": y[1, t]})
    assert fc.refit_due()
    fc.refit()
    assert not fc.refit_due()
    out = fc.forecast()
    assert set(out) == {"a", "b"}
    fa, fb = out["a"], out["b"]
    assert [f.horizon_s for f in fa] == [300.0, 900.0, 3600.0, 86_400.0]
    assert all(f.lower <= f.point <= f.upper for f in fa + fb)
    assert fa[0].model in ("holt_winters", "seasonal_naive", "naive")
    assert fa[3].window_s == 3600.0
    # a new source with no history gets its last value until it has a day
    fc.observe(now[0] + 300, {"c": 50.0})
    fc.observe(now[0] + 600, {"c": 50.0})
    fc.refit()
    assert fc.forecast()["c"][0].point == pytest.approx(50.0)
    assert fc.status()["c"]["model"] == "last_value"


def test_event_multiplier_scales_point_and_band():
    now = [0.0]
    y = seasonal_counts(1, 3, 288, seed=2)
    future = y.shape[1] * 300.0   # an event that begins where the history ends
    plain = Forecaster(clock=lambda: now[0])
    doubled = Forecaster(clock=lambda: now[0], multipliers=lambda sid, bins: np.where(bins >= future, 2.0, 1.0))
    for t in range(y.shape[1]):
        for fc in (plain, doubled):
            fc.observe(t * 300.0, {"a": y[0, t]})
    for fc in (plain, doubled):
        fc.refit()
    p, d = plain.forecast()["a"][1], doubled.forecast()["a"][1]
    assert d.point == pytest.approx(2 * p.point) and d.upper == pytest.approx(2 * p.upper)


def test_a_declared_campaign_is_forecast_once_within_its_window_and_not_after_it():
    """Traffic triples in a declared x3 window: the models learn the baseline beneath it, so the forecast is
    about x3 inside the window (not x3 of a level that has already tripled) and back to the baseline after."""
    now = [0.0]
    period = 288
    days = 3
    y = seasonal_counts(1, days + 1, period, seed=5)
    start, end = days * period, days * period + 72           # six hours from the fourth day's midnight
    window = (start * 300.0, end * 300.0)
    campaign = lambda sid, bins: np.where((bins >= window[0]) & (bins < window[1]), 3.0, 1.0)  # noqa: E731
    fc = Forecaster(clock=lambda: now[0], multipliers=campaign)
    plain = Forecaster(clock=lambda: now[0])   # the same traffic without the campaign: the baseline
    inside, after = [], []
    for t in range(y.shape[1]):
        now[0] = t * 300.0
        fc.observe(now[0], {"a": y[0, t] * (3.0 if start <= t < end else 1.0)})
        plain.observe(now[0], {"a": y[0, t]})
        if t == start - 1:
            fc.refit()
            plain.refit()
        if start + 24 <= t < end - 1 or end + 12 <= t < end + 60:   # two hours in; an hour after
            p = fc.forecast((300.0,))["a"][0].point
            base = plain.forecast((300.0,))["a"][0].point
            (inside if t < end else after).append(p / max(base, 1.0))
    assert 2.4 < float(np.median(inside)) < 3.6, inside
    assert 0.8 < float(np.median(after)) < 1.25, after
    # what the uplift learner reads is what came, not the baseline the models learn
    counts = fc.closed_counts(start, end)
    assert counts is not None
    np.testing.assert_allclose(counts[0], y[0, start:end] * 3.0)


def _nasa_slice(tmp_path: Path, minutes: int) -> Path:
    lines = (TRACES / "nasa_http_jul95_4d.csv").read_text().splitlines()[: minutes + 1]
    f = tmp_path / "nasa_slice.csv"
    f.write_text("\n".join(lines) + "\n")
    return f


def test_forecast_command_reports_models_and_the_choice_as_json(tmp_path):
    trace = _nasa_slice(tmp_path, 4 * 1440)
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = forecast_cli.main(["--trace", str(trace), "--json", "--top-n", "0", "--origins", "16", "--step", "1h",
                                "--plot", str(tmp_path / "p.svg")])
    assert rc == 0
    out = json.loads(buf.getvalue())
    assert {"naive", "seasonal_naive", "holt_winters"} <= set(out["models"])
    for figures in list(out["models"].values()) + [out["chosen"]]:
        assert {"mase", "smape", "coverage", "fit_seconds"} <= set(figures)
        assert 0.0 <= figures["coverage"] <= 1.0
    assert out["per_series"]["all"]["model"] in out["models"]
    assert (tmp_path / "p.svg").read_text().startswith("<svg")


@pytest.mark.parametrize("content", [None, "when,who\n1,2\n"])
def test_forecast_command_rejects_a_bad_trace_with_exit_2(tmp_path, content):
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    proc = subprocess.run([sys.executable, "-m", "predictor.forecast_cli", "--trace", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_series_mase_is_not_blown_up_by_one_nearly_flat_window():
    # origin 1's window was almost flat: dividing origin by origin would make its error count 1000×
    actual = np.array([[[10.0], [10.0], [10.0]]])
    point = np.array([[[8.0], [8.0], [8.0]]])
    scale = np.array([[2.0, 0.002, 2.0]])
    got = series_mase(actual, point, scale)
    assert got.shape == (1, 1)
    assert got[0, 0] == pytest.approx(6.0 / 4.002)


def test_blend_weights_follow_backtest_error_and_its_band_is_calibrated():
    period = 24
    y = seasonal_counts(30, 12, period, seed=9, level=200.0)
    cfg = BacktestConfig(horizons=(1, 3), window=3 * period, step=3, max_origins=60, statsmodels_top_n=0)
    res = run(y, tuple(f"s{i}" for i in range(30)), 3600.0, cfg, models=[Naive(), SeasonalNaive(period), HoltWinters(period, smooth=3)])
    w = np.stack([res.weights[m] for m in ("naive", "seasonal_naive", "holt_winters")])
    np.testing.assert_allclose(w.sum(axis=0), 1.0)
    # naive is far worse on a strong daily cycle, so it gets almost no weight
    assert w[0].max() < 0.1
    summary = res.summary()
    for h in ("1h", "3h"):
        assert 0.84 <= summary["chosen"]["horizons"][h]["coverage"] <= 0.96
        # the blend is no worse than the best single model beyond noise
        best = min(m["horizons"][h]["mase"] for m in summary["models"].values())
        assert summary["chosen"]["horizons"][h]["mase"] <= 1.05 * best
