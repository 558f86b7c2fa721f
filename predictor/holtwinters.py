"""Additive Holt-Winters on sqrt(counts), vectorised across series and across a parameter grid.

One pass over time updates every (series, grid point) pair at once, so 100,000 sources cost a few
hundred numpy calls per bin rather than 100,000 Python fits. The sqrt transform makes Poisson-like
counts roughly homoscedastic, which is what lets a single σ per series give calibrated intervals.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from itertools import product
from statistics import NormalDist

import numpy as np

DEFAULT_ALPHAS = (0.05, 0.1, 0.2, 0.35, 0.55, 0.8)
DEFAULT_GAMMAS = (0.1,)
DEFAULT_SMOOTHS = (13, 25, 49)  # 1, 2 and 4 hours of 5-minute bins
# multi-step scoring picks smoother states: one-step error alone rewards chasing noise, which
# is what hurts at 15 and 60 minutes
DEFAULT_SCORE_STEPS = (1, 3, 12)


class HoltWinters:
    """Level (+ optional trend) + additive season of `period` bins, parameters chosen per series
    from a small grid by in-sample error at 1, 3 and 12 steps ahead (after the first season, which
    seeds the state). The grid spans α and the width of the moving average that smooths the seeded
    season: one day's shape is noisy, and how much of it is signal differs per source. γ is fixed:
    in a two-day window each season slot is seen once after seeding, so no in-sample score can
    tell γ values apart.

    State is float32: level, trend, season `[period, n]` (slot-major so one live bin touches one
    contiguous row), α, β, γ and σ — 4 × (period + 6) bytes per series.
    """

    name = "holt_winters"

    def __init__(
        self,
        period: int = 288,
        alphas: tuple[float, ...] = DEFAULT_ALPHAS,
        gammas: tuple[float, ...] = DEFAULT_GAMMAS,
        betas: tuple[float, ...] = (0.0,),
        quantiles: tuple[float, float] = (0.05, 0.95),
        chunk: int = 512,
        threads: int | None = None,
        smooth: int | tuple[int, ...] = DEFAULT_SMOOTHS,
        score_steps: tuple[int, ...] = DEFAULT_SCORE_STEPS,
        score_every: int = 3,
    ) -> None:
        self.period = period
        smooths = (smooth,) if isinstance(smooth, int) else tuple(smooth)
        grid = np.array(list(product(alphas, betas, gammas, range(len(smooths)))), dtype=np.float32)
        self._ga, self._gb, self._gg = grid[:, 0], grid[:, 1], grid[:, 2]
        self._gs = grid[:, 3].astype(np.int64)
        self._smooths = smooths
        self.quantiles = quantiles
        self._chunk = chunk
        self._threads = threads or min(2, os.cpu_count() or 1)
        self.slot = 0  # season slot of the next bin
        self.score_steps = score_steps
        self.score_every = score_every

    @property
    def grid_size(self) -> int:
        return len(self._ga)

    def min_length(self) -> int:
        # one season seeds the state; a quarter more is needed to score the grid
        return self.period + max(12, self.period // 4)

    def fit(self, y: np.ndarray, start_slot: int = 0) -> HoltWinters:
        """Fit every series in `y[n_series, T]` (T ≥ min_length()); bin 0 is season slot `start_slot`."""
        y = np.atleast_2d(np.asarray(y))
        n, t_len = y.shape
        if t_len < self.min_length():
            raise ValueError(f"Holt-Winters needs {self.min_length()} bins, got {t_len}")
        x = np.sqrt(np.maximum(y, 0.0)).astype(np.float32)
        m = self.period
        self.level = np.empty(n, np.float32)
        self.trend = np.empty(n, np.float32)
        self.season = np.empty((m, n), np.float32)
        self.alpha = np.empty(n, np.float32)
        self.beta = np.empty(n, np.float32)
        self.gamma = np.empty(n, np.float32)
        self.sigma = np.empty(n, np.float32)
        bounds = [(i, min(i + self._chunk, n)) for i in range(0, n, self._chunk)]
        if self._threads > 1 and len(bounds) > 1:
            # numpy drops the GIL inside each ufunc, so chunks on two threads use two cores
            with ThreadPoolExecutor(self._threads) as pool:
                list(pool.map(lambda b: self._fit_chunk(x, *b), bounds))
        else:
            for b in bounds:
                self._fit_chunk(x, *b)
        # the fit indexed the season from bin 0; store it by absolute slot
        self.season = np.roll(self.season, start_slot, axis=0)
        self.slot = (start_slot + t_len) % m
        return self

    def _fit_chunk(self, x_all: np.ndarray, lo: int, hi: int) -> None:
        x = x_all[lo:hi]
        c, t_len = x.shape
        m = self.period
        # seed the season from whole days before the scored span and the level from the hour before it,
        # so the grid is judged on bins its seed never saw
        seed_days = max(1, t_len // m - 1)
        t0 = seed_days * m
        days = x[:, :t0].reshape(c, seed_days, m)
        raw = (days - days.mean(axis=2, keepdims=True)).mean(axis=1)
        seeds = np.stack([_smooth_circular(raw, w) for w in self._smooths], axis=2)  # [c, m, S]
        s_arr = np.ascontiguousarray(seeds[:, :, self._gs].transpose(1, 0, 2))  # [m, c, G]
        lvl = (x[:, t0 - 12 : t0, None] - s_arr[m - 12 :].transpose(1, 0, 2)).mean(axis=1)
        trd = np.zeros_like(lvl)
        sse = np.zeros_like(lvl)
        a, ab, g = self._ga, self._ga * self._gb, self._gg
        use_trend = bool(np.any(ab))
        e, tmp = np.empty_like(lvl), np.empty_like(lvl)
        # without a trend the level is its own one-step prediction, updated in place
        lb = np.empty_like(lvl) if use_trend else lvl
        xt_all = np.ascontiguousarray(x.T)[:, :, None]
        # the level after each of the last `ring_n` bins: a forecast from h bins back is that level
        # plus today's season slot (β = 0 in the default grid, so the trend term is left out)
        far = [h for h in self.score_steps if h > 1]
        ring_n = max(far, default=1)
        ring = np.repeat(lvl[None], ring_n if far else 0, axis=0)
        sse1 = np.zeros_like(lvl) if far else sse
        for t in range(t0, t_len):
            s = s_arr[t % m]
            if use_trend:
                np.add(lvl, trd, out=lb)
            np.subtract(xt_all[t], lb, out=e)
            np.subtract(e, s, out=e)
            np.multiply(e, e, out=tmp)
            np.add(sse1, tmp, out=sse1)
            # multi-step errors on every `score_every`-th bin: enough to rank the grid, a third of the cost
            if far and (t - t0) % self.score_every == 0:
                if 1 in self.score_steps:
                    np.add(sse, tmp, out=sse)
                for h in far:
                    if t - t0 >= h:
                        np.subtract(xt_all[t], ring[(t - h) % ring_n], out=tmp)
                        np.subtract(tmp, s, out=tmp)
                        np.multiply(tmp, tmp, out=tmp)
                        np.add(sse, tmp, out=sse)
            np.multiply(e, a, out=tmp)
            np.add(lb, tmp, out=lvl)
            if use_trend:
                np.multiply(e, ab, out=tmp)
                np.add(trd, tmp, out=trd)
            np.multiply(e, g, out=tmp)
            np.add(s, tmp, out=s)
            if far:
                np.copyto(ring[t % ring_n], lvl)
        best = sse.argmin(axis=1)
        rows = np.arange(c)
        self.level[lo:hi] = lvl[rows, best]
        self.trend[lo:hi] = trd[rows, best]
        self.season[:, lo:hi] = s_arr[:, rows, best]
        self.alpha[lo:hi] = self._ga[best]
        self.beta[lo:hi] = self._gb[best]
        self.gamma[lo:hi] = self._gg[best]
        self.sigma[lo:hi] = np.sqrt(sse1[rows, best] / (t_len - t0))

    def predict(self, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point, lower and upper for steps 1..h, each `[n_series, h]`, on the count scale."""
        steps = np.arange(1, h + 1)
        slots = (self.slot + steps - 1) % self.period
        f = (self.level[:, None] + self.trend[:, None] * steps).astype(np.float64) + self.season[slots].T
        # σ of the h-step error of a local level: each step adds α² of a one-step variance
        sig = self.sigma[:, None].astype(np.float64) * np.sqrt(1.0 + (steps - 1) * self.alpha[:, None].astype(np.float64) ** 2)
        z_lo, z_hi = (NormalDist().inv_cdf(q) for q in self.quantiles)
        return (
            np.maximum(f, 0.0) ** 2,
            np.maximum(f + z_lo * sig, 0.0) ** 2,
            np.maximum(f + z_hi * sig, 0.0) ** 2,
        )

    def select(self, rows: np.ndarray) -> None:
        """Keep the fitted state of these series only (in this order)."""
        for name in ("level", "trend", "alpha", "beta", "gamma", "sigma"):
            setattr(self, name, getattr(self, name)[rows])
        self.season = self.season[:, rows]

    def update(self, y_new: np.ndarray) -> None:
        """Advance every series by one observed bin: O(n) numpy, no refit."""
        x = np.sqrt(np.maximum(np.asarray(y_new, dtype=np.float32), 0.0))
        s = self.season[self.slot]
        lb = self.level + self.trend
        e = x - lb - s
        self.level = lb + self.alpha * e
        self.trend += self.alpha * self.beta * e
        s += self.gamma * e
        self.slot = (self.slot + 1) % self.period

    @property
    def nbytes_per_series(self) -> int:
        arrays = (self.level, self.trend, self.season, self.alpha, self.beta, self.gamma, self.sigma)
        return sum(a.nbytes for a in arrays) // max(1, len(self.level))


def _smooth_circular(season: np.ndarray, width: int) -> np.ndarray:
    """Moving average along the day, wrapping at midnight: a season seeded from one or two days
    would otherwise carry those days' noise into every forecast."""
    if width <= 1:
        return season
    half = width // 2
    padded = np.concatenate([season[:, -half:], season, season[:, :half]], axis=1)
    c = np.cumsum(padded, axis=1, dtype=np.float64)
    c = np.concatenate([np.zeros((season.shape[0], 1)), c], axis=1)
    return ((c[:, width:] - c[:, :-width]) / width).astype(season.dtype)
