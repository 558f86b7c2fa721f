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
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from balancer.operator import dashboard
from balancer.operator.server import ApiError
from balancer.operator.controls import Controls, DesiredFn, ScaleRequest, SourceUpdate, constrain, override_json
from balancer.operator.costs import compute_costs
from balancer.operator.eventfeed import EventFeed
from balancer.operator.openapi import openapi_document
from balancer.wiring.reload import ReloadRefused
from balancer.operator.timeline import MemberTimeline, sample
from config.events import EVENTS_FILE, FIRST_YEAR, MAX_NAME, EventSpec, parse_time
from config.loader import ConfigError
from config.models import Pool, first_error
from config.units import API_CONTEXT, DURATION_PATTERN, EPOCH_PATTERN, parse_duration
from pools.members import MemberState
from pools.reconciler import Desired, ObservedMember
from predictor.events import Event

if TYPE_CHECKING:
    from balancer.wiring.app import App

log = structlog.get_logger(__name__)

SAMPLE_INTERVAL = 5.0
MAX_BODY = 64 * 1024
MAX_DEPTH = 32                  # JSON nesting; the deepest valid body (a profile window's days) is 4
MAX_API_EVENTS = 1000
MAX_SOURCE_CONTROLS = 10000
_FIRST_T = datetime(FIRST_YEAR, 1, 1, tzinfo=timezone.utc).timestamp()


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
        if self.events.skipped:
            st["events_skipped"] = self.events.skipped
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
        # `{name:.+}`: aiohttp's default `{name}` refuses `{` and `}`, and an event named `{a/b` could be
        # created but never read or deleted. A name is any string the models take, percent-encoded.
        r = app.router
        r.add_get("/admin/openapi.json", self.openapi)
        r.add_get("/admin/dashboard", self.dashboard)
        r.add_get("/admin/events", self.list_events)
        r.add_post("/admin/events", self.add_event)
        r.add_get("/admin/events/{name:.+}", self.get_event)
        r.add_delete("/admin/events/{name:.+}", self.delete_event)
        r.add_get("/admin/sources", self.list_sources)
        r.add_get("/admin/sources/{id:.+}", self.get_source)
        r.add_put("/admin/sources/{id:.+}", self.put_source)
        r.add_get("/admin/costs", self.costs)
        r.add_post("/admin/pools/{name:.+}/scale", self.scale)
        r.add_delete("/admin/pools/{name:.+}/scale", self.unscale)
        r.add_post("/admin/pools/{name:.+}/members/{id:.+}/drain", self.drain)
        r.add_post("/admin/reload", self.reload)

    async def openapi(self, request: web.Request) -> web.Response:
        pools = tuple((name, spec.capacity.max) for name, spec in sorted(self.app.cfg.pools.items()))
        return web.json_response(openapi_document(auth=self.app.token is not None, pools=pools))

    async def dashboard(self, request: web.Request) -> web.Response:
        now = self.clock()
        status = self.status()
        actual = self._requests_by_pool_minute(now - dashboard.PAST_S, now + 60)
        timeline = {name: self.timeline.series(name, now - dashboard.PAST_S) for name in self.app.cfg.pools}
        html = dashboard.render(status, timeline, actual, self.events.book.list(), now)
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})

    # events
    async def list_events(self, request: web.Request) -> web.Response:
        return web.json_response({"events": [self._event_json(e) for e in self.events.book.list()],
                                  "skipped": self.events.skipped})

    async def get_event(self, request: web.Request) -> web.Response:
        event = self.events.book.get(request.match_info["name"])
        if event is None:
            raise ApiError(404, f"no event named {request.match_info['name']!r}")
        return web.json_response(self._event_json(event))

    async def add_event(self, request: web.Request) -> web.Response:
        spec = _validate(EventSpec, await _json_body(request))
        if spec.pin is not None and spec.scope.pool in self.app.cfg.pools:
            self._within_capacity(spec.scope.pool, "pin", spec.pin)
        if self.events.book.get(spec.name) is None and self.events.api_count() >= MAX_API_EVENTS:
            raise ApiError(409, f"already {MAX_API_EVENTS} events from the API; delete some first")
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
        source = _source_id(request)
        return web.json_response(self._source_json(source, self._traffic_by_source(self.clock() - 86400).get(source, 0)))

    async def put_source(self, request: web.Request) -> web.Response:
        source = _source_id(request)
        update = _validate(SourceUpdate, await _json_body(request))
        if source not in self.controls.sources and len(self.controls.sources) >= MAX_SOURCE_CONTROLS:
            raise ApiError(409, f"already {MAX_SOURCE_CONTROLS} sources with settings; reset some first")
        self.controls.update_source(source, update)
        return web.json_response(self._source_json(source, self._traffic_by_source(self.clock() - 86400).get(source, 0)))

    def _source_json(self, source: str, requests_24h: int) -> dict[str, Any]:
        return {**asdict(self.controls.source(source)), "requests_24h": requests_24h}

    # costs
    async def costs(self, request: web.Request) -> web.Response:
        now = self.clock()
        # Clamped to what can have been spent: nothing before FIRST_YEAR, nothing after now. A window
        # that ends up empty (until <= since) is an answer too: no container-seconds.
        since = max(_query_time(request.query.get("since"), now, default=now - 86400, name="since"), _FIRST_T)
        until = max(min(_query_time(request.query.get("until"), now, default=now, name="until"), now), since)
        requests = self._requests_by_pool_source(since, until)
        opted_out = {s for s, c in self.controls.sources.items() if not c.predictive}
        timeline = {name: self.timeline.series(name, since) for name in self.timeline.pools()}
        report = compute_costs(timeline, requests, opted_out, since, until)
        fmt = request.query.get("format")
        if fmt is None:
            fmt = "csv" if "text/csv" in request.headers.get("Accept", "") else "json"
        if fmt == "csv":
            return web.Response(text=report.to_csv(), content_type="text/csv")
        if fmt != "json":
            raise ApiError(400, f"format must be json or csv, got {fmt!r}")
        return web.json_response(report.to_json())

    # scaling
    async def scale(self, request: web.Request) -> web.Response:
        name = self._pool(request)
        req = _validate(ScaleRequest, await _json_body(request))
        for key in ("pin", "min", "max"):
            self._within_capacity(name, key, getattr(req, key))
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

    def _within_capacity(self, pool: str, key: str, count: int | None) -> None:
        limit = self.app.cfg.pools[pool].capacity.max
        if count is not None and count > limit:
            raise ApiError(400, f"{key}: must be at most {limit}, the capacity.max of pool {pool!r} (got {count})",
                           key=key)

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


