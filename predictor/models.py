"""Candidate forecast models: `fit(y[n_series, T])` then `predict(h) -> (point, lower, upper)`, each `[n, h]`.

Every model works on sqrt(counts), where count noise is roughly constant, and squares back, so
intervals are asymmetric on the count scale and never go below zero. statsmodels costs ≈ 3 s and
250 MB to import, so it is imported inside `fit` and only for the series that carry most traffic.
"""
from __future__ import annotations

import warnings
from statistics import NormalDist
from typing import Protocol

import numpy as np
import structlog

from predictor.holtwinters import HoltWinters
from predictor.ridge import POISSON_SD, LagRidge

log = structlog.get_logger(__name__)

Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]
DEFAULT_QUANTILES = (0.05, 0.95)


class Model(Protocol):
    name: str

    def min_length(self) -> int: ...

    def fit(self, y: np.ndarray, start_slot: int = 0) -> Model: ...

    def predict(self, h: int) -> Prediction: ...


def _band(f: np.ndarray, sig: np.ndarray, quantiles: tuple[float, float]) -> Prediction:
    # never narrower than count noise: a series regular so far still varies by Poisson noise
    sig = np.maximum(sig, POISSON_SD)
    z_lo, z_hi = (NormalDist().inv_cdf(q) for q in quantiles)
    return np.maximum(f, 0.0) ** 2, np.maximum(f + z_lo * sig, 0.0) ** 2, np.maximum(f + z_hi * sig, 0.0) ** 2


class Naive:
    """Last value; a random walk's interval widens with √h."""

    name = "naive"

    def __init__(self, quantiles: tuple[float, float] = DEFAULT_QUANTILES) -> None:
        self.quantiles = quantiles

    def min_length(self) -> int:
        return 2

    def fit(self, y: np.ndarray, start_slot: int = 0) -> Naive:
        x = np.sqrt(np.maximum(np.atleast_2d(y), 0.0))
        self._last = x[:, -1]
        self._sigma = np.sqrt(np.mean(np.diff(x, axis=1) ** 2, axis=1))
        return self

    def predict(self, h: int) -> Prediction:
        steps = np.arange(1, h + 1)
        f = np.repeat(self._last[:, None], h, axis=1)
        return _band(f, self._sigma[:, None] * np.sqrt(steps), self.quantiles)


class SeasonalNaive:
    """The value one period ago (a day, or a week once there are three weeks of history)."""

    def __init__(self, period: int = 288, quantiles: tuple[float, float] = DEFAULT_QUANTILES, name: str | None = None) -> None:
        self.period = period
        self.quantiles = quantiles
        self.name = name or "seasonal_naive"

    def min_length(self) -> int:
        # one period to repeat, a few more bins to measure its error
        return self.period + 12

    def fit(self, y: np.ndarray, start_slot: int = 0) -> SeasonalNaive:
        x = np.sqrt(np.maximum(np.atleast_2d(y), 0.0))
        self._last_season = x[:, -self.period :]
        self._sigma = np.sqrt(np.mean((x[:, self.period :] - x[:, : -self.period]) ** 2, axis=1))
        return self

    def predict(self, h: int) -> Prediction:
        steps = np.arange(h)
        f = self._last_season[:, steps % self.period]
        seasons_ahead = steps // self.period + 1
        return _band(f, self._sigma[:, None] * np.sqrt(seasons_ahead), self.quantiles)


class _PerSeries:
    """A statsmodels model fitted series by series; a series whose fit fails falls back to
    seasonal naive rather than failing the whole batch."""

    name = "per_series"

    def __init__(self, period: int = 288, quantiles: tuple[float, float] = DEFAULT_QUANTILES) -> None:
        self.period = period
        self.quantiles = quantiles

    def min_length(self) -> int:
        return 2 * self.period

    def fit(self, y: np.ndarray, start_slot: int = 0, exog: np.ndarray | None = None) -> _PerSeries:
        y = np.atleast_2d(y)
        self._start = start_slot
        self._t = y.shape[1]
        self._fallback = SeasonalNaive(self.period, self.quantiles).fit(y)
        self._results: list[object | None] = []
        with warnings.catch_warnings():
            # convergence chatter on short noisy windows; the backtest judges the result
            warnings.simplefilter("ignore")
            for i, row in enumerate(y):
                try:
                    self._results.append(self._fit_one(np.sqrt(np.maximum(row, 0.0)), None if exog is None else exog[i]))
                except Exception as e:  # noqa: BLE001 - any numerical failure means "use the fallback"
                    log.warning("predictor.fit_failed", model=self.name, series=i, error=str(e)[:120])
                    self._results.append(None)
        return self

    def predict(self, h: int, exog_future: np.ndarray | None = None) -> Prediction:
        point, lower, upper = (a.copy() for a in self._fallback.predict(h))
        alpha = 1.0 - (self.quantiles[1] - self.quantiles[0])
        for i, res in enumerate(self._results):
            if res is None:
                continue
            f, lo, hi = self._predict_one(res, h, alpha, None if exog_future is None else exog_future[i])
            if np.all(np.isfinite(f)) and np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)):
                point[i] = np.maximum(f, 0.0) ** 2
                lower[i] = np.maximum(lo, 0.0) ** 2
                upper[i] = np.maximum(hi, 0.0) ** 2
        return point, lower, upper

    def _fit_one(self, x: np.ndarray, exog: np.ndarray | None) -> object:
        raise NotImplementedError

    def _predict_one(self, res: object, h: int, alpha: float, exog: np.ndarray | None) -> tuple[np.ndarray, ...]:
        raise NotImplementedError


