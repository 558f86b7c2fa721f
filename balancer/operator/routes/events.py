"""/admin/events: the event feed (events.yaml plus events added here), listed, added and deleted."""
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
        spec = validate(EventSpec, await json_body(request))
        if spec.pin is not None and spec.scope.pool in self.op.app.cfg.pools:
            self.op.within_capacity(spec.scope.pool, "pin", spec.pin)
        if self.op.events.book.get(spec.name) is None and self.op.events.api_count() >= MAX_API_EVENTS:
            raise ApiError(409, f"already {MAX_API_EVENTS} events from the API; delete some first")
        event, created = self.op.events.add(spec)
        return web.json_response(self.op.event_json(event), status=201 if created else 200)

    async def delete_event(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        event = self.op.events.remove(name)
        if event is None:
            raise ApiError(404, f"no event named {name!r}")
        return web.json_response({"deleted": name})
