"""events.yaml: campaigns, maintenance windows and releases the forecast should know about.

Validated with pydantic like routing.yaml and pools.yaml, so a mistake is one ConfigError at
file:line: key; then converted to the predictor's plain `Event`s (the predictor never imports
config). Times are ISO 8601; one without a UTC offset is read as UTC.
"""
from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from config.loader import load_yaml_model
from config.models import NonEmptyStr, Strict, config_error
from config.units import Duration
from predictor.events import Event

EVENTS_FILE = "events.yaml"


def _parse_time(value: Any) -> datetime:
    # YAML already turns most ISO 8601 timestamps into datetimes; strings cover the rest (`10:00`).
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"must be an ISO 8601 time like 2024-05-01T10:00:00Z (got {value!r})") from None
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise ValueError(f"must be an ISO 8601 time like 2024-05-01T10:00:00Z (got {value!r})")
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


Time = Annotated[datetime, BeforeValidator(_parse_time)]


class EventScope(Strict):
    """What the event affects: exactly one of source, type or pool."""
    source: NonEmptyStr | None = Field(None, description="A traffic source, e.g. `acme`.")
    type: NonEmptyStr | None = Field(None, description="A request type, as routes name it.")
    pool: NonEmptyStr | None = Field(None, description="A pool in pools.yaml.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EventScope:
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise config_error((), f"a scope sets exactly one of source, type, pool (got {', '.join(chosen) or 'none'})")
        return self

    def key_value(self) -> tuple[str, str]:
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is not None:
                return name, value
        raise AssertionError("validated scope has no key")


class EventSpec(Strict):
    """One event: a window, a scope and optionally the multiplier it is expected to bring."""
    name: NonEmptyStr = Field(description="Unique event name, used by the admin API. Required.")
    kind: Literal["campaign", "maintenance", "release", "other"] = Field(
        description="What sort of event; uplift is learned per kind. Required.")
    start: Time = Field(description="Start, ISO 8601, e.g. `2024-05-01T10:00:00Z`. Required.")
    end: Time | None = Field(None, description="End, ISO 8601. Give `end` or `duration`.")
    duration: Duration | None = Field(None, description="Length of the window, e.g. `2h`. Give `end` or `duration`.")
    scope: EventScope = Field(description="Exactly one of `source`, `type`, `pool`. Required.")
    multiplier: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="Expected traffic multiplier in the window, e.g. `3`. Default: learned from past events "
                    "of the same kind.")
    pin: int | None = Field(None, ge=0, description="maintenance: hold the pool at this many members. Default: none.")
    drain: bool | None = Field(None, description="maintenance: drain the pool for the window. Default `false`.")

    @model_validator(mode="after")
    def _window_and_maintenance_fields(self) -> EventSpec:
        if self.end is not None and self.duration is not None:
            raise config_error(("duration",), "give either end or duration, not both")
        if self.end is None and self.duration is None:
            raise config_error((), "needs end or duration")
        if self.end is not None and self.end <= self.start:
            raise config_error(("end",), "must be after start")
        if self.duration is not None and self.duration <= 0:
            raise config_error(("duration",), "must be > 0")
        if self.kind != "maintenance":
            for key in ("pin", "drain"):
                if getattr(self, key) is not None:
                    raise config_error((key,), "applies to maintenance events only")
        return self

    def to_event(self) -> Event:
        start = self.start.timestamp()
        end = self.end.timestamp() if self.end is not None else start + (self.duration or 0.0)
        scope_key, scope_value = self.scope.key_value()
        return Event(name=self.name, kind=self.kind, start=start, end=end, scope_key=scope_key,
                     scope_value=scope_value, multiplier=self.multiplier, pin=self.pin, drain=bool(self.drain))


class EventsConfig(Strict):
    """events.yaml: the events the forecast should know about."""
    events: list[EventSpec] = Field(default_factory=list, description="Events; names are unique. Default: none.")

    @model_validator(mode="after")
    def _unique_names(self) -> EventsConfig:
        first: dict[str, int] = {}
        for index, spec in enumerate(self.events):
            if spec.name in first:
                raise config_error(("events", index, "name"),
                                   f"duplicate event name {spec.name!r} (first at events[{first[spec.name]}])")
            first[spec.name] = index
        return self


def load_events(path: str | Path) -> list[Event]:
    """The events in `path`, by start; a missing file means no events."""
    path = Path(path)
    if not path.exists():
        return []
    specs = load_yaml_model(path, EventsConfig).events
    return sorted((spec.to_event() for spec in specs), key=lambda e: (e.start, e.name))
