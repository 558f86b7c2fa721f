"""DockerBackend against the real engine. Traffic goes to 127.0.0.1 only: members use host networking
or publish on a loopback port."""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import urllib.request

import docker
import pytest

from config.models import Pool
from pools.backends.base import BackendError, BackendEvent, InstanceStatus, member_generation
from pools.backends.docker import DockerBackend
from tests.dockerkit import (SESSION, app_image, create_test_network, docker_client, new_owner,  # noqa: F401
                            remove_owned, require_engine)
from tests.pools_support import answers, wait_until

engine = pytest.mark.usefixtures("require_engine")


def docker_pool(image: str, **docker_fields) -> Pool:
    return Pool(backend="docker", docker={"image": image, "network": "host", **docker_fields})


@pytest.fixture
async def backend(docker_client):
    owner = new_owner()
    b = DockerBackend(owner)
    try:
        yield b
    finally:
        await b.close()
        remove_owned(docker_client, owner)


async def wait_answers(host: str, port: int, timeout: float = 15.0) -> None:
    await wait_until(lambda: answers(host, port), timeout, step=0.05)


async def next_event(sub, timeout: float) -> BackendEvent | None:
    try:
        return await asyncio.wait_for(anext(sub), timeout)
    except TimeoutError:
        return None


async def status_of(backend: DockerBackend, instance_id: str) -> InstanceStatus | None:
    return {i.id: i.status for i in await backend.list()}.get(instance_id)


@engine
async def test_launch_labels_the_container_and_host_mode_answers_on_loopback(backend, docker_client, app_image):
    spec = docker_pool(app_image, cpus=0.5, memory=64 * 1024 * 1024, env={"A": "b"})
    inst = await backend.launch("web", spec)
    c = docker_client.containers.get(inst.id)
    assert c.name.startswith("wf-web-")
    assert c.labels["warmfront.managed"] == "true"
    assert c.labels["warmfront.pool"] == "web"
    assert c.labels["warmfront.instance"] == backend.owner
    assert c.labels["warmfront.port"] == str(inst.port)
    assert c.labels["warmfront.generation"] == member_generation(spec)
    host_config = c.attrs["HostConfig"]
    assert host_config["NetworkMode"] == "host" and host_config["Init"] is True
    assert host_config["NanoCpus"] == 500_000_000 and host_config["Memory"] == 64 * 1024 * 1024
    assert {"A=b", f"PORT={inst.port}"} <= set(c.attrs["Config"]["Env"])
    assert (inst.host, inst.status) == ("127.0.0.1", InstanceStatus.RUNNING)
    assert backend.address(inst.id) == ("127.0.0.1", inst.port)
    await wait_answers(inst.host, inst.port)


@pytest.fixture(scope="module")
def bridge_network(docker_client) -> str:
    try:
        return create_test_network(docker_client)  # removed with the session
    except docker.errors.APIError as e:
        pytest.skip(f"cannot create a bridge network: {e}")


@pytest.fixture
async def bridged_backend(docker_client, bridge_network):
    owner = new_owner()
    b = DockerBackend(owner, publish_network=bridge_network)
    try:
        yield b
    finally:
        await b.close()
        remove_owned(docker_client, owner)


