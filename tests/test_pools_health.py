"""Health verdicts from consecutive probes, and probes against a real member."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from config.models import HealthCheck, Warmup
from pools.health import HealthChecker, HealthTracker
from pools.ports import free_port, parse_hostport
from tests.pools_support import TINY, answers, fetch, wait_until
from tests.proxykit import PlainHTTPServer


@pytest.mark.parametrize("start,probes,verdicts", [
    (None, [True], [True]),                               # healthy_threshold 1
    (True, [False, False, False], [None, None, False]),   # unhealthy after 3 in a row
    (True, [False, False, True, False, False], [None, None, None, None, None]),  # a success resets
    (False, [True], [True]),
    (True, [True, True], [None, None]),                   # no change, no verdict
])
def test_tracker_reports_only_changes_after_consecutive_results(start, probes, verdicts):
    tracker = HealthTracker.for_check(HealthCheck(healthy_threshold=1, unhealthy_threshold=3), healthy=start)
    assert [tracker.observe(ok) for ok in probes] == verdicts


def test_tracker_needs_healthy_threshold_successes():
    tracker = HealthTracker.for_check(HealthCheck(healthy_threshold=2))
    assert [tracker.observe(True), tracker.observe(True)] == [None, True]


@pytest.mark.parametrize("text,expected", [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:8080", ("::1", 8080))])
def test_parse_hostport(text, expected):
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", "host:", ":80", "h:99999", "h:x"])
def test_parse_hostport_rejects(text):
    with pytest.raises(ValueError):
        parse_hostport(text)


@pytest.fixture
async def member():
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(TINY), "--port", str(port)], stdout=subprocess.DEVNULL)
    await wait_until(lambda: answers("127.0.0.1", port), 5)
    yield port
    proc.kill()
    proc.wait()


async def test_probe_and_warm_against_a_live_member(member):
    checker = HealthChecker()
    try:
        assert (await checker.probe("127.0.0.1", member, HealthCheck())).ok
        assert not (await checker.probe("127.0.0.1", free_port(), HealthCheck())).ok
        assert await checker.warm("127.0.0.1", member, Warmup(path="/", requests=3), timeout=2) == 3
        assert (await asyncio.to_thread(fetch, "127.0.0.1", member))["hits"] == 4
    finally:
        await checker.close()


async def test_wait_healthy_gives_up_at_the_deadline():
    checker = HealthChecker()
    try:
        t0 = time.monotonic()
        assert not await checker.wait_healthy("127.0.0.1", free_port(), HealthCheck(timeout=0.1), t0 + 0.3)
        assert 0.3 <= time.monotonic() - t0 < 1.5
    finally:
        await checker.close()


@pytest.fixture
def plain_server(tmp_path):
    server = PlainHTTPServer(tmp_path)
    yield server.port
    server.stop()


async def test_tcp_and_http_probes_say_what_they_saw(plain_server):
    checker = HealthChecker()
    try:
        tcp = HealthCheck(type="tcp")
        assert (await checker.probe("127.0.0.1", plain_server, tcp)).ok
        strict = await checker.probe("127.0.0.1", plain_server, HealthCheck())
        assert (strict.ok, strict.status, strict.error) == (False, 404, None)
        assert strict.describe(HealthCheck()) == "GET /healthz -> 404"
        assert strict.latency_ms > 0
        assert (await checker.probe("127.0.0.1", plain_server, HealthCheck(expect_status="200-499"))).ok
        assert (await checker.probe("127.0.0.1", plain_server, HealthCheck(path="/", expect_status="200"))).ok
        refused = await checker.probe("127.0.0.1", free_port(), tcp)
        assert (refused.ok, refused.status, refused.error) == (False, None, "connection refused")
        assert refused.describe(tcp) == "TCP connect -> connection refused"
        http_refused = await checker.probe("127.0.0.1", free_port(), HealthCheck())
        assert http_refused.describe(HealthCheck()) == "GET /healthz -> connection refused"
    finally:
        await checker.close()
