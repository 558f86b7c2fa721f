"""/admin/openapi.json and /admin/dashboard: the API's document and the operator's page."""
from __future__ import annotations

from aiohttp import web

from balancer.operator import dashboard
from balancer.operator.openapi import openapi_document
from balancer.operator.state import Operator


class PageRoutes:
    def __init__(self, op: Operator) -> None:
        self.op = op

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/admin/openapi.json", self.openapi)
        router.add_get("/admin/dashboard", self.dashboard)

    async def openapi(self, request: web.Request) -> web.Response:
        pools = tuple((name, spec.capacity.max) for name, spec in sorted(self.op.app.cfg.pools.items()))
        return web.json_response(openapi_document(auth=self.op.app.token is not None, pools=pools))

    async def dashboard(self, request: web.Request) -> web.Response:
        now = self.op.clock()
        status = self.op.status()
        actual = await self.op.requests_by_pool_minute(now - dashboard.PAST_S, now + 60)
        timeline = {name: self.op.timeline.series(name, now - dashboard.PAST_S) for name in self.op.app.cfg.pools}
        usage = await self.op.usage_by_pool_minute(now - dashboard.PAST_S, now + 60)
        html = dashboard.render(status, timeline, actual, self.op.events.book.list(), now, usage)
        return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})
