"""events.yaml: campaigns, maintenance windows and releases the forecast should know about.

Validated with pydantic like routing.yaml and pools.yaml, so a mistake is one ConfigError at
file:line: key; then converted to the predictor's plain `Event`s (the predictor never imports
config). Times are RFC 3339 (ISO 8601 with a date, a time and a UTC offset) in the years
2000–2099; a YAML timestamp without an offset is read as UTC. Windows last at most
`MAX_EVENT_DURATION`. The admin API takes the same model, so these bounds are also what keeps an
event from the API representable as a date everywhere it is shown.
"""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from config.loader import load_yaml_model
from config.models import MemberCount, Strict, config_error
from config.units import bounded_duration, format_duration
from predictor.events import Event

EVENTS_FILE = "events.yaml"
MAX_EVENT_DURATION = 366 * 86400.0
MIN_WINDOW = 0.001           # shorter windows vanish in float epoch seconds (start + d == start)
MAX_NAME = 200                  # characters in an event, source, type or pool name
FIRST_YEAR, LAST_YEAR = 2000, 2099
# RFC 3339 `date-time` (upper-case T and Z, no leap second), or a `full-date` meaning its midnight UTC,
# in the years FIRST_YEAR to LAST_YEAR. One pattern, ECMA and Python alike ([0-9], not \d, which in
# Python takes any Unicode digit): the server parses what the document's schema matches.
_2 = "[0-9]{2}"
TIME_PATTERN = (rf"^(20{_2})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
                rf"(?:T([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])(\.[0-9]+)?(Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9]))?$")
_TIME_HELP = "an ISO 8601 (RFC 3339) time like 2024-05-01T10:00:00Z, or a date, in the years 2000 to 2099"


def parse_time(value: Any) -> datetime:
    # YAML turns unquoted timestamps into datetimes (or dates); a string must match TIME_PATTERN,
    # which is what the OpenAPI document promises — not everything fromisoformat would take.
    if isinstance(value, str):
        match = re.fullmatch(TIME_PATTERN, value)
        if match is None:
            raise ValueError(f"must be {_TIME_HELP} (got {value[:40]!r})")
        year, month, day, hour, minute, second, fraction, offset = match.groups()
        try:
            tz = timezone.utc if offset in (None, "Z") else timezone(
                (1 if offset[0] == "+" else -1) * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
            value = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
                             int(float(fraction or 0) * 1e6), tzinfo=tz)
        except ValueError as err:          # 31 April
            raise ValueError(f"must be {_TIME_HELP} (got {value[:40]!r}: {err})") from None
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise ValueError(f"must be {_TIME_HELP} (got {type(value).__name__})")
    if not FIRST_YEAR <= value.year <= LAST_YEAR:
        raise ValueError(f"must be in the years {FIRST_YEAR} to {LAST_YEAR} (got {value.year})")
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


TIME_SCHEMA = {"type": "string", "pattern": TIME_PATTERN, "anyOf": [{"format": "date-time"}, {"format": "date"}],
               "description": f"RFC 3339 date-time, or a date (midnight UTC), in the years {FIRST_YEAR} to {LAST_YEAR}."}
Time = Annotated[datetime, BeforeValidator(parse_time), WithJsonSchema(TIME_SCHEMA)]
ScopeName = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
if TYPE_CHECKING:   # a pydantic Annotated type built by a call: seconds, to the type checker
    WindowLength = float
else:
    WindowLength = bounded_duration(minimum=MIN_WINDOW, maximum=MAX_EVENT_DURATION)


def json_schema_given(schema: dict[str, Any], key: str, *absent: str) -> dict[str, Any]:
    """A branch of a JSON Schema rule: `key` present and not null (its own schema, minus the null),
    the keys `absent` missing or null. Pydantic writes each property; rules reuse what it wrote."""
    prop = schema["properties"][key]
    given = next(s for s in prop.get("anyOf", [prop]) if s != {"type": "null"})
    return {"required": [key], "properties": {key: given, **{k: {"type": "null"} for k in absent}}}


def _exactly_one_scope(schema: dict[str, Any]) -> None:
    schema["oneOf"] = [json_schema_given(schema, k) for k in ("source", "type", "pool")]


class EventScope(Strict):
    """What the event affects: exactly one of source, type or pool."""
    model_config = ConfigDict(json_schema_extra=_exactly_one_scope)
    source: ScopeName | None = Field(None, description="A traffic source, e.g. `acme`.")
    type: ScopeName | None = Field(None, description="A request type, as routes name it.")
    pool: ScopeName | None = Field(None, description="A pool in pools.yaml.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EventScope:
        chosen = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise config_error((), f"a scope sets exactly one of source, type, pool (got {', '.join(chosen) or 'none'})")
        return self

    def key_value(self) -> tuple[Literal["source", "type", "pool"], str]:
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is not None:
                return name, value   # type: ignore[return-value]  # the model's fields are those three
        raise AssertionError("validated scope has no key")


MAX_MULTIPLIER = 1000.0
def _spec_rules(schema: dict[str, Any]) -> None:
    schema["allOf"] = [
        {"oneOf": [json_schema_given(schema, "end", "duration"), json_schema_given(schema, "duration", "end")]},
        # pin and drain are for maintenance events only
        {"anyOf": [{"properties": {"kind": {"const": "maintenance"}}},
                   {"properties": {"pin": {"type": "null"}, "drain": {"type": "null"}}}]},
    ]


class EventSpec(Strict):
    """One event: a window, a scope and optionally the multiplier it is expected to bring."""
    model_config = ConfigDict(json_schema_extra=_spec_rules)
    name: ScopeName = Field(description="Unique event name, used by the admin API. Required.")
    kind: Literal["campaign", "maintenance", "release", "other"] = Field(
        description="What sort of event; uplift is learned per kind. Required.")
    start: Time = Field(description=f"Start, RFC 3339, e.g. `2024-05-01T10:00:00Z`, in the years {FIRST_YEAR} to "
                                    f"{LAST_YEAR}. Required.")
    end: Time | None = Field(None, description="End, RFC 3339, after start and at most "
                                               f"{format_duration(MAX_EVENT_DURATION)} after it. Give `end` or "
                                               "`duration`.")
    duration: WindowLength | None = Field(
        None, description=f"Length of the window, e.g. `2h`; from 1ms to {format_duration(MAX_EVENT_DURATION)}. "
                          "Give `end` or `duration`.")
    scope: EventScope = Field(description="Exactly one of `source`, `type`, `pool`. Required.")
    multiplier: float | None = Field(
        None, gt=0, le=MAX_MULTIPLIER, allow_inf_nan=False,
        description=f"Expected traffic multiplier in the window, e.g. `3`; at most {MAX_MULTIPLIER:g}. Default: "
                    "learned from past events of the same kind.")
    pin: MemberCount | None = Field(None,
                            description="maintenance: hold the pool at this many members (at most its capacity.max). "
                                        "Default: none.")
    drain: bool | None = Field(None, description="maintenance: drain the pool for the window. Default `false`.")

    @model_validator(mode="after")
    def _window_and_maintenance_fields(self) -> EventSpec:
        if self.end is not None and self.duration is not None:
            raise config_error(("duration",), "give either end or duration, not both")
        if self.end is None and self.duration is None:
            raise config_error((), "needs end or duration")
        if self.end is not None and self.end <= self.start:
            raise config_error(("end",), "must be after start")
        if self.end is not None and (self.end - self.start).total_seconds() > MAX_EVENT_DURATION:
            raise config_error(("end",), f"must be at most {format_duration(MAX_EVENT_DURATION)} after start")
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
