"""/admin/costs: container-seconds per pool and tier, attributed to sources, as JSON or CSV."""
from __future__ import annotations

from aiohttp import web

from balancer.operator.costs import compute_costs
from balancer.operator.requests import FIRST_T, query_time
from balancer.operator.server import ApiError
from balancer.operator.state import Operator


class CostRoutes:
    def __init__(self, op: Operator) -> None:
        self.op = op

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/admin/costs", self.costs)

    async def costs(self, request: web.Request) -> web.Response:
        now = self.op.clock()
        # Clamped to what can have been spent: nothing before FIRST_YEAR, nothing after now. A window
        # that ends up empty (until <= since) is an answer too: no container-seconds.
        since = max(query_time(request.query.get("since"), now, default=now - 86400, name="since"), FIRST_T)
        until = max(min(query_time(request.query.get("until"), now, default=now, name="until"), now), since)
        requests = await self.op.requests_by_pool_source(since, until)
        opted_out = {s for s, c in self.op.controls.sources.items() if not c.predictive}
        timeline = {name: self.op.timeline.series(name, since) for name in self.op.timeline.pools()}
        report = compute_costs(timeline, requests, opted_out, since, until)
        fmt = request.query.get("format")
        if fmt is None:
            fmt = "csv" if "text/csv" in request.headers.get("Accept", "") else "json"
        if fmt == "csv":
            return web.Response(text=report.to_csv(), content_type="text/csv")
        if fmt != "json":
            raise ApiError(400, f"format must be json or csv, got {fmt!r}")
        return web.json_response(report.to_json())
