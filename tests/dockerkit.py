"""Shared by the Docker tests: the engine check, the test images, owners and cleanup by label.

Tests own their containers through `warmfront.instance` labels of the form `test-<session>-<random>`
(see `new_owner`), so one test session's cleanup never touches another's that runs at the same time.
"""
from __future__ import annotations

import io
import os
import secrets
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

IMAGE = "warmfront-testapp:latest"            # built by scripts/build-test-images
BUSYBOX_IMAGE = "warmfront-test-busybox:latest"  # stand-in when that script is absent
TEST_LABEL = "warmfront.test"                 # on everything the tests create besides members
BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "build-test-images"
SESSION = secrets.token_hex(3)
STALE_AFTER = 15 * 60.0                        # leftovers of crashed sessions older than this are swept


def new_owner() -> str:
    """A warmfront instance id for one test: cleaned up with this session, never shared."""
    return f"test-{SESSION}-{secrets.token_hex(3)}"


def owned_containers(client: docker.DockerClient, owner_prefix: str) -> list:
    found = client.containers.list(all=True, sparse=True, filters={"label": "warmfront.managed=true"})
    return [c for c in found if (c.attrs.get("Labels") or {}).get("warmfront.instance", "").startswith(owner_prefix)]


def remove_owned(client: docker.DockerClient, owner_prefix: str, older_than: float = 0.0) -> int:
    """Force-remove warmfront members whose owner starts with `owner_prefix`; returns how many."""
    removed = 0
    for c in owned_containers(client, owner_prefix):
        if time.time() - c.attrs.get("Created", 0) < older_than:
            continue
        try:
            c.remove(force=True)
            removed += 1
        except docker.errors.NotFound:
            pass  # removed meanwhile, e.g. by the backend under test
    return removed


def engine_client() -> docker.DockerClient:
    """A client of the engine from the environment; raises docker.errors.DockerException when none answers."""
    client = docker.from_env(timeout=10)
    client.ping()
    return client


def _unavailable(reason: str) -> None:
    if os.environ.get("WARMFRONT_REQUIRE_DOCKER") == "1":
        pytest.fail(f"{reason} (WARMFRONT_REQUIRE_DOCKER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def require_engine() -> Iterator[docker.DockerClient]:
    """A reachable engine with the test images; skips (or fails under WARMFRONT_REQUIRE_DOCKER=1) otherwise.

    At teardown every member this session's owners left behind is removed."""
    try:
        client = engine_client()
    except docker.errors.DockerException as e:
        _unavailable(f"no Docker engine answers: {e}")
    remove_owned(client, "test-", older_than=STALE_AFTER)
    built_busybox = False
    if BUILD_SCRIPT.exists():
        run = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=900)
        if run.returncode != 0:
            _unavailable(f"scripts/build-test-images failed: {(run.stderr or run.stdout).strip()[-500:]}")
    else:
        _build_busybox_image(client)
        built_busybox = True
    try:
        yield client
    finally:
        remove_owned(client, f"test-{SESSION}-")
        for net in client.networks.list(filters={"label": f"{TEST_LABEL}={SESSION}"}):
            net.remove()
        if built_busybox:
            client.images.remove(BUSYBOX_IMAGE, force=True)
        client.close()


@pytest.fixture(scope="session")
def docker_client(require_engine: docker.DockerClient) -> docker.DockerClient:
    return require_engine


@pytest.fixture(scope="session")
def app_image(require_engine: docker.DockerClient) -> str:
    """An image serving GET /healthz on $PORT, bound to $HOST (default 127.0.0.1), with the image's CMD."""
    return IMAGE if BUILD_SCRIPT.exists() else BUSYBOX_IMAGE


def _build_busybox_image(client: docker.DockerClient) -> None:
    """A 2 MB image from this machine's static busybox, built without a registry."""
    busybox = shutil.which("busybox")
    if busybox is None:
        _unavailable("neither scripts/build-test-images nor a static busybox to build a test image from")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for applet in ("sh", "sleep"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        health = b"ok\n"
        info = tarfile.TarInfo("www/healthz")
        info.size = len(health)
        tar.addfile(info, io.BytesIO(health))
    repo, tag = BUSYBOX_IMAGE.split(":")
    client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag, changes=[
        f"LABEL {TEST_LABEL}=true",
        'CMD ["/bin/sh", "-c", "exec /bin/busybox httpd -f -p ${HOST:-127.0.0.1}:$PORT -h /www"]'])


def create_test_network(client: docker.DockerClient) -> str:
    """A user bridge network (removed at session end), for publishing ports where the daemon runs without
    its default bridge (`dockerd --bridge=none`)."""
    name = f"wf-test-{SESSION}-{secrets.token_hex(2)}"
    client.networks.create(name, driver="bridge", labels={TEST_LABEL: SESSION})
    return name
