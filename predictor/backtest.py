"""Rolling-origin backtest, per-series model blending and interval calibration.

Origins are split in time: the earlier ones weigh the models per series and horizon (weights ∝
MASE⁻⁴, so a clearly worse model gets almost nothing and near-equals are averaged) and calibrate
the blend's band per horizon; the later ones score that choice. Nothing the choice sees is scored,
so `chosen` figures are honest out-of-sample.

MASE over several series is the mean of per-series MASE, each being the series' mean absolute
error over the scored origins divided by its mean in-sample seasonal-naive error over the same
windows. Dividing origin by origin instead lets one window that happens to be nearly flat (a
source down for a day) put a near-zero scale under the error at the next origin, and that one
series then dominated the pooled figure for every model; a mean over series (not a traffic
weighting) keeps small sources counting as much as big ones.
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
    # weight of a model in a series' blend ∝ MASE^-power on the choice origins
    blend_power: float = 4.0

    @property
    def nominal(self) -> float:
        return self.quantiles[1] - self.quantiles[0]


def scaled_abs_error(actual: np.ndarray, point: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """|error| in units of the daily seasonal naive in-sample MAE (MASE once averaged); NaN for
    a series flat over its window, whose scale is zero."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale > 0, np.abs(actual - point) / scale, np.nan)


def series_mase(actual: np.ndarray, point: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per series and horizon: Σ|error| / Σ scale over the origins where `point` is finite.
    `actual`, `point` are `[n, K, H]`, `scale` `[n, K]`; NaN where a series' scale is all zero."""
    e = np.abs(actual - point)
    ok = np.isfinite(e)
    den = np.sum(np.where(ok, scale[..., None], 0.0), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, np.sum(np.where(ok, e, 0.0), axis=1) / den, np.nan)


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
    weights: dict[str, np.ndarray] = field(default_factory=dict)  # model -> [n, H] blend weight
    chosen: list[str] = field(default_factory=list)  # per series, the heaviest model at the longest horizon
    interval_source: list[str] = field(default_factory=list)
    interval_factor: np.ndarray = field(default_factory=lambda: np.ones(0))  # [H] widening of the blend's band

    @property
    def models(self) -> list[str]:
        return list(self.point)

    def blend(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The weighted blend per series and horizon, `[n, K, H]`, with its uncalibrated band:
        points average on the count scale, band edges on the sqrt scale."""
        p, lo, hi = (np.zeros_like(self.actual, dtype=np.float64) for _ in range(3))
        for name, w in self.weights.items():
            ww = w[:, None, :]
            if not ww.any():
                continue
            used = ww > 0
            p += np.where(used, ww * self.point[name], 0.0)
            lo += np.where(used, ww * np.sqrt(self.lower[name]), 0.0)
            hi += np.where(used, ww * np.sqrt(self.upper[name]), 0.0)
        sp = np.sqrt(p)
        return p, np.maximum(np.minimum(lo, sp), 0.0) ** 2, np.maximum(hi, sp) ** 2

    def chosen_forecast(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The per-series blend with its calibrated band, `[n, K, H]` (meaningful on scoring origins)."""
        p, lo, hi = self.blend()
        lo, hi = widen(p, lo, hi, self.interval_factor[None, None, :])
        return p, lo, hi

    def scores(self, point: np.ndarray, lower: np.ndarray, upper: np.ndarray, window: slice | None = None) -> dict[str, dict[str, float]]:
        """MASE (mean of per-series MASE), sMAPE and coverage per horizon over the scoring origins."""
        window = window or slice(self.n_choice, None)
        a, p, lo, hi = (x[:, window] for x in (self.actual, point, lower, upper))
        per_series = series_mase(a, p, self.scale[:, window])
        ok = np.isfinite(p)
        out = {}
        for j, h in enumerate(self.config.horizons):
            m = ok[..., j]
            out[_label(h, self.bin_s)] = {
                "mase": _mean(per_series[:, j]),
                "mase_median": _median(per_series[:, j]),
                "smape": _mean(smape(a[..., j], p[..., j])[m]),
                "coverage": _mean(((a[..., j] >= lo[..., j]) & (a[..., j] <= hi[..., j]))[m]),
            }
        return out

    def summary(self) -> dict:
        models = {}
        for name in self.models:
            sc = self.scores(self.point[name], self.lower[name], self.upper[name])
            ran = np.isfinite(self.point[name][:, :, 0])
            models[name] = _pool(sc) | {"fit_seconds": round(self.fit_seconds[name], 6), "horizons": sc,
                                        "series": int(ran.any(axis=1).sum()), "origins": int(ran.sum(axis=1).max())}
        sc = self.scores(*self.chosen_forecast())
        used = [m for m, w in self.weights.items() if w.any()]
        chosen = _pool(sc) | {"fit_seconds": round(sum(self.fit_seconds[m] for m in used), 6), "horizons": sc}
        labels = [_label(h, self.bin_s) for h in self.config.horizons]
        return {
            "bin_s": self.bin_s,
            "origins": {"choice": self.n_choice, "scored": len(self.origins) - self.n_choice},
            "models": models,
            "chosen": chosen,
            "interval_factor": {lab: round(float(f), 3) for lab, f in zip(labels, self.interval_factor)},
            "per_series": {
                sid: {"model": self.chosen[i], "intervals": self.interval_source[i],
                      "weights": {lab: {m: round(float(w[i, j]), 3) for m, w in self.weights.items() if w[i, j] >= 0.005}
                                  for j, lab in enumerate(labels)}}
                for i, sid in enumerate(self.ids)
            },
        }


def _label(h: int, bin_s: float) -> str:
    s = h * bin_s
    return f"{int(s // 3600)}h" if s % 3600 == 0 and s >= 3600 else f"{int(s // 60)}m"


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)] if x.dtype.kind == "f" else x
    return round(float(np.mean(x)), 4) if x.size else float("nan")


