"""The live forecaster the planner calls: counts in, per-series forecasts with intervals out.

Bins are 5 minutes with a 288-slot day (per-minute counts accumulate into the open bin). Every
series keeps two days in a float32 ring buffer; one Holt-Winters state vectorised over all series
advances per closed bin, and a grid refit runs on `refit()`, which also refits lag ridge for the
`ridge_top_n` busiest series (its 288-step recursive path for 100,000 series would cost as much as
the whole Holt-Winters refit; the others blend without it). A series is forecast by the blend of
naive, seasonal naive, Holt-Winters and lag ridge its backtest weighed (per horizon bucket: 1, ≤ 3 and more
steps ahead), its band widened by the backtest's calibration; `Forecast.model` names the heaviest
model. With under `min_history` bins it gets its last value, or a borrowed cluster shape when
`shape_for` provides one. The 24-hour horizon is the
hour ending 24 h ahead, summed from 5-minute forecasts (hourly models did worse, as measured);
its band sums the per-bin bands, which is conservative.
"""
from __future__ import annotations

import math
from collections import deque
from statistics import NormalDist
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import structlog

from predictor.backtest import BacktestConfig, poisson_floor, run as backtest, seasonal_scale, widen
from predictor.feedback import Feedback
from predictor.heavy import ALL_MODELS, HEAVY_MODELS, NUMPY_MODELS, HeavyJob, HeavyPath, HeavyResult
from predictor.holtwinters import HoltWinters
from predictor.models import Naive, SeasonalNaive
from predictor.ridge import LagRidge
from predictor.series import RingBuffer

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
ShapeFor = Callable[[str], "np.ndarray | None"]
Multipliers = Callable[[str, np.ndarray], np.ndarray]
LongHistory = Callable[[str, int, int], "np.ndarray | None"]   # (series, first bin, end bin) -> counts per bin

DEFAULT_HORIZONS_S = (300.0, 900.0, 3600.0, 86_400.0)
BLEND = NUMPY_MODELS
BUCKETS = (1, 3, 12)  # steps ahead the backtest weighs; longer steps use the last bucket's weights
# lag ridge for this many of the busiest series: its refit and 288-step path for 5,000 cost ≈ 0.3 s,
# for 100,000 as much as the whole Holt-Winters refit again (bench/FORECAST.md)
RIDGE_TOP_N = 5_000


@dataclass(frozen=True, slots=True)
class Forecast:
    series_id: str
    horizon_s: float
    point: float  # requests expected in the window ending `horizon_s` after the current bin starts
    lower: float
    upper: float
    model: str
    quantiles: tuple[float, float]
    window_s: float  # length of that window: one bin, or an hour for the 24 h horizon


@dataclass(frozen=True, slots=True)
class ForecastArrays:
    """`Forecaster.forecast` for every series at once: rows follow `ids`, columns `horizons_s`."""
    ids: tuple[str, ...]
    horizons_s: tuple[float, ...]
    point: np.ndarray   # [n, horizons] requests in each horizon's window
    lower: np.ndarray
    upper: np.ndarray
    window_s: tuple[float, ...]   # per horizon: one bin, or an hour for the 24 h horizon
    models: tuple[str, ...]


