"""/admin/sources: per-source settings (predictive tier, workload profile, sensitivity) and traffic."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from aiohttp import web

from balancer.operator.controls import SourceUpdate
from balancer.operator.requests import MAX_SOURCE_CONTROLS, iso, json_body, source_id, validate
from balancer.operator.server import ApiError
from balancer.operator.state import Operator


class SourceRoutes:
    def __init__(self, op: Operator) -> None:
        self.op = op

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/admin/sources", self.list_sources)
        router.add_get("/admin/sources/{id:.+}", self.get_source)
        router.add_put("/admin/sources/{id:.+}", self.put_source)

    async def list_sources(self, request: web.Request) -> web.Response:
        traffic = self.op.traffic_by_source(self.op.clock() - 86400)
        names = sorted(set(traffic) | set(self.op.controls.sources), key=lambda s: (-traffic.get(s, 0), s))
        return web.json_response({"sources": [self._source_json(s, traffic.get(s, 0)) for s in names]})

    async def get_source(self, request: web.Request) -> web.Response:
        source = source_id(request)
        return web.json_response(self._source_json(source, self.op.traffic_by_source(self.op.clock() - 86400).get(source, 0)))

    async def put_source(self, request: web.Request) -> web.Response:
        source = source_id(request)
        update = validate(SourceUpdate, await json_body(request))
        if source not in self.op.controls.sources and len(self.op.controls.sources) >= MAX_SOURCE_CONTROLS:
            raise ApiError(409, f"already {MAX_SOURCE_CONTROLS} sources with settings; reset some first")
        self.op.controls.update_source(source, update)
        return web.json_response(self._source_json(source, self.op.traffic_by_source(self.op.clock() - 86400).get(source, 0)))

    def _source_json(self, source: str, requests_24h: int) -> dict[str, Any]:
        control = self.op.controls.source(source)
        return {**asdict(control), "updated": iso(control.updated) if control.updated else None,
                "requests_24h": requests_24h}
