"""Live forecast error per series and horizon: the feedback loop that triggers refits.

Forecasts are registered for the bin they target; when that bin closes its actual scores them.
Errors are exponentially weighted over about the last `window` scored forecasts, as arrays
`[n_series, n_horizons]`, so scoring 100,000 series is a few numpy calls per bin.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import structlog

from predictor.backtest import scaled_abs_error, smape

log = structlog.get_logger(__name__)


class Feedback:
    def __init__(
        self,
        horizons: tuple[int, ...],
        window: int = 48,
        mase_threshold: float = 1.5,
        min_scored: int = 12,
    ) -> None:
        self.horizons = horizons  # steps ahead, in bins
        self.mase_threshold = mase_threshold
        self.min_scored = min_scored
        self._w = 1.0 / window
        self.ids: list[str] = []
        self.mase = np.zeros((0, len(horizons)))
        self.smape = np.zeros((0, len(horizons)))
        self.coverage = np.zeros((0, len(horizons)))
        self.scored = np.zeros((0, len(horizons)), dtype=np.int64)
        self.flagged = np.zeros(0, dtype=bool)
        # target bin -> horizon index -> (point, lower, upper) arrays over all series
        self._pending: dict[int, dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}

    def resize(self, ids: list[str]) -> None:
        extra = len(ids) - len(self.ids)
        if extra > 0:
            pad = lambda a, fill: np.concatenate([a, np.full((extra,) + a.shape[1:], fill, a.dtype)])  # noqa: E731
            self.mase, self.smape, self.coverage = pad(self.mase, 0.0), pad(self.smape, 0.0), pad(self.coverage, 0.0)
            self.scored, self.flagged = pad(self.scored, 0), pad(self.flagged, False)
        self.ids = list(ids)

    def select(self, rows: np.ndarray, ids: list[str]) -> None:
        """Keep these series only (in this order; `ids` are their names), forecasts awaiting
        scoring included."""
        for name in ("mase", "smape", "coverage", "scored", "flagged"):
            setattr(self, name, getattr(self, name)[rows])
        for per_horizon in self._pending.values():
            for j, arrays in per_horizon.items():
                n = len(arrays[0])
                per_horizon[j] = tuple(a[rows[rows < n]] for a in arrays)
        self.ids = list(ids)

    def register(self, target_bin: int, horizon_index: int, point: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> None:
        self._pending.setdefault(target_bin, {}).setdefault(horizon_index, (point, lower, upper))

    def score(self, bin_index: int, actual: np.ndarray, scale: np.ndarray) -> None:
        """Score every forecast that targeted `bin_index`; forget ones whose bin has passed."""
        for stale in [b for b in self._pending if b < bin_index]:
            del self._pending[stale]
        for j, (p, lo, hi) in self._pending.pop(bin_index, {}).items():
            n = len(p)
            a = actual[:n]
            ase = scaled_abs_error(a, p, scale[:n])
            ok = np.isfinite(ase)
            w = np.where(self.scored[:n, j] == 0, 1.0, self._w)  # the first score seeds the average
            self.mase[:n, j] = np.where(ok, self.mase[:n, j] + w * (np.nan_to_num(ase) - self.mase[:n, j]), self.mase[:n, j])
            self.smape[:n, j] += w * (smape(a, p) - self.smape[:n, j])
            self.coverage[:n, j] += w * (((a >= lo) & (a <= hi)) - self.coverage[:n, j])
            self.scored[:n, j] += 1
        worse = (self.scored >= self.min_scored) & (self.mase > self.mase_threshold)
        newly = worse.any(axis=1) & ~self.flagged
        if newly.any():
            log.info("predictor.refit_flagged", series=[self.ids[i] for i in np.flatnonzero(newly)[:20]], count=int(newly.sum()))
        self.flagged |= newly

    def take_flagged(self) -> np.ndarray:
        """Indices flagged since the last call; their error history restarts with the new model."""
        idx = np.flatnonzero(self.flagged)
        self.flagged[idx] = False
        self.scored[idx] = 0
        return idx

    def snapshot(self, models: list[str] | None = None, rows: Iterable[int] | None = None) -> dict[str, dict]:
        """Per series (all, or the indices in `rows`): model, and per horizon (bins ahead) rolling
        MASE, sMAPE, coverage, forecasts scored."""
        out = {}
        for i in range(len(self.ids)) if rows is None else rows:
            sid = self.ids[i]
            out[sid] = {
                "model": models[i] if models else None,
                "flagged": bool(self.flagged[i]),
                "horizons": {
                    int(h): {
                        "mase": round(float(self.mase[i, j]), 4),
                        "smape": round(float(self.smape[i, j]), 4),
                        "coverage": round(float(self.coverage[i, j]), 4),
                        "scored": int(self.scored[i, j]),
                    }
                    for j, h in enumerate(self.horizons)
                },
            }
        return out