class Forecaster:
    def __init__(
        self,
        clock: Clock,
        bin_s: float = 300.0,
        buffer_days: float = 2.0,
        quantiles: tuple[float, float] = (0.05, 0.95),
        refit_every_s: float = 900.0,
        mase_threshold: float = 1.5,
        shape_for: ShapeFor | None = None,
        multipliers: Multipliers | None = None,
        statsmodels_top_n: int = 0,
        heavy_every_s: float | None = None,
        heavy_rechoose_s: float = 86_400.0,
        long_history: LongHistory | None = None,
        ridge_top_n: int = RIDGE_TOP_N,
    ) -> None:
        self.clock = clock
        self.bin_s = bin_s
        self.period = int(round(86_400 / bin_s))
        self.quantiles = quantiles
        self.refit_every_s = refit_every_s
        self.shape_for = shape_for
        self.multipliers = multipliers
        self.ids: list[str] = []
        self._index: dict[str, int] = {}
        self.buffer = RingBuffer(0, int(buffer_days * self.period))
        self.hw = HoltWinters(self.period, quantiles=quantiles)
        self._hw_ready = np.zeros(0, dtype=bool)
        self.ridge = LagRidge(self.period, quantiles=quantiles)
        self.ridge_top_n = ridge_top_n
        self._ridge_rows = np.zeros(0, dtype=np.int64)  # series the ridge was fitted for, in its row order
        self.models: list[str] = []
        self._factor = np.ones((0, len(BUCKETS)))
        self._weights = np.zeros((0, len(ALL_MODELS), len(BUCKETS)))
        self._scale = np.zeros(0)
        self._first_bin = np.zeros(0, dtype=np.int64)
        self._open_bin: int | None = None
        self._pending = np.zeros(0)
        # closed bins inside an event: the series in one and the multipliers their counts were divided by
        self._applied: dict[int, tuple[tuple[str, ...], np.ndarray]] = {}
        self._last_refit = -math.inf
        self.feedback = Feedback(horizons=(1, 3, 12), mase_threshold=mase_threshold)
        self._needs_choice = np.zeros(0, dtype=bool)
        # statsmodels tier (predictor.heavy): the top series by traffic keep three days of history
        self.statsmodels_top_n = statsmodels_top_n
        self.heavy_every_s = refit_every_s if heavy_every_s is None else heavy_every_s
        self.heavy_rechoose_s = heavy_rechoose_s
        # where a series entering the statsmodels tier gets its third day (the ring buffer holds two)
        self.long_history = long_history
        self._long: dict[int, deque] = {}
        self._heavy_paths: dict[str, HeavyPath] = {}
        self._heavy_chosen_at: dict[int, float] = {}  # series -> clock time of its last six-model backtest
        self._last_heavy = -math.inf

    # -- input ----------------------------------------------------------------------------------
    def observe(self, bin_start: float, counts: dict[str, float]) -> None:
        """Counts for a bin starting at `bin_start` (any bin no longer than `bin_s`: finer bins add up)."""
        b = int(bin_start // self.bin_s)
        open_bin = b if self._open_bin is None else self._open_bin
        if b < open_bin:
            log.warning("predictor.late_counts", bin_start=bin_start)
            return
        for closing in range(open_bin, b):
            self._close_bin(closing)
        self._open_bin = b
        index = self._index
        new = [sid for sid in counts if sid not in index]
        if new:
            self._add(new, b)
        pending = self._pending
        for sid, c in counts.items():
            pending[index[sid]] += c

    def _add(self, sids: list[str], b: int) -> None:
        # All of a bin's new series at once: every per-series array is reallocated once, not once
        # per series (1,000 new sources were O(n²) copying of the ring buffer, 0.7 s).
        start = len(self.ids)
        self.ids.extend(sids)
        self._index.update((sid, start + k) for k, sid in enumerate(sids))
        n = len(self.ids)
        self.buffer.grow(n)
        grow = lambda a, fill: np.concatenate([a, np.full((n - len(a),) + a.shape[1:], fill, a.dtype)])  # noqa: E731
        self._pending, self._hw_ready = grow(self._pending, 0.0), grow(self._hw_ready, False)
        self._scale, self._factor, self._weights = grow(self._scale, 0.0), grow(self._factor, 1.0), grow(self._weights, 0.0)
        self._first_bin, self._needs_choice = grow(self._first_bin, b), grow(self._needs_choice, True)
        self.models.extend(["last_value"] * len(sids))
        self.feedback.resize(self.ids)

    def retire(self, sids: Iterable[str]) -> int:
        """Forget these series entirely (state, history buffer, errors, statsmodels tier); the
        others keep theirs. Returns how many were known. A retired id that shows up again starts
        over as a new series."""
        drop = {self._index[sid] for sid in sids if sid in self._index}
        if not drop:
            return 0
        keep = np.array([i for i in range(len(self.ids)) if i not in drop], dtype=np.int64)
        new_of = {int(old): new for new, old in enumerate(keep)}
        self.ids = [self.ids[i] for i in keep]
        self._index = {sid: i for i, sid in enumerate(self.ids)}
        self.models = [self.models[i] for i in keep]
        self.buffer.select(keep)
        for name in ("_pending", "_hw_ready", "_scale", "_factor", "_weights", "_first_bin", "_needs_choice"):
            setattr(self, name, getattr(self, name)[keep])
        if hasattr(self.hw, "level"):
            fitted = keep[keep < len(self.hw.level)]
            self.hw.select(fitted)
        if len(self._ridge_rows):
            alive = np.array([int(i) in new_of for i in self._ridge_rows], dtype=bool)
            self.ridge.select(np.flatnonzero(alive))
            self._ridge_rows = np.array([new_of[int(i)] for i in self._ridge_rows[alive]], dtype=np.int64)
        self.feedback.select(keep, self.ids)
        self._long = {new_of[i]: d for i, d in self._long.items() if i in new_of}
        self._heavy_chosen_at = {new_of[i]: t for i, t in self._heavy_chosen_at.items() if i in new_of}
        paths = {}
        for name, p in self._heavy_paths.items():
            live = np.array([int(i) in new_of for i in p.rows], dtype=bool)
            rows = np.array([new_of[int(i)] for i in p.rows[live]], dtype=np.int64)
            paths[name] = HeavyPath(p.open_bin, rows, p.point[live], p.lower[live], p.upper[live])
        self._heavy_paths = paths
        return len(drop)

    def _close_bin(self, b: int) -> None:
        values = self._pending
        # The forecast is scored on what came; the models learn the baseline under any event's multiplier,
        # which the forecast applies again (a model that had adapted to a campaign's traffic would be
        # multiplied twice within the window and stay high after it).
        self.feedback.score(b, values, self._scale)
        learned = self._without_events(b, values)
        self.buffer.append_bin(learned)
        if self._hw_ready.any():
            self.hw.update(learned[: len(self.hw.level)])
        for i, d in self._long.items():
            d.append(float(learned[i]))
        self._pending = np.zeros(len(self.ids))
        self._open_bin = b + 1

    def _without_events(self, b: int, values: np.ndarray) -> np.ndarray:
        """`values` divided by the event multipliers of bin `b`; the bin's multipliers are kept while
        the buffer holds it, so `closed_counts` gives back what came."""
        self._applied = {k: v for k, v in self._applied.items() if k > b - self.buffer.capacity}
        if self.multipliers is None or not len(values):
            return values
        at = np.array([b * self.bin_s])
        m = np.array([float(self.multipliers(sid, at)[0]) for sid in self.ids])
        m = np.where(np.isfinite(m) & (m > 0), m, 1.0)
        rows = np.flatnonzero(m != 1.0)
        if not len(rows):
            return values
        self._applied[b] = (tuple(self.ids[r] for r in rows), m[rows])
        out = values.copy()
        out[rows] /= m[rows]
        return out

    # -- refit ----------------------------------------------------------------------------------
    def refit_due(self) -> bool:
        return self.clock() - self._last_refit >= self.refit_every_s or bool(self.feedback.flagged.any())

    def refit(self) -> None:
        """Grid-refit Holt-Winters for every series, and re-choose the model of series that are new
        to having enough history or that the feedback loop flagged."""
        self._last_refit = self.clock()
        if self._open_bin is None or not self.ids:
            return
        y = self.buffer.window().astype(np.float64)
        t_len = y.shape[1]
        history = self._open_bin - self._first_bin
        if t_len >= self.hw.min_length():
            self.hw.fit(y, start_slot=(self._open_bin - t_len) % self.period)
            self._hw_ready = history >= self.hw.min_length()
            self._scale = seasonal_scale(y, self.period)
        ridge_ok = np.flatnonzero(history >= self.ridge.min_length()) if t_len >= self.ridge.min_length() else np.zeros(0, dtype=np.int64)
        if len(ridge_ok) and self.ridge_top_n > 0:
            traffic = y[ridge_ok].sum(axis=1)
            top = np.sort(ridge_ok[np.argsort(-traffic, kind="stable")[: self.ridge_top_n]])
            self.ridge.fit(y[top])
            self._ridge_rows = top
        else:
            self._ridge_rows = np.zeros(0, dtype=np.int64)
        redo = np.zeros(len(self.ids), dtype=bool)
        redo[self.feedback.take_flagged()] = True
        cfg = BacktestConfig(horizons=BUCKETS, window=self.hw.min_length(), step=12, max_origins=16,
                             choice_fraction=0.99, statsmodels_top_n=0, quantiles=self.quantiles)
        rows = np.flatnonzero((redo | self._needs_choice) & self._hw_ready)
        if len(rows) and t_len >= cfg.window + cfg.step * 2 + 12:
            res = backtest(y[rows], tuple(self.ids[i] for i in rows), self.bin_s, cfg,
                           models=[Naive(self.quantiles), SeasonalNaive(self.period, self.quantiles),
                                   HoltWinters(self.period, quantiles=self.quantiles), LagRidge(self.period, quantiles=self.quantiles)],
                           start_slot=(self._open_bin - t_len) % self.period)
            for k, i in enumerate(rows):
                self.models[i] = res.chosen[k]
                self._heavy_chosen_at.pop(int(i), None)  # re-chosen without statsmodels: the heavy tier redoes it
            self._weights[rows] = 0.0
            self._weights[rows, : len(BLEND)] = np.stack([res.weights[m] for m in BLEND], axis=1)
            self._factor[rows] = res.interval_factor[None, :]
            self._needs_choice[rows] = False
            log.info("predictor.models_chosen", count=len(rows))
        for i in np.flatnonzero(~self._hw_ready):
            self.models[i] = "shape" if self.shape_for and self.shape_for(self.ids[i]) is not None else "last_value"

    # -- statsmodels tier ---------------------------------------------------------------------------
    def heavy_job(self, horizon_s: float = DEFAULT_HORIZONS_S[-1]) -> HeavyJob | None:
        """The statsmodels work due now, as copies a worker thread can take, or None. Call on the
        thread that feeds `observe`; run `predictor.heavy.compute` on the job anywhere; hand the
        result back to `apply_heavy` on the feeding thread."""
        if self.statsmodels_top_n <= 0 or self._open_bin is None or self.clock() - self._last_heavy < self.heavy_every_s:
            return None
        self._last_heavy = self.clock()
        ready = np.flatnonzero(self._hw_ready & (self.buffer.filled >= 2 * self.period))
        if not len(ready):
            return None
        traffic = self.buffer.window().sum(axis=1)[ready]
        top = ready[np.argsort(-traffic, kind="stable")[: self.statsmodels_top_n]]
        keep = {int(i) for i in top}
        for i in set(self._long) - keep:  # left the top: back to the numpy blend
            del self._long[i]
            self._weights[i, len(BLEND) :] = 0.0
            self._heavy_chosen_at.pop(i, None)
        window = self.buffer.window()
        for i in keep - set(self._long):
            past = None
            if self.long_history is not None:
                past = self.long_history(self.ids[i], self._open_bin - 3 * self.period, self._open_bin)
            if past is None or len(past) <= window.shape[1]:
                past = window[i]
            self._long[i] = deque(np.asarray(past, dtype=np.float64).tolist(), maxlen=3 * self.period)
        now = self.clock()
        choose = np.array([now - self._heavy_chosen_at.get(int(i), -math.inf) >= self.heavy_rechoose_s for i in top])
        steps = int(round(horizon_s / self.bin_s)) + int(math.ceil(self.heavy_every_s / self.bin_s)) + 12
        return HeavyJob(top.copy(), tuple(self.ids[i] for i in top), tuple(np.array(self._long[int(i)]) for i in top),
                        choose, self._weights[top].copy(), self._open_bin, steps, self.period, BUCKETS, self.quantiles)

    def apply_heavy(self, result: HeavyResult) -> None:
        """Take a finished job's blends and paths (series that left the top meanwhile are skipped)."""
        # rows by id: series retired while the job ran have moved the others' indices
        rows = np.array([self._index.get(sid, -1) for sid in result.ids], dtype=np.int64)
        live = np.array([int(i) in self._long for i in rows], dtype=bool)
        now = self.clock()
        for k, i in enumerate(rows):
            if not live[k]:
                continue
            if result.chosen[k]:
                self._weights[i] = result.weights[k]
                self._factor[i] = result.factor[k]
                self._heavy_chosen_at[int(i)] = now
                self.models[i] = ALL_MODELS[int(self._weights[i, :, -1].argmax())]
        log.info("predictor.heavy_refit", series=len(result.rows), backtested=int(result.chosen.sum()),
                 fitted=sorted(result.paths), seconds=round(result.seconds, 2))
        current = dict(zip(result.rows.tolist(), rows.tolist()))
        self._heavy_paths = {name: HeavyPath(p.open_bin, np.array([current[int(i)] for i in p.rows[m]], dtype=np.int64), *(
            a[m] for a in (p.point, p.lower, p.upper))) for name, p in result.paths.items()
            for m in [np.isin(p.rows, result.rows[live])]}

    # -- output ---------------------------------------------------------------------------------
    def forecast(self, horizons: tuple[float, ...] = DEFAULT_HORIZONS_S) -> dict[str, tuple[Forecast, ...]]:
        """Per series, one Forecast per horizon (same order). Horizon `H` is the bin `H` after the
        open bin's start, i.e. `H / bin_s` steps ahead of the last closed bin."""
        f = self.forecast_arrays(horizons)
        if f is None:
            return {}
        p, lo, hi = (a.tolist() for a in (f.point, f.lower, f.upper))
        return {sid: tuple(Forecast(sid, float(H), p[i][j], lo[i][j], hi[i][j], f.models[i], self.quantiles, f.window_s[j])
                           for j, H in enumerate(horizons))
                for i, sid in enumerate(f.ids)}

    def forecast_arrays(self, horizons: tuple[float, ...] = DEFAULT_HORIZONS_S) -> ForecastArrays | None:
        """`forecast` as arrays over all series at once (what the live loop sums per pool), or
        None before the first count."""
        if not self.ids or self._open_bin is None:
            return None
        steps_for = {H: max(1, int(round(H / self.bin_s))) for H in horizons}
        long = {H: H >= 6 * 3600 for H in horizons}  # long horizons: the hour ending there
        h_max = max(steps_for.values())
        point, lower, upper = self._paths(h_max, self._open_bin)
        first_target = self._open_bin  # step 1 is the open bin
        if self.multipliers is not None:
            bins = (first_target + np.arange(h_max)) * self.bin_s
            for i, sid in enumerate(self.ids):
                m = np.asarray(self.multipliers(sid, bins), dtype=np.float64)
                point[i] *= m
                lower[i] *= m
                upper[i] *= m
        per_hour = max(1, int(round(3600 / self.bin_s)))
        n = len(self.ids)
        out = [np.zeros((n, len(horizons))) for _ in range(3)]
        windows = []
        for j, H in enumerate(horizons):
            k = steps_for[H]
            sl = slice(max(0, k - per_hour), k) if long[H] else slice(k - 1, k)
            for dst, a in zip(out, (point, lower, upper)):
                dst[:, j] = a[:, sl].sum(axis=1)
            if H in (self.bin_s, 3 * self.bin_s, 12 * self.bin_s):
                fb = {1: 0, 3: 1, 12: 2}[k]
                self.feedback.register(first_target + k - 1, fb, point[:, k - 1].copy(), lower[:, k - 1].copy(), upper[:, k - 1].copy())
            windows.append((sl.stop - sl.start) * self.bin_s)
        point_out, lower_out, upper_out = out
        return ForecastArrays(tuple(self.ids), tuple(float(H) for H in horizons), point_out, lower_out, upper_out,
                              tuple(windows), tuple(self.models))

    def _paths(self, h: int, open_bin: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = len(self.ids)
        y = self.buffer.window().astype(np.float64)
        point, lower, upper = (np.zeros((n, h)) for _ in range(3))
        bucket = np.searchsorted(BUCKETS, np.arange(1, h + 1)).clip(max=len(BUCKETS) - 1)
        names = np.asarray(self.models)
        rows = np.flatnonzero((names != "last_value") & (names != "shape"))
        if len(rows):
            paths = {
                "naive": Naive(self.quantiles).fit(y[rows]).predict(h),
                "seasonal_naive": SeasonalNaive(self.period, self.quantiles).fit(y[rows]).predict(h),
                "holt_winters": tuple(a[rows] for a in self.hw.predict(h)),
            }
            w = self._weights[rows][:, :, bucket]  # [r, model, step]
            # lag ridge serves the busiest series it was fitted for, on the newest bins
            at = np.searchsorted(self._ridge_rows, rows).clip(max=max(0, len(self._ridge_rows) - 1))
            have = (at < len(self._ridge_rows)) & (self._ridge_rows[at] == rows) if len(self._ridge_rows) else np.zeros(len(rows), dtype=bool)
            ridge = [np.zeros((len(rows), h)) for _ in range(3)]
            if have.any():
                for a, src in zip(ridge, self.ridge.forecast(y[rows[have]], h, at[have])):
                    a[have] = src
            w[~have, BLEND.index("lag_ridge")] = 0.0
            paths["lag_ridge"] = tuple(ridge)
            for k, name in enumerate(HEAVY_MODELS, start=len(BLEND)):
                # a statsmodels path serves the series it was fitted for while it still reaches h
                full = [np.zeros((len(rows), h)) for _ in range(3)]
                have = np.zeros(len(rows), dtype=bool)
                path = self._heavy_paths.get(name)
                part = path.slice(open_bin, h) if path is not None else None
                if path is not None and part is not None:
                    pos = {int(i): j for j, i in enumerate(path.rows)}
                    for r, i in enumerate(rows):
                        j = pos.get(int(i))
                        if j is not None:
                            have[r] = True
                            for a, src in zip(full, part):
                                a[r] = src[j]
                w[~have, k] = 0.0
                paths[name] = tuple(full)
            total = w.sum(axis=1, keepdims=True)
            w = np.where(total > 1e-12, w / np.maximum(total, 1e-12), np.eye(len(ALL_MODELS))[BLEND.index("holt_winters")][None, :, None])
            sp, slo, shi = (np.zeros((len(rows), h)) for _ in range(3))
            for k, name in enumerate(ALL_MODELS):
                p, lo, hi = paths[name]
                sp += w[:, k] * p
                slo += w[:, k] * np.sqrt(lo)
                shi += w[:, k] * np.sqrt(hi)
            root = np.sqrt(sp)
            lo, hi = np.minimum(slo, root) ** 2, np.maximum(shi, root) ** 2
            point[rows] = sp
            lower[rows], upper[rows] = widen(sp, lo, hi, self._factor[rows][:, bucket], poisson_floor(self.quantiles))
        rows = np.flatnonzero((names == "last_value") | (names == "shape"))
        if len(rows):
            self._young(rows, y, h, open_bin, point, lower, upper)
        return point, lower, upper

    def _young(self, rows: np.ndarray, y: np.ndarray, h: int, open_bin: int,
               point: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
        """Series with under a day of history: the recent mean, shaped by a borrowed daily profile
        when there is one; a Poisson-like band on the sqrt scale, widening like a random walk."""
        z_lo, z_hi = (NormalDist().inv_cdf(q) for q in self.quantiles)
        recent = min(12, y.shape[1])
        slots = (open_bin + np.arange(h)) % self.period
        past = (open_bin - np.arange(1, recent + 1)) % self.period
        lived = np.clip(open_bin - self._first_bin[rows], 1, max(recent, 1))
        if recent:
            # mean of each series' last `lived` bins, for every series at once
            tail = y[rows, -recent:][:, ::-1].cumsum(axis=1)
            level = tail[np.arange(len(rows)), lived - 1] / lived
        else:
            level = np.zeros(len(rows))
        f = np.repeat(level[:, None], h, axis=1)
        if self.shape_for is not None:
            for r, i in enumerate(rows):
                shape = self.shape_for(self.ids[i]) if self.models[i] == "shape" else None
                if shape is not None:
                    base = float(np.mean(shape[past[: lived[r]]])) or 1.0
                    f[r] = level[r] * np.asarray(shape)[slots] / base
        # Poisson noise is σ = 0.5 on the sqrt scale; the second term allows for real traffic's overdispersion
        sf = np.sqrt(np.maximum(f, 0.0))
        spread = (0.5 + 0.1 * sf) * np.sqrt(np.arange(1, h + 1))
        point[rows], lower[rows], upper[rows] = f, np.maximum(sf + z_lo * spread, 0) ** 2, (sf + z_hi * spread) ** 2

    @property
    def open_bin(self) -> int | None:
        """Index (start // bin_s) of the bin counts go into now; None before the first count."""
        return self._open_bin

    def point_path(self, steps: int) -> np.ndarray:
        """[series, steps] point forecasts of the next `steps` bins from the open bin, without the
        event multipliers: the baseline an event's uplift is measured against. Registers nothing
        with the feedback loop."""
        if not self.ids or self._open_bin is None:
            return np.zeros((len(self.ids), steps))
        return self._paths(steps, self._open_bin)[0]

    def closed_counts(self, first_bin: int, end_bin: int) -> np.ndarray | None:
        """[series, bins] counts of the closed bins `first_bin` ..< `end_bin` as they came (the buffer
        holds them without event multipliers); None unless all of them are closed and still in the
        ring buffer."""
        if self._open_bin is None or end_bin > self._open_bin or self._open_bin - first_bin > self.buffer.filled:
            return None
        window = self.buffer.window(self._open_bin - first_bin)
        out = window[:, : end_bin - first_bin].astype(np.float64)
        for b in range(first_bin, end_bin):
            applied = self._applied.get(b)
            if applied is None:
                continue
            for sid, factor in zip(*applied):
                i = self._index.get(sid)
                if i is not None:
                    out[i, b - first_bin] *= float(factor)
        return out

    def daily_profiles(self) -> tuple[np.ndarray, np.ndarray]:
        """Per series, the mean count in each slot of the day over the closed bins it has lived in
        the ring buffer ([series, period], slot = bin % period), and which slots it was seen in:
        all of them once it has a whole day. What `SourceClusters.update` clusters and matches."""
        n, period = len(self.ids), self.period
        if self._open_bin is None or not n:
            return np.zeros((n, period)), np.zeros((n, period), dtype=bool)
        y = self.buffer.window().astype(np.float64)
        t_len = y.shape[1]
        lived = np.minimum(self._open_bin - self._first_bin, t_len)
        alive = np.arange(t_len)[None, :] >= (t_len - lived)[:, None]
        # pad so that column 0 is slot 0, then fold the days on top of each other
        pad = (self._open_bin - t_len) % period
        days = -(-(pad + t_len) // period)
        sums, seen = np.zeros((n, days * period)), np.zeros((n, days * period))
        sums[:, pad : pad + t_len] = np.where(alive, y, 0.0)
        seen[:, pad : pad + t_len] = alive
        sums, counts = sums.reshape(n, days, period).sum(axis=1), seen.reshape(n, days, period).sum(axis=1)
        return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0), counts > 0

    def status(self, rows: Iterable[int] | None = None) -> dict[str, dict]:
        """Errors and chosen models per series (all, or the indices in `rows`), for /admin/status."""
        return self.feedback.snapshot(self.models, rows)
