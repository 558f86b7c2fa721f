"""SwarmBackend against a real single-node swarm on the test engine, then a swarm pool through the real
App wiring (proxy + pool manager + backend). Traffic goes to 127.0.0.1 only: tasks use host networking
and the node advertises 127.0.0.1."""
from __future__ import annotations

import asyncio
import subprocess
import concurrent.futures
import time
import urllib.request

import aiohttp
import docker
import pytest

from balancer.wiring.app import App
from config.models import Config, Pool, Route, RoutingConfig
from pools.backends.base import BackendError, BackendEvent, InstanceStatus, member_generation
from pools.backends.swarm import SwarmBackend
from tests.dockerkit import IMAGE, SESSION, TEST_LABEL, docker_client, new_owner, require_engine  # noqa: F401 (fixtures)
from tests.pools_support import answers, wait_until
from tests.proxykit import ROOT, free_port
from tests.runkit import WARMFRONT
from tests.swarmkit import owned_services, remove_owned_services, require_swarm  # noqa: F401 (fixture)
from tests.test_docker_pools import DockerRelay, by_state, set_desired, until

swarm = pytest.mark.usefixtures("require_swarm")
COMMAND = "/usr/bin/python3.11 /app/app.py --port {port}"


def swarm_pool(**over) -> Pool:
    fields = dict(image=IMAGE, command=COMMAND, network="host")
    fields.update(over.pop("swarm", {}))
    spec = dict(backend="swarm", swarm=fields, concurrency=8, capacity={"min": 2, "max": 4},
                shadow={"state": "running", "size": 1}, drain_timeout=5.0, stop_timeout=3.0,
                health={"path": "/healthz", "interval": 0.3, "timeout": 1.0, "unhealthy_threshold": 2})
    spec.update(over)
    return Pool(**spec)


@pytest.fixture
async def backend(require_swarm):
    owner = new_owner()
    b = SwarmBackend(owner)
    try:
        yield b
    finally:
        await b.close()
        remove_owned_services(require_swarm, owner)


async def status_of(backend: SwarmBackend, instance_id: str) -> InstanceStatus | None:
    return {i.id: i.status for i in await backend.list()}.get(instance_id)


def task_container(client: docker.DockerClient, service: str):
    found = client.containers.list(filters={"label": f"com.docker.swarm.service.name={service}"})
    assert len(found) == 1, f"{service}: {len(found)} running task containers"
    return found[0]


async def next_event(sub, timeout: float) -> BackendEvent | None:
    try:
        return await asyncio.wait_for(anext(sub), timeout)
    except TimeoutError:
        return None


