"""Docker pools end to end, in-process: the real App wiring (proxy + pool manager + Docker backend)
against the real engine, with traffic on 127.0.0.1 only (containers use host networking)."""
import asyncio
import os
import time
from contextlib import asynccontextmanager

import aiohttp
import docker
import pytest

from balancer.wiring.app import App
from config.models import Config, DockerSpec, Pool, Route, RoutingConfig
from pools.reconciler import Desired
from tests.dockerkit import IMAGE, docker_client, new_owner, require_engine  # noqa: F401 (fixtures)
from tests.proxykit import free_port

pytestmark = pytest.mark.usefixtures("require_engine")


def web_pool(**over) -> Pool:
    spec = dict(backend="docker",
                docker=DockerSpec(image=IMAGE, command="/usr/bin/python3.11 /app/app.py --port {port}",
                                  network="host", cpus=0.5, memory=128 * 1024 * 1024, on_exit="remove"),
                concurrency=8, capacity={"min": 2, "max": 6}, shadow={"state": "paused", "size": 1},
                warmup={"path": "/", "requests": 3}, drain_timeout=5.0, stop_timeout=3.0,
                health={"path": "/healthz", "interval": 0.3, "timeout": 1.0, "unhealthy_threshold": 2})
    spec.update(over)
    return Pool(**spec)


def config(pool: Pool) -> Config:
    routing = RoutingConfig(routes=[Route(name="all", pool="web", type="page")], timeouts={"queue": 10})
    return Config(routing=routing, pools={"web": pool})


@asynccontextmanager
async def running_app(cfg: Config, tmp_path):
    ident = tmp_path / "instance-id"
    if not ident.exists():
        ident.write_text(new_owner())   # a test owner: the session's cleanup removes what is left
    app = App(cfg, listen=("127.0.0.1", free_port()), admin=("127.0.0.1", free_port()), state_dir=str(tmp_path))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


def by_state(app: App, pool: str = "web") -> dict[str, list]:
    out: dict[str, list] = {}
    for m in app.members.get(pool, []):
        key = m.state.value if m.state.value != "shadow" else f"shadow:{m.shadow_state}"
        out.setdefault(key, []).append(m)
    return out


async def until(fn, seconds: float, step: float = 0.1):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {seconds}s")


def container_status(client: docker.DockerClient, cid: str) -> str:
    return client.containers.get(cid).status


def our_containers(client: docker.DockerClient, owner: str) -> list:
    return client.containers.list(all=True, filters={"label": [f"warmfront.instance={owner}"]})


def set_desired(app: App, ready: int, shadow: int | None = None) -> None:
    """The test is the planner: every state the control loop publishes holds this for the pool."""
    spec = app.managers["web"].spec
    pinned = Desired(ready, spec.shadow.size if shadow is None else shadow, spec.shadow.state, spec.capacity.max,
                     spec.drain_timeout)
    app.control.bound = lambda pool, desired: pinned if pool == "web" else desired
    app.control.publish()


@pytest.mark.parametrize("shadow_state,docker_status", [("running", "running"), ("paused", "paused"),
                                                          ("stopped", "exited")])
async def test_shadow_member_is_parked_and_activated_without_creating_anything(
        tmp_path, docker_client, shadow_state, docker_status):
    cfg = config(web_pool(capacity={"min": 1, "max": 3}, shadow={"state": shadow_state, "size": 1}))
    async with running_app(cfg, tmp_path) as app:
        await until(lambda: len(by_state(app).get("ready", [])) == 1
                    and len(by_state(app).get(f"shadow:{shadow_state}", [])) == 1, 60)
        shadow = by_state(app)[f"shadow:{shadow_state}"][0]
        await until(lambda: container_status(docker_client, shadow.id) == docker_status, 15)
        c = docker_client.containers.get(shadow.id)
        assert c.labels["warmfront.managed"] == "true" and c.labels["warmfront.pool"] == "web"
        assert c.labels["warmfront.instance"] == app.instance_id
        assert shadow.id not in [t.id for t in app.table.pools["web"].targets], "a shadow member was routed"

        set_desired(app, ready=2, shadow=0)
        await until(lambda: shadow.id in [m.id for m in by_state(app).get("ready", [])], 30)
        assert container_status(docker_client, shadow.id) == "running"
        assert len(our_containers(docker_client, app.instance_id)) == 2, "activation created a container"
        # Lead times are measured, not assumed: the planner uses them for the shadow and launch leads.
        leads = app.status()["pools"]["web"]["lead_times_s"]
        assert 0 < leads["cold"] < 30 and 0 <= leads[shadow_state] < 30, leads
        if shadow_state != "stopped":
            assert leads[shadow_state] < leads["cold"], leads
        async with aiohttp.ClientSession() as s:
            ports = set()
            for _ in range(20):
                async with s.get(f"http://127.0.0.1:{app.listen[1]}/") as r:
                    assert r.status == 200
                    ports.add(r.headers["X-Backend-Port"])
        assert str(shadow.port) in ports


