"""LightGBM lag-feature worker for bench/gbm.py; runs only with bench/.venv-gbm's python.

    bench/.venv-gbm/bin/python bench/gbm_worker.py DIR --period 288 --horizons 3,12 [--target last] [--point-objective l1]

Reads DIR/windows.npy (`[K, n, W]`: at each of K origins, the W bins before it of n series, already
√counts as every candidate fits) and DIR/slots.npy (`[K]`: time-of-day slot of each window's first
bin). At each origin it trains, on that window only, one global model over the n series per horizon
h (direct, not recursive) and per output: the point (`--point-objective`, default l1: the median,
which MASE rewards) and the 0.05 and 0.95 quantiles (LightGBM's quantile objective), then forecasts
h steps after the window. Writes DIR/point.npy, lower.npy, upper.npy (`[K, n, H]`, √ scale) and
seconds.npy (`[K]`, all fits and predictions at that origin). Imports nothing from warmfront: this
venv has only LightGBM and numpy.

A training row is an origin t inside the window (features from bins before t) and its target
x[t + h - 1]; every feature and target lies inside the window, so given the two-day window the
model sees exactly what the other candidates see (bench/gbm.py --lookback hands it a longer one).
Features, each series divided by its window mean so that one model serves sources of any size:
lags 1..12; the target's slot yesterday and its neighbours (τ-287, τ-288, τ-289, τ = t + h - 1)
and yesterday's hour around it; the origin's slot yesterday (t-289); means of the last 3, 12, 48
and 288 bins; the target's time of day as sin/cos; log of the series' window mean; and differences
a tree cannot form itself: yesterday's change from the origin's slot to the target's (single bins
and hour means) and the recent slope. The target is relative to the last value by default
(`--target`, see `base`).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import lightgbm as lgb
import numpy as np

BASE = {"learning_rate": 0.05, "num_leaves": 15, "min_data_in_leaf": 20, "feature_fraction": 0.9,
        "lambda_l2": 1.0, "num_threads": 1, "deterministic": True, "seed": 0, "verbose": -1}


def first_row(h: int) -> int:
    # t-300 (yesterday's hour before the origin's slot) and τ-294 (yesterday's hour around the target) in the window
    return max(300, 295 - h)


def features(x: np.ndarray, scale: np.ndarray, t: np.ndarray, h: int, slot0: int, period: int) -> np.ndarray:
    """`[n, len(t), F]` features for origins `t` of normalised series `x` `[n, W]`."""
    n = len(x)
    c = np.concatenate([np.zeros((n, 1)), np.cumsum(x, axis=1)], axis=1)
    tau = t + h - 1
    cols = [x[:, t[:, None] - np.arange(1, 13)[None, :]]]  # lags 1..12: [n, T, 12]
    one = [x[:, tau - 287], x[:, tau - 288], x[:, tau - 289], x[:, t - 289],
           (c[:, tau - 282] - c[:, tau - 294]) / 12.0]
    one += [(c[:, t] - c[:, t - k]) / k for k in (3, 12, 48, 288)]
    # differences a tree cannot form from its splits: yesterday's change from the origin's slot to
    # the target's, and the recent slope
    one += [x[:, tau - 288] - x[:, t - 289], (c[:, tau - 282] - c[:, tau - 294]) / 12.0 - (c[:, t - 288] - c[:, t - 300]) / 12.0,
            x[:, t - 1] - x[:, t - 4], (c[:, t] - c[:, t - 3]) / 3 - (c[:, t - 12] - c[:, t - 24]) / 12]
    ang = 2 * np.pi * ((slot0 + tau) % period) / period
    one += [np.broadcast_to(np.sin(ang), (n, len(t))), np.broadcast_to(np.cos(ang), (n, len(t))),
            np.broadcast_to(np.log(scale)[:, None], (n, len(t)))]
    return np.concatenate(cols + [np.stack(one, axis=2)], axis=2)


def base(x: np.ndarray, t: np.ndarray, h: int, target: str) -> np.ndarray:
    """What the model's target is relative to, `[n, len(t)]`: nothing (`level`), the last value
    (`last`), or the last value plus yesterday's change over the same h steps (`seasonal`)."""
    if target == "level":
        return np.zeros((len(x), len(t)))
    if target == "last":
        return x[:, t - 1]
    return x[:, t - 1] + x[:, t + h - 1 - 288] - x[:, t - 289]


def fit_predict(x: np.ndarray, slot0: int, h: int, period: int, rounds: int,
                quantiles: tuple[float, float], target: str, point_objective: str) -> tuple[np.ndarray, ...]:
    """One origin, one horizon: `(point, lower, upper)` per series, √ scale."""
    n, w = x.shape
    scale = np.maximum(x.mean(axis=1), 1e-3)
    z = x / scale[:, None]
    t = np.arange(first_row(h), w - h + 1)
    xf = features(z, scale, t, h, slot0, period).reshape(n * len(t), -1)
    y = (z[:, t + h - 1] - base(z, t, h, target)).reshape(-1)
    xp = features(z, scale, np.array([w]), h, slot0, period)[:, 0]  # reads bins up to w-1 only (h ≤ 283)
    base_p = base(z, np.array([w]), h, target)[:, 0]
    out = []
    for obj in (point_objective, ("quantile", quantiles[0]), ("quantile", quantiles[1])):
        p = dict(BASE)
        if isinstance(obj, tuple):
            p |= {"objective": obj[0], "alpha": obj[1]}
        else:
            p["objective"] = obj
        booster = lgb.train(p, lgb.Dataset(xf, y, free_raw_data=True), num_boost_round=rounds)
        out.append(np.maximum((booster.predict(xp) + base_p) * scale, 0.0))
    point, lo, hi = out
    return point, np.minimum(lo, point), np.maximum(hi, point)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--period", type=int, default=288)
    ap.add_argument("--horizons", default="3,12")
    ap.add_argument("--quantiles", default="0.05,0.95")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--target", choices=("level", "last", "seasonal"), default="last")
    ap.add_argument("--point-objective", default="l1")
    args = ap.parse_args()
    windows = np.load(args.dir / "windows.npy")
    slots = np.load(args.dir / "slots.npy")
    horizons = [int(h) for h in args.horizons.split(",")]
    q = tuple(float(v) for v in args.quantiles.split(","))
    k_n, n, _ = windows.shape
    point, lower, upper = (np.full((k_n, n, len(horizons)), np.nan) for _ in range(3))
    seconds = np.zeros(k_n)
    for k in range(k_n):
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for j, h in enumerate(horizons):
                point[k, :, j], lower[k, :, j], upper[k, :, j] = fit_predict(
                    windows[k], int(slots[k]), h, args.period, args.rounds, q, args.target, args.point_objective)
        seconds[k] = time.perf_counter() - t0
    for name, arr in (("point", point), ("lower", lower), ("upper", upper), ("seconds", seconds)):
        np.save(args.dir / f"{name}.npy", arr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
