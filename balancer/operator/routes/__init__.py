"""The operator API's resources, one module each; `install` adds them all to the admin app."""
from __future__ import annotations

from aiohttp import web

from balancer.operator.routes.costs import CostRoutes
from balancer.operator.routes.events import EventRoutes
from balancer.operator.routes.pages import PageRoutes
from balancer.operator.routes.pools import PoolRoutes
from balancer.operator.routes.reload import ReloadRoutes
from balancer.operator.routes.sources import SourceRoutes
from balancer.operator.state import Operator

RESOURCES = (PageRoutes, EventRoutes, SourceRoutes, CostRoutes, PoolRoutes, ReloadRoutes)


def install(app: web.Application, op: Operator) -> None:
    """Every resource's routes. `{name:.+}`: aiohttp's default `{name}` refuses `{` and `}`, and an
    event named `{a/b` could be created but never read or deleted; a name is any string the models
    take, percent-encoded."""
    for resource in RESOURCES:
        resource(op).add_routes(app.router)
