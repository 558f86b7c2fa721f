"""Operator controls: per-source settings and manual scaling overrides.

Sources (seed 003): opt in or out of the predictive tier, submit a workload profile that serves as
a prior until history is long enough, declare how latency-sensitive their users are. Settings are
kept in the state dir so a restart keeps what customers chose.

Scaling overrides pin or bound a pool's desired ready members for a while, with a reason; a
maintenance event with `pin` or `drain` does the same for its window. `constrain` applies both to
whatever the control loop wants, so the loop stays the single decider and the operator only bounds it.

Each opt-out and opt-in is kept with its time, so costs are attributed with the setting in force
at the time rather than today's (`opted_out_between`).
"""
from __future__ import annotations

import json
import math
import re
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import structlog
from pydantic import ConfigDict, Field, ValidationError, model_validator

from balancer.operator.requests import iso
from config.events import MIN_WINDOW, json_schema_given as _given
from config.models import MemberCount, Strict, config_error
from config.units import bounded_duration
from predictor.events import Event
from pools.planner import highest_recent
from pools.reconciler import Desired

log = structlog.get_logger(__name__)

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
MAX_RPS = 1e6                    # declared rates; past it a typo that would size pools absurdly
MAX_WINDOWS = 48
MAX_OVERRIDE = 30 * 86400.0
MAX_ABANDON_AFTER = 3600.0
MAX_REASON = 500
# Opt-outs and opt-ins kept per source, the latest; older flips are forgotten and the oldest kept
# setting is taken as in force since forever. Bounds sources.json against a client that toggles.
MAX_PREDICTIVE_CHANGES = 1000
if TYPE_CHECKING:   # pydantic Annotated types built by a call: seconds, to the type checker
    AbandonAfter = float
    OverrideLength = float
else:
    AbandonAfter = bounded_duration(maximum=MAX_ABANDON_AFTER)
    OverrideLength = bounded_duration(minimum=MIN_WINDOW, maximum=MAX_OVERRIDE)


class ProfileWindow(Strict):
    """A recurring window of expected load, in UTC."""
    start: str = Field(pattern=_HHMM.pattern, description="Start, HH:MM UTC.")
    end: str = Field(pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$",
                     description="End, HH:MM UTC (24:00 = midnight), after start.")
    rps: float = Field(ge=0, le=MAX_RPS, allow_inf_nan=False,
                       description=f"Expected requests per second in the window; at most {MAX_RPS:g}.")
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = Field(
        None, max_length=7, description="Days it applies to. Default: every day.")

    @model_validator(mode="after")
    def _end_after_start(self) -> ProfileWindow:
        if _minutes(self.end) <= _minutes(self.start):
            raise config_error(("end",), "must be after start")
        return self


