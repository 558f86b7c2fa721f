"""The admin listener: /healthz, /metrics (Prometheus), /admin/status (JSON) and the operator API.

It runs on its own port, apart from proxied traffic. Beyond loopback it must be given a bearer
token (see `admin_needs_token`); every route but /healthz then requires it. Errors are JSON.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import structlog
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from balancer.control.history import History

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/healthz"})


def make_admin_app(
    status_fn: Callable[[], dict[str, Any]],
    registry: CollectorRegistry,
    token: str | None,
    add_routes: Callable[[web.Application], None] | None = None,
) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(request: web.Request) -> web.Response:
        return web.json_response(status_fn())

    app = web.Application(middlewares=[_errors_as_json, _require_token(token)])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/status", status)
    if add_routes is not None:
        add_routes(app)   # the operator API (balancer.operator.routes)
    return app


def admin_needs_token(host: str) -> bool:
    """True when `host` (a listen address) is reachable from beyond this machine."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True  # a hostname may resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_loopback


def status_sources(history: History, since_s: float = 86400, limit: int | None = 100) -> list[dict[str, Any]]:
    """The busiest sources over the last `since_s` seconds, as /admin/status lists them; each row
    says the window its counts are over (`window_s`), which may start before history does."""
    return [{**asdict(s), "window_s": since_s} for s in history.summary(history.clock() - since_s, limit=limit)]


class ApiError(Exception):
    """A request the admin API refuses: answered as JSON `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # keep headers that carry meaning (Allow on 405), drop the text body's own
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return _error(exc.status, exc.reason, headers)
    except ApiError as exc:
        return web.json_response({"error": exc.message, **exc.extra}, status=exc.status)
    except Exception:
        log.exception("admin.handler_failed", path=request.path)
        return _error(500, "internal error")


def _require_token(token: str | None) -> Any:   # an aiohttp middleware
    """Every path but the open ones needs the token: as a bearer token (APIs, Prometheus), or as
    the password of HTTP Basic auth with any user name, so a browser can open the dashboard (it
    asks for the credentials itself when it sees the Basic challenge)."""
    expected = f"Bearer {token}".encode() if token else None
    secret = token.encode() if token else b""
    challenges = CIMultiDict([("WWW-Authenticate", "Bearer"), ("WWW-Authenticate", 'Basic realm="warmfront admin"')])

    def basic_ok(given: bytes) -> bool:
        if given[:6].lower() != b"basic ":
            return False
        try:
            _, _, password = base64.b64decode(given[6:].strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(password, secret)

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is not None and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not (hmac.compare_digest(given, expected) or basic_ok(given)):
                return web.json_response({"error": "missing or invalid token (bearer, or basic auth password)"},
                                         status=401, headers=challenges)
        return await handler(request)

    return require_token
