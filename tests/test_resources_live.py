"""Resource profiles end to end: real members burning known CPU per request type behind the real App.

The test app's `/burn?ms=N` burns N ms of CPU per request; two request types (routed by a header)
burn different amounts, at rates that change independently every few seconds so the regression
can tell them and the idle baseline apart. After a minute and a half of traffic the per-type estimates in /admin/status are within 20 % of what
each type burns, on the process and the docker backends; an oversized `cpus` gets a lower
recommendation, `rightsize: apply` launches the next member with it, and an OOM kill raises the
memory recommendation above the limit that was hit.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from balancer.wiring.app import App
from config.models import Config, Pool, ResourcesConfig, Route, RouteMatch, RoutingConfig
from tests.dockerkit import IMAGE, docker_client, new_owner, require_engine  # noqa: F401 (fixtures)
from tests.proxykit import free_port

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "images" / "testapp" / "app.py"
PAGE_MS, API_MS = 20, 60
PHASE_S = 7.0


def config(pool: Pool, rightsize_window: float = 86400.0) -> Config:
    routing = RoutingConfig(
        routes=[Route(name="api", pool="web", type="api", match=RouteMatch(headers={"X-Kind": "api"})),
                Route(name="page", pool="web", type="page")],
        timeouts={"queue": 10},
        resources=ResourcesConfig(interval=2.0, window=600.0, recommend_window=rightsize_window))
    return Config(routing=routing, pools={"web": pool})


@asynccontextmanager
async def running_app(cfg: Config, tmp_path: Path):
    ident = tmp_path / "instance-id"
    if not ident.exists():
        ident.write_text(new_owner())   # a test owner: the session's cleanup removes what is left
    app = App(cfg, listen=("127.0.0.1", free_port()), admin=("127.0.0.1", free_port()), state_dir=str(tmp_path),
              workers=1)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def until(fn, seconds: float, step: float = 0.25):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {seconds}s")


def ready(app: App) -> int:
    return sum(1 for m in app.members.get("web", []) if m.state.value == "ready")


# (page/s, api/s) per phase: the two rates move independently, and so does the total CPU (0.08 to
# 0.42 cores), so neither type's counts are proportional to the other's or to member-seconds (the
# idle baseline's column) — with a constant total the baseline could absorb any share of the work.
PHASES = ((16.0, 1.5), (3.0, 6.0), (4.0, 0.5), (8.0, 4.0), (1.0, 1.0), (12.0, 0.0), (0.0, 3.0), (6.0, 2.0))


async def mixed_traffic(app: App, seconds: float) -> dict[str, int]:
    """Phases of PHASE_S seconds cycling through PHASES, sent in quarter-second batches."""
    url = f"http://127.0.0.1:{app.listen[1]}"
    sent = {"page": 0, "api": 0}
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        async def one(kind: str) -> None:
            headers = {"X-Kind": "api"} if kind == "api" else {}
            ms = API_MS if kind == "api" else PAGE_MS
            async with session.get(f"{url}/burn?ms={ms}", headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            sent[kind] += 1

        owed = {"page": 0.0, "api": 0.0}
        phase = 0
        while time.monotonic() < end:
            rates = dict(zip(("page", "api"), PHASES[phase % len(PHASES)]))
            phase_end = min(end, time.monotonic() + PHASE_S)
            while time.monotonic() < phase_end:
                tick = time.monotonic()
                batch = []
                for kind, rate in rates.items():
                    owed[kind] += rate / 4
                    while owed[kind] >= 1:
                        owed[kind] -= 1
                        batch.append(one(kind))
                await asyncio.gather(*batch)
                await asyncio.sleep(max(0.0, 0.25 - (time.monotonic() - tick)))
            phase += 1
    return sent


def resources(app: App) -> dict:
    return app.status()["pools"]["web"]["resources"]


def assert_costs_near_truth(res: dict) -> None:
    costs = res["costs"]
    assert costs is not None, res
    assert costs["separable"], costs.get("note")
    got = dict(zip(costs["types"], costs["cpu_per_request"]))
    print("estimated CPU per request:", {t: round(c * 1000, 2) for t, c in got.items()}, "ms; stderr",
          [round(e * 1000, 2) for e in costs["cpu_stderr"]], "ms; baseline", costs.get("cpu_baseline_cores"), "cores")
    for rtype, ms in (("page", PAGE_MS), ("api", API_MS)):
        assert abs(got[rtype] - ms / 1000) <= 0.2 * ms / 1000, (rtype, got, costs)


async def test_per_type_cpu_costs_of_process_members_are_within_20_percent(tmp_path):
    pool = Pool(backend="process", command=f"{sys.executable} {APP} --port {{port}}", concurrency=16,
                capacity={"min": 2, "max": 2}, health={"path": "/healthz", "interval": 0.5})
    async with running_app(config(pool), tmp_path) as app:
        await until(lambda: ready(app) == 2, 30)
        await mixed_traffic(app, 60)
        await asyncio.sleep(3)   # the last interval measured and refitted
        res = resources(app)
        assert res["measured"]["members"] == 2 and res["measured"]["samples"] >= 20, res["measured"]
        assert_costs_near_truth(res)
        assert all(m["memory_bytes"] > 5e6 for m in res["members"])
        # forecast resource demand per horizon, with a band, once the control loop has demand
        for f in res["forecast"]:
            assert f["cores"]["lower"] <= f["cores"]["point"] <= f["cores"]["upper"]
    # the per-minute usage rows are in the history store, beside the request counters
    from balancer.control.history_store import SqliteStore
    store = SqliteStore(tmp_path / "history.sqlite3")
    try:
        rows = store.usage("web", 0, time.time() + 60)
    finally:
        store.close()
    used = sum(r[0] for r in rows.values())
    assert rows and used > 10, rows   # ≈ 0.4 cores for a minute


def docker_pool(**over) -> Pool:
    spec = dict(backend="docker",
                docker={"image": IMAGE, "command": "/usr/bin/python3.11 /app/app.py --port {port}",
                        "network": "host", "cpus": 1.0, "memory": "256m", "on_exit": "remove"},
                concurrency=16, capacity={"min": 2, "max": 3}, drain_timeout=3.0, stop_timeout=2.0,
                health={"path": "/healthz", "interval": 0.5, "timeout": 1.0, "unhealthy_threshold": 2})
    spec.update(over)
    return Pool(**spec)


@pytest.mark.usefixtures("require_engine")
async def test_docker_members_costs_and_an_oversized_limit_is_recommended_down_and_applied(tmp_path, docker_client):
    pool = docker_pool(scaling={"rightsize": "apply"})
    async with running_app(config(pool), tmp_path) as app:
        await until(lambda: ready(app) == 2, 60)
        await mixed_traffic(app, 60)
        await asyncio.sleep(3)
        res = resources(app)
        assert_costs_near_truth(res)
        assert all(m["cpu_limit"] == pytest.approx(1.0) for m in res["members"]), res["members"]
        rec = res["recommendation"]
        assert rec is not None and rec["cpus"] < 1.0, rec   # ≈ 0.2 cores a member, plus the margin
        assert res["applied"] == {"cpus": rec["cpus"], "memory_bytes": rec["memory_bytes"]}
        # the next member is launched with the recommendation
        manager = app.managers["web"]
        before = {m.id for m in app.members["web"]}
        victim = next(m for m in app.members["web"] if m.state.value == "ready")
        docker_client.containers.get(victim.id).kill()

        def relaunched():
            ids = {m.id for m in app.members["web"] if m.state.value == "ready"} - before
            return ids or None
        fresh = await until(relaunched, 60)
        assert manager.limits is not None and manager.limits.cpus is not None
        for new in fresh:
            assert docker_client.containers.get(new).attrs["HostConfig"]["NanoCpus"] == round(manager.limits.cpus * 1e9)
        metrics = app_metrics(app)
        assert 'warmfront_pool_recommended_cpus{pool="web"}' in metrics
        assert "warmfront_member_cpu_seconds_total{" in metrics and "warmfront_member_memory_bytes{" in metrics


def app_metrics(app: App) -> str:
    from prometheus_client import generate_latest
    from balancer.operator.metrics import make_registry
    registry = make_registry(lambda: app.workers.stats, lambda: app.members, app._control_status,
                             lambda: app.workers.restarts, app._process_view)
    return generate_latest(registry).decode()


@pytest.mark.usefixtures("require_engine")
async def test_an_oom_killed_member_raises_the_memory_recommendation_above_its_limit(tmp_path, docker_client):
    pool = docker_pool(docker={"image": IMAGE, "command": "/usr/bin/python3.11 /app/app.py --port {port}",
                               "network": "host", "cpus": 0.5, "memory": "96m", "on_exit": "remove"},
                       capacity={"min": 1, "max": 2}, scaling={"rightsize": "apply"})
    async with running_app(config(pool), tmp_path) as app:
        await until(lambda: ready(app) == 1, 60)
        member = next(m for m in app.members["web"] if m.state.value == "ready")
        await asyncio.sleep(5)   # a few samples of the member before it dies
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://{member.host}:{member.port}/alloc?mb=300",
                                       timeout=aiohttp.ClientTimeout(total=20)) as resp:
                    await resp.read()
        watch = app.resources
        assert watch is not None
        rec = await until(lambda: (r := resources(app)["recommendation"]) and r["memory_bytes"] > 96 * 2**20 and r, 30)
        assert any("oom" in why for why in rec["reasons"]), rec
        assert resources(app)["measured"]["oom_kills"] >= 1
        # the replacement runs with the raised limit
        def replaced():
            new = [m for m in app.members["web"] if m.id != member.id and m.state.value == "ready"]
            return new[0] if new else None
        fresh = await until(replaced, 60)
        limit = docker_client.containers.get(fresh.id).attrs["HostConfig"]["Memory"]
        assert limit > 96 * 2**20, json.dumps(rec)