class WorkloadProfile(Strict):
    """A source's declared schedule and peak: the forecast's prior until its history is long enough."""
    peak_rps: float = Field(gt=0, le=MAX_RPS, allow_inf_nan=False,
                            description=f"Highest expected requests per second; at most {MAX_RPS:g}.")
    baseline_rps: float = Field(0.0, ge=0, le=MAX_RPS, allow_inf_nan=False,
                                description="Expected rate outside the windows.")
    schedule: list[ProfileWindow] = Field(default_factory=list, max_length=MAX_WINDOWS,
                                          description=f"Recurring busy windows; at most {MAX_WINDOWS}.")

    def rates(self, bin_starts: np.ndarray) -> np.ndarray:
        """Expected requests per second at each epoch time, capped at `peak_rps`."""
        t = np.asarray(bin_starts, dtype=np.float64)
        minute_of_day = (t % 86400) // 60
        weekday = ((t // 86400).astype(np.int64) + 3) % 7      # 1970-01-01 was a Thursday
        out = np.full(t.shape, self.baseline_rps)
        for w in self.schedule:
            inside = (minute_of_day >= _minutes(w.start)) & (minute_of_day < _minutes(w.end))
            if w.days is not None:
                inside &= np.isin(weekday, [_DAYS.index(d) for d in w.days])
            out[inside] = np.maximum(out[inside], w.rps)
        return np.minimum(out, self.peak_rps)


class SourceUpdate(Strict):
    """Body of PUT /admin/sources/{id}: the keys given replace the stored ones; `null` resets a key to
    its default (predictive, normal sensitivity, no abandon_after, no profile)."""
    predictive: bool | None = Field(None, description="Opt in (true) or out (false) of the predictive tier.")
    latency_sensitivity: Literal["low", "normal", "high"] | None = Field(
        None, description="How much this source's users mind waiting.")
    abandon_after: AbandonAfter | None = Field(
        None, description="Latency beyond which its users give up, e.g. `2s`; at most `1h`.")
    profile: WorkloadProfile | None = Field(None, description="Declared workload profile.")


@dataclass(frozen=True, slots=True)
class SourceControl:
    source: str
    predictive: bool = True
    latency_sensitivity: str = "normal"
    abandon_after: float | None = None
    profile: dict | None = None          # WorkloadProfile as JSON, validated on the way in
    updated: float = 0.0

    def workload_profile(self) -> WorkloadProfile | None:
        return WorkloadProfile.model_validate(self.profile) if self.profile is not None else None


def _pin_or_bounds(schema: dict) -> None:
    schema["oneOf"] = [_given(schema, "pin", "min", "max"),
                       {"properties": {"pin": {"type": "null"}}, "anyOf": [_given(schema, "min"), _given(schema, "max")]}]


class ScaleRequest(Strict):
    """Body of POST /admin/pools/{name}/scale: `pin`, or `min` and/or `max`, for `duration`, with a reason.
    Counts are at most the pool's `capacity.max`."""
    model_config = ConfigDict(json_schema_extra=_pin_or_bounds)
    pin: MemberCount | None = Field(None,
                            description="Hold exactly this many ready members; at most the pool's capacity.max.")
    min: MemberCount | None = Field(None,
                            description="At least this many ready members; at most the pool's capacity.max.")
    max: MemberCount | None = Field(None,
                            description="At most this many ready members (>= min); at most the pool's capacity.max.")
    duration: OverrideLength = Field(
        3600.0, description="How long the override holds, e.g. `30m`; from 1ms to `30d`. Default `1h` (3600 "
                            "seconds); the answer's `until` (ISO 8601, UTC) says when it ends.")
    reason: str = Field(min_length=1, max_length=MAX_REASON,
                        description=f"Required: why the override is set, e.g. `load test` or `incident 4711`; 1 to "
                                    f"{MAX_REASON} characters. Shown with the override in /admin/status and the "
                                    "dashboard, in the pool's recent actions, and logged (pool.override_set).")

    @model_validator(mode="after")
    def _one_kind(self) -> ScaleRequest:
        if self.pin is not None and (self.min is not None or self.max is not None):
            raise config_error(("pin",), "give pin, or min and/or max, not both")
        if self.pin is None and self.min is None and self.max is None:
            raise config_error((), "give pin, min or max")
        if self.min is not None and self.max is not None and self.max < self.min:
            raise config_error(("max",), f"must be >= min ({self.max} < {self.min})")
        return self


@dataclass(frozen=True, slots=True)
class ScaleOverride:
    pool: str
    min: int | None
    max: int | None
    until: float
    reason: str
    created: float


class Controls:
    """Source settings (persisted) and live scaling overrides."""

    def __init__(self, path: Path | None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self.sources: dict[str, SourceControl] = {}
        self.overrides: dict[str, ScaleOverride] = {}
        # Per source, (time, predictive) at each change, in time order; a source without any has had
        # its current setting since forever (so has every source of a file older than the history).
        self.predictive_changes: dict[str, list[tuple[float, bool]]] = {}
        # Called after an override is set or cleared: the desired state is republished with it.
        self.on_override: Callable[[], None] = lambda: None
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        """Read sources.json; an entry that no longer validates is skipped and logged, never fatal: a
        bad file must not take the admin API (or the start-up) down with it."""
        try:
            doc = json.loads(path.read_text())
            items = doc.get("sources", [])
            if not isinstance(items, list):
                raise ValueError("sources is not a list")
        except (OSError, ValueError, AttributeError, RecursionError) as err:
            log.error("sources.state_unreadable", path=str(path), error=str(err)[:200])
            return
        for item in items:
            try:
                control = SourceControl(**item)
                if not isinstance(control.source, str) or not isinstance(control.updated, (int, float)):
                    raise TypeError("source and updated must be a string and a number")
                SourceUpdate.model_validate(
                    {k: getattr(control, k) for k in ("predictive", "latency_sensitivity", "abandon_after", "profile")},
                    strict=True)
            except (TypeError, ValueError, ValidationError) as err:
                log.error("source.invalid_skipped", path=str(path), source=str(item.get("source"))[:100]
                          if isinstance(item, dict) else None, error=str(err).splitlines()[0][:200])
                continue
            self.sources[control.source] = _with_defaults(control)
        self._load_changes(path, doc.get("predictive_history", {}))

    def _load_changes(self, path: Path, history: object) -> None:
        """A source's history is kept only when it holds: [time, predictive] pairs in time order, each
        a change, ending in the source's current setting; otherwise it is skipped and logged."""
        if not isinstance(history, dict):
            log.error("source.history_invalid_skipped", path=str(path), source=None, error="not an object")
            return
        for source, changes in history.items():
            control = self.sources.get(source)
            try:
                if control is None:
                    raise ValueError("no such source")
                if not isinstance(changes, list):
                    raise ValueError("not a list")
                parsed = [_change(c) for c in changes[-MAX_PREDICTIVE_CHANGES:]]
                for (t0, p0), (t1, p1) in zip(parsed, parsed[1:]):
                    if t1 < t0 or p1 == p0:
                        raise ValueError(f"not a change in time order at {t1}")
                if parsed and parsed[-1][1] != control.predictive:
                    raise ValueError("does not end in the current setting")
            except ValueError as err:
                log.error("source.history_invalid_skipped", path=str(path), source=str(source)[:100],
                          error=str(err)[:200])
                continue
            if parsed:
                self.predictive_changes[source] = parsed

    # ---------------------------------------------------------------- sources
    def source(self, source: str) -> SourceControl:
        return self.sources.get(source) or SourceControl(source)

    def predictive(self, source: str) -> bool:
        """False when the source opted out: its traffic is served by the baseline and burst tiers only."""
        control = self.sources.get(source)
        return control is None or control.predictive

    def profile(self, source: str) -> WorkloadProfile | None:
        control = self.sources.get(source)
        return control.workload_profile() if control is not None else None

    def predictive_at(self, source: str, t: float) -> bool:
        """The setting in force at `t`: that of the last change at or before it."""
        changes = self.predictive_changes.get(source)
        if not changes:
            return self.predictive(source)
        i = bisect_right(changes, t, key=lambda c: c[0])
        return changes[i - 1][1] if i else not changes[0][1]

    def opted_out_between(self, since: float, until: float) -> list[tuple[float, frozenset[str]]]:
        """The sources opted out of the predictive tier at `since`, then from each change before
        `until` on: (from, opted out) in time order, the first from `since`."""
        opted_out = {s for s in self.sources.keys() | self.predictive_changes.keys()
                     if not self.predictive_at(s, since)}
        flips = sorted((t, source, p) for source, changes in self.predictive_changes.items()
                       for t, p in changes if since < t < until)
        out = [(since, frozenset(opted_out))]
        for t, source, predictive in flips:
            if predictive:
                opted_out.discard(source)
            else:
                opted_out.add(source)
            if out[-1][0] == t:
                out.pop()
            out.append((t, frozenset(opted_out)))
        return out

    def update_source(self, source: str, update: SourceUpdate) -> SourceControl:
        given = update.model_dump(exclude_unset=True, mode="json")
        before = self.predictive(source)
        control = _with_defaults(replace(self.source(source), **given, updated=self.clock()))
        self.sources[source] = control
        if control.predictive != before:
            changes = self.predictive_changes.setdefault(source, [])
            # kept in time order for predictive_at, even if the clock stepped back
            changes.append((max(control.updated, changes[-1][0]) if changes else control.updated, control.predictive))
            del changes[:-MAX_PREDICTIVE_CHANGES]
        self._save()
        log.info("source.updated", source=source, keys=sorted(given))
        return control

    def _save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"sources": [asdict(c) for c in self.sources.values()],
                                   "predictive_history": self.predictive_changes}, indent=1))
        tmp.replace(self.path)

    # ---------------------------------------------------------------- scaling overrides
    def set_override(self, pool: str, req: ScaleRequest) -> ScaleOverride:
        low, high = (req.pin, req.pin) if req.pin is not None else (req.min, req.max)
        now = self.clock()
        override = ScaleOverride(pool, low, high, now + req.duration, req.reason, now)
        self.overrides[pool] = override
        log.info("pool.override_set", pool=pool, min=low, max=high, until=override.until, reason=req.reason)
        self.on_override()
        return override

    def clear_override(self, pool: str) -> ScaleOverride | None:
        override = self.overrides.pop(pool, None)
        if override is not None:
            log.info("pool.override_cleared", pool=pool, reason=override.reason)
            self.on_override()
        return override

    def active_override(self, pool: str) -> ScaleOverride | None:
        override = self.overrides.get(pool)
        if override is not None and override.until <= self.clock():
            del self.overrides[pool]
            log.info("pool.override_expired", pool=pool, reason=override.reason)
            return None
        return override


