"""The offline test image `warmfront-testapp:latest`: scripts/build-test-images makes it, and the app in it
behaves as pool tests and benchmarks rely on (health, simulated work and boot time, hit counting, prompt
SIGTERM). Containers use host networking and listen on 127.0.0.1 only."""
from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "scripts" / "build-test-images"
IMAGE = "warmfront-testapp:latest"
TEST_LABELS = {"warmfront.test": "1"}


def _docker_unavailable_reason() -> str | None:
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 20 s"
    if probe.returncode != 0:
        return f"no Docker engine answers (`docker info`: {probe.stderr.strip()[:200]})"
    return None


@pytest.fixture(scope="module")
def docker_client():
    reason = _docker_unavailable_reason()
    if reason is not None:
        if os.environ.get("WARMFRONT_REQUIRE_DOCKER") == "1":
            pytest.fail(f"WARMFRONT_REQUIRE_DOCKER=1 but {reason}")
        pytest.skip(reason)
    import docker

    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="module")
def testapp_image(docker_client) -> str:
    build = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"build-test-images failed:\n{build.stdout}\n{build.stderr}"
    return IMAGE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def start_app(docker_client, testapp_image):
    """Starts the image on a free loopback port; returns (container, port). Removes them all afterwards."""
    containers = []

    def start(**env: str):
        port = _free_port()
        container = docker_client.containers.run(
            testapp_image, detach=True, network_mode="host", init=True, labels=TEST_LABELS,
            environment={"PORT": str(port), **env})
        containers.append(container)
        return container, port

    yield start
    for container in containers:
        container.remove(force=True)


def _get(port: int, path: str, timeout: float = 5) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


def _healthy(port: int) -> bool:
    try:
        return _get(port, "/healthz", timeout=1)[0] == 200
    except OSError:
        return False


def _wait_healthy(port: int, within: float = 10) -> float:
    """Seconds until /healthz first answered 200."""
    start = time.monotonic()
    while not _healthy(port):
        assert time.monotonic() - start < within, f"no healthy answer on port {port} within {within} s"
        time.sleep(0.02)
    return time.monotonic() - start


def _timed_get(port: int, path: str) -> tuple[int, float]:
    start = time.monotonic()
    status = _get(port, path)[0]
    return status, time.monotonic() - start


def test_build_is_idempotent_and_labels_the_image_with_its_hash(docker_client, testapp_image):
    start = time.monotonic()
    rerun = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert rerun.returncode == 0 and "up to date" in rerun.stdout, rerun.stdout + rerun.stderr
    assert elapsed < 2
    labels = docker_client.images.get(testapp_image).labels
    assert labels["warmfront.image-hash"] in rerun.stdout


def test_app_answers_health_and_names_itself_with_the_port_header(start_app):
    container, port = start_app()
    _wait_healthy(port)
    status, headers, body = _get(port, "/healthz")
    assert (status, body, headers["X-Backend-Port"]) == (200, "ok", str(port))
    status, headers, body = _get(port, "/")
    assert status == 200 and body.startswith("warmfront-testapp hostname=") and f"port={port}" in body
    status, headers, body = _get(port, "/api/orders/7")
    assert status == 200 and headers["Content-Type"] == "application/json" and '"path": "/api/orders/7"' in body
    assert _get(port, "/nope")[0] == 404 and _get(port, "/sleep/abc")[0] == 400


def test_work_ms_delays_every_request_except_health(start_app):
    _, port = start_app(WORK_MS="250")
    _wait_healthy(port)
    assert _timed_get(port, "/healthz")[1] < 0.2
    status, took = _timed_get(port, "/pid")
    assert status == 200 and took >= 0.25
    # Per-request work from the query comes on top of WORK_MS.
    status, took = _timed_get(port, "/work?ms=200")
    assert status == 200 and took >= 0.45


def test_boot_delay_keeps_health_unanswered_until_it_passes(start_app):
    _, port = start_app(BOOT_DELAY="1.5")
    probes_before_healthy = 0
    start = time.monotonic()
    while not _healthy(port):
        probes_before_healthy += 1
        assert time.monotonic() - start < 10, "never became healthy"
        time.sleep(0.05)
    assert time.monotonic() - start >= 1.4 and probes_before_healthy > 5


def test_hits_counts_served_requests_but_not_probes(start_app):
    _, port = start_app()
    _wait_healthy(port)
    assert _get(port, "/hits")[2].strip() == "0"
    for path in ("/", "/pid", "/api/warm", "/healthz", "/sleep/1"):
        assert _get(port, path)[0] == 200
    assert _get(port, "/hits")[2].strip() == "4"


def test_64_keep_alive_connections_are_served_concurrently(start_app):
    _, port = start_app(WORK_MS="200")
    _wait_healthy(port)
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(64)]
    results: list[tuple[int, int, bool]] = []

    def two_requests(conn: http.client.HTTPConnection) -> None:
        statuses = []
        for _ in range(2):
            conn.request("GET", "/pid")
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
            if len(statuses) == 1:
                first_sock = conn.sock
        results.append((*statuses, conn.sock is first_sock))

    start = time.monotonic()
    threads = [threading.Thread(target=two_requests, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=15)
    elapsed = time.monotonic() - start
    for conn in conns:
        conn.close()
    # Served one at a time this would take 64 * 2 * 0.2 s = 25.6 s.
    assert results == [(200, 200, True)] * 64
    assert elapsed < 3
    assert _get(port, "/hits")[2].strip() == "128"


def test_stop_is_prompt_exits_0_and_finishes_the_request_in_flight(start_app):
    container, port = start_app()
    _wait_healthy(port)
    in_flight: list[int] = []
    request = threading.Thread(target=lambda: in_flight.append(_get(port, "/sleep/400")[0]))
    request.start()
    time.sleep(0.1)
    start = time.monotonic()
    container.stop(timeout=10)
    assert time.monotonic() - start < 3
    request.join(timeout=5)
    assert in_flight == [200]
    container.reload()
    assert container.attrs["State"]["ExitCode"] == 0
    assert not _healthy(port)
