"""/admin/pools/…: manual scaling overrides (pin, min, max) and draining one member."""
from __future__ import annotations

from aiohttp import web

from balancer.operator.controls import ScaleRequest
from balancer.operator.requests import json_body, validate
from balancer.operator.server import ApiError
from balancer.operator.state import Operator
from pools.members import MemberState


class PoolRoutes:
    def __init__(self, op: Operator) -> None:
        self.op = op

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/admin/pools/{name:.+}/scale", self.scale)
        router.add_delete("/admin/pools/{name:.+}/scale", self.unscale)
        router.add_post("/admin/pools/{name:.+}/members/{id:.+}/drain", self.drain)

    async def scale(self, request: web.Request) -> web.Response:
        name = self.op.pool_named(request)
        req = validate(ScaleRequest, await json_body(request))
        for key in ("pin", "min", "max"):
            self.op.within_capacity(name, key, getattr(req, key))
        override = self.op.controls.set_override(name, req)
        manager = self.op.app.managers.get(name)
        if manager is not None:
            manager.note("override", None, f"manual: ready in [{override.min}, {override.max}]: {req.reason}")
            manager.wake()
        return web.json_response({"pool": name, "override": self.op.override_json(name),
                                  "desired": self.op.desired_json(name)})

    async def unscale(self, request: web.Request) -> web.Response:
        name = self.op.pool_named(request)
        override = self.op.controls.clear_override(name)
        if override is None:
            raise ApiError(404, f"pool {name!r} has no override")
        manager = self.op.app.managers.get(name)
        if manager is not None:
            manager.note("override_cleared", None, f"manual: {override.reason}")
            manager.wake()
        return web.json_response({"pool": name, "override": None, "desired": self.op.desired_json(name)})

    async def drain(self, request: web.Request) -> web.Response:
        name = self.op.pool_named(request)
        member_id = request.match_info["id"]
        manager = self.op.app.managers.get(name)
        member = next((m for m in (manager.members() if manager else []) if m.id == member_id), None)
        if manager is None or member is None:
            raise ApiError(404, f"pool {name!r} has no member {member_id!r}")
        if member.state is not MemberState.READY:
            raise ApiError(409, f"member {member_id!r} is {member.state.value}; only a ready member can be drained")
        if not manager.drain(member_id, "manual"):
            raise ApiError(409, f"member {member_id!r} is busy; try again")
        return web.json_response({"pool": name, "member": member_id, "state": "draining"})