async def test_shadow_members_are_shrunk_in_place_and_restored_at_activation(tmp_path, docker_client):
    cfg = config(web_pool(capacity={"min": 1, "max": 3}, shadow={"state": "paused", "size": 1, "cpus": 0.05}))
    async with running_app(cfg, tmp_path) as app:
        await until(lambda: len(by_state(app).get("shadow:paused", [])) == 1, 60)
        shadow = by_state(app)["shadow:paused"][0]
        assert docker_client.containers.get(shadow.id).attrs["HostConfig"]["NanoCpus"] == 50_000_000
        set_desired(app, ready=2, shadow=0)
        await until(lambda: shadow.id in [m.id for m in by_state(app).get("ready", [])], 30)
        assert docker_client.containers.get(shadow.id).attrs["HostConfig"]["NanoCpus"] == 500_000_000


async def test_warmed_members_served_warmup_requests_and_skip_slow_start(tmp_path):
    async with running_app(config(web_pool()), tmp_path) as app:
        await until(lambda: len(by_state(app).get("shadow:paused", [])) == 1, 60)
        set_desired(app, ready=3, shadow=0)
        await until(lambda: len(by_state(app).get("ready", [])) == 3, 30)
        activated = [m for m in by_state(app)["ready"] if m.prewarmed]
        assert activated, "no ready member was pre-warmed"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{activated[0].port}/hits") as r:
                assert int(await r.text()) >= 3


async def test_killed_member_is_replaced_within_two_seconds(tmp_path, docker_client):
    async with running_app(config(web_pool(shadow={"state": "paused", "size": 1})), tmp_path) as app:
        await until(lambda: len(by_state(app).get("ready", [])) == 2 and by_state(app).get("shadow:paused"), 60)
        victim = by_state(app)["ready"][0]
        docker_client.containers.get(victim.id).kill()
        t0 = time.monotonic()
        await until(lambda: victim.id not in [m.id for m in by_state(app).get("ready", [])], 5, step=0.02)
        assert time.monotonic() - t0 < 1.0, "the die event did not eject the member promptly"
        await until(lambda: len(by_state(app).get("ready", [])) == 2, 5, step=0.05)
        assert time.monotonic() - t0 < 2.5


async def test_restart_adopts_the_same_containers(tmp_path, docker_client):
    pool = web_pool(docker=web_pool().docker.model_copy(update={"on_exit": "keep"}))
    async with running_app(config(pool), tmp_path) as app:
        await until(lambda: len(by_state(app).get("ready", [])) == 2 and by_state(app).get("shadow:paused"), 60)
        owner = app.instance_id
        before = sorted(c.id for c in our_containers(docker_client, owner))
    assert len(before) == 3, "on_exit: keep removed members"
    try:
        async with running_app(config(pool), tmp_path) as app2:
            assert app2.instance_id == owner
            await until(lambda: len(by_state(app2).get("ready", [])) == 2, 30)
            await asyncio.sleep(2)   # give a wrong reconciler time to launch or remove something
            after = sorted(c.id for c in our_containers(docker_client, owner))
            assert after == before
            assert {m.id for m in app2.members["web"]} == {c.name for c in our_containers(docker_client, owner)}
            states = by_state(app2)
            assert len(states.get("shadow:paused", [])) == 1, "roles were shuffled: the paused shadow was woken"
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{app2.listen[1]}/") as r:
                assert r.status == 200
    finally:
        for c in our_containers(docker_client, owner):
            c.remove(force=True)


