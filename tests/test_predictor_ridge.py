"""The model interface every candidate keeps (arrays in, `[n, h]` point and band out, a band
never zero-wide), lag ridge on series with known structure, and equal-sample scoring."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from predictor import forecast_cli
from predictor.backtest import BacktestConfig, run
from predictor.engine import Forecaster
from predictor.holtwinters import HoltWinters
from predictor.models import Naive, SeasonalNaive
from predictor.ridge import LagRidge

PERIOD = 24
TRACES = Path(__file__).resolve().parent / "data"


def ar_seasonal(n: int, length: int, period: int = PERIOD, phi: float = 0.85, seed: int = 0) -> np.ndarray:
    """Counts whose square root is a daily shape plus AR(1) noise: what lags and the day-ago slot explain."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    shape = 12.0 + 4.0 * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi, (n, 1)))
    e = np.zeros((n, length))
    noise = rng.normal(0, 1.0, (n, length))
    for k in range(1, length):
        e[:, k] = phi * e[:, k - 1] + noise[:, k]
    return np.maximum(shape + e, 0.0) ** 2


def models() -> list:
    return [Naive(), SeasonalNaive(PERIOD), HoltWinters(PERIOD, smooth=3), LagRidge(PERIOD), LagRidge(PERIOD, weekly=True)]


@pytest.mark.parametrize("model", models(), ids=lambda m: m.name)
def test_every_model_fits_series_by_rows_and_predicts_ordered_bands(model):
    y = ar_seasonal(5, max(model.min_length(), 3 * PERIOD) + 10)
    assert model.fit(y, start_slot=3) is model
    point, lower, upper = model.predict(2 * PERIOD + 1)   # past a day: the recursion's second block
    for a in (point, lower, upper):
        assert a.shape == (5, 2 * PERIOD + 1) and np.isfinite(a).all()
    assert (lower <= point).all() and (point <= upper).all() and (lower >= 0).all()


@pytest.mark.parametrize("model", [m for m in models() if m.name != "holt_winters"], ids=lambda m: m.name)
def test_a_perfectly_regular_series_still_gets_a_band(model):
    day = np.tile(50.0 + 30.0 * (np.arange(PERIOD) % 6), 1)
    y = np.stack([np.full(model.min_length() + PERIOD, 100.0), np.resize(day, model.min_length() + PERIOD)])
    point, lower, upper = model.fit(y).predict(6)
    # the Poisson floor: ± z·0.5 on the sqrt scale, so about ± 16 around 100
    assert (upper - lower > 10.0).all()
    assert (lower <= point).all() and (point <= upper).all()


def test_the_live_forecaster_never_publishes_a_zero_width_band():
    now = [0.0]
    fc = Forecaster(clock=lambda: now[0])
    for t in range(3 * 288):
        now[0] = t * 300.0
        fc.observe(now[0], {"flat": 100.0, "zero": 0.0})
    fc.refit()
    out = fc.forecast()
    for f in out["flat"]:
        assert f.upper - f.lower > 10.0 * (f.window_s / 300.0) ** 0.5, f
    assert all(f.upper > 0.0 for f in out["zero"])


def test_ridge_forecast_matches_its_recursion_written_out():
    y = ar_seasonal(2, 4 * PERIOD)
    r = LagRidge(PERIOD, lags=3).fit(y)
    h = 2 * PERIOD + 3
    point, _, _ = r.predict(h)
    x = list(np.sqrt(y[0]) - r.mean[0])
    lags = [1, 2, 3, PERIOD + 1, PERIOD, PERIOD - 1]
    for _ in range(h):
        x.append(sum(c * x[-b] for c, b in zip(r.coef[0], lags)))
    np.testing.assert_allclose(point[0], (np.array(x[-h:]) + r.mean[0]) ** 2, rtol=1e-9)
    # newer data through `forecast` with the same coefficients
    np.testing.assert_allclose(r.forecast(y[:, :-1], 3)[0], LagRidge(PERIOD, lags=3).fit(y).forecast(y[:, :-1], 3)[0])


def test_ridge_recovers_an_ar_and_seasonal_pattern_better_than_naive():
    y = ar_seasonal(12, 14 * PERIOD, seed=4)
    cfg = BacktestConfig(horizons=(1, 3), window=5 * PERIOD, step=4, max_origins=40, statsmodels_top_n=0)
    res = run(y, tuple(f"s{i}" for i in range(12)), 3600.0, cfg, models=[Naive(), SeasonalNaive(PERIOD), LagRidge(PERIOD)])
    m = {name: {h: v["mase"] for h, v in row["horizons"].items()} for name, row in res.summary()["models"].items()}
    # one step ahead a persistent AR is nearly a random walk, so naive is close; three steps
    # ahead only a model of both the decay and the season is good
    assert m["lag_ridge"]["1h"] < min(m["naive"]["1h"], m["seasonal_naive"]["1h"]), m
    assert m["lag_ridge"]["3h"] < 0.85 * min(m["naive"]["3h"], m["seasonal_naive"]["3h"]), m


def test_every_row_of_a_table_is_scored_on_the_same_series_and_origins():
    y = ar_seasonal(6, 12 * PERIOD, seed=2)
    cfg = BacktestConfig(horizons=(1, 3), window=3 * PERIOD, step=3, max_origins=30, statsmodels_top_n=2, statsmodels_max_origins=5)
    res = run(y, tuple(f"s{i}" for i in range(6)), 3600.0, cfg,
              # named like a statsmodels model, the backtest runs it only on the busiest series at a spread of origins
              models=[Naive(), SeasonalNaive(PERIOD), LagRidge(PERIOD), SeasonalNaive(PERIOD, name="sm_ets")])
    s = json.loads(json.dumps(res.summary()))
    assert set(s["samples"]) == {"all", "statsmodels_subsample"}
    full, sub = s["samples"]["all"], s["samples"]["statsmodels_subsample"]
    assert (full["series"], full["origins"]) == (6, 15) and (sub["series"], sub["origins"]) == (2, 5)
    assert "sm_ets" not in full["models"] and "sm_ets" in sub["models"]
    assert set(full["models"]) < set(sub["models"])
    for table in (full, sub):
        for row in list(table["models"].values()) + [table["chosen"]]:
            assert (row["series"], row["origins"]) == (table["series"], table["origins"])
    assert s["models"] == full["models"] and s["chosen"] == full["chosen"]


def test_forecast_json_names_the_sample_of_every_row(tmp_path):
    lines = (TRACES / "nasa_http_jul95_4d.csv").read_text().splitlines()
    trace = tmp_path / "nasa.csv"
    trace.write_text("\n".join(lines) + "\n")
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert forecast_cli.main(["--trace", str(trace), "--json", "--top-n", "0", "--origins", "12", "--step", "2h"]) == 0
    out = json.loads(buf.getvalue())
    table = out["samples"]["all"]
    assert list(out["samples"]) == ["all"] and table["origins"] == out["origins"]["scored"]
    assert "lag_ridge" in table["models"]
    assert {(r["series"], r["origins"]) for r in list(table["models"].values()) + [table["chosen"]]} == {(table["series"], table["origins"])}
