"""Lag ridge regression on sqrt(counts), vectorised across series.

Per series, the next bin is regressed on its last `lags` bins, the same slot a day ago and its two
neighbours, and (the weekly variant) the same slot a week ago, each series with its own
coefficients: the window's mean is taken out, so the unpenalised intercept is that mean, and the
ridge normal equations of every series are solved at once (`np.linalg.solve` on `[n, p, p]`).
Forecasts are recursive: a step's forecast becomes a lag of the next one, while the day-ago inputs
stay observed values for every step up to a day ahead. One coefficient set serves every horizon,
which keeps a refit to one solve per series (direct per-horizon sets would cost one per step ahead,
and the live engine forecasts 288 steps).

On the Huawei traces Toner et al. (2025) found online ridge on lagged values, with seasonal naive,
ahead of pretrained forecasting models; here it is one more candidate the backtest weighs.

The band: the one-step residual σ (degrees of freedom taken off), grown with the h-step
ψ-weights of the fitted lag polynomial, never below the Poisson floor (σ = 0.5 on the sqrt scale).
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np

POISSON_SD = 0.5  # Var(sqrt(Poisson(λ))) ≈ 1/4 for all but tiny λ


class LagRidge:
    """`fit(y[n, T])` then `predict(h)`; `forecast(y, h)` reuses the fitted coefficients on newer data."""

    def __init__(
        self,
        period: int = 288,
        lags: int = 12,
        weekly: bool = False,
        penalty: float = 1e-4,
        quantiles: tuple[float, float] = (0.05, 0.95),
        chunk: int = 2048,
        name: str | None = None,
    ) -> None:
        self.period = period
        self.lags = lags
        self.weekly = weekly
        self.penalty = penalty
        self.quantiles = quantiles
        self.chunk = chunk
        self.name = name or ("lag_ridge_weekly" if weekly else "lag_ridge")
        # offsets back from the target bin of every feature column
        back = list(range(1, lags + 1)) + [period + 1, period, period - 1]
        if weekly:
            back.append(7 * period)
        self._back = np.asarray(back, dtype=np.int64)
        self._reach = int(self._back.max())

    def min_length(self) -> int:
        # training rows after the furthest feature: a quarter day for the daily variant (ready when
        # Holt-Winters is), a day for the weekly one, whose week-ago input is the scarce one
        return self._reach + (self.period if self.weekly else self.period // 4)

    @property
    def n_features(self) -> int:
        return len(self._back)

    def fit(self, y: np.ndarray, start_slot: int = 0) -> LagRidge:
        """Fit every series of `y[n_series, T]` (T ≥ min_length()) on its whole window."""
        x = np.sqrt(np.maximum(np.atleast_2d(np.asarray(y, dtype=np.float64)), 0.0))
        n, t_len = x.shape
        if t_len < self.min_length():
            raise ValueError(f"{self.name} needs {self.min_length()} bins, got {t_len}")
        p = self.n_features
        self.mean = np.empty(n)
        self.coef = np.empty((n, p))
        self.sigma = np.empty(n)
        for lo in range(0, n, self.chunk):
            hi = min(lo + self.chunk, n)
            self._fit_chunk(x[lo:hi], lo, hi)
        self._tail = x[:, -self._reach :].copy()
        return self

    def _fit_chunk(self, x: np.ndarray, lo: int, hi: int) -> None:
        c, t_len = x.shape
        p = self.n_features
        mean = x.mean(axis=1, keepdims=True)
        xc = x - mean
        t0 = self._reach
        rows = t_len - t0
        # [c, p, rows]: each feature a contiguous shifted copy (stacking on the last axis was 10× slower)
        feats = np.stack([xc[:, t0 - b : t_len - b] for b in self._back], axis=1)
        target = xc[:, t0:, None]
        gram = np.matmul(feats, feats.transpose(0, 2, 1))
        rhs = np.matmul(feats, target)
        # the penalty relative to each series' own variance, so one setting serves quiet and busy series
        ridge = self.penalty * rows * np.maximum(np.mean(xc**2, axis=1), 1e-9)
        gram[:, np.arange(p), np.arange(p)] += ridge[:, None]
        coef = np.linalg.solve(gram, rhs)
        resid = target[:, :, 0] - np.matmul(coef.transpose(0, 2, 1), feats)[:, 0]
        self.mean[lo:hi] = mean[:, 0]
        self.coef[lo:hi] = coef[:, :, 0]
        self.sigma[lo:hi] = np.sqrt(np.sum(resid**2, axis=1) / max(1, rows - p))

    def predict(self, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point, lower and upper for steps 1..h from the end of the fitted window, each `[n, h]`."""
        return self._forecast(self._tail, h, np.arange(len(self.mean)))

    def forecast(self, y: np.ndarray, h: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Steps 1..h after the end of `y[len(rows), ≥ reach]` (newer bins than the fit saw) with the
        coefficients of the fitted series `rows` (all of them by default)."""
        rows = np.arange(len(self.mean)) if rows is None else np.asarray(rows)
        x = np.sqrt(np.maximum(np.atleast_2d(y)[:, -self._reach :].astype(np.float64), 0.0))
        return self._forecast(x, h, rows)

    def _forecast(self, x: np.ndarray, h: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        mean, coef = self.mean[rows], self.coef[rows]
        n, reach = x.shape
        lags = self.lags
        # time-major, so the lags a step reads are one contiguous block ([series, time] rows were
        # 10× slower at 100,000 series)
        z = np.empty((reach + h, n))
        z[:reach] = (x - mean[:, None]).T
        phi = np.ascontiguousarray(coef[:, lags - 1 :: -1].T)  # [lags, n], oldest lag first like z[t - lags : t]
        seasonal = list(zip(self._back[lags:].tolist(), coef[:, lags:].T))
        # the day-ago (and week-ago) inputs of a block of steps are all known once the steps before
        # the block are: add their part for the whole block at once, then recurse on the lags only
        block = int(self._back[lags:].min())
        tmp = np.empty((lags, n))
        for k0 in range(0, h, block):
            k1 = min(h, k0 + block)
            part = np.zeros((k1 - k0, n))
            for b, c in seasonal:
                part += z[reach + k0 - b : reach + k1 - b] * c
            for k in range(k0, k1):
                t = reach + k
                np.multiply(z[t - lags : t], phi, out=tmp)
                np.sum(tmp, axis=0, out=z[t])
                z[t] += part[k - k0]
        f = z[reach:] + mean
        # h-step σ of the lag polynomial: ψ_0 = 1, ψ_j = Σ_i φ_i ψ_{j-i}
        psi = np.zeros((h + lags, n))
        psi[lags] = 1.0
        for j in range(lags + 1, h + lags):
            np.multiply(psi[j - lags : j], phi, out=tmp)
            np.sum(tmp, axis=0, out=psi[j])
        sig = np.sqrt(np.cumsum(psi[lags:] ** 2, axis=0)) * self.sigma[rows]
        np.maximum(sig, POISSON_SD, out=sig)
        z_lo, z_hi = (NormalDist().inv_cdf(q) for q in self.quantiles)
        return tuple(np.ascontiguousarray((np.maximum(a, 0.0) ** 2).T)  # type: ignore[return-value]
                     for a in (f, f + z_lo * sig, f + z_hi * sig))

    def select(self, rows: np.ndarray) -> None:
        """Keep the fitted state of these series only (in this order)."""
        for name in ("mean", "coef", "sigma", "_tail"):
            setattr(self, name, getattr(self, name)[rows])