def _median(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return round(float(np.median(x)), 4) if x.size else float("nan")


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
    """Per series and horizon, blend weights ∝ MASE^-power on the choice origins over the models
    that ran at every origin of that series (statsmodels may run at a subset: those compete only
    where they ran throughout). Then one widening of the blend's band per horizon, pooled over
    series: the empirical `nominal` quantile of |residual| / half-width on the choice origins.
    Pooled, because a 90 % quantile from one series' few dozen origins is mostly noise."""
    c = res.n_choice
    cfg = res.config
    n, _, h_n = res.actual.shape
    names = res.models
    errs = np.full((len(names), n, h_n), np.inf)
    for k, name in enumerate(names):
        p = res.point[name]
        full = np.isfinite(p[:, :, 0]).all(axis=1)
        e = series_mase(res.actual[:, :c], p[:, :c], res.scale[:, :c])
        # a series flat over its windows has no MASE scale; plain MAE still ranks the models
        mae = np.nanmean(np.abs(res.actual[:, :c] - p[:, :c]), axis=1)
        e = np.where(np.isfinite(e), e, mae)
        errs[k] = np.where(full[:, None] & np.isfinite(e), e, np.inf)
    # relative to the best model, so a perfect fit (error 0) does not divide by zero
    rel = errs / np.maximum(errs.min(axis=0, keepdims=True), 1e-12)
    with np.errstate(divide="ignore", over="ignore"):
        w = np.where(np.isfinite(rel), np.where(rel > 0, rel, 1.0) ** -cfg.blend_power, 0.0)
    w /= np.maximum(w.sum(axis=0, keepdims=True), 1e-300)
    res.weights = {name: w[k] for k, name in enumerate(names)}
    res.chosen = [names[k] for k in w[:, :, -1].argmax(axis=0)]
    res.interval_factor = np.ones(h_n)
    p, lo, hi = (x[:, :c] for x in res.blend())
    for j in range(h_n):
        res.interval_factor[j] = calibration_factor(res.actual[:, :c, j], p[..., j], lo[..., j], hi[..., j], cfg.nominal)
    res.interval_source = ["empirical"] * n
