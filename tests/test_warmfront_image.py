"""warmfront's own image, `warmfront:test`: the real Dockerfile built by scripts/build-warmfront-image on
a stand-in for python:3.11-slim. It carries the OCI labels, has exactly the dependency versions of
requirements.lock, runs as a non-root user, serves through the config shipped in /etc/warmfront, reports
`healthy` (and `unhealthy`) through its own HEALTHCHECK, which starts no Python, and with the engine's
socket mounted runs a docker-backed pool from a mounted config. Containers use host networking and listen on 127.0.0.1 only,
on free ports (the image's default 0.0.0.0:8080 would collide with anything else on the machine)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.dockerkit import (  # noqa: F401
    SESSION,
    TEST_LABEL,
    _unavailable,
    app_image,
    docker_client,
    new_owner,
    owned_containers,
    remove_owned,
    require_engine,
)
from tests.proxykit import ROOT, free_port
from tests.runkit import http, wait_until

IMAGE = "warmfront:test"
BUILD_SCRIPT = ROOT / "scripts" / "build-warmfront-image"
LABELS = {TEST_LABEL: f"image-{SESSION}"}   # on every container these tests start
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCK = ROOT / "requirements.lock"
# Docker probes every 10 s after a 10 s start period; these tests probe every second from the first.
FAST_HEALTHCHECK = {"interval": 1_000_000_000, "start_period": 1_000_000_000, "retries": 2}


@pytest.fixture(scope="module")
def warmfront_image(docker_client: docker.DockerClient) -> Iterator[docker.models.images.Image]:
    """The image, built from the current Dockerfile and sources. The build script is idempotent:
    current in 0.2 s, 10–15 s after a code change, a minute or two from nothing (pip needs PyPI).
    Skips (fails under WARMFRONT_REQUIRE_DOCKER=1) only when it cannot be built."""
    check = subprocess.run(["bash", str(BUILD_SCRIPT), "--check"], capture_output=True, text=True, timeout=120,
                           check=False)
    if check.returncode != 0:
        build = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=900, check=False)
        if build.returncode != 0:
            _unavailable(f"{BUILD_SCRIPT.name} failed: {(build.stderr or build.stdout).strip()[-500:]}")
    yield docker_client.images.get(IMAGE)
    for c in docker_client.containers.list(all=True, filters={"label": f"{TEST_LABEL}={LABELS[TEST_LABEL]}"}):
        c.remove(force=True, v=True)


@contextmanager
def started(client: docker.DockerClient, command: list[str], **kwargs) -> Iterator:
    """A container of the image on the host's network; removed with its anonymous volume afterwards."""
    container = client.containers.run(IMAGE, command, detach=True, network_mode="host", labels=LABELS, **kwargs)
    try:
        yield container
    finally:
        container.remove(force=True, v=True)


def run_to_end(client: docker.DockerClient, command: list[str], **kwargs) -> tuple[int, str]:
    with started(client, command, **kwargs) as container:
        code = container.wait(timeout=60)["StatusCode"]
        return code, container.logs().decode(errors="replace")


def run_command(image: docker.models.images.Image, listen: int, admin: int) -> list[str]:
    """The image's own CMD with the proxy and admin listeners moved to free loopback ports."""
    cmd = list(image.attrs["Config"]["Cmd"])
    cmd[cmd.index("--listen") + 1] = f"127.0.0.1:{listen}"
    cmd[cmd.index("--admin") + 1] = f"127.0.0.1:{admin}"
    return cmd


def settled_health(container) -> str | None:
    """Docker's verdict from the image's HEALTHCHECK, or None while it is still `starting`."""
    container.reload()
    status = container.attrs["State"].get("Health", {}).get("Status", "none")
    return None if status == "starting" else status


def tail(container) -> str:
    return container.logs(tail=30).decode(errors="replace")


