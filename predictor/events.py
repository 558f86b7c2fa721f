"""External events (campaigns, maintenance, releases): windows that scale the forecast for a scope.

An event declares a window, one scope (a source, a request type or a pool) and optionally the
multiplier it expects. Where none is declared, the uplift learned from past events of the same
kind applies: actual over baseline forecast in their windows, pooled as a ratio of sums (a few
busy bins cannot be outvoted by many near-zero ones) and shrunk towards 1 while there are few
windows to go on, so one odd campaign does not double every later forecast. `UpliftWatch`
takes those windows from the live forecaster as they happen.

Plain dataclasses and numpy only: config/events.py turns events.yaml into `Event`s.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

EventKind = Literal["campaign", "maintenance", "release", "other"]
ScopeKey = Literal["source", "type", "pool"]
EVENT_KINDS: tuple[str, ...] = ("campaign", "maintenance", "release", "other")
SCOPE_KEYS: tuple[str, ...] = ("source", "type", "pool")


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    kind: EventKind
    start: float                  # epoch seconds, inclusive
    end: float                    # epoch seconds, exclusive
    scope_key: ScopeKey
    scope_value: str
    multiplier: float | None = None
    pin: int | None = None        # maintenance: hold the pool at this many members
    drain: bool = False           # maintenance: drain the pool for the window

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"event {self.name!r}: kind must be one of {EVENT_KINDS}, got {self.kind!r}")
        if self.scope_key not in SCOPE_KEYS:
            raise ValueError(f"event {self.name!r}: scope must be one of {SCOPE_KEYS}, got {self.scope_key!r}")
        if not self.end > self.start:
            raise ValueError(f"event {self.name!r}: end must be after start")
        if self.multiplier is not None and not (math.isfinite(self.multiplier) and self.multiplier > 0):
            raise ValueError(f"event {self.name!r}: multiplier must be a finite number > 0")
        if self.kind != "maintenance" and (self.pin is not None or self.drain):
            raise ValueError(f"event {self.name!r}: pin and drain apply to maintenance events only")

    def applies_to(self, scope_keys: Mapping[str, str]) -> bool:
        return scope_keys.get(self.scope_key) == self.scope_value

    def covers(self, bin_starts: np.ndarray) -> np.ndarray:
        """Boolean mask of the bins whose start falls in the window."""
        return (bin_starts >= self.start) & (bin_starts < self.end)


@dataclass(slots=True)
class _Uplift:
    actual: float = 0.0
    baseline: float = 0.0
    windows: int = 0


class EventBook:
    """The known events by name, and the uplift learned per event kind."""

    def __init__(self, events: Iterable[Event] = (), prior_windows: float = 1.0) -> None:
        # Weight, in windows, of the prior belief "no uplift"; the learned ratio's log is scaled
        # by windows / (windows + prior_windows).
        self.prior_windows = prior_windows
        self._events: dict[str, Event] = {}
        self._uplifts: dict[str, _Uplift] = {}
        for event in events:
            self.add(event)

    def add(self, event: Event) -> None:
        """Add `event`, replacing any event of the same name."""
        self._events[event.name] = event

    def remove(self, name: str) -> Event:
        """Remove and return the event called `name`; KeyError when there is none."""
        return self._events.pop(name)

    def get(self, name: str) -> Event | None:
        return self._events.get(name)

    def matching(self, scope_keys: Mapping[str, str],
                 since: float = -math.inf, until: float = math.inf) -> list[Event]:
        """Events for any of `scope_keys` whose window overlaps [since, until), by start."""
        # a snapshot of the values: the control loop's worker thread reads while the admin API adds
        found = [e for e in tuple(self._events.values())
                 if e.applies_to(scope_keys) and e.start < until and e.end > since]
        return sorted(found, key=lambda e: (e.start, e.name))

    def multipliers(self, scope_keys: Mapping[str, str], bin_starts: np.ndarray) -> np.ndarray:
        """Forecast multiplier per bin: 1 outside events; overlapping events compound."""
        bin_starts = np.asarray(bin_starts, dtype=np.float64)
        out = np.ones(bin_starts.shape)
        if bin_starts.size == 0 or not self._events:
            return out
        for event in self.matching(scope_keys, float(bin_starts.min()), float(bin_starts.max()) + 1e-9):
            factor = event.multiplier if event.multiplier is not None else self.uplift(event.kind)
            out[event.covers(bin_starts)] *= factor
        return out

    def learn_uplift(self, kind: str, actual: np.ndarray, baseline: np.ndarray) -> None:
        """Record one past event window of `kind`: the actual counts and the baseline forecast
        (made without the event) over its bins. Non-finite bins are ignored."""
        actual = np.asarray(actual, dtype=np.float64)
        baseline = np.asarray(baseline, dtype=np.float64)
        ok = np.isfinite(actual) & np.isfinite(baseline)
        base_sum = float(np.clip(baseline[ok], 0.0, None).sum())
        if base_sum <= 0.0:
            return  # nothing was expected, so no ratio can be learned from this window
        acc = self._uplifts.setdefault(kind, _Uplift())
        acc.actual += float(np.clip(actual[ok], 0.0, None).sum())
        acc.baseline += base_sum
        acc.windows += 1

    def uplift(self, kind: str) -> float:
        """Learned multiplier for events of `kind`; 1.0 before any window was recorded."""
        acc = self._uplifts.get(kind)
        if acc is None or acc.windows == 0:
            return 1.0
        ratio = max(acc.actual, 1e-9) / acc.baseline
        weight = acc.windows / (acc.windows + self.prior_windows)
        return float(math.exp(weight * math.log(ratio)))

    # Last in the class body so the name does not shadow the builtin in the annotations above.
    def list(self) -> list[Event]:
        """All events, by start."""
        return sorted(self._events.values(), key=lambda e: (e.start, e.name))


class Baselines(Protocol):
    """What `UpliftWatch` reads from the live forecaster (`predictor.engine.Forecaster`)."""
    bin_s: float
    ids: list[str]

    @property
    def open_bin(self) -> int | None: ...

    def point_path(self, steps: int) -> np.ndarray: ...

    def closed_counts(self, first_bin: int, end_bin: int) -> np.ndarray | None: ...


@dataclass(slots=True)
class _Watched:
    event: Event
    first_bin: int
    ids: tuple[str, ...]
    baseline: np.ndarray   # [series, bins]: forecast without multipliers, made as the window began


class UpliftWatch:
    """Feeds `EventBook.learn_uplift` from the live forecaster, one call per control step.

    When an event's first bin opens, the forecast of the series in its scope over its bins (at
    most `max_bins` of them), made from data before the window and without any multiplier, is
    kept; once those bins have closed, their actual counts over that baseline are recorded for
    the event's kind. A window the watch did not see begin (added, or the process restarted,
    mid-way) teaches nothing: a baseline made from data inside it would hold the uplift already.
    """

    def __init__(self, book: EventBook, max_bins: int = 288) -> None:
        self.book = book
        self.max_bins = max_bins
        self._watched: dict[tuple[str, float, float], _Watched] = {}
        self._done: set[tuple[str, float, float]] = set()

    def step(self, fc: Baselines, scope_of: Callable[[str], Mapping[str, str]]) -> list[Event]:
        """Start and finish watches as of `fc.open_bin`; returns the events learned from."""
        open_bin = fc.open_bin
        if open_bin is None:
            return []
        events = {(e.name, e.start, e.end): e for e in self.book.list()}
        self._done &= set(events)
        for key in set(self._watched) - set(events):
            del self._watched[key]   # removed or changed: its window is no longer the one declared
        starting = []
        for key, event in events.items():
            if key in self._done or key in self._watched:
                continue
            first = math.ceil(event.start / fc.bin_s)   # the bins `covers` counts: start in the window
            if open_bin < first:
                continue
            # seen after its first bin opened: too late for a baseline from before it
            rows = [i for i, sid in enumerate(fc.ids) if event.applies_to(scope_of(sid))] if open_bin == first else []
            steps = min(math.ceil(event.end / fc.bin_s) - first, self.max_bins)   # 0: no bin starts in it
            if rows and steps > 0:
                starting.append((key, event, rows, steps))
            else:
                self._done.add(key)
        if starting:
            # one path of every series, as long as the longest window starting now needs, serves them all
            path = fc.point_path(max(steps for *_, steps in starting))
            for key, event, rows, steps in starting:
                self._watched[key] = _Watched(event, open_bin, tuple(fc.ids[i] for i in rows), path[rows, :steps].copy())
        learned: list[Event] = []
        for key, w in list(self._watched.items()):
            end = w.first_bin + w.baseline.shape[1]
            if open_bin < end:
                continue
            del self._watched[key]
            self._done.add(key)
            actual = fc.closed_counts(w.first_bin, end)
            if actual is None:
                continue
            index = {sid: i for i, sid in enumerate(fc.ids)}
            kept = [k for k, sid in enumerate(w.ids) if sid in index]   # retired meanwhile: left out
            rows = [index[w.ids[k]] for k in kept]
            self.book.learn_uplift(w.event.kind, actual[rows].sum(axis=0), w.baseline[kept].sum(axis=0))
            learned.append(w.event)
        return learned
