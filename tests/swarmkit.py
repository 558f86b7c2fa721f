"""Shared by the Swarm tests: a single-node swarm on the test engine and cleanup of services by label.

The engine joins a swarm only if it is not in one already, and leaves it at the end only if it joined
here; services are owned like containers, through `warmfront.instance` = `test-<session>-<random>`.
"""
from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import docker
import docker.errors
import pytest

from tests.dockerkit import SESSION, STALE_AFTER, _unavailable, remove_owned


def owned_services(client: docker.DockerClient, owner_prefix: str) -> list:
    found = client.services.list(filters={"label": "warmfront.managed=true"})
    return [s for s in found if (s.attrs["Spec"].get("Labels") or {}).get("warmfront.instance", "")
            .startswith(owner_prefix)]


def remove_owned_services(client: docker.DockerClient, owner_prefix: str, older_than: float = 0.0) -> None:
    """Remove the services, then wait for their task containers to go (Swarm removes them asynchronously)."""
    for s in owned_services(client, owner_prefix):
        created = s.attrs.get("CreatedAt", "")
        if older_than and created and time.time() - _epoch(created) < older_than:
            continue
        try:
            s.remove()
        except docker.errors.NotFound:
            pass
    remove_owned(client, owner_prefix, older_than)   # rather than wait out each task's stop grace period
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _tasks_left(client, owner_prefix):
        time.sleep(0.1)
        remove_owned(client, owner_prefix, older_than)


def _tasks_left(client: docker.DockerClient, owner_prefix: str) -> bool:
    return any("com.docker.swarm.service.name" in (c.attrs.get("Labels") or {})
               for c in client.containers.list(all=True, sparse=True, filters={"label": "warmfront.managed=true"})
               if (c.attrs.get("Labels") or {}).get("warmfront.instance", "").startswith(owner_prefix))


def _epoch(created: str) -> float:
    return time.mktime(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone


@pytest.fixture(scope="session")
def require_swarm(require_engine: docker.DockerClient) -> Iterator[docker.DockerClient]:
    """The test engine (dockerkit's `require_engine`, imported beside this) as a swarm manager: joins a single-node swarm (127.0.0.1) unless it is in one."""
    client = require_engine
    state = (client.info().get("Swarm") or {}).get("LocalNodeState")
    joined = False
    if state != "active":
        run = subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"],
                             capture_output=True, text=True, timeout=60)
        if run.returncode != 0:
            _unavailable(f"the engine is not in a swarm and `docker swarm init` failed: {run.stderr.strip()[-300:]}")
        joined = True
    elif not (client.info().get("Swarm") or {}).get("ControlAvailable"):
        _unavailable("the engine is in a swarm but not a manager: services cannot be created through it")
    remove_owned_services(client, "test-", older_than=STALE_AFTER)
    try:
        yield client
    finally:
        remove_owned_services(client, f"test-{SESSION}-")
        if joined:
            subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True, timeout=60)
