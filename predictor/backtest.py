"""Rolling-origin backtest, per-series model blending and interval calibration.

Origins are split in time: the earlier ones weigh the models per series and horizon (weights ∝
MASE⁻⁴, so a clearly worse model gets almost nothing and near-equals are averaged) and calibrate
the blend's band per horizon; the later ones score that choice. Nothing the choice sees is scored,
so `chosen` figures are honest out-of-sample.

Every table scores its rows on one sample of (series, origin) pairs and says which: `all` is every
series at every scored origin (the numpy models and the choice); where the statsmodels models ran
only on the busiest series at a spread of scored origins, `statsmodels_subsample` scores every
model, the choice included, on exactly those pairs. A row scored on fewer or easier windows than
the row beside it would make the comparison meaningless.

MASE over several series is the mean of per-series MASE, each being the series' mean absolute
error over the scored origins divided by its mean in-sample seasonal-naive error over the same
windows. Dividing origin by origin instead lets one window that happens to be nearly flat (a
source down for a day) put a near-zero scale under the error at the next origin, and that one
series then dominated the pooled figure for every model; a mean over series (not a traffic
weighting) keeps small sources counting as much as big ones.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import structlog

from predictor.models import STATSMODELS_MODELS, Model, candidates
from predictor.ridge import POISSON_SD

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class BacktestConfig:
    horizons: tuple[int, ...] = (3, 12)  # steps ahead that are scored (15 and 60 min of 5-min bins)
    window: int = 576  # bins each model is fitted on (two days: what the live ring buffer holds)
    step: int = 12  # bins between origins
    max_origins: int = 96  # the latest ones
    choice_fraction: float = 0.5  # earliest share of origins used to choose; the rest score it
    statsmodels_top_n: int = 2  # statsmodels models only for the series carrying most traffic
    statsmodels_max_origins: int = 24  # and only at this many origins (all, or spread over the scored ones: a fit costs ≈ 0.1–1 s)
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


def poisson_floor(quantiles: tuple[float, float]) -> tuple[float, float]:
    """The narrowest half-widths below and above the point on the sqrt scale: the count noise
    alone (Var(√Poisson) ≈ 1/4), which a series that was perfectly regular so far still has."""
    z_lo, z_hi = (NormalDist().inv_cdf(q) for q in quantiles)
    return -z_lo * POISSON_SD, z_hi * POISSON_SD


def widen(point: np.ndarray, lower: np.ndarray, upper: np.ndarray, factor: np.ndarray,
          floor: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Scale an interval's half-widths on the sqrt scale by `factor` (broadcast per series), each
    at least `floor` (below, above)."""
    sp = np.sqrt(point)
    lo = np.maximum(sp - np.maximum(factor * (sp - np.sqrt(lower)), floor[0]), 0.0) ** 2
    hi = (sp + np.maximum(factor * (np.sqrt(upper) - sp), floor[1])) ** 2
    return lo, hi