@engine
async def test_publish_mode_answers_on_a_published_loopback_port(bridged_backend, docker_client, app_image):
    # HOST=0.0.0.0: inside its own network namespace the app must accept the daemon's port proxy.
    inst = await bridged_backend.launch("web", docker_pool(app_image, network="publish", container_port=8080,
                                                           env={"HOST": "0.0.0.0"}))
    attrs = docker_client.containers.get(inst.id).attrs
    assert attrs["HostConfig"]["PortBindings"]["8080/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(inst.port)}]
    assert "PORT=8080" in attrs["Config"]["Env"]
    assert inst.host == "127.0.0.1" and inst.port != 8080
    await wait_answers(inst.host, inst.port)


@engine
async def test_user_network_address_is_the_container_ip_and_app_port(bridged_backend, docker_client, bridge_network,
                                                                     app_image):
    # Only the address is checked: tests send no traffic to container IPs.
    inst = await bridged_backend.launch("web", docker_pool(app_image, network=bridge_network, container_port=8080))
    ip = docker_client.containers.get(inst.id).attrs["NetworkSettings"]["Networks"][bridge_network]["IPAddress"]
    assert ip and (inst.host, inst.port) == (ip, 8080)
    assert [(i.host, i.port) for i in await bridged_backend.list()] == [(ip, 8080)]


@engine
async def test_foreign_containers_are_invisible_and_refused(backend, docker_client, app_image):
    # Differs from ours only in the owner: the most tempting container to touch by mistake.
    foreign = docker_client.containers.run(
        app_image, ["/bin/sleep", "60"], detach=True, init=True, network_mode="none",
        labels={"warmfront.managed": "true", "warmfront.pool": "web", "warmfront.instance": f"test-{SESSION}-other"})
    try:
        ours = await backend.launch("web", docker_pool(app_image))
        assert [i.id for i in await backend.list()] == [ours.id]
        for target in (foreign.name, foreign.id):
            for op in (backend.start(target), backend.pause(target), backend.resume(target),
                       backend.resize(target, 0.1), backend.stop(target, 0), backend.remove(target)):
                with pytest.raises(BackendError, match="not a warmfront member"):
                    await op
        foreign.reload()
        assert foreign.status == "running"
        assert foreign.attrs["HostConfig"]["NanoCpus"] == 0
    finally:
        foreign.remove(force=True)


@engine
async def test_request_sent_while_paused_is_answered_after_resume(backend, app_image):
    inst = await backend.launch("web", docker_pool(app_image))
    await wait_answers(inst.host, inst.port)
    await backend.pause(inst.id)
    assert await status_of(backend, inst.id) is InstanceStatus.PAUSED
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        reply = pool.submit(lambda: urllib.request.urlopen(f"http://127.0.0.1:{inst.port}/healthz", timeout=10).status)
        await asyncio.sleep(0.5)
        assert not reply.done(), "a paused member answered"
        await backend.resume(inst.id)
        assert await asyncio.wrap_future(reply) == 200
    assert await status_of(backend, inst.id) is InstanceStatus.RUNNING


@engine
async def test_stop_is_stopped_not_a_death_and_start_returns_on_the_same_address(backend, app_image):
    events = backend.events()
    inst = await backend.launch("web", docker_pool(app_image))
    await wait_answers(inst.host, inst.port)
    await backend.stop(inst.id, 2.0)
    assert await status_of(backend, inst.id) is InstanceStatus.STOPPED
    assert not answers(inst.host, inst.port)
    # Start at once: the stop's `die` may still be on its way and must not be taken for a crash.
    await backend.start(inst.id)
    assert backend.address(inst.id) == (inst.host, inst.port)
    await wait_answers(inst.host, inst.port)
    assert await status_of(backend, inst.id) is InstanceStatus.RUNNING
    assert await next_event(events, 0.5) is None, "our own stop was reported as a death"


@engine
async def test_resize_changes_the_cpu_limit_and_none_restores_the_pool_limit(backend, docker_client, app_image):
    limited = await backend.launch("web", docker_pool(app_image, cpus=0.5))
    unlimited = await backend.launch("web", docker_pool(app_image))

    def nano_cpus(instance_id: str) -> int:
        return docker_client.containers.get(instance_id).attrs["HostConfig"]["NanoCpus"]

    await backend.resize(limited.id, 0.05)
    assert nano_cpus(limited.id) == 50_000_000
    await backend.resize(limited.id, None)
    assert nano_cpus(limited.id) == 500_000_000
    await backend.resize(unlimited.id, 0.1)
    assert nano_cpus(unlimited.id) == 100_000_000
    await backend.resize(unlimited.id, None)
    assert nano_cpus(unlimited.id) == docker_client.info()["NCPU"] * 1_000_000_000  # the whole host


@engine
async def test_kill_outside_the_backend_is_a_died_event_and_exited(backend, docker_client, app_image):
    events = backend.events()
    inst = await backend.launch("web", docker_pool(app_image))
    await asyncio.sleep(0.2)  # let the event stream connect, as it has long done in a running warmfront
    docker_client.containers.get(inst.id).kill()
    started = time.monotonic()
    event = await next_event(events, 2.0)
    assert event == BackendEvent("died", inst.id, "web", 137)
    assert time.monotonic() - started < 2.0
    assert await status_of(backend, inst.id) is InstanceStatus.EXITED


@engine
async def test_new_backend_with_the_same_owner_adopts_members_as_they_were(backend, docker_client, app_image):
    spec = docker_pool(app_image)
    running, stopped, crashed = [await backend.launch("web", spec) for _ in range(3)]
    await wait_answers(stopped.host, stopped.port)
    await backend.stop(stopped.id, 2.0)
    docker_client.containers.get(crashed.id).kill()
    await backend.close()

    again = DockerBackend(backend.owner)
    try:
        found = {i.id: i for i in await again.list()}
        assert set(found) == {running.id, stopped.id, crashed.id}
        for inst in (running, stopped, crashed):
            assert (found[inst.id].pool, found[inst.id].host, found[inst.id].port) == ("web", inst.host, inst.port)
            assert again.address(inst.id) == (inst.host, inst.port)
        assert found[running.id].status is InstanceStatus.RUNNING
        assert found[stopped.id].status is InstanceStatus.STOPPED, "a clean stop before the restart is a stop"
        assert found[crashed.id].status is InstanceStatus.EXITED, "a crash before the restart stays a crash"
        await again.start(stopped.id)
        await wait_answers(stopped.host, stopped.port)
    finally:
        await again.close()


@engine
async def test_failed_launch_leaves_no_container_and_removing_twice_is_fine(backend, app_image):
    # Without init the runtime itself fails to exec, so the start call fails after the create.
    with pytest.raises(BackendError, match="launch"):
        await backend.launch("web", docker_pool(app_image, command="/nonexistent {port}", init=False))
    with pytest.raises(BackendError, match="not pulled automatically"):
        await backend.launch("web", docker_pool("warmfront-test-missing:latest"))
    assert await backend.list() == []
    inst = await backend.launch("web", docker_pool(app_image))
    await backend.remove(inst.id)
    await backend.remove(inst.id)
    assert await backend.list() == []


async def test_unreachable_daemon_fails_fast_with_backend_error():
    owner = new_owner()
    b = DockerBackend(owner, base_url="unix:///tmp/nonexistent.sock", request_timeout=2.0)
    events = b.events()  # the event follower keeps retrying without taking the loop down
    started = time.monotonic()
    try:
        with pytest.raises(BackendError, match="docker list"):
            await b.list()
        with pytest.raises(BackendError, match="docker launch"):
            await b.launch("web", docker_pool("warmfront-test-missing:latest"))
        with pytest.raises(BackendError):
            await b.stop("wf-web-000000", 1.0)
        assert time.monotonic() - started < 2.0
        assert await next_event(events, 0.3) is None
    finally:
        await b.close()
    assert f"docker-events-{owner}" not in [t.name for t in threading.enumerate()], "close() left the follower"
