"""A slowloris flood against `warmfront run` with a small open-file limit, as users run it.

2,000 connections that trickle their heads (and reconnect when closed) against `ulimit -n 1024`:
the proxy caps its client connections below what its fd limit allows, closes trickling and idle
ones to make room, keeps answering real requests, keeps health-checking its member (which stays
ready) and says so in its log once per episode.
"""
import asyncio
import resource
import time

import pytest

from tests.proxykit import DemoBackend
from tests.runkit import Warmfront, http, wait_until

HOGS = 2000


@pytest.fixture
def backend():
    b = DemoBackend()
    yield b
    b.stop()


async def _hog(port: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        try:
            w.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-")
            while not stop.is_set():
                await asyncio.sleep(1.0)
                w.write(b"a")
                await w.drain()
                if r.at_eof():
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()


async def _probe(url: str, seconds: float) -> list[tuple[int | None, float]]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic()
        code, _, _ = await asyncio.to_thread(http, url + "/api/x", None, None, None, 3.0)
        out.append((code, time.monotonic() - t0))
        await asyncio.sleep(0.1)
    return out


async def test_slowloris_flood_under_a_small_fd_limit_leaves_service_and_health_checks_working(backend, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < HOGS + 512:
        pytest.skip(f"the test client needs {HOGS + 512} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    wf = Warmfront("--to", f"127.0.0.1:{backend.port}", state_dir=tmp_path / "state", nofile=1024)
    try:
        assert wait_until(lambda: http(wf.url + "/")[0] == 200, 20), wf.tail()
        stop = asyncio.Event()
        hogs = [asyncio.create_task(_hog(wf.port, stop)) for _ in range(HOGS)]
        await asyncio.sleep(3)
        probes = await _probe(wf.url, 12)
        status = await asyncio.to_thread(wf.status)
        stop.set()
        await asyncio.gather(*hogs, return_exceptions=True)
        ok = sum(1 for code, _ in probes if code == 200)
        print(f"probes {ok}/{len(probes)} ok, worst {max(t for _, t in probes) * 1000:.0f} ms")
        assert ok >= 0.95 * len(probes), (ok, len(probes), probes[:10], wf.tail())
        members = [m for pool in status["pools"].values() for m in pool["members"]]
        assert [m["state"] for m in members] == ["ready"], members
        log = wf.log_path.read_text()
        assert 1 <= log.count("proxy.connections_capped") <= 3, wf.tail(30)
        assert "Too many open files" not in log
    finally:
        wf.stop()
        wf.cleanup()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