def _source_id(request: web.Request) -> str:
    source = request.match_info["id"]
    if len(source) > MAX_NAME:
        raise ApiError(400, f"source id: at most {MAX_NAME} characters (got {len(source)})", key="id")
    return source


async def _json_body(request: web.Request) -> Any:
    """The request's JSON body, or an ApiError: 415 unless it says it is JSON (UTF-8), 413 past
    MAX_BODY, 400 when it does not parse, holds NaN/Infinity, or nests deeper than MAX_DEPTH (the
    parser itself would recurse without bound, and a RecursionError is not a client's answer)."""
    if "Content-Type" not in request.headers or not _is_json(request.content_type):
        raise ApiError(415, f"Content-Type must be application/json "
                            f"(got {request.headers.get('Content-Type', 'none')[:60]!r})")
    if (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
        raise ApiError(415, f"JSON must be UTF-8 (got charset {request.charset[:30]!r})")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"body larger than {MAX_BODY} bytes")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"body larger than {MAX_BODY} bytes")
    too_deep = ApiError(400, f"body must be JSON nested at most {MAX_DEPTH} deep")
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise ApiError(400, f"body must be UTF-8 JSON: {e}") from None
    except ValueError as e:
        raise ApiError(400, f"body must be JSON: {e}") from None
    except RecursionError:
        raise too_deep from None
    if _deeper_than(raw, MAX_DEPTH):
        raise too_deep
    return body


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (content_type.startswith("application/")
                                                   and content_type.endswith("+json"))


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def _deeper_than(raw: bytes, limit: int) -> bool:
    """For valid JSON: whether brackets nest deeper than `limit`. Strips strings, keeps only the
    brackets and removes innermost pairs `limit` times — C-speed passes, not a loop per byte
    (the admin API shares the data plane's event loop)."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"").replace(b"{}", b"")
    return bool(brackets)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _validate(model: type[BaseModel], data: Any):
    """Strict: `false` is not 0, `"2"` is not 2 and 2.5 is not a count — the types the document gives;
    and durations in the forms it gives (API_CONTEXT)."""
    try:
        return model.model_validate(data, strict=True, context=API_CONTEXT)
    except ValidationError as err:
        key, message = first_error(err)
        raise ApiError(400, f"{key}: {message}", key=key) from None


def _query_time(value: str | None, now: float, default: float, name: str) -> float:
    """Epoch seconds, an RFC 3339 time or date (as events take), or a duration before now (`1h`);
    the grammar openapi.QUERY_TIME documents."""
    if value is None:
        return default
    if re.fullmatch(EPOCH_PATTERN, value):
        return float(value)
    if re.fullmatch(DURATION_PATTERN, value):
        try:
            return now - parse_duration(value)
        except ValueError:
            return -math.inf           # longer ago than any duration: clamped to the first year
    try:
        return parse_time(value).timestamp()
    except ValueError as err:
        raise ApiError(400, f"{name} must be epoch seconds, an ISO 8601 time or a duration like 1h "
                            f"(got {value[:40]!r}: {err})", key=name) from None


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")
