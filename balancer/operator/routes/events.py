"""/admin/events: the event feed (events.yaml plus events added here): listed, added (POST), replaced
(PUT /admin/events/NAME) and deleted."""
from __future__ import annotations

from aiohttp import web

from balancer.operator.requests import MAX_API_EVENTS, json_body, validate
from balancer.operator.server import ApiError
from balancer.operator.state import Operator
from config.events import EventSpec


class EventRoutes:
    def __init__(self, op: Operator) -> None:
        self.op = op

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/admin/events", self.list_events)
        router.add_post("/admin/events", self.add_event)
        router.add_get("/admin/events/{name:.+}", self.get_event)
        router.add_put("/admin/events/{name:.+}", self.put_event)
        router.add_delete("/admin/events/{name:.+}", self.delete_event)

    async def list_events(self, request: web.Request) -> web.Response:
        return web.json_response({"events": [self.op.event_json(e) for e in self.op.events.book.list()],
                                  "skipped": self.op.events.skipped})

    async def get_event(self, request: web.Request) -> web.Response:
        event = self.op.events.book.get(request.match_info["name"])
        if event is None:
            raise ApiError(404, f"no event named {request.match_info['name']!r}")
        return web.json_response(self.op.event_json(event))

    async def add_event(self, request: web.Request) -> web.Response:
        spec = self._checked(validate(EventSpec, await json_body(request)))
        if self.op.events.book.get(spec.name) is not None:
            raise ApiError(409, f"an event named {spec.name!r} exists; PUT /admin/events/{spec.name} to replace it",
                           key="name")
        event, _ = self.op.events.add(spec)
        self.op.republish()   # a maintenance pin or drain applies now, not at the next step
        return web.json_response(self.op.event_json(event), status=201)

    async def put_event(self, request: web.Request) -> web.Response:
        """Add or replace the event the path names; the body is an event without `name`."""
        name = request.match_info["name"]
        body = await json_body(request)
        if isinstance(body, dict) and "name" in body:
            raise ApiError(400, "name: not in the body; the path names the event", key="name")
        spec = self._checked(validate(EventSpec, {**body, "name": name} if isinstance(body, dict) else body))
        event, created = self.op.events.add(spec)
        self.op.republish()   # a maintenance pin or drain applies now, not at the next step
        return web.json_response(self.op.event_json(event), status=201 if created else 200)

    def _checked(self, spec: EventSpec) -> EventSpec:
        """Rules that hang on this instance: the scope's pool exists, a pin fits in it, and (for a new
        event) the API's cap on events."""
        pool = spec.scope.pool
        if pool is not None and pool not in self.op.app.cfg.pools:
            raise ApiError(400, f"scope.pool: no pool named {pool!r} (pools: {', '.join(sorted(self.op.app.cfg.pools))})",
                           key="scope.pool")
        if spec.pin is not None and pool is not None:
            self.op.within_capacity(pool, "pin", spec.pin)
        if self.op.events.book.get(spec.name) is None and self.op.events.api_count() >= MAX_API_EVENTS:
            raise ApiError(409, f"already {MAX_API_EVENTS} events from the API; delete some first")
        return spec

    async def delete_event(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        event = self.op.events.remove(name)
        if event is None:
            raise ApiError(404, f"no event named {name!r}")
        self.op.republish()
        return web.json_response({"deleted": name})