class StatsETS(_PerSeries):
    """statsmodels ETSModel: additive error, level and daily season, no trend, heuristic start."""

    name = "sm_ets"

    def _fit_one(self, x: np.ndarray, exog: np.ndarray | None) -> object:
        import pandas as pd
        from statsmodels.tsa.exponential_smoothing.ets import ETSModel

        model = ETSModel(pd.Series(x), error="add", trend=None, seasonal="add", seasonal_periods=self.period, initialization_method="heuristic")
        return model.fit(disp=False)

    def _predict_one(self, res, h, alpha, exog):
        fr = res.get_prediction(start=self._t, end=self._t + h - 1).summary_frame(alpha=alpha)
        return fr["mean"].to_numpy(), fr["pi_lower"].to_numpy(), fr["pi_upper"].to_numpy()


class StatsSARIMAX(_PerSeries):
    """SARIMAX(2,0,0) with a constant, the daily season as Fourier terms (a 288-lag seasonal ARMA
    would be far too slow) and, when given, event regressors appended to the exogenous columns."""

    name = "sm_sarimax"
    harmonics = 4

    def _fourier(self, t: np.ndarray) -> np.ndarray:
        w = 2 * np.pi * (t + self._start)[:, None] * np.arange(1, self.harmonics + 1) / self.period
        return np.hstack([np.sin(w), np.cos(w)])

    def _fit_one(self, x: np.ndarray, exog: np.ndarray | None) -> object:
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        X = self._fourier(np.arange(len(x)))
        if exog is not None:
            X = np.hstack([X, np.reshape(exog, (len(x), -1))])
        # the scale concentrated out of the likelihood: the same fit, 2-3x faster
        return SARIMAX(x, exog=X, order=(2, 0, 0), trend="c", concentrate_scale=True).fit(disp=False)

    def _predict_one(self, res, h, alpha, exog):
        X = self._fourier(np.arange(self._t, self._t + h))
        n_extra = res.model.exog.shape[1] - X.shape[1]
        if n_extra:
            X = np.hstack([X, np.zeros((h, n_extra)) if exog is None else np.reshape(exog, (h, -1))])
        fr = res.get_forecast(h, exog=X).summary_frame(alpha=alpha)
        return fr["mean"].to_numpy(), fr["mean_ci_lower"].to_numpy(), fr["mean_ci_upper"].to_numpy()


class StatsSTL(_PerSeries):
    """STL decomposition with the daily period; the seasonally adjusted part forecast by AR(1).

    On a two-day window each cycle-subseries has two points, so STL's season absorbs nearly all
    the noise and the AR residual variance is ≈ 0: a band built from it covered nothing. The band
    uses the seasonal-naive error of the window instead (the season is last cycle's shape, so it
    errs at least that much), plus the AR mean's own uncertainty."""

    name = "sm_stl"

    def _fit_one(self, x: np.ndarray, exog: np.ndarray | None) -> object:
        from statsmodels.tsa.arima.model import ARIMA
        from statsmodels.tsa.forecasting.stl import STLForecast

        res = STLForecast(x, ARIMA, model_kwargs={"order": (1, 0, 0), "trend": "c"}, period=self.period).fit()
        return res, float(np.sqrt(np.mean((x[self.period :] - x[: -self.period]) ** 2)))

    def _predict_one(self, res, h, alpha, exog):
        res, sigma = res
        fr = res.get_prediction(start=self._t, end=self._t + h - 1).summary_frame(alpha=alpha)
        mean = fr["mean"].to_numpy()
        se = np.sqrt(fr["mean_se"].to_numpy() ** 2 + sigma**2)
        z = NormalDist().inv_cdf(1 - alpha / 2)
        return mean, mean - z * se, mean + z * se


STATSMODELS_MODELS = ("sm_ets", "sm_sarimax", "sm_stl")


def candidates(
    period: int,
    history: int,
    quantiles: tuple[float, float] = DEFAULT_QUANTILES,
    statsmodels: bool = False,
) -> list[Model]:
    """The models worth trying on `history` bins: the weekly variants only with ≥ 3 weeks."""
    out: list[Model] = [Naive(quantiles), SeasonalNaive(period, quantiles), HoltWinters(period, quantiles=quantiles),
                        LagRidge(period, quantiles=quantiles)]
    week = 7 * period
    if history >= 3 * week:
        out += [SeasonalNaive(week, quantiles, name="seasonal_naive_weekly"), LagRidge(period, weekly=True, quantiles=quantiles)]
    if statsmodels:
        out += [StatsETS(period, quantiles), StatsSARIMAX(period, quantiles), StatsSTL(period, quantiles)]
    return out
