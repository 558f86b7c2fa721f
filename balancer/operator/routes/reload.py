"""POST /admin/reload: re-read the YAML; 400 with file, line and key when it is invalid, 409 when refused."""
from __future__ import annotations

from dataclasses import asdict

import structlog
from aiohttp import web

from balancer.operator.host import ReloadRefused
from balancer.operator.server import ApiError
from balancer.operator.state import Operator
from config.loader import ConfigError

log = structlog.get_logger(__name__)


class ReloadRoutes:
    def __init__(self, op: Operator) -> None:
        self.op = op

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/admin/reload", self.reload)

    async def reload(self, request: web.Request) -> web.Response:
        try:
            result = await self.op.app.reload()
        except ConfigError as e:
            log.warning("config.reload_rejected", error=str(e))
            raise ApiError(400, str(e), file=e.file, line=e.line, key=e.key) from None
        except ReloadRefused as e:
            raise ApiError(409, str(e)) from None
        return web.json_response({"status": "reloaded", **asdict(result)})