def band_need(actual: np.ndarray, point: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """How many times its sqrt-scale half-width (on the residual's side) the band would have had
    to be to cover each actual: the backtest residuals, normalised by the band."""
    sp, sa = np.sqrt(point), np.sqrt(actual)
    r = sa - sp
    w = np.where(r >= 0, np.sqrt(upper) - sp, sp - np.sqrt(lower))
    with np.errstate(invalid="ignore"):
        return np.abs(r) / np.maximum(w, 1e-6)


def calibration_factor(actual: np.ndarray, point: np.ndarray, lower: np.ndarray, upper: np.ndarray, nominal: float) -> float:
    """The smallest widening of the model's sqrt-scale band that would have covered `nominal` of
    these actuals, pooled over series and origins."""
    need = band_need(actual, point, lower, upper)
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
    interval_factor: np.ndarray = field(default_factory=lambda: np.ones(0))  # [H] pooled widening of the blend's band (live)
    factor_path: np.ndarray = field(default_factory=lambda: np.ones((0, 0, 0)))  # [n, K, H] widening in force at each origin

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
        lo, hi = widen(p, lo, hi, self.factor_path, poisson_floor(self.config.quantiles))
        return p, lo, hi

    def scores(self, point: np.ndarray, lower: np.ndarray, upper: np.ndarray, window: slice | None = None,
               rows: np.ndarray | None = None, origins: np.ndarray | None = None) -> dict[str, dict[str, float]]:
        """MASE (mean of per-series MASE), sMAPE and coverage per horizon over the scoring origins
        (or `window` of origins, or the origin indices `origins`), of every series or of `rows`."""
        cols: slice | np.ndarray = origins if origins is not None else (window or slice(self.n_choice, None))
        sel = (lambda x: x[:, cols]) if rows is None else (lambda x: x[rows][:, cols])
        a, p, lo, hi = (sel(x) for x in (self.actual, point, lower, upper))
        per_series = series_mase(a, p, sel(self.scale))
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

    def samples(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The (series, scored origin) samples tables are scored on: `all`, and where a model ran
        on only part of it, the part every model ran on (series rows, origin indices)."""
        scored = np.arange(self.n_choice, len(self.origins))
        out = {"all": (np.arange(len(self.ids)), scored)}
        ran = [np.isfinite(self.point[m][:, scored, 0]) for m in self.models]
        partial = [r for r in ran if not r.all()]
        if partial:
            both = np.logical_and.reduce(partial)
            rows, cols = np.flatnonzero(both.any(axis=1)), np.flatnonzero(both.any(axis=0))
            if len(rows) and both[np.ix_(rows, cols)].all():
                out["statsmodels_subsample"] = (rows, scored[cols])
        return out

    def summary(self) -> dict:
        labels = [_label(h, self.bin_s) for h in self.config.horizons]
        chosen_fc = self.chosen_forecast()
        used = [m for m, w in self.weights.items() if w.any()]
        chosen_fit = round(sum(self.fit_seconds[m] for m in used), 6)
        samples = {}
        for sample, (rows, cols) in self.samples().items():
            table = {}
            for name in self.models:
                ran = np.isfinite(self.point[name][np.ix_(rows, cols)][..., 0])
                if not ran.all():
                    continue  # this model did not run on every pair of this sample
                sc = self.scores(self.point[name], self.lower[name], self.upper[name], rows=rows, origins=cols)
                table[name] = _pool(sc) | {"fit_seconds": round(self.fit_seconds[name], 6), "horizons": sc,
                                           "series": len(rows), "origins": len(cols)}
            sc = self.scores(*chosen_fc, rows=rows, origins=cols)
            chosen = _pool(sc) | {"fit_seconds": chosen_fit, "horizons": sc, "series": len(rows), "origins": len(cols)}
            samples[sample] = {"series": len(rows), "origins": len(cols), "models": table, "chosen": chosen}
        return {
            "bin_s": self.bin_s,
            "origins": {"choice": self.n_choice, "scored": len(self.origins) - self.n_choice},
            # the full sample's table, as before: every series, every scored origin
            "models": samples["all"]["models"],
            "chosen": samples["all"]["chosen"],
            "samples": samples,
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
    slow_at = slow_origins(k_n, res.n_choice, cfg.statsmodels_max_origins)
    for model in models:
        slow = model.name in STATSMODELS_MODELS
        rows = top if slow else np.arange(n)
        at = slow_at if slow else np.ones(k_n, dtype=bool)
        win = max(cfg.window, model.min_length())
        shape = (n, k_n, len(hs))
        p, lo, hi = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
        spent = 0.0
        for k, o in enumerate(origins):
            if o < win or not at[k]:
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


def slow_origins(k_n: int, n_choice: int, budget: int) -> np.ndarray:
    """Which origins the statsmodels models run at: all when the budget allows; otherwise only
    scored ones, evenly spread. The choice blends a model only where it ran at every choice
    origin, so statsmodels fits on a subset of those were wasted, and putting them all among the
    scored origins doubles the sample its rows are judged on."""
    at = np.ones(k_n, dtype=bool)
    if budget >= k_n:
        return at
    at[:] = False
    scored = k_n - n_choice
    at[n_choice + np.unique(np.round(np.linspace(0, scored - 1, min(budget, scored))).astype(np.int64))] = True
    return at


def choose(res: BacktestResult) -> None:
    """Per series and horizon, blend weights ∝ MASE^-power on the choice origins over the models
    that ran at every origin of that series (statsmodels may run at a subset: those compete only
    where they ran throughout). Then one widening of the blend's band per horizon, pooled over
    series (what the live engine applies): the `nominal` quantile of |residual| / half-width on the
    choice origins; at each scored origin the band is recalibrated the same way on every earlier
    origin whose target it has seen, as the live engine recalibrates at each refit. Pooled, not per
    series: per-series factors covered Huawei dc2 better (0.90 / 0.88 against 0.86 / 0.85 at 15 /
    60 min) but gave its spiky, mostly-zero functions bands so wide that planning at their upper
    quantile cost 1.9x reactive's container-minutes in `warmfront simulate` (1.13x pooled)."""
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
        with warnings.catch_warnings():  # a model that never ran on a series: all NaN, ranked out below
            warnings.simplefilter("ignore", RuntimeWarning)
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
    p, lo, hi = res.blend()
    need = band_need(res.actual, p, lo, hi)
    k_n = len(res.origins)
    res.interval_factor = np.array([calibration_factor(res.actual[:, :c, j], p[:, :c, j], lo[:, :c, j], hi[:, :c, j], cfg.nominal)
                                    for j in range(h_n)])
    res.factor_path = np.repeat(res.interval_factor[None, None, :], n, axis=0).repeat(k_n, axis=1)
    for k in range(c, k_n):
        for j, h in enumerate(cfg.horizons):
            seen = res.origins[:k] + h - 1 < res.origins[k]  # earlier origins whose target is observed by now
            past = need[:, :k][:, seen, j]
            past = past[np.isfinite(past)]
            if past.size:
                res.factor_path[:, k, j] = float(np.quantile(past, cfg.nominal))
    res.interval_source = ["empirical"] * n
