"""The external event feed: events.yaml plus events added through the admin API.

One `EventBook` holds both, so the predictor sees a single list. Events from the API are kept in
the state dir and survive restarts and reloads; a reload re-reads events.yaml and replaces only
the events that came from it. An API event and a YAML event of the same name: the API one wins,
since it is the newer word.

The state file is only ever written from validated specs, but a file written by an older version
(or by hand) may hold entries that no longer validate: those are skipped, logged and listed in
`skipped`, and the rest load. A bad entry must not take the admin API down, at start or later.
"""
from __future__ import annotations

import json
from pathlib import Path

import structlog
from pydantic import ValidationError

from config.events import EventSpec, load_events
from config.models import first_error
from predictor.events import Event, EventBook

log = structlog.get_logger(__name__)


class EventFeed:
    def __init__(self, yaml_path: Path | None, state_path: Path | None) -> None:
        self.yaml_path = yaml_path
        self.state_path = state_path
        self.book = EventBook()
        self._from_yaml: set[str] = set()
        self._from_api: dict[str, dict] = {}     # name -> EventSpec as JSON
        self.skipped: list[dict[str, str]] = []  # state-file entries that did not validate
        if state_path is not None and state_path.exists():
            self._load(state_path)

    def _load(self, path: Path) -> None:
        try:
            items = json.loads(path.read_text())
            if not isinstance(items, list):
                raise ValueError("not a list of events")
        except (OSError, ValueError, RecursionError) as err:
            self._skip(path, "*", f"unreadable: {err}")
            return
        for index, item in enumerate(items):
            name = str(item.get("name", f"#{index}")) if isinstance(item, dict) else f"#{index}"
            try:
                spec = EventSpec.model_validate(item, strict=True)
                event = spec.to_event()
            except ValidationError as err:
                self._skip(path, name, ": ".join(first_error(err)))
                continue
            except (ValueError, TypeError) as err:
                self._skip(path, name, str(err))
                continue
            self._from_api[spec.name] = spec.model_dump(mode="json", exclude_none=True)
            self.book.add(event)

    def _skip(self, path: Path, name: str, error: str) -> None:
        error = error[:300]
        log.error("event.invalid_skipped", path=str(path), name=name[:100], error=error)
        self.skipped.append({"name": name[:100], "error": error})

    def read_yaml(self) -> list[Event]:
        """events.yaml's events; raises ConfigError (file:line: key)."""
        return load_events(self.yaml_path) if self.yaml_path is not None else []

    def replace_yaml(self, events: list[Event]) -> int:
        """Swap in a new reading of events.yaml, keeping the API's events."""
        for name in self._from_yaml - set(self._from_api):
            self.book.remove(name)
        self._from_yaml = set()
        for event in events:
            self._from_yaml.add(event.name)
            if event.name not in self._from_api:
                self.book.add(event)
        return len(events)

    def add(self, spec: EventSpec) -> tuple[Event, bool]:
        """Add or replace an event; True when it is new."""
        event = spec.to_event()
        created = self.book.get(event.name) is None
        self.book.add(event)
        self._from_api[event.name] = spec.model_dump(mode="json", exclude_none=True)
        self._save()
        log.info("event.added", name=event.name, kind=event.kind, scope=f"{event.scope_key}={event.scope_value}")
        return event, created

    def remove(self, name: str) -> Event | None:
        if self.book.get(name) is None:
            return None
        event = self.book.remove(name)
        self._from_yaml.discard(name)
        if self._from_api.pop(name, None) is not None:
            self._save()
        log.info("event.removed", name=name)
        return event

    def api_count(self) -> int:
        return len(self._from_api)

    def origin(self, name: str) -> str:
        return "api" if name in self._from_api else "yaml"

    def _save(self) -> None:
        if self.state_path is None:
            return
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(list(self._from_api.values()), indent=1))
        tmp.replace(self.state_path)

