"""Data-plane workers under the control process: started, fed, replaced, drained — all real
processes over loopback."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import aiohttp
import pytest

from balancer.dataplane.channel import decode_table, encode_table
from balancer.control.history import History
from balancer.dataplane.routing import CompiledRoute, PoolTargets, RoutingTable, SourceExtractor, Target
from balancer.control.workers import WorkerSet
from config.models import Limits, Route, RouteMatch, SourceRule, Timeouts
from tests.proxykit import ROOT, DemoBackend, alive, free_port
from tests.runkit import Warmfront, http, wait_until


@pytest.fixture
def backend():
    b = DemoBackend("--work", "page=0,api=0.5s")
    yield b
    b.stop()


@pytest.fixture
def wf2(backend):
    wf = Warmfront("--to", f"127.0.0.1:{backend.port}", "--workers", "2")
    try:
        assert wait_until(lambda: http(wf.url + "/")[0] == 200, 30), wf.tail()
        yield wf
    finally:
        wf.cleanup()


def worker_pids(wf: Warmfront) -> dict[int, int]:
    st = wf.status() or {}
    return {w["slot"]: w["pid"] for w in st.get("workers", [])}


async def load(url: str, seconds: float, concurrency: int = 16) -> tuple[int, int]:
    """Keep-alive GETs from `concurrency` clients for `seconds`: (answered 200, failed)."""
    ok = failed = 0
    end = time.monotonic() + seconds

    async def client(i: int) -> None:
        nonlocal ok, failed
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < end:
                try:
                    async with session.get(url, headers={"X-Tenant": f"t{i}"}) as r:
                        await r.read()
                        ok += r.status == 200
                        failed += r.status != 200
                except aiohttp.ClientError:
                    failed += 1

    await asyncio.gather(*(client(i) for i in range(concurrency)))
    return ok, failed


def test_status_lists_each_worker_and_both_serve(wf2):
    pids = worker_pids(wf2)
    assert sorted(pids) == [0, 1] and len(set(pids.values())) == 2
    assert all(alive(p) for p in pids.values())
    asyncio.run(load(wf2.url + "/", 2.0, concurrency=16))
    # 16 connections spread over two SO_REUSEPORT sockets: both workers answered some
    assert wait_until(lambda: all(w["requests"] > 0 for w in wf2.status()["workers"]), 5), wf2.status()["workers"]
    _, body, _ = http(wf2.admin + "/metrics")
    text = body.decode()
    total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("warmfront_requests_total{"))
    assert total == pytest.approx(sum(w["requests"] for w in wf2.status()["workers"]), abs=32)
    assert 'warmfront_worker_restarts_total{worker="0"} 0.0' in text


def test_a_sigkilled_worker_is_replaced_within_a_second_and_costs_only_its_in_flight(wf2):
    before = worker_pids(wf2)
    replaced_after: list[float] = []

    def kill_and_watch() -> None:
        time.sleep(1.5)
        t0 = time.monotonic()
        os.kill(before[0], signal.SIGKILL)
        got = wait_until(lambda: (p := worker_pids(wf2)).get(0) not in (None, before[0]) and p, 5, step=0.02)
        if got:
            replaced_after.append(time.monotonic() - t0)

    async def scenario() -> tuple[int, int]:
        watcher = asyncio.get_running_loop().run_in_executor(None, kill_and_watch)
        result = await load(wf2.url + "/", 4.0)
        await watcher
        return result

    ok, failed = asyncio.run(scenario())
    assert replaced_after and replaced_after[0] < 1.0, (replaced_after, wf2.tail())
    assert ok > 500 and failed <= 0.01 * (ok + failed), (ok, failed)
    after = worker_pids(wf2)
    assert after[1] == before[1], "the other worker kept serving untouched"
    assert not alive(before[0])
    _, body, _ = http(wf2.admin + "/metrics")
    assert 'warmfront_worker_restarts_total{worker="0"} 1.0' in body.decode()
    assert http(wf2.url + "/")[0] == 200


def test_workers_exit_when_the_control_process_is_killed(wf2):
    pids = list(worker_pids(wf2).values())
    assert len(pids) == 2
    os.kill(wf2.proc.pid, signal.SIGKILL)
    wf2.proc.wait()
    assert wait_until(lambda: not any(alive(p) for p in pids), 10), "a worker outlived its control process"


def test_sigterm_lets_in_flight_requests_finish_in_every_worker(wf2):
    async def slow_requests() -> list[int]:
        async with aiohttp.ClientSession() as session:
            async def one(i: int) -> int:
                async with session.get(wf2.url + "/api/slow", headers={"X-Tenant": f"s{i}"}) as r:
                    await r.read()
                    return r.status
            tasks = [asyncio.create_task(one(i)) for i in range(8)]
            await asyncio.sleep(0.2)   # all 8 are in flight, spread over both workers
            wf2.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    assert asyncio.run(slow_requests()) == [200] * 8
    assert wf2.proc.wait(15) == 0


def test_the_worker_imports_nothing_of_the_control_side():
    code = ("import sys, balancer.dataplane.worker; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('predictor', 'pools', 'numpy', 'statsmodels', 'docker', 'aiohttp')); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def routing_table(targets: tuple[Target, ...]) -> RoutingTable:
    routes = [Route(name="api", match=RouteMatch(path_prefix="/api", methods=["GET", "post"],
                                                 host="*.example.com", headers={"X-Beta": "1", "X-Any": "*"}),
                    pool="web", type="api"),
              Route(name="rest", pool="web", type="page")]
    sources = SourceExtractor([SourceRule(header="X-Tenant"), SourceRule(query="key"), SourceRule(cookie="sid"),
                               SourceRule(path_segment=1), SourceRule(client_ip=True)])
    return RoutingTable([CompiledRoute(r) for r in routes], sources,
                        {"web": PoolTargets("web", targets, 2.0, 3, 5.0, 60.0)}, preserve_host=False)


def test_a_table_crosses_the_channel_unchanged():
    table = routing_table((Target("a", "127.0.0.1", 1, True), Target("b", "127.0.0.1", 2)))
    back = decode_table(encode_table(table))
    assert back.pools == table.pools and back.preserve_host is False
    assert back.header_names == table.header_names
    for r0, r1 in zip(table.routes, back.routes):
        assert [getattr(r0, f) for f in CompiledRoute.__slots__] == [getattr(r1, f) for f in CompiledRoute.__slots__]
    cases = [(b"GET", b"a.example.com", b"/api/x", {b"x-beta": b"1", b"x-any": b"z"}),
             (b"POST", b"a.example.com:80", b"/api", {b"x-beta": b"1", b"x-any": b""}),
             (b"PUT", b"a.example.com", b"/api/x", {b"x-beta": b"1", b"x-any": b"z"}),
             (b"GET", b"example.com", b"/api/x", {b"x-beta": b"1", b"x-any": b"z"}),
             (b"GET", b"a.example.com", b"/api/x", {b"x-beta": b"2", b"x-any": b"z"})]
    for method, host, path, headers in cases:
        assert table.match(method, host, path, headers).name == back.match(method, host, path, headers).name
    for path, query, headers in [(b"/p/q", b"key=k1", {b"cookie": b"sid=s1"}), (b"/p/q", b"", {b"cookie": b"sid=s1"}),
                                 (b"/p/q", b"", {}), (b"/", b"", {}), (b"/", b"", {b"x-tenant": b"acme"})]:
        assert table.sources.extract(path, query, headers, "10.0.0.1") == back.sources.extract(path, query, headers, "10.0.0.1")


async def test_a_member_is_idle_only_when_no_worker_has_a_request_on_it(tmp_path):
    backend = DemoBackend("--work", "page=0,api=1s")
    history = History(None)
    ws = WorkerSet(2, ("127.0.0.1", 0), Timeouts(), Limits(), history)
    try:
        member = Target("m1", "127.0.0.1", backend.port)
        ws.set_table(routing_table((member,)))
        await ws.start()
        pids = [w["pid"] for w in ws.status()]
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{ws.listen[1]}/api/slow"
            requests = [asyncio.create_task(session.get(url, headers={"X-Tenant": f"x{i}"})) for i in range(6)]
            await asyncio.sleep(0.3)
            await ws.flush()
            assert ws.in_flight("m1") == 6
            ws.set_table(routing_table(()))   # m1 leaves routing: draining
            assert ws.in_flight("m1") >= 1, "busy until every worker has reported on the new table"
            await ws.flush()
            assert ws.in_flight("m1") == 6
            responses = await asyncio.gather(*requests)
            assert [r.status for r in responses] == [200] * 6
            for r in responses:
                r.release()
            await ws.flush()
            assert ws.in_flight("m1") == 0
            assert sum(n for (_, rtype, _, code), n in ws.stats.requests.items() if code == 200) == 6
    finally:
        await ws.stop(grace=1)
        backend.stop()
        history.close()
    assert len(pids) == 2 and not any(alive(p) for p in pids)


def test_config_workers_is_checked_and_used(tmp_path, backend):
    from tests.runkit import copy_config
    cfg = copy_config(tmp_path)
    text = (cfg / "routing.yaml").read_text()
    (cfg / "routing.yaml").write_text("workers: 0\n" + text)
    out = subprocess.run([sys.executable, "-m", "balancer.wiring.cli", "check", "--config", str(cfg)], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 2 and "routing.yaml:1" in out.stderr and "workers" in out.stderr, out.stderr
    (cfg / "routing.yaml").write_text("workers: 1\n" + text)
    wf = Warmfront("--config", str(cfg))
    try:
        assert wait_until(lambda: (st := wf.status()) and len(st["workers"]) == 1, 30), wf.tail()
    finally:
        wf.cleanup()


async def test_the_proxy_keeps_serving_while_every_control_step_raises(tmp_path):
    from balancer.wiring.app import App
    from config.models import Config, Pool, RoutingConfig
    backend = DemoBackend("--work", "page=0")
    routing = RoutingConfig(sources=[SourceRule(header="X-Tenant")], routes=[Route(name="all", pool="web", type="page")])
    app = App(Config(routing=routing, pools={"web": Pool(backend="static", servers=[f"127.0.0.1:{backend.port}"])}),
              listen=("127.0.0.1", free_port()), admin=("127.0.0.1", free_port()), state_dir=str(tmp_path),
              plan_interval=0.05, workers=1)
    await app.start()
    try:
        def broken(inputs):
            raise RuntimeError("control step broken on purpose")
        app.control.compute = broken
        async with aiohttp.ClientSession() as session:
            await asyncio.sleep(0.3)   # several steps fail meanwhile
            codes = []
            for i in range(50):
                async with session.get(f"http://127.0.0.1:{app.listen[1]}/", headers={"X-Tenant": "a"}) as r:
                    codes.append(r.status)
                    await r.read()
            assert codes == [200] * 50
            # even with the control side gone entirely the workers serve on the last table
            for t in app.tasks:
                t.cancel()
            await asyncio.sleep(0.2)
            async with session.get(f"http://127.0.0.1:{app.listen[1]}/") as r:
                assert r.status == 200
        await app.workers.flush()
        assert sum(app.workers.stats.requests.values()) == 51
    finally:
        await app.stop()
        backend.stop()


def test_a_second_warmfront_on_the_same_port_is_refused(wf2, backend):
    out = subprocess.run([sys.executable, "-m", "balancer.wiring.cli", "run", "--to", f"127.0.0.1:{backend.port}",
                          "--listen", f"127.0.0.1:{wf2.port}", "--admin", f"127.0.0.1:{free_port()}",
                          "--state-dir", str(wf2.state_dir / "second")], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 1 and "cannot listen" in out.stderr, out.stderr
    assert http(wf2.url + "/")[0] == 200


async def test_an_injected_backend_factory_runs_the_pools_members(tmp_path):
    # App(backends=...): the pool's config names servers nobody listens on; the injected factory
    # makes the static backend from a real backend's address instead, and traffic reaches it.
    from balancer.wiring.app import App
    from balancer.wiring.backends import Backends
    from config.models import Config, Pool, RoutingConfig
    from pools.backends.static import StaticBackend
    backend = DemoBackend("--work", "page=0")
    made: list[tuple] = []

    def make(key, cfg):
        made.append(key)
        return StaticBackend({"web": [f"127.0.0.1:{backend.port}"]})
    routing = RoutingConfig(routes=[Route(name="all", pool="web", type="page")])
    app = App(Config(routing=routing, pools={"web": Pool(backend="static", servers=[f"127.0.0.1:{free_port()}"])}),
              listen=("127.0.0.1", free_port()), admin=("127.0.0.1", free_port()), state_dir=str(tmp_path),
              workers=1, backends=Backends(make))
    await app.start()
    try:
        for _ in range(200):
            if any(m.state.value == "ready" for m in app.members["web"]):
                break
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{app.listen[1]}/") as r:
                assert r.status == 200
        assert made == [("static",)]
    finally:
        await app.stop()
        backend.stop()
