"""The live control loop in `warmfront run`: history → forecast → plan → members, before traffic comes.

The app runs in-process on a stopped clock; its history holds two past days with a daily ramp at
noon. Ten minutes before noon, with no request sent, the forecast must already have the pool
launch shadow members, and at noon activate them; in forecast-only mode the same forecast is
shown but nothing is launched.
"""
from __future__ import annotations

import asyncio
import math
import sys
import tempfile
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from balancer.wiring.app import App
from balancer.control.history import History
from config.models import Config, Pool, Route, RouteMatch, RoutingConfig
from pools.members import MemberState
from pools.ports import free_port
from tests.pools_support import alive, wait_until

DAY = 86400
NOON = 19_700 * DAY + 12 * 3600        # the ramp starts here, every day
RAMP_RPS = 6.0                         # x 0.25 s service time = 1.5 in flight: 3 members at 0.7 x 1
SERVICE_S = 0.25


def rate_at(t: float) -> float:
    """Requests per second: a gentle daily wave, and the noon ramp."""
    tod = t % DAY
    wave = 0.1 + 0.05 * math.sin(2 * math.pi * tod / DAY)
    return wave + (RAMP_RPS if 12 * 3600 <= tod < 14 * 3600 else 0.0)


def seed_history(path: Path, until: float, noise: float = 0.0, abort_slope: float = 0.0) -> None:
    """Two days of per-minute rows up to `until`, written through History like live traffic would be;
    `noise` scatters the counts (fixed seed) so the forecast has a band; with `abort_slope`, every
    other minute is 1 s slower and clients abort that much more often per second of latency."""
    history = History(path, clock=lambda: until)
    rng = np.random.default_rng(7)
    for minute in range(int(until - 2 * DAY), int(until), 60):
        n = max(0, round(rate_at(minute) * 60 * (1.0 + noise * rng.standard_normal())))
        slow = abort_slope > 0 and (minute // 60) % 2 == 1
        latency = SERVICE_S + (1.0 if slow else 0.0)
        aborts = round(n * (0.01 + (abort_slope if slow else 0.0)))
        history.add_minute(minute, "acme", "api", n, n * latency, aborts)
    history.close()


def config(mode: str) -> Config:
    pool = Pool.model_validate({
        "backend": "process", "command": f"{sys.executable} -m balancer.demo.backend --port {{port}}",
        "concurrency": 1, "capacity": {"min": 1, "max": 4}, "shadow": {"state": "running", "size": 0},
        "scaling": {"mode": mode}, "startup_timeout": 10, "stop_timeout": 1, "drain_timeout": 1,
        "health": {"interval": 0.2, "timeout": 0.5},
    })
    routing = RoutingConfig(routes=[Route(name="api", match=RouteMatch(path_prefix="/api/"), pool="web", type="api")])
    return Config(routing=routing, pools={"web": pool})


@pytest.fixture
async def start_app():
    apps: list[tuple[App, list[int]]] = []
    tmp = tempfile.TemporaryDirectory(prefix="wf-loop-")

    async def start(mode: str, now: list[float], noise: float = 0.0, abort_slope: float = 0.0) -> App:
        state = Path(tmp.name) / mode
        seed_history(state / "history.sqlite3", now[0], noise, abort_slope)
        app = App(config(mode), listen=("127.0.0.1", free_port()), admin=("127.0.0.1", free_port()),
                  state_dir=str(state), clock=lambda: now[0], plan_interval=0.1)
        pids: list[int] = []
        apps.append((app, pids))
        await app.start()
        return app

    yield start
    for app, pids in apps:
        backend = next(iter(app.backends.made.values()))
        pids += [p for m in app.members["web"] if (p := backend.pid(m.id)) is not None]
        await app.stop()
        assert pids and not any(alive(p) for p in pids), "a member process outlived the app"
    tmp.cleanup()


def by_state(app: App) -> dict[MemberState, int]:
    out: dict[MemberState, int] = {}
    for m in app.members["web"]:
        out[m.state] = out.get(m.state, 0) + 1
    return out


def requests_sent(app: App) -> int:
    return sum(app.workers.stats.requests.values())


async def test_live_loop_prewarms_shadows_before_the_ramp_and_activates_them_at_it(start_app):
    now = [NOON - 600.0]
    app = await start_app("forecast-and-scale", now)

    plan = app.control.plan_of("web")
    assert plan.ready == 1 and plan.baseline == 1
    assert plan.shadow == 2, f"the forecast of the noon ramp should ask for 2 shadows: {plan}"
    # The manager launches them: two running shadows, warm and unrouted, and not one request yet.
    await wait_until(lambda: by_state(app).get(MemberState.SHADOW) == 2, timeout=20)
    assert by_state(app).get(MemberState.READY) == 1
    assert requests_sent(app) == 0

    status = app.status()["pools"]["web"]
    assert status["mode"] == "forecast-and-scale"
    assert status["desired"]["shadow"] == 2
    near, quarter = status["forecast"][0], status["forecast"][1]
    assert quarter["horizon_s"] == 900 and quarter["rate"] > 5 > near["rate"]   # the ramp is 15 minutes out
    actions = [a["action"] for a in status["recent_actions"]]
    assert "plan" in actions and actions.count("launch") >= 2 and "park" in actions
    models = app.status()["models"]   # the feedback loop, visible: a model and live errors per series
    assert any(m["model"] for m in models) and all(set(m["errors"]) == {"5m", "15m", "60m"} for m in models), str(models)[:900]

    # Noon: the ramp's bin opens; the forecast asks for 3 ready and the shadows are activated.
    now[0] = NOON + 30
    await wait_until(lambda: by_state(app).get(MemberState.READY) == 3, timeout=10)
    plan = app.control.plan_of("web")
    assert (plan.ready, plan.baseline, plan.predictive) == (3, 1, 2)
    assert requests_sent(app) == 0

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{app.admin_addr[1]}/metrics") as resp:
            metrics = await resp.text()
        async with session.get(f"http://127.0.0.1:{app.listen[1]}/api/x") as resp:
            assert resp.status == 200
    assert 'warmfront_pool_desired_members{pool="web",tier="predictive"} 2.0' in metrics
    assert 'warmfront_pool_forecast_requests_per_second{bound="upper",horizon="5m",pool="web"}' in metrics


async def test_an_override_is_published_at_once_not_at_the_next_planning_step(start_app):
    now = [NOON + 30.0]
    app = await start_app("forecast-and-scale", now)
    await wait_until(lambda: by_state(app).get(MemberState.READY) == 3, timeout=15)
    app.control.plan_interval = 3600.0
    await asyncio.sleep(0.5)   # the loop's last short sleep ends: no planning step for an hour now
    plan = app.control.plan_of("web")
    manager = app.managers["web"]
    assert manager.desired.ready == plan.ready == 3
    admin = f"http://127.0.0.1:{app.admin_addr[1]}/admin/pools/web/scale"
    async with aiohttp.ClientSession() as session:
        async with session.post(admin, json={"pin": 1, "duration": "5m", "reason": "maintenance"}) as resp:
            assert resp.status == 200
        assert manager.desired.ready == 1 and app.control.published.pools["web"].ready == 1
        await wait_until(lambda: by_state(app).get(MemberState.READY) == 1, timeout=10)
        async with session.delete(admin) as resp:
            assert resp.status == 200
        assert manager.desired.ready == 3
        await wait_until(lambda: by_state(app).get(MemberState.READY) == 3, timeout=15)
    assert app.control.plan_of("web") is plan, "a planning step ran: the test proves nothing"


async def test_forecast_only_shows_the_same_plan_but_launches_nothing(start_app):
    now = [NOON + 30.0]
    app = await start_app("forecast-only", now)

    plan = app.control.plan_of("web")
    assert plan.forecast_ready == 3, "forecast-only still computes what the forecast wants"
    assert (plan.ready, plan.shadow) == (1, 0)
    await wait_until(lambda: by_state(app).get(MemberState.READY) == 1, timeout=10)
    await asyncio.sleep(1.0)   # several plan and reconcile passes
    assert by_state(app) == {MemberState.READY: 1}

    status = app.status()["pools"]["web"]
    assert status["mode"] == "forecast-only"
    assert status["desired"]["forecast_ready"] == 3 and status["desired"]["ready"] == 1
    reasons = [a["reason"] for a in status["recent_actions"] if a["action"] == "plan"]
    assert any("forecast-only: forecast wants 3 ready" in r for r in reasons)


async def test_an_opted_out_source_gets_no_predictive_capacity(start_app):
    from balancer.operator.controls import SourceUpdate
    now = [NOON - 600.0]
    app = await start_app("forecast-and-scale", now)
    await wait_until(lambda: (p := app.control.plan_of("web")) is not None and p.shadow == 2, timeout=10)
    app.operator.controls.update_source("acme", SourceUpdate(predictive=False))
    await wait_until(lambda: app.control.plan_of("web").shadow == 0, timeout=10)
    assert app.control.plan_of("web").predictive == 0
    app.operator.controls.update_source("acme", SourceUpdate(predictive=True))
    await wait_until(lambda: app.control.plan_of("web").shadow == 2, timeout=10)


async def test_a_declared_workload_profile_is_the_prior_of_a_young_source(start_app):
    from balancer.operator.controls import SourceUpdate, WorkloadProfile
    now = [NOON - 600.0]
    app = await start_app("forecast-and-scale", now)
    app.operator.controls.update_source("newco", SourceUpdate(profile=WorkloadProfile.model_validate(
        {"peak_rps": 20, "baseline_rps": 0.01, "schedule": [{"start": "12:00", "end": "14:00", "rps": 12}]})))
    # One request from the newcomer: a series with minutes of history, nothing a forecaster can use.
    await wait_until(lambda: (p := app.control.plan_of("web")) is not None and p.shadow == 2, timeout=10)
    app.history.add_minute(int(now[0] // 60 * 60), "newco", "api", 1, 0.25)
    now[0] += 60   # that minute closes: the loop reads it
    # acme's ramp (6 req/s) and newco's declared 12 req/s, at 0.25 s each, need 7 members: the shadow
    # pool grows to what max (4) leaves.
    await wait_until(lambda: app.control.plan_of("web").shadow == 3, timeout=10)
    assert any("needs 7" in r for r in app.control.plan_of("web").reasons), app.control.plan_of("web")


async def test_latency_sensitivity_moves_the_planning_quantile_and_an_abandon_breach_raises_it(start_app):
    from balancer.operator.controls import SourceUpdate
    now = [NOON - 600.0]
    app = await start_app("forecast-and-scale", now, noise=0.3)
    await wait_until(lambda: app.control.plan_of("web") is not None, timeout=10)

    def planned() -> float:
        return sum(d.rate_upper for d in app.control.pools["web"].demand)

    def latency_status() -> list:
        return app.control.pool_status("web")["latency"]

    normal = planned()
    assert normal > 0 and latency_status() == []
    controls = app.operator.controls
    controls.update_source("acme", SourceUpdate(latency_sensitivity="high"))
    await wait_until(lambda: planned() > normal * 1.01, timeout=10)
    [row] = latency_status()
    assert row == {"source": "acme", "declared": "high", "planned": "high", "p95_ms": row["p95_ms"],
                   "abandon_after_ms": None, "breach": False, "abort_slope": 0.0}
    assert isinstance(row["p95_ms"], float) and row["p95_ms"] >= 250
    controls.update_source("acme", SourceUpdate(latency_sensitivity="low"))
    await wait_until(lambda: planned() < normal * 0.99, timeout=10)
    # acme's requests take 0.25 s upstream; users who give up after 0.1 s get the high quantile
    controls.update_source("acme", SourceUpdate(latency_sensitivity="normal", abandon_after=0.1))
    await wait_until(lambda: planned() > normal * 1.01, timeout=10)
    [row] = latency_status()
    assert row["breach"] and row["planned"] == "high" and row["declared"] == "normal"
    assert row["p95_ms"] >= 250 and row["abandon_after_ms"] == 100.0
    # patient users (2 s) are planned as declared
    controls.update_source("acme", SourceUpdate(abandon_after=2.0))
    await wait_until(lambda: abs(planned() - normal) < 1e-9 * max(1.0, normal), timeout=10)
    assert latency_status() == []


@pytest.mark.parametrize("quantile, sensitivity, planned", [
    (0.9, "high", 0.95), (0.9, "normal", 0.9), (0.9, "low", 0.7), (0.5, "low", 0.5), (0.99, "high", 0.995)])
def test_planning_quantile_by_sensitivity(quantile, sensitivity, planned):
    from pools.step import planning_quantile
    assert planning_quantile(quantile, sensitivity) == pytest.approx(planned)


async def test_a_source_whose_clients_abort_as_latency_rises_is_learned_latency_sensitive(start_app):
    from balancer.operator.controls import SourceUpdate
    now = [NOON - 600.0]
    app = await start_app("forecast-and-scale", now, noise=0.3, abort_slope=0.2)
    await wait_until(lambda: app.control.plan_of("web") is not None, timeout=10)
    [row] = app.control.pool_status("web")["latency"]
    assert (row["source"], row["declared"], row["planned"], row["breach"]) == ("acme", "normal", "high", False)
    assert row["abort_slope"] == pytest.approx(0.2, abs=0.02)
    learned = sum(d.rate_upper for d in app.control.pools["web"].demand)
    # What the source declares outranks what was learned.
    app.operator.controls.update_source("acme", SourceUpdate(latency_sensitivity="low"))
    await wait_until(lambda: app.control.pool_status("web")["latency"][0]["planned"] == "low", timeout=10)
    assert sum(d.rate_upper for d in app.control.pools["web"].demand) < learned
