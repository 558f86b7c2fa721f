"""The operator API on the admin listener: dashboard, events, sources, costs, scaling, drain, reload.

`Operator` owns the operator state (source controls, the event feed, the member timeline) and
serves it; the App owns everything it reads (config, members, managers, history, control loop).
Every refusal is an `ApiError`, answered as JSON with a message; nothing here returns a 5xx for
bad input.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from balancer import dashboard
from balancer.admin import ApiError
from balancer.controls import Controls, DesiredFn, ScaleRequest, SourceUpdate, constrain, override_json
from balancer.costs import compute_costs
from balancer.eventfeed import EventFeed
from balancer.openapi import openapi_document
from balancer.reload import ReloadRefused
from balancer.timeline import MemberTimeline, sample
from config.events import EVENTS_FILE, EventSpec
from config.loader import ConfigError
from config.models import Pool
from config.units import parse_duration
from pools.members import MemberState
from pools.reconciler import Desired, ObservedMember
from predictor.events import Event

if TYPE_CHECKING:
    from balancer.app import App

log = structlog.get_logger(__name__)

SAMPLE_INTERVAL = 5.0
MAX_BODY = 64 * 1024


class Operator:
    def __init__(self, app: App, clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.clock = clock
        cfg = app.cfg
        self.controls = Controls(app.state_dir / "sources.json", clock)
        self.events = EventFeed(Path(cfg.directory) / EVENTS_FILE if cfg.directory else None,
                                app.state_dir / "events.json")
        self.events.replace_yaml(self.events.read_yaml())
        self.timeline = MemberTimeline(path=app.state_dir / "timeline.sqlite3", retention=cfg.routing.history.retention)

    # ---------------------------------------------------------------- hooks for the App
    def desired_fn(self, inner: DesiredFn) -> DesiredFn:
        """`inner` (the control loop's decision) bounded by manual overrides and maintenance events."""
        def desired(pool: str, spec: Pool, observed: Sequence[ObservedMember]) -> Desired:
            return constrain(inner(pool, spec, observed), self.controls.active_override(pool),
                             self.maintenance(pool))
        return desired

    def maintenance(self, pool: str) -> list[Event]:
        now = self.clock()
        return [e for e in self.events.book.matching({"pool": pool}, now, math.nextafter(now, math.inf))
                if e.kind == "maintenance"]

    def status(self) -> dict[str, Any]:
        """App.status() plus what the operator set: overrides, opted-out sources, events."""
        st = self.app.status()
        for name, pool in st.get("pools", {}).items():
            pool["override"] = override_json(self.controls.active_override(name))
        for s in st.get("sources", []):
            s["predictive"] = self.controls.predictive(s.get("source", ""))
        st["events"] = [self._event_json(e) for e in self.events.book.list()]
        return st

    def sample_members(self) -> None:
        now = self.clock()
        for name, spec in self.app.cfg.pools.items():
            plan = self._plan(name)
            self.timeline.add(name, sample(now, self.app.members.get(name, ()), spec.capacity.min,
                                           plan.predictive if plan is not None else 0))

    async def sample_loop(self, interval: float = SAMPLE_INTERVAL) -> None:
        while True:
            self.sample_members()
            await asyncio.sleep(interval)

    def _plan(self, name: str):
        control = self.app.control
        try:
            return control.plan_of(name) if control is not None else None
        except KeyError:
            return None

    # ---------------------------------------------------------------- routes
    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/admin/openapi.json", self.openapi)
        r.add_get("/admin/dashboard", self.dashboard)
        r.add_get("/admin/events", self.list_events)
        r.add_post("/admin/events", self.add_event)
        r.add_get("/admin/events/{name}", self.get_event)
        r.add_delete("/admin/events/{name}", self.delete_event)
        r.add_get("/admin/sources", self.list_sources)
        r.add_get("/admin/sources/{id}", self.get_source)
        r.add_put("/admin/sources/{id}", self.put_source)
        r.add_get("/admin/costs", self.costs)
        r.add_post("/admin/pools/{name}/scale", self.scale)
        r.add_delete("/admin/pools/{name}/scale", self.unscale)
        r.add_post("/admin/pools/{name}/members/{id}/drain", self.drain)
        r.add_post("/admin/reload", self.reload)

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    async def dashboard(self, request: web.Request) -> web.Response:
        now = self.clock()
        status = self.status()
        actual = self._requests_by_pool_minute(now - dashboard.PAST_S, now + 60)
        timeline = {name: self.timeline.series(name, now - dashboard.PAST_S) for name in self.app.cfg.pools}
        html = dashboard.render(status, timeline, actual, self.events.book.list(), now)
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    # events
    async def list_events(self, request: web.Request) -> web.Response:
        return web.json_response({"events": [self._event_json(e) for e in self.events.book.list()]})

    async def get_event(self, request: web.Request) -> web.Response:
        event = self.events.book.get(request.match_info["name"])
        if event is None:
            raise ApiError(404, f"no event named {request.match_info['name']!r}")
        return web.json_response(self._event_json(event))

    async def add_event(self, request: web.Request) -> web.Response:
        spec = _validate(EventSpec, await _json_body(request))
        event, created = self.events.add(spec)
        return web.json_response(self._event_json(event), status=201 if created else 200)

    async def delete_event(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        event = self.events.remove(name)
        if event is None:
            raise ApiError(404, f"no event named {name!r}")
        return web.json_response({"deleted": name})

    def _event_json(self, e: Event) -> dict[str, Any]:
        return {"name": e.name, "kind": e.kind, "start": _iso(e.start), "end": _iso(e.end),
                "scope": {e.scope_key: e.scope_value}, "multiplier": e.multiplier,
                "learned_multiplier": None if e.multiplier is not None else self.events.book.uplift(e.kind),
                "pin": e.pin, "drain": e.drain, "origin": self.events.origin(e.name)}

    # sources
    async def list_sources(self, request: web.Request) -> web.Response:
        traffic = self._traffic_by_source(self.clock() - 86400)
        names = sorted(set(traffic) | set(self.controls.sources), key=lambda s: (-traffic.get(s, 0), s))
        return web.json_response({"sources": [self._source_json(s, traffic.get(s, 0)) for s in names]})

    async def get_source(self, request: web.Request) -> web.Response:
        source = request.match_info["id"]
        return web.json_response(self._source_json(source, self._traffic_by_source(self.clock() - 86400).get(source, 0)))

    async def put_source(self, request: web.Request) -> web.Response:
        source = request.match_info["id"]
        update = _validate(SourceUpdate, await _json_body(request))
        self.controls.update_source(source, update)
        return web.json_response(self._source_json(source, self._traffic_by_source(self.clock() - 86400).get(source, 0)))

    def _source_json(self, source: str, requests_24h: int) -> dict[str, Any]:
        return {**asdict(self.controls.source(source)), "requests_24h": requests_24h}

    # costs
    async def costs(self, request: web.Request) -> web.Response:
        now = self.clock()
        since = _parse_time(request.query.get("since"), now, default=now - 86400, name="since")
        until = _parse_time(request.query.get("until"), now, default=now, name="until")
        if until <= since:
            raise ApiError(400, "until must be after since")
        requests = self._requests_by_pool_source(since, until)
        opted_out = {s for s, c in self.controls.sources.items() if not c.predictive}
        timeline = {name: self.timeline.series(name, since) for name in self.timeline.pools()}
        report = compute_costs(timeline, requests, opted_out, since, until)
        fmt = request.query.get("format") or ("csv" if "text/csv" in request.headers.get("Accept", "") else "json")
        if fmt == "csv":
            return web.Response(text=report.to_csv(), content_type="text/csv")
        if fmt != "json":
            raise ApiError(400, f"format must be json or csv, got {fmt!r}")
        return web.json_response(report.to_json())

    # scaling
    async def scale(self, request: web.Request) -> web.Response:
        name = self._pool(request)
        req = _validate(ScaleRequest, await _json_body(request))
        override = self.controls.set_override(name, req)
        manager = self.app.managers.get(name)
        if manager is not None:
            manager.note("override", None, f"manual: ready in [{override.min}, {override.max}]: {req.reason}")
            manager.wake()
        return web.json_response({"pool": name, "override": override_json(override)})

    async def unscale(self, request: web.Request) -> web.Response:
        name = self._pool(request)
        override = self.controls.clear_override(name)
        if override is None:
            raise ApiError(404, f"pool {name!r} has no override")
        manager = self.app.managers.get(name)
        if manager is not None:
            manager.note("override_cleared", None, f"manual: {override.reason}")
            manager.wake()
        return web.json_response({"pool": name, "override": None})

    async def drain(self, request: web.Request) -> web.Response:
        name = self._pool(request)
        member_id = request.match_info["id"]
        manager = self.app.managers.get(name)
        member = next((m for m in (manager.members() if manager else []) if m.id == member_id), None)
        if manager is None or member is None:
            raise ApiError(404, f"pool {name!r} has no member {member_id!r}")
        if member.state is not MemberState.READY:
            raise ApiError(409, f"member {member_id!r} is {member.state.value}; only a ready member can be drained")
        if not manager.drain(member_id, "manual"):
            raise ApiError(409, f"member {member_id!r} is busy; try again")
        return web.json_response({"pool": name, "member": member_id, "state": "draining"})

    # reload
    async def reload(self, request: web.Request) -> web.Response:
        try:
            result = await self.app.reload()
        except ConfigError as e:
            log.warning("config.reload_rejected", error=str(e))
            raise ApiError(400, str(e), file=e.file, line=e.line, key=e.key) from None
        except ReloadRefused as e:
            raise ApiError(409, str(e)) from None
        return web.json_response({"status": "reloaded", **asdict(result)})

    # ---------------------------------------------------------------- helpers
    def _pool(self, request: web.Request) -> str:
        name = request.match_info["name"]
        if name not in self.app.cfg.pools:
            raise ApiError(404, f"no pool named {name!r}")
        return name

    def _pools_of_type(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for route in self.app.cfg.routing.routes:
            pools = out.setdefault(route.type, [])
            if route.pool not in pools:
                pools.append(route.pool)
        return out

    def _requests_by_pool_source(self, since: float, until: float) -> dict[str, dict[str, int]]:
        pools_of = self._pools_of_type()
        out: dict[str, dict[str, int]] = {}
        for row in self.app.history.minute_rows(since, until):
            for pool in pools_of.get(row.type, ()):
                by_source = out.setdefault(pool, {})
                by_source[row.source] = by_source.get(row.source, 0) + row.requests
        return out

    def _requests_by_pool_minute(self, since: float, until: float) -> dict[str, dict[int, int]]:
        pools_of = self._pools_of_type()
        out: dict[str, dict[int, int]] = {}
        for row in self.app.history.minute_rows(since, until):
            for pool in pools_of.get(row.type, ()):
                by_minute = out.setdefault(pool, {})
                by_minute[row.minute] = by_minute.get(row.minute, 0) + row.requests
        return out

    def _traffic_by_source(self, since: float) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.app.history.summary(since):
            out[s.source] = out.get(s.source, 0) + s.requests
        return out


async def _json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"body larger than {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"body larger than {MAX_BODY} bytes")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"body must be JSON: {e}") from None


def _validate(model: type[BaseModel], data: Any):
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = list(first["loc"]) + list(first.get("ctx", {}).get("at", ()) if isinstance(first.get("ctx"), dict) else ())
        key = ".".join(str(p) for p in loc) or "-"
        raise ApiError(400, f"{key}: {first['msg']}", key=key) from None


def _parse_time(value: str | None, now: float, default: float, name: str) -> float:
    """Epoch seconds, ISO 8601, or a duration before now (`1h`, `30m`)."""
    if value is None or value == "":
        return default
    try:
        t = float(value)
        if math.isfinite(t):
            return t
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()
    except ValueError:
        pass
    try:
        return now - parse_duration(value)
    except (ValueError, TypeError):
        raise ApiError(400, f"{name} must be epoch seconds, ISO 8601 or a duration like 1h (got {value!r})") from None


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")
