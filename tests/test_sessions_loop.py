"""Sessions say which pool is needed next: the live loop learns request-type transitions per
session (source) from real proxied requests, and a wave of sessions at the first step of a
workflow raises the near-term demand of the pool serving the next step before its requests come.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import aiohttp
import pytest

from balancer.wiring.app import App
from config.models import Config, Pool, Route, RouteMatch, RoutingConfig, SourceRule
from pools.ports import free_port
from tests.pools_support import wait_until

START = 19_700 * 86400 + 9 * 3600 + 1.0   # a stopped clock, one second into a minute


def config() -> Config:
    pool = lambda: Pool.model_validate({  # noqa: E731
        "backend": "process", "command": f"{sys.executable} -m balancer.demo.backend --port {{port}}",
        "concurrency": 4, "capacity": {"min": 1, "max": 2}, "shadow": {"state": "running", "size": 0},
        "scaling": {"mode": "forecast-only"}, "startup_timeout": 10, "stop_timeout": 1, "drain_timeout": 1,
        "health": {"interval": 0.2, "timeout": 0.5},
    })
    routing = RoutingConfig(
        sources=[SourceRule(header="X-Tenant")],
        routes=[Route(name="browse", match=RouteMatch(path_prefix="/api/browse"), pool="web", type="browse"),
                Route(name="checkout", match=RouteMatch(path_prefix="/api/checkout"), pool="pay", type="checkout")])
    return Config(routing=routing, pools={"web": pool(), "pay": pool()})


@pytest.fixture
async def app():
    now = [START]
    tmp = tempfile.TemporaryDirectory(prefix="wf-sessions-")
    a = App(config(), listen=("127.0.0.1", free_port()), admin=("127.0.0.1", free_port()),
            state_dir=tmp.name, clock=lambda: now[0], plan_interval=0.1)
    await a.start()
    a.test_clock = now
    yield a
    await a.stop()
    tmp.cleanup()


async def get(session: aiohttp.ClientSession, app: App, path: str, tenant: str) -> None:
    async with session.get(f"http://127.0.0.1:{app.listen[1]}{path}", headers={"X-Tenant": tenant}) as resp:
        assert resp.status == 200, path
        await resp.read()


async def test_a_wave_of_browsing_sessions_raises_checkout_demand_before_checkouts_come(app):
    now = app.test_clock
    async with aiohttp.ClientSession() as session:
        # Learning: 30 sessions browse, then check out (in that order, one request at a time).
        for i in range(30):
            await get(session, app, "/api/browse/item", f"old{i}")
            await get(session, app, "/api/checkout", f"old{i}")
        await wait_until(lambda: app.control.next_types().get("browse", {}).get("checkout") == 1.0, timeout=10)
        assert app.status()["next_types"]["browse"] == {"checkout": 1.0}
        # Their minute closes; checkouts stay at what the old sessions did.
        await app.workers.flush()   # every request counted in the minute it came in
        now[0] += 60
        # 30 browses in the learning minute, each followed by a checkout: 0.5 checkouts/s
        await wait_until(lambda: app.status()["pools"]["pay"]["sessions"].get("checkout") == pytest.approx(0.5), timeout=10)
        # A wave: 60 new sessions browse in this minute, none has checked out yet.
        for i in range(60):
            await get(session, app, "/api/browse/item", f"new{i}")
        await app.workers.flush()
        now[0] += 60
        # 60 browses a minute, every browse led to a checkout: 1 checkout/s on its way to pool pay.
        await wait_until(lambda: app.status()["pools"]["pay"]["sessions"].get("checkout", 0) == pytest.approx(1.0), timeout=10)
    assert "checkout" not in app.status()["pools"]["web"]["sessions"]   # it is pay that is needed next
    near = [d for d in app.control.pools["pay"].demand if d.rtype == "checkout" and d.horizon_s == 300.0]
    assert near and near[0].rate >= 1.0 and near[0].rate_upper >= 1.0