def pins(lines: str) -> dict[str, str]:
    """`name==version` lines (a lock file, `pip freeze`) as {canonical name: version}."""
    found = (re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", line.strip()) for line in lines.splitlines())
    return {canonicalize_name(m[1]): m[2] for m in found if m}


def test_lock_pins_every_runtime_dependency_within_pyproject_bounds():
    locked = pins(LOCK.read_text())
    for spec in PROJECT["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is not in {LOCK.name}: run scripts/lock-deps"
        assert req.specifier.contains(locked[name]), f"{LOCK.name} pins {req.name}=={locked[name]}, outside {spec}"
    # psycopg[binary]: the extra's package is pinned as well, or the image would need libpq.
    assert "psycopg-binary" in locked


def test_dockerfile_version_default_is_pyprojects():
    # `docker build .` without the build script labels the image with the ARG's default.
    default = re.search(r"^ARG VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert default and default[1] == PROJECT["version"]


def test_image_carries_oci_labels(warmfront_image):
    labels = warmfront_image.labels
    oci = {k.removeprefix("org.opencontainers.image."): v for k, v in labels.items()
           if k.startswith("org.opencontainers.image.")}
    assert oci["title"] == PROJECT["name"]
    assert oci["description"] == PROJECT["description"]
    assert oci["licenses"] == PROJECT["license"]["text"]
    assert oci["version"] == PROJECT["version"]
    assert "source" in oci   # git's origin URL when the checkout has one
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=False).stdout.strip()
    if head:
        assert oci["revision"] in (head, f"{head}-dirty")


def test_image_has_exactly_the_locked_dependency_versions(docker_client, warmfront_image):
    code, out = run_to_end(docker_client, ["-m", "pip", "freeze", "--exclude", "warmfront"], entrypoint=["python"])
    assert code == 0, out
    assert pins(out) == pins(LOCK.read_text())


def test_healthcheck_starts_no_python(warmfront_image):
    check = warmfront_image.attrs["Config"]["Healthcheck"]["Test"]
    assert check[0] == "CMD-SHELL" and "busybox wget" in check[1], check
    assert "python" not in " ".join(check), check


def test_image_runs_as_non_root_and_checks_its_shipped_config(docker_client, warmfront_image):
    user = warmfront_image.attrs["Config"]["User"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit(), f"USER should be a numeric non-root uid:gid, is {user!r}"

    code, out = run_to_end(docker_client, ["check", "--config", "/etc/warmfront"])
    assert code == 0, out
    assert "/etc/warmfront: ok" in out

    code, out = run_to_end(docker_client, ["-c", "id -u; id -g; touch /var/lib/warmfront/probe"], entrypoint=["sh"])
    assert code == 0, out
    assert out.split()[:2] == [uid, gid]


def test_default_command_serves_through_shipped_config_and_reports_healthy(docker_client, warmfront_image):
    port, admin = free_port(), free_port()
    env = {"WARMFRONT_HEALTHZ": f"http://127.0.0.1:{admin}/healthz"}
    with started(docker_client, run_command(warmfront_image, port, admin), environment=env,
                 healthcheck=FAST_HEALTHCHECK) as container:
        answered = wait_until(lambda: http(f"http://127.0.0.1:{port}/api/orders", {"X-Tenant": "acme"},
                                           timeout=5)[0] == 200, 60, step=0.3)
        assert answered, f"no 200 through the proxy within 60 s:\n{tail(container)}"
        status, body, headers = http(f"http://127.0.0.1:{port}/api/orders", {"X-Tenant": "acme"})
        assert status == 200 and json.loads(body) == {"type": "api", "path": "/api/orders"}
        member_port = int(headers["X-Backend-Port"])
        assert member_port not in (port, admin)
        assert http(f"http://127.0.0.1:{admin}/healthz")[0] == 200

        # The process backend's members are demo-backends inside this container, not on the host.
        processes = " ".join(" ".join(row) for row in container.top()["Processes"])
        assert f"demo-backend --port {member_port}" in processes

        # The image's own check (only its timing is overridden); a loaded machine may need a few rounds.
        state = wait_until(lambda: settled_health(container), 60, step=0.3)
        health = container.attrs["State"]["Health"]
        assert state == "healthy", f"health {state}: {health}\n{tail(container)}"
        assert health["Log"][-1]["ExitCode"] == 0

        container.stop(timeout=60)   # SIGTERM: drain, stop the members, exit 0
        assert container.wait(timeout=30)["StatusCode"] == 0, tail(container)


def test_healthcheck_reports_unhealthy_when_healthz_does_not_answer_2xx(docker_client, warmfront_image):
    port, admin = free_port(), free_port()
    env = {"WARMFRONT_HEALTHZ": f"http://127.0.0.1:{admin}/no-such-route"}   # the listener is up: a 404
    with started(docker_client, run_command(warmfront_image, port, admin), environment=env,
                 healthcheck=FAST_HEALTHCHECK) as container:
        state = wait_until(lambda: settled_health(container), 60, step=0.3)
        health = container.attrs["State"]["Health"]
        assert state == "unhealthy", f"health {state}: {health}\n{tail(container)}"
        assert "404" in health["Log"][-1]["Output"], health["Log"][-1]


def _engine_socket() -> Path:
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not host.startswith("unix://"):
        _unavailable(f"DOCKER_HOST={host} is not a unix socket: there is no socket to mount into warmfront")
    return Path(host.removeprefix("unix://"))


def docker_config(tmp_path: Path, image: str) -> Path:
    """config/docker with members removed on exit and no shadow pool (two ready members suffice here)."""
    src, dst = ROOT / "config" / "docker", tmp_path / "config"
    dst.mkdir()
    (dst / "routing.yaml").write_text((src / "routing.yaml").read_text())
    pools = yaml.safe_load((src / "pools.yaml").read_text())
    web = pools["pools"]["web"]
    web["docker"].update(image=image, on_exit="remove")
    web["capacity"].update(min=2, max=2)
    del web["shadow"]
    (dst / "pools.yaml").write_text(yaml.safe_dump(pools))
    return dst


def test_in_a_container_with_the_socket_it_runs_and_removes_docker_members(
        docker_client, warmfront_image, app_image, tmp_path):
    socket_path = _engine_socket()
    config = docker_config(tmp_path, app_image)
    # A state dir of our own, so this test owns the members: they carry warmfront.instance=<owner>.
    owner = new_owner()
    state = tmp_path / "state"
    state.mkdir()
    (state / "instance-id").write_text(owner + "\n")
    uid, _, gid = warmfront_image.attrs["Config"]["User"].partition(":")
    for path in (state, state / "instance-id"):
        os.chown(path, int(uid), int(gid))

    port, admin = free_port(), free_port()
    volumes = {str(socket_path): {"bind": "/var/run/docker.sock", "mode": "rw"},
               str(config): {"bind": "/etc/warmfront", "mode": "ro"},
               str(state): {"bind": "/var/lib/warmfront", "mode": "rw"}}
    try:
        # The user is not root: it reaches the socket through the socket's group, as deployments do.
        with started(docker_client, run_command(warmfront_image, port, admin), volumes=volumes,
                     group_add=[str(socket_path.stat().st_gid)],
                     environment={"WARMFRONT_HEALTHZ": f"http://127.0.0.1:{admin}/healthz"}) as container:
            answered = wait_until(lambda: http(f"http://127.0.0.1:{port}/api/x", timeout=5)[0] == 200, 90, step=0.3)
            assert answered, f"no 200 through the docker pool within 90 s:\n{tail(container)}"
            status, _, headers = http(f"http://127.0.0.1:{port}/api/x")
            assert status == 200

            members = owned_containers(docker_client, owner)
            assert len(members) == 2, [m.name for m in members]
            labels = [m.attrs["Labels"] for m in members]
            assert all(lb["warmfront.managed"] == "true" and lb["warmfront.pool"] == "web" for lb in labels)
            assert headers["X-Backend-Port"] in {lb["warmfront.port"] for lb in labels}

            container.stop(timeout=60)   # on_exit: remove
            assert container.wait(timeout=30)["StatusCode"] == 0, tail(container)
            left = wait_until(lambda: not owned_containers(docker_client, owner), 30, step=0.3)
            assert left, f"members left after warmfront stopped: {[m.name for m in owned_containers(docker_client, owner)]}"
    finally:
        remove_owned(docker_client, owner)
