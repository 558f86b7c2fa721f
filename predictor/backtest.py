"""Rolling-origin backtest, per-series model choice and interval calibration.

Origins are split in time: the earlier ones choose a model per series (lowest MASE) and decide
whether its own intervals or backtest-calibrated ones are closer to nominal; the later ones score
that choice. Nothing the choice sees is scored, so `chosen` figures are honest out-of-sample.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import structlog

from predictor.models import STATSMODELS_MODELS, Model, candidates

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class BacktestConfig:
    horizons: tuple[int, ...] = (3, 12)  # steps ahead that are scored (15 and 60 min of 5-min bins)
    window: int = 576  # bins each model is fitted on (two days: what the live ring buffer holds)
    step: int = 12  # bins between origins
    max_origins: int = 96  # the latest ones
    choice_fraction: float = 0.5  # earliest share of origins used to choose; the rest score it
    statsmodels_top_n: int = 2  # statsmodels models only for the series carrying most traffic
    statsmodels_max_origins: int = 24  # and only at this many origins, evenly spread (a fit costs ≈ 0.1–1 s)
    quantiles: tuple[float, float] = (0.05, 0.95)
    # the default model keeps a series unless another beats it by this margin on the choice
    # origins: choice-window noise otherwise flips series to models that lose on later data
    incumbent: str = "holt_winters"
    switch_margin: float = 0.1

    @property
    def nominal(self) -> float:
        return self.quantiles[1] - self.quantiles[0]


def scaled_abs_error(actual: np.ndarray, point: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """|error| in units of the daily seasonal naive in-sample MAE (MASE once averaged); NaN for
    a series flat over its window, whose scale is zero."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale > 0, np.abs(actual - point) / scale, np.nan)


def smape(actual: np.ndarray, point: np.ndarray) -> np.ndarray:
    denom = np.abs(actual) + np.abs(point)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2.0 * np.abs(actual - point) / denom, 0.0)


def seasonal_scale(y: np.ndarray, period: int) -> np.ndarray:
    """Mean |y_t − y_{t−period}| per series over its window: the MASE denominator."""
    return np.mean(np.abs(y[:, period:] - y[:, :-period]), axis=1)


