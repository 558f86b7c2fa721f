"""Backend.usage against real members: the test app as a local process and as a Docker container, made
to burn CPU and hold memory, read back from /proc and the cgroup files; and a container the kernel
OOM-kills, reported as such."""
from __future__ import annotations

import asyncio
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from config.models import Pool
from pools.backends.base import LABEL_GENERATION, BackendEvent, member_generation
from pools.backends.docker import DockerBackend, _usage_from_stats
from pools.backends.process import ProcessBackend
from pools.usage import MemberUsage, ResourceLimits
from tests.dockerkit import (app_image, create_test_network, docker_client, new_owner,  # noqa: F401
                             remove_owned, require_engine)
from tests.pools_support import answers, pool_spec, wait_until

APP = Path(__file__).resolve().parent.parent / "images" / "testapp" / "app.py"
MIB = 1 << 20
BURN_S = 0.3
IDLE_ALLOWANCE_S = 0.05   # the app's own threads and the HTTP handling around the burn

engine = pytest.mark.usefixtures("require_engine")


def get(port: int, path: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.read().decode()


async def measure(backend, instance_id: str) -> MemberUsage:
    found = await backend.usage([instance_id])
    assert instance_id in found, f"{instance_id} was not measured"
    return found[instance_id]


async def burn_and_alloc(backend, instance_id: str, port: int) -> tuple[MemberUsage, MemberUsage, MemberUsage]:
    """Usage before, after 300 ms of CPU burnt in three requests, and after 64 MiB allocated."""
    before = await measure(backend, instance_id)
    for _ in range(3):
        await asyncio.to_thread(get, port, f"/burn?ms={BURN_S * 1000 / 3:g}")
    burnt = await measure(backend, instance_id)
    assert (await asyncio.to_thread(get, port, "/alloc?mb=64")).startswith("holding 64 MiB")
    return before, burnt, await measure(backend, instance_id)


def assert_burnt_and_held(before: MemberUsage, burnt: MemberUsage, held: MemberUsage) -> None:
    used = burnt.cpu_seconds - before.cpu_seconds
    assert BURN_S * 0.75 <= used <= BURN_S * 1.25 + IDLE_ALLOWANCE_S, used
    assert held.memory_bytes - burnt.memory_bytes >= 60 * MIB, (burnt, held)
    assert held.memory_peak_bytes >= held.memory_bytes


# ---------------------------------------------------------------------------------- processes
@pytest.fixture
async def process_backend(tmp_path):
    b = ProcessBackend(owner="test-usage", log_dir=tmp_path / "members")
    yield b
    await b.close()


async def test_process_member_cpu_and_memory_from_proc_and_a_removed_one_is_missing(process_backend):
    inst = await process_backend.launch("web", pool_spec(command=f"{sys.executable} {APP} --port {{port}}"))
    await wait_until(lambda: answers(inst.host, inst.port), 5)
    before, burnt, held = await burn_and_alloc(process_backend, inst.id, inst.port)
    assert_burnt_and_held(before, burnt, held)
    assert (held.net_rx_bytes, held.cpu_limit, held.memory_limit) == (None, None, None)
    await process_backend.remove(inst.id)
    assert await process_backend.usage([inst.id]) == {}


# ---------------------------------------------------------------------------------- containers
def docker_pool(image: str, **docker_fields) -> Pool:
    return Pool(backend="docker", docker={"image": image, "network": "host", **docker_fields})


@pytest.fixture
async def docker_backend(docker_client):
    owner = new_owner()
    b = DockerBackend(owner)
    try:
        yield b
    finally:
        await b.close()
        remove_owned(docker_client, owner)


async def booted(backend: DockerBackend, spec: Pool, limits: ResourceLimits | None = None):
    inst = await backend.launch("web", spec, limits=limits)
    await wait_until(lambda: answers(inst.host, inst.port), 15, step=0.05)
    return inst


@engine
async def test_container_cpu_memory_and_limits_from_its_cgroup(docker_backend, docker_client, app_image):
    inst = await booted(docker_backend, docker_pool(app_image, cpus=0.5, memory="256m"))
    before, burnt, held = await burn_and_alloc(docker_backend, inst.id, inst.port)
    assert_burnt_and_held(before, burnt, held)
    assert (held.cpu_limit, held.memory_limit) == (0.5, 256 * MIB)
    assert (held.net_rx_bytes, held.net_tx_bytes) == (None, None), "host network: no counters of its own"
    # The stats API (the fallback where the files are not readable) sees the same container alike.
    attrs = docker_client.containers.get(inst.id).attrs
    stats = await asyncio.to_thread(docker_client.api.stats, attrs["Id"], stream=False, one_shot=True)
    via_api = _usage_from_stats(inst.id, stats, attrs["HostConfig"], own_netns=False)
    assert via_api is not None
    assert (via_api.cpu_limit, via_api.memory_limit) == (0.5, 256 * MIB)
    assert abs(via_api.cpu_seconds - held.cpu_seconds) < 0.1
    assert abs(via_api.memory_bytes - held.memory_bytes) < 8 * MIB


@pytest.fixture
async def bridged_backend(docker_client):
    owner = new_owner()
    b = DockerBackend(owner, publish_network=create_test_network(docker_client))   # removed with the session
    try:
        yield b
    finally:
        await b.close()
        remove_owned(docker_client, owner)


@engine
async def test_launch_limits_override_the_spec_and_keep_its_generation(bridged_backend, docker_client, app_image):
    spec = docker_pool(app_image, cpus=0.5, memory="256m", network="publish", container_port=8080,
                       env={"HOST": "0.0.0.0"})
    inst = await booted(bridged_backend, spec, ResourceLimits(0.25, 128 * MIB))
    c = docker_client.containers.get(inst.id)
    assert (c.attrs["HostConfig"]["NanoCpus"], c.attrs["HostConfig"]["Memory"]) == (250_000_000, 128 * MIB)
    assert c.labels[LABEL_GENERATION] == member_generation(spec)
    assert c.labels["warmfront.cpus"] == "0.25", "what a shadow's resize restores"
    u = await measure(bridged_backend, inst.id)
    assert (u.cpu_limit, u.memory_limit) == (0.25, 128 * MIB)
    # Its own network namespace: the health checks that reached it are in its counters.
    assert u.net_rx_bytes and u.net_tx_bytes


@engine
async def test_oom_killed_container_is_a_died_event_with_reason_oom(docker_backend, app_image):
    events = docker_backend.events()
    inst = await booted(docker_backend, docker_pool(app_image, memory="64m"))
    u = await measure(docker_backend, inst.id)
    assert u.memory_limit == 64 * MIB and u.oom_kills == 0
    with pytest.raises((urllib.error.URLError, ConnectionError, TimeoutError)):
        await asyncio.to_thread(get, inst.port, "/alloc?mb=200")
    async with asyncio.timeout(10):
        event = await anext(events)
    assert event == BackendEvent("died", inst.id, "web", 137, reason="oom")
    assert await docker_backend.usage([inst.id]) == {}, "a dead container is not measured"