@swarm
async def test_launch_is_one_labelled_single_replica_service_answering_on_the_node_address(backend, require_swarm):
    spec = swarm_pool(swarm={"cpus": 0.5, "memory": 64 * 1024 * 1024, "env": {"A": "b"},
                             "constraints": ["node.role==manager"], "placement": ["spread=node.labels.zone"]})
    inst = await backend.launch("web", spec)
    svc = require_swarm.services.get(inst.id).attrs["Spec"]
    labels = svc["Labels"]
    assert (labels["warmfront.managed"], labels["warmfront.pool"], labels["warmfront.instance"]) == (
        "true", "web", backend.owner)
    assert labels["warmfront.generation"] == member_generation(spec) and labels["warmfront.port"] == str(inst.port)
    assert svc["Mode"] == {"Replicated": {"Replicas": 1}}
    template = svc["TaskTemplate"]
    assert template["RestartPolicy"]["Condition"] == "none", "restarts are warmfront's, not Swarm's"
    assert template["Resources"]["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 64 * 1024 * 1024}
    assert template["Placement"]["Constraints"] == ["node.role==manager"]
    assert template["Placement"]["Preferences"] == [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]
    assert {"A=b", f"PORT={inst.port}"} <= set(template["ContainerSpec"]["Env"])
    assert template["ContainerSpec"]["Command"][-1] == str(inst.port)
    assert (inst.host, inst.status) == ("127.0.0.1", InstanceStatus.RUNNING)
    await wait_until(lambda: answers(inst.host, inst.port), 20, step=0.05)
    assert task_container(require_swarm, inst.id).labels["warmfront.instance"] == backend.owner


@swarm
async def test_overlay_network_address_is_the_task_ip_on_it(backend, require_swarm):
    # Only the address is checked: tests send no traffic to overlay IPs.
    net = require_swarm.networks.create(f"wf-test-{SESSION}-ov", driver="overlay", labels={TEST_LABEL: SESSION})
    try:
        inst = await backend.launch("web", swarm_pool(swarm={"network": net.name}))
        service = {"label": f"com.docker.swarm.service.name={inst.id}"}
        await wait_until(lambda: require_swarm.containers.list(filters=service), 15, step=0.1)
        container = task_container(require_swarm, inst.id)
        ip = container.attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"]
        assert ip and (inst.host, inst.port) == (ip, int(container.labels["warmfront.port"]))
        assert [(i.host, i.port) for i in await backend.list()] == [(ip, inst.port)]
        await backend.remove(inst.id)
        remove_owned_services(require_swarm, backend.owner)
    finally:
        net.remove()


@swarm
async def test_foreign_services_are_invisible_and_refused(backend, require_swarm):
    foreign = require_swarm.services.create(IMAGE, ["/bin/sleep", "60"], name=f"wf-foreign-{SESSION}",
                                            labels={"warmfront.managed": "true", "warmfront.pool": "web",
                                                    "warmfront.instance": f"test-{SESSION}-other"})
    try:
        ours = await backend.launch("web", swarm_pool())
        assert [i.id for i in await backend.list()] == [ours.id]
        for op in (backend.start(foreign.name), backend.pause(foreign.name), backend.stop(foreign.name, 0),
                   backend.remove(foreign.name), backend.resize(foreign.name, 0.1)):
            with pytest.raises(BackendError, match="not a warmfront member"):
                await op
        assert require_swarm.services.get(foreign.id).attrs["Spec"]["Mode"]["Replicated"]["Replicas"] == 1
    finally:
        foreign.remove()


@swarm
async def test_paused_shadow_pool_pins_to_the_engine_node_pauses_and_resizes_the_task(backend, require_swarm):
    inst = await backend.launch("web", swarm_pool(swarm={"cpus": 0.5}, shadow={"state": "paused", "size": 1}))
    node = require_swarm.info()["Swarm"]["NodeID"]
    assert f"node.id=={node}" in require_swarm.services.get(inst.id).attrs["Spec"]["TaskTemplate"]["Placement"][
        "Constraints"]
    await wait_until(lambda: answers(inst.host, inst.port), 20, step=0.05)
    await backend.resize(inst.id, 0.05)
    assert task_container(require_swarm, inst.id).attrs["HostConfig"]["NanoCpus"] == 50_000_000
    await backend.resize(inst.id, None)
    assert task_container(require_swarm, inst.id).attrs["HostConfig"]["NanoCpus"] == 500_000_000
    await backend.pause(inst.id)
    assert await status_of(backend, inst.id) is InstanceStatus.PAUSED
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reply = pool.submit(lambda: urllib.request.urlopen(f"http://127.0.0.1:{inst.port}/healthz", timeout=10).status)
        await asyncio.sleep(0.5)
        assert not reply.done(), "a paused member answered"
        await backend.resume(inst.id)
        assert await asyncio.wrap_future(reply) == 200
    assert await status_of(backend, inst.id) is InstanceStatus.RUNNING


@swarm
async def test_stop_is_zero_replicas_not_a_death_and_start_returns_on_the_same_address(backend):
    events = backend.events()
    inst = await backend.launch("web", swarm_pool())
    await wait_until(lambda: answers(inst.host, inst.port), 20, step=0.05)
    await backend.stop(inst.id, 3.0)
    assert await status_of(backend, inst.id) is InstanceStatus.STOPPED
    assert not answers(inst.host, inst.port)
    await backend.start(inst.id)
    assert backend.address(inst.id) == (inst.host, inst.port)
    await wait_until(lambda: answers(inst.host, inst.port), 20, step=0.05)
    assert await status_of(backend, inst.id) is InstanceStatus.RUNNING
    assert await next_event(events, 0.5) is None, "our own stop was reported as a death"


@swarm
async def test_killed_task_container_is_a_died_event_under_the_service_name_and_exited(backend, require_swarm):
    events = backend.events()
    inst = await backend.launch("web", swarm_pool())
    await wait_until(lambda: answers(inst.host, inst.port), 20, step=0.05)
    task_container(require_swarm, inst.id).kill()
    assert await next_event(events, 3.0) == BackendEvent("died", inst.id, "web", 137)
    end = time.monotonic() + 5   # Swarm records the task's end a moment after the container's
    while await status_of(backend, inst.id) is not InstanceStatus.EXITED:
        assert time.monotonic() < end, "the ended task's service is not reported as exited"
        await asyncio.sleep(0.1)


@swarm
async def test_unplaceable_launch_fails_with_the_schedulers_reason_and_leaves_no_service(backend, require_swarm):
    with pytest.raises(BackendError, match="no suitable node"):
        await backend.launch("web", swarm_pool(swarm={"constraints": ["node.labels.warmfront-none==x"]}))
    assert await backend.list() == [] and owned_services(require_swarm, backend.owner) == []


async def test_unreachable_manager_fails_fast_with_backend_error():
    b = SwarmBackend(new_owner(), base_url="unix:///tmp/nonexistent.sock", request_timeout=2.0)
    started = time.monotonic()
    try:
        with pytest.raises(BackendError, match="docker list services"):
            await b.list()
        with pytest.raises(BackendError, match="docker launch"):
            await b.launch("web", swarm_pool())
        assert time.monotonic() - started < 2.0
    finally:
        await b.close()


# ---------------------------------------------------------------- a swarm pool in the real App
def config(pool: Pool) -> Config:
    routing = RoutingConfig(routes=[Route(name="all", pool="web", type="page")], timeouts={"queue": 10})
    return Config(routing=routing, pools={"web": pool})


async def start_app(cfg: Config, state_dir) -> App:
    ident = state_dir / "instance-id"
    if not ident.exists():
        ident.write_text(new_owner())   # a test owner: the session's cleanup removes what is left
    app = App(cfg, listen=("127.0.0.1", free_port()), admin=("127.0.0.1", free_port()), state_dir=str(state_dir))
    await app.start()
    return app


@swarm
async def test_swarm_pool_scales_under_load_replaces_a_killed_task_and_a_restart_adopts_its_services(
        tmp_path, require_swarm):
    relay = await DockerRelay(tmp_path / "docker.sock").start()
    pool = swarm_pool(swarm={"env": {"WORK_MS": "5"}, "host": f"unix://{relay.path}"})
    app = await start_app(config(pool), tmp_path)
    owner = app.instance_id
    try:
        await until(lambda: len(by_state(app).get("ready", [])) == 2 and by_state(app).get("shadow:running"), 60)
        url = f"http://127.0.0.1:{app.listen[1]}/"
        codes: list[int] = []
        done = asyncio.Event()

        async def client(s):
            while not done.is_set():
                async with s.get(url) as r:
                    await r.read()
                    codes.append(r.status)

        async def scale():
            try:
                for ready in (4, 2):
                    set_desired(app, ready=ready)
                    await until(lambda n=ready: len(by_state(app).get("ready", [])) == n
                                and not by_state(app).get("draining"), 30)
                    await asyncio.sleep(0.5)
            finally:
                done.set()

        async with aiohttp.ClientSession() as s:
            await asyncio.gather(scale(), *(client(s) for _ in range(4)))
        assert len(codes) > 200 and codes.count(200) == len(codes), \
            f"{len(codes) - codes.count(200)} of {len(codes)} failed"
        await until(lambda: len(owned_services(require_swarm, owner)) == 3, 15)   # the drained ones removed

        victim = by_state(app)["ready"][0].id
        task_container(require_swarm, victim).kill()
        await until(lambda: victim not in {m.id for m in app.members["web"]}
                    and len(by_state(app).get("ready", [])) == 2, 20, step=0.05)
        assert victim not in {s.name for s in owned_services(require_swarm, owner)}, "the dead member's service stayed"

        relay.cut()   # the manager is unreachable: the proxy keeps serving the tasks it has
        async with aiohttp.ClientSession() as s:
            for _ in range(50):
                async with s.get(url) as r:
                    assert r.status == 200
                await asyncio.sleep(0.02)
        assert len(by_state(app).get("ready", [])) == 2, "members were dropped while the manager was away"
        await relay.restore()
        # Back: the manager's back-off (up to 10 s) ends and the shadow is relaunched. Generous, as
        # after the rest of the suite the engine answers more slowly than on its own.
        try:
            await until(lambda: len(owned_services(require_swarm, owner)) == 3
                        and len(by_state(app).get("ready", [])) == 2 and by_state(app).get("shadow:running"), 90)
        except AssertionError:
            raise AssertionError(f"after the manager came back: {len(owned_services(require_swarm, owner))} services, "
                                 f"members {({k: len(v) for k, v in by_state(app).items()})}") from None
        before = sorted(s.id for s in owned_services(require_swarm, owner))
    finally:
        await app.stop()

    app2 = await start_app(config(pool), tmp_path)
    try:
        assert app2.instance_id == owner
        await until(lambda: len(by_state(app2).get("ready", [])) == 2 and by_state(app2).get("shadow:running"), 30)
        await asyncio.sleep(2)   # give a wrong reconciler time to launch or remove something
        assert sorted(s.id for s in owned_services(require_swarm, owner)) == before, "the restart did not adopt"
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{app2.listen[1]}/") as r:
            assert r.status == 200
    finally:
        await app2.stop()
        relay.cut()
        remove_owned_services(require_swarm, owner)


# ---------------------------------------------------------------- warmfront check (no engine needed)
SWARM_POOLS = """pools:
  web:
    backend: swarm
    swarm:
      image: myapp:1.4
      command: app --port {port}
      network: host
      cpus: 500m
      memory: 256m
      host: tcp://manager:2376
      constraints: ["node.labels.tier==web"]
%s    shadow:
      state: %s
      size: 1
"""


def check(tmp_path, pools: str) -> subprocess.CompletedProcess:
    (tmp_path / "routing.yaml").write_text("routes:\n  - name: all\n    pool: web\n")
    (tmp_path / "pools.yaml").write_text(pools)
    return subprocess.run([*WARMFRONT, "check", "--config", str(tmp_path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_check_accepts_a_swarm_pool_with_placement_and_running_shadows(tmp_path):
    r = check(tmp_path, SWARM_POOLS % ("      placement: [spread=node.labels.zone]\n", "running"))
    assert r.returncode == 0, r.stderr
    assert "ok (1 routes, 1 pools)" in r.stdout


def test_check_accepts_paused_shadows_on_a_remote_manager(tmp_path):
    r = check(tmp_path, SWARM_POOLS % ("", "paused"))
    assert r.returncode == 0, r.stderr


def test_check_says_why_paused_shadows_cannot_be_spread(tmp_path):
    r = check(tmp_path, SWARM_POOLS % ("      placement: [spread=node.labels.zone]\n", "paused"))
    assert r.returncode == 2
    assert "pools.web.swarm.placement: cannot be used with shadow.state paused: a task is paused and resized " \
           "through the engine at swarm.host" in r.stderr


def test_check_refuses_paused_shadows_on_worker_nodes_and_a_bad_placement(tmp_path):
    r = check(tmp_path, SWARM_POOLS.replace("node.labels.tier==web", "node.role == worker") % ("", "paused"))
    assert r.returncode == 2 and "pools.web.swarm.constraints: 'node.role == worker' cannot be used" in r.stderr
    r = check(tmp_path, SWARM_POOLS % ("      placement: [node.labels.zone]\n", "running"))
    assert r.returncode == 2 and "pools.web.swarm.placement[0]" in r.stderr