def widen(point: np.ndarray, lower: np.ndarray, upper: np.ndarray, factor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale an interval's half-widths on the sqrt scale by `factor` (broadcast per series)."""
    sp = np.sqrt(point)
    lo = np.maximum(sp - factor * (sp - np.sqrt(lower)), 0.0) ** 2
    hi = (sp + factor * (np.sqrt(upper) - sp)) ** 2
    return lo, hi


def calibration_factor(actual: np.ndarray, point: np.ndarray, lower: np.ndarray, upper: np.ndarray, nominal: float) -> float:
    """The smallest widening of the model's sqrt-scale band that would have covered `nominal` of
    these actuals: an empirical quantile of the residuals, normalised by the band so that one
    number serves every horizon."""
    sp, sa = np.sqrt(point), np.sqrt(actual)
    r = sa - sp
    w = np.where(r >= 0, np.sqrt(upper) - sp, sp - np.sqrt(lower))
    need = np.abs(r) / np.maximum(w, 1e-6)
    need = need[np.isfinite(need)]
    return float(np.quantile(need, nominal)) if need.size else 1.0


@dataclass
class BacktestResult:
    ids: tuple[str, ...]
    bin_s: float
    config: BacktestConfig
    origins: np.ndarray  # [K] bin index each forecast is made from (first forecast bin)
    n_choice: int  # origins[:n_choice] choose, the rest score
    actual: np.ndarray  # [n, K, H]
    scale: np.ndarray  # [n, K]
    point: dict[str, np.ndarray] = field(default_factory=dict)  # model -> [n, K, H], NaN where not run
    lower: dict[str, np.ndarray] = field(default_factory=dict)
    upper: dict[str, np.ndarray] = field(default_factory=dict)
    fit_seconds: dict[str, float] = field(default_factory=dict)  # per series per fit
    chosen: list[str] = field(default_factory=list)
    interval_source: list[str] = field(default_factory=list)  # "model" or "empirical"
    interval_factor: np.ndarray = field(default_factory=lambda: np.ones(0))

    @property
    def models(self) -> list[str]:
        return list(self.point)

    def chosen_forecast(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The per-series choice with its calibrated band, `[n, K, H]` (meaningful on scoring origins)."""
        n = len(self.ids)
        p = np.stack([self.point[self.chosen[i]][i] for i in range(n)])
        lo = np.stack([self.lower[self.chosen[i]][i] for i in range(n)])
        hi = np.stack([self.upper[self.chosen[i]][i] for i in range(n)])
        lo, hi = widen(p, lo, hi, self.interval_factor[:, None, None])
        return p, lo, hi

    def scores(self, point: np.ndarray, lower: np.ndarray, upper: np.ndarray, window: slice | None = None) -> dict[str, dict[str, float]]:
        """Pooled MASE, sMAPE and coverage per horizon over series and origins (scoring ones by default)."""
        window = window or slice(self.n_choice, None)
        a, p, lo, hi = (x[:, window] for x in (self.actual, point, lower, upper))
        ase = scaled_abs_error(a, p, self.scale[:, window, None])
        ok = np.isfinite(p)
        out = {}
        for j, h in enumerate(self.config.horizons):
            m = ok[..., j]
            out[_label(h, self.bin_s)] = {
                "mase": _mean(ase[..., j][m]),
                "smape": _mean(smape(a[..., j], p[..., j])[m]),
                "coverage": _mean(((a[..., j] >= lo[..., j]) & (a[..., j] <= hi[..., j]))[m]),
            }
        return out

    def summary(self) -> dict:
        models = {}
        for name in self.models:
            sc = self.scores(self.point[name], self.lower[name], self.upper[name])
            models[name] = _pool(sc) | {"fit_seconds": round(self.fit_seconds[name], 6), "horizons": sc,
                                        "series": int(np.isfinite(self.point[name][:, 0, 0]).sum())}
        sc = self.scores(*self.chosen_forecast())
        chosen = _pool(sc) | {"fit_seconds": round(sum(self.fit_seconds[m] for m in set(self.chosen)), 6), "horizons": sc}
        return {
            "bin_s": self.bin_s,
            "origins": {"choice": self.n_choice, "scored": len(self.origins) - self.n_choice},
            "models": models,
            "chosen": chosen,
            "per_series": {
                sid: {"model": self.chosen[i], "intervals": self.interval_source[i]} for i, sid in enumerate(self.ids)
            },
        }


def _label(h: int, bin_s: float) -> str:
    s = h * bin_s
    return f"{int(s // 3600)}h" if s % 3600 == 0 and s >= 3600 else f"{int(s // 60)}m"


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)] if x.dtype.kind == "f" else x
    return round(float(np.mean(x)), 4) if x.size else float("nan")


def _pool(per_h: dict[str, dict[str, float]]) -> dict[str, float]:
    keys = ("mase", "smape", "coverage")
    return {k: round(float(np.nanmean([v[k] for v in per_h.values()])), 4) for k in keys}


def origins_for(length: int, cfg: BacktestConfig, need: int) -> np.ndarray:
    """The latest `max_origins` origins, `step` apart, each with `need` bins before it and every
    scored horizon inside the data."""
    last = length - max(cfg.horizons)
    first = max(need, cfg.window)
    if last < first:
        return np.zeros(0, dtype=np.int64)
    o = np.arange(last, first - 1, -cfg.step)[: cfg.max_origins]
    return np.sort(o)


def run(
    values: np.ndarray,
    ids: tuple[str, ...],
    bin_s: float,
    cfg: BacktestConfig = BacktestConfig(),
    models: list[Model] | None = None,
    start_slot: int = 0,
) -> BacktestResult:
    """Backtest every candidate at every origin, then choose per series and calibrate intervals."""
    n, length = values.shape
    period = int(round(86_400 / bin_s))
    models = models if models is not None else candidates(period, length, cfg.quantiles, statsmodels=cfg.statsmodels_top_n > 0)
    need = max(m.min_length() for m in models if m.name not in STATSMODELS_MODELS)
    origins = origins_for(length, cfg, need)
    if len(origins) < 2:
        raise ValueError(f"too little data to backtest: {length} bins, need {need + max(cfg.horizons) + cfg.step}")
    hs = np.asarray(cfg.horizons) - 1
    h_max = max(cfg.horizons)
    k_n = len(origins)
    actual = np.stack([values[:, o + hs] for o in origins], axis=1)
    scale = np.stack([seasonal_scale(values[:, o - cfg.window : o], period) for o in origins], axis=1)
    res = BacktestResult(ids, bin_s, cfg, origins, max(1, int(k_n * cfg.choice_fraction)), actual, scale)
    top = np.argsort(-values.sum(axis=1))[: cfg.statsmodels_top_n]
    for model in models:
        slow = model.name in STATSMODELS_MODELS
        rows = top if slow else np.arange(n)
        stride = max(1, -(-k_n // cfg.statsmodels_max_origins)) if slow else 1
        win = max(cfg.window, model.min_length())
        shape = (n, k_n, len(hs))
        p, lo, hi = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
        spent = 0.0
        for k, o in enumerate(origins):
            if o < win or k % stride:
                continue
            t0 = time.perf_counter()
            model.fit(values[rows, o - win : o], start_slot=(start_slot + o - win) % period)
            fp, fl, fh = model.predict(h_max)
            spent += time.perf_counter() - t0
            p[rows, k], lo[rows, k], hi[rows, k] = fp[:, hs], fl[:, hs], fh[:, hs]
        fits = max(1, len(rows) * int(np.sum(np.isfinite(p[rows[0] if len(rows) else 0, :, 0]))))
        res.point[model.name], res.lower[model.name], res.upper[model.name] = p, lo, hi
        res.fit_seconds[model.name] = spent / fits
    choose(res)
    return res


def choose(res: BacktestResult) -> None:
    """Per series: the model with the lowest MASE on the choice origins (only models run at all of
    them compete), then model or empirical intervals, whichever came closer to nominal coverage
    when calibrated on the first half of the choice origins and checked on the second."""
    c = res.n_choice
    nominal = res.config.nominal
    res.chosen, res.interval_source = [], []
    factors = np.ones(len(res.ids))
    for i in range(len(res.ids)):
        best, best_err = "", np.inf
        names = [m for m in res.models if np.isfinite(res.point[m][i, :c, 0]).any()]
        # compare on the origins where every competitor ran (statsmodels runs at a subset)
        common = np.all([np.isfinite(res.point[m][i, :c, 0]) for m in names], axis=0)
        for name in names:
            p = res.point[name][i, :c][common]
            ase = scaled_abs_error(res.actual[i, :c][common], p, res.scale[i, :c, None][common])
            # a series flat over its windows has no MASE scale; plain MAE still ranks the models
            err = np.mean(ase[np.isfinite(ase)]) if np.isfinite(ase).any() else np.mean(np.abs(res.actual[i, :c][common] - p))
            if name == res.config.incumbent:
                err *= 1.0 - res.config.switch_margin
            if err < best_err:
                best, best_err = name, err
        res.chosen.append(best)
        ran = np.isfinite(res.point[best][i, :c, 0])
        a = res.actual[i, :c][ran]
        p, lo, hi = res.point[best][i, :c][ran], res.lower[best][i, :c][ran], res.upper[best][i, :c][ran]
        half = max(1, len(a) // 2)
        model_cov = np.mean((a >= lo) & (a <= hi))
        f_half = calibration_factor(a[:half], p[:half], lo[:half], hi[:half], nominal)
        elo, ehi = widen(p[half:], lo[half:], hi[half:], f_half)
        emp_cov = np.mean((a[half:] >= elo) & (a[half:] <= ehi)) if len(a) > 1 else model_cov
        if abs(emp_cov - nominal) < abs(model_cov - nominal):
            res.interval_source.append("empirical")
            factors[i] = calibration_factor(a, p, lo, hi, nominal)
        else:
            res.interval_source.append("model")
    res.interval_factor = factors