def _with_defaults(control: SourceControl) -> SourceControl:
    """`null` in an update means the default; older state files may hold it too."""
    defaults = SourceControl(control.source)
    return replace(control, **{k: getattr(defaults, k) for k in ("predictive", "latency_sensitivity")
                               if getattr(control, k) is None})


@dataclass(frozen=True, slots=True)
class Bounded:
    """A plan within the operator's bounds, and what set its ready count: None (the plan itself),
    `override`, `event:NAME` (a maintenance event), `capacity.max` or `scale_down_delay` (a bound
    that ended, let go as a planner decrease is)."""
    desired: Desired
    planned: int                # the plan's own ready count
    by: str | None
    bound_ready: int            # ready set by the override and events alone (no release delay)
    override_ready: int | None  # what the override alone asks for, given the plan (None: no override)

    @property
    def shadowed_by(self) -> str | None:
        """What holds the pool at another count than the override asks for, if anything does."""
        if self.override_ready is None or self.desired.ready == self.override_ready:
            return None
        return self.by


def constrain(desired: Desired, override: ScaleOverride | None, maintenance: Sequence[Event],
              held: int = 0) -> Bounded:
    """`desired` bounded by a manual override, then by active maintenance events (drain wins over pin),
    then by capacity.max; `held` (a bound released less than scale_down_delay ago) is a floor that an
    upper bound (an override's max or pin, an event's pin or drain) still overrides at once."""
    ready, shadow, by = desired.ready, desired.shadow, None
    ceiling = desired.max_members
    override_ready = None
    if override is not None:
        if override.min is not None and override.min > ready:
            ready, by = override.min, "override"
        if override.max is not None:
            ceiling = min(ceiling, override.max)
            if override.max < ready:
                ready, by = override.max, "override"
        override_ready = min(ready, desired.max_members)
    for event in maintenance:
        if event.drain:
            ready, shadow, ceiling, by = 0, 0, 0, f"event:{event.name}"
            break
        if event.pin is not None:
            ready, ceiling, by = event.pin, min(event.pin, desired.max_members), f"event:{event.name}"
    # capacity.max bounds every tier, pins included: the API refuses larger ones, and this holds when a
    # reload lowers capacity.max under an override or an events.yaml pin names more.
    if ready > desired.max_members:
        ready, by = desired.max_members, "capacity.max"
    bound_ready = ready
    if min(held, ceiling) > ready:
        ready, by = min(held, ceiling), "scale_down_delay"
    bounded = desired if (ready, shadow) == (desired.ready, desired.shadow) else replace(
        desired, ready=ready, shadow=shadow)
    return Bounded(bounded, desired.ready, by, bound_ready, override_ready)