async def test_proxy_keeps_serving_while_the_daemon_is_unreachable(tmp_path, docker_client):
    relay = await DockerRelay(tmp_path / "docker.sock").start()
    pool = web_pool(docker=web_pool().docker.model_copy(update={"host": f"unix://{relay.path}"}))
    try:
        async with running_app(config(pool), tmp_path) as app:
            await until(lambda: len(by_state(app).get("ready", [])) == 2, 60)
            relay.cut()
            url = f"http://127.0.0.1:{app.listen[1]}/"
            async with aiohttp.ClientSession() as s:
                codes = []
                end = time.monotonic() + 4
                while time.monotonic() < end:
                    async with s.get(url) as r:
                        codes.append(r.status)
                    await asyncio.sleep(0.02)
                assert codes and all(c == 200 for c in codes), codes[-5:]
                assert len(by_state(app).get("ready", [])) == 2, "members were dropped while the daemon was away"
                await relay.restore()
                set_desired(app, ready=3)
                await until(lambda: len(by_state(app).get("ready", [])) == 3, 30)
    finally:
        relay.cut()


async def test_scaling_down_and_up_under_load_loses_no_request(tmp_path):
    pool = web_pool(shadow={"state": "paused", "size": 1}, drain_timeout=5.0,
                    docker=web_pool().docker.model_copy(update={"env": {"WORK_MS": "20"}}))
    async with running_app(config(pool), tmp_path) as app:
        await until(lambda: len(by_state(app).get("ready", [])) == 2 and by_state(app).get("shadow:paused"), 60)
        url = f"http://127.0.0.1:{app.listen[1]}/"
        codes: list[int] = []
        stop = time.monotonic() + 12

        async def client(s):
            while time.monotonic() < stop:
                async with s.get(url) as r:
                    await r.read()
                    codes.append(r.status)

        seen_ready: set[str] = set()
        most_ready = 0

        async def flip():
            nonlocal most_ready
            for ready in (4, 2, 3, 1, 3, 2):
                set_desired(app, ready=ready)
                for _ in range(18):
                    await asyncio.sleep(0.1)
                    now_ready = {m.id for m in by_state(app).get("ready", [])}
                    seen_ready.update(now_ready)
                    most_ready = max(most_ready, len(now_ready))

        async with aiohttp.ClientSession() as s:
            await asyncio.gather(flip(), *(client(s) for _ in range(6)))
        still_there = {m.id for m in app.members["web"]}
        assert len(codes) > 300
        assert codes.count(200) == len(codes), f"{len(codes) - codes.count(200)} of {len(codes)} failed"
        assert most_ready == 4, "the pool never scaled up to 4"
        assert seen_ready - still_there, "no member was drained and retired: the test proved nothing"


class DockerRelay:
    """A unix socket that forwards to the Docker daemon's, which a test can cut and restore."""

    def __init__(self, path):
        self.path = str(path)
        self.server = None
        self.conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> "DockerRelay":
        self.server = await asyncio.start_unix_server(self._handle, self.path)
        return self

    async def restore(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
        await self.start()

    def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in list(self.conns):
            w.transport.abort()
        self.conns.clear()

    async def _handle(self, reader, writer):
        try:
            ur, uw = await asyncio.open_unix_connection("/var/run/docker.sock")
        except OSError:
            writer.close()
            return
        self.conns |= {writer, uw}

        async def pipe(r, w):
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                w.close()
        await asyncio.gather(pipe(reader, uw), pipe(ur, writer))


async def test_restart_with_a_changed_spec_replaces_the_old_generation(tmp_path, docker_client):
    pool = web_pool(shadow={"state": "none", "size": 0}, docker=web_pool().docker.model_copy(update={"on_exit": "keep"}))
    async with running_app(config(pool), tmp_path) as app:
        await until(lambda: len(by_state(app).get("ready", [])) == 2, 60)
        owner = app.instance_id
        old = {c.name for c in our_containers(docker_client, owner)}
    changed = pool.model_copy(update={"docker": pool.docker.model_copy(update={"env": {"WORK_MS": "1"}})})
    try:
        async with running_app(config(changed), tmp_path) as app2:
            await until(lambda: len(by_state(app2).get("ready", [])) == 2
                        and not old & {c.name for c in our_containers(docker_client, owner)}, 30)
            ready = {m.id for m in by_state(app2)["ready"]}
            assert not ready & old, "a member of the old spec is still routed"
    finally:
        for c in our_containers(docker_client, owner):
            c.remove(force=True)
