"""/admin/costs: container-seconds per pool and tier, attributed to sources, as JSON or CSV.

JSON: `since`, `until` (ISO 8601 UTC), `unit`, `pools` (per pool: `tiers` — seconds per tier —,
`premium_s`, `shared_s`, `total_s`, `requests`, `unattributed_s`) and `sources` (per pool and source:
`predictive`, `requests`, `share`, `shared_s`, `premium_s`, `total_s`).

CSV (`format=csv` or `Accept: text/csv`), columns in this order:
`pool,source,predictive,requests,share,shared_s,premium_s,total_s,row_kind,tier,seconds`. `row_kind`
is `source` for a source's costs in a pool (the first eight columns), `unattributed` for a pool's
seconds nobody could be charged for (in `total_s`), and `tier` for a pool's container-seconds in one
tier (`tier`, `seconds`; as the JSON's `pools.*.tiers`). Summing `total_s` counts everything once.

Each stretch of the window is attributed with the opt-outs in force during it, not today's.

Resources (pools with a CPU or memory limit, or measured use): the JSON's `resources` per pool holds
`cpus`, `memory_bytes`, `reserved_core_s` and `reserved_gib_s` per tier (container-seconds x the
limits in force now), `used_core_s` and `used_gib_s` (measured), `cpu_per_request_s` per type; each
source gains `core_s`, `gib_s` (reserved, by its container-seconds) and `used_core_s` (measured, by
its requests weighted by their type's CPU cost), `used_gib_s` (by its share of requests). CSV: the
columns `core_s,gib_s,used_core_s,used_gib_s` after `seconds`, filled on source and tier rows.
"""
from __future__ import annotations

from aiohttp import web

from balancer.operator.costs import Interval, attribution_intervals, compute_costs_over, with_resources
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
        since = min(max(query_time(request.query.get("since"), now, default=now - 86400, name="since"), FIRST_T), now)
        until = max(min(query_time(request.query.get("until"), now, default=now, name="until"), now), since)
        fmt = request.query.get("format")
        if fmt is None:
            fmt = "csv" if "text/csv" in request.headers.get("Accept", "") else "json"
        if fmt not in ("json", "csv"):
            raise ApiError(400, f"format must be json or csv, got {fmt!r}")
        intervals = [Interval(start, end, opted_out, await self.op.requests_by_pool_source(start, end))
                     for start, end, opted_out in attribution_intervals(
                         since, until, self.op.controls.opted_out_between(since, until))]
        timeline = {name: self.op.timeline.series(name, since) for name in self.op.timeline.pools()}
        report = compute_costs_over(timeline, intervals)
        resources = await self.op.pool_resources(since, until)
        if resources:
            report = with_resources(report, resources, await self.op.requests_by_pool_source_type(since, until))
        if fmt == "csv":
            return web.Response(text=report.to_csv(), content_type="text/csv")
        return web.json_response(report.to_json())
