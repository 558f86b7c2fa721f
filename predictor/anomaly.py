"""Anomalies: actuals outside the prediction interval for k bins in a row.

One bin outside a 90 % interval happens every ten bins by design, so a single bin proves
nothing; k in a row (same side) does. An anomaly is dated from the first bin of that run, stays
open while actuals stay outside on its side, and closes after k bins that are not, dated at the
first of them. The planner switches the pool to burst sizing while one is open.

Only series with something going on (a run under way, or an open anomaly) hold state: a series
inside its interval costs one comparison and a dict lookup.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import structlog

log = structlog.get_logger(__name__)

Direction = Literal["up", "down"]


@dataclass(frozen=True, slots=True)
class Anomaly:
    series_id: str
    start: float             # start of the first bin outside the interval
    end: float | None        # start of the first bin back inside; None while open
    direction: Direction
    size: float              # most extreme actual / bound: > 1 for up, < 1 for down
    peak: float              # most extreme actual


@dataclass(slots=True)
class _State:
    run_direction: Direction | None = None
    run_start: float = 0.0
    run_length: int = 0
    run_peak: float = 0.0
    run_size: float = 1.0
    open: Anomaly | None = None
    inside: int = 0          # bins back inside while open
    inside_start: float = 0.0


class AnomalyDetector:
    def __init__(self, k: int = 3, min_bound: float = 1.0) -> None:
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = k
        # Bounds below this count as this when sizing, so a zero-width interval at zero traffic
        # does not make every anomaly infinitely large.
        self.min_bound = min_bound
        self._states: dict[str, _State] = {}

    def update(self, series_id: str, bin_start: float, actual: float, lower: float, upper: float) -> Anomaly | None:
        """Feed one bin; returns the anomaly that opened or closed in it, else None."""
        actual, lower, upper = float(actual), float(lower), float(upper)
        state = self._states.get(series_id)
        if state is None:
            if lower <= actual <= upper:
                return None
            state = self._states[series_id] = _State()
        changed = self._step(series_id, state, bin_start, actual, lower, upper)
        if state.open is None and state.run_length == 0:
            del self._states[series_id]
        return changed

    def active(self) -> list[Anomaly]:
        """Open anomalies, oldest first."""
        return sorted((s.open for s in self._states.values() if s.open is not None), key=lambda a: a.start)

    def _step(self, series_id: str, state: _State, t: float, actual: float, lower: float, upper: float) -> Anomaly | None:
        direction: Direction | None = "up" if actual > upper else "down" if actual < lower else None
        ratio = actual / max(upper if direction == "up" else lower, self.min_bound) if direction else 1.0
        if state.open is not None:
            return self._step_open(state, t, direction, actual, ratio)
        if direction is None:
            state.run_direction, state.run_length = None, 0
            return None
        if direction != state.run_direction:
            state.run_direction, state.run_start, state.run_length = direction, t, 0
            state.run_peak, state.run_size = actual, ratio
        state.run_length += 1
        state.run_peak, state.run_size = _extreme(direction, (state.run_peak, state.run_size), (actual, ratio))
        if state.run_length < self.k:
            return None
        state.open = Anomaly(series_id, state.run_start, None, direction, state.run_size, state.run_peak)
        state.run_direction, state.run_length, state.inside = None, 0, 0
        log.info("anomaly.opened", series=series_id, start=state.open.start, direction=direction,
                 size=round(state.open.size, 3))
        return state.open

    def _step_open(self, state: _State, t: float, direction: Direction | None, actual: float, ratio: float) -> Anomaly | None:
        current = state.open
        assert current is not None
        if direction == current.direction:
            state.inside = 0
            peak, size = _extreme(direction, (current.peak, current.size), (actual, ratio))
            state.open = replace(current, peak=peak, size=size)
            return None
        state.inside += 1
        if state.inside == 1:
            state.inside_start = t
        if state.inside < self.k:
            return None
        closed = replace(current, end=state.inside_start)
        state.open, state.inside = None, 0
        log.info("anomaly.closed", series=closed.series_id, start=closed.start, end=closed.end,
                 direction=closed.direction, size=round(closed.size, 3))
        return closed


def _extreme(direction: Direction, held: tuple[float, float], new: tuple[float, float]) -> tuple[float, float]:
    """The (peak, size) pair further from the interval on `direction`'s side."""
    if direction == "up":
        return max(held, new, key=lambda pair: pair[1])
    return min(held, new, key=lambda pair: pair[1])