class Release:
    """A count a bound raised a pool to is let go the way the planner lets go of its own: the
    highest of the last `scale_down_delay` wins (pools.planner.highest_recent). Without it, clearing
    a pin of 4 over a plan of 2 retired two members at once."""

    def __init__(self) -> None:
        self._recent: dict[str, deque[tuple[float, int]]] = {}
        self._holding: dict[str, int] = {}   # pool -> count its bounds raise it to now

    def held(self, pool: str, now: float, delay: float, bounded: Bounded) -> tuple[int, float | None]:
        """The floor a released bound leaves on `pool` now, and until when it holds (None: no floor)."""
        recent = self._recent.setdefault(pool, deque())
        if bounded.bound_ready > bounded.planned:
            recent.append((now, bounded.bound_ready))
            self._holding[pool] = bounded.bound_ready
        elif pool in self._holding:            # released now: it was held up to this moment
            recent.append((now, self._holding.pop(pool)))
        floor = highest_recent(recent, now, delay)
        if floor <= bounded.desired.ready:
            return 0, None
        return floor, max(t for t, count in recent if count == floor) + delay


def override_json(override: ScaleOverride | None, bounded: Bounded | None = None) -> dict | None:
    """An override as the API shows it: times in ISO 8601, and what the pool is driven to with it
    (`effective`), with what holds it elsewhere (`shadowed_by`, a `note` saying so) when it is not
    what the override asks for."""
    if override is None:
        return None
    out: dict = {"pool": override.pool, "min": override.min, "max": override.max,
                 "until": iso(override.until), "reason": override.reason, "created": iso(override.created),
                 "effective": None, "shadowed_by": None}
    if bounded is not None:
        out["effective"] = bounded.desired.ready
        shadowed = bounded.shadowed_by
        if shadowed is not None:
            out["shadowed_by"] = shadowed
            event = shadowed.removeprefix("event:")
            what = f"maintenance event {event!r}" if event != shadowed else shadowed
            out["note"] = (f"{what} holds the pool at {bounded.desired.ready} ready, not the "
                           f"{bounded.override_ready} this override asks for"
                           + ("; the override applies when the event ends" if event != shadowed else ""))
    return out


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def _change(item: object) -> tuple[float, bool]:
    """One stored [time, predictive] pair of a source's predictive history."""
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], bool)
            and isinstance(item[0], (int, float)) and not isinstance(item[0], bool) and math.isfinite(item[0])):
        raise ValueError(f"not a [time, predictive] pair: {str(item)[:60]}")
    return float(item[0]), item[1]
