"""PoolManager against real member processes: reaching min, replacing the dead, shadows, drain, shutdown."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from contextlib import AsyncExitStack, asynccontextmanager

from structlog.testing import capture_logs

from pools.backends.process import ProcessBackend
from pools.backends.static import StaticBackend
from pools.manager import PoolManager
from pools.members import MemberState as S
from pools.ports import free_port
from pools.reconciler import Desired, DesiredState
from tests.pools_support import TINY, alive, answers, fetch, pool_spec, proc_state, wait_until
from tests.proxykit import PlainHTTPServer


class Routing:
    """Stands in for the proxy's routing table: the last member list each pool published."""

    def __init__(self) -> None:
        self.members = []
        self.seen: set[tuple[str, S]] = set()

    def __call__(self, pool, members) -> None:
        self.members = members
        self.seen |= {(m.id, m.state) for m in members}

    def in_state(self, state: S) -> list:
        return [m for m in self.members if m.state is state]

    def routed(self) -> set[str]:
        return {m.id for m in self.in_state(S.READY)}


@asynccontextmanager
async def running(spec, backend=None, **kw):
    backend = backend or ProcessBackend(owner="test")
    routing = Routing()
    manager = PoolManager("web", spec, backend, on_change=routing, interval=0.1, **kw)
    task = asyncio.create_task(manager.run())
    try:
        yield manager, backend, routing
    finally:
        await manager.stop_all()
        assert task.done()
        if isinstance(backend, ProcessBackend):
            await backend.close()


def pids(backend, routing, state=None):
    return [backend.pid(m.id) for m in routing.members if state is None or m.state is state]


async def test_manager_reaches_min_ready_members_that_answer_http():
    async with running(pool_spec(capacity={"min": 2, "max": 4})) as (manager, backend, routing):
        await wait_until(lambda: len(routing.in_state(S.READY)) == 2, 5)
        bodies = [await asyncio.to_thread(fetch, m.host, m.port) for m in routing.in_state(S.READY)]
        assert len({b["pid"] for b in bodies}) == 2
        assert manager.members() == routing.members
        await asyncio.sleep(0.3)
        assert len(routing.members) == 2, "no more than min is launched"


async def test_killed_member_is_replaced_within_two_seconds():
    async with running(pool_spec(capacity={"min": 2})) as (manager, backend, routing):
        await wait_until(lambda: len(routing.in_state(S.READY)) == 2, 5)
        victim = routing.in_state(S.READY)[0]
        os.kill(backend.pid(victim.id), signal.SIGKILL)
        await wait_until(lambda: victim.id not in routing.routed(), 0.5)
        await wait_until(lambda: len(routing.routed()) == 2 and victim.id not in {m.id for m in routing.members}, 2)
        assert (victim.id, S.FAILED) in routing.seen
        assert all(answers(m.host, m.port) for m in routing.in_state(S.READY))


async def test_member_failing_health_checks_is_failed_and_replaced():
    async with running(pool_spec(capacity={"min": 1})) as (manager, backend, routing):
        await wait_until(lambda: len(routing.routed()) == 1, 5)
        [hung] = routing.in_state(S.READY)
        pid = backend.pid(hung.id)
        os.kill(pid, signal.SIGSTOP)  # alive but silent: only the health check can tell
        await wait_until(lambda: (hung.id, S.FAILED) in routing.seen, 3)
        await wait_until(lambda: len(routing.routed()) == 1 and hung.id not in routing.routed(), 3)
        await wait_until(lambda: not alive(pid), 2)


async def test_shadow_members_are_warmed_and_not_routed():
    spec = pool_spec(capacity={"min": 1}, shadow={"state": "running", "size": 1}, warmup={"requests": 3})
    async with running(spec) as (manager, backend, routing):
        await wait_until(lambda: routing.in_state(S.READY) and routing.in_state(S.SHADOW), 5)
        [shadow] = routing.in_state(S.SHADOW)
        assert shadow.shadow_state == "running" and shadow.prewarmed
        assert shadow.id not in routing.routed()
        # Warm-up traffic reached it before anyone routed to it: this request is the fourth.
        assert (await asyncio.to_thread(fetch, shadow.host, shadow.port))["hits"] == 4


async def test_paused_shadow_is_resumed_on_activation_without_a_new_launch():
    spec = pool_spec(capacity={"min": 1, "max": 4}, shadow={"state": "paused", "size": 1})

    def plan(ready):
        return published(Desired(ready, spec.shadow.size, spec.shadow.state, spec.capacity.max, spec.drain_timeout))

    async with running(spec, desired=plan(1)) as (manager, backend, routing):
        await wait_until(lambda: routing.in_state(S.READY) and routing.in_state(S.SHADOW), 5)
        [shadow] = routing.in_state(S.SHADOW)
        pid = backend.pid(shadow.id)
        assert shadow.shadow_state == "paused" and shadow.id not in routing.routed()
        await wait_until(lambda: proc_state(pid) == "T", 1)  # SIGSTOP lands asynchronously
        assert not answers(shadow.host, shadow.port, timeout=0.2)

        manager.set_desired(plan(2))
        await wait_until(lambda: shadow.id in routing.routed(), 1)
        assert backend.pid(shadow.id) == pid and proc_state(pid) != "T"
        assert (await asyncio.to_thread(fetch, shadow.host, shadow.port))["pid"] == pid
        # The shadow tier is refilled behind it by a fresh launch.
        await wait_until(lambda: len(routing.routed()) == 2 and routing.in_state(S.SHADOW), 5)
        assert routing.in_state(S.SHADOW)[0].id != shadow.id


def published(desired: Desired) -> DesiredState:
    """What the control loop would publish for the pool: the test is the planner."""
    return DesiredState.of({"web": desired})


def ready_only(spec, ready: int) -> DesiredState:
    return published(Desired(ready, 0, "none", spec.capacity.max, spec.drain_timeout))


async def test_drain_waits_for_in_flight_requests():
    busy = {"n": 1}
    spec = pool_spec(capacity={"min": 2}, drain_timeout=30)
    async with running(spec, desired=ready_only(spec, 2), in_flight=lambda mid: busy["n"]) as (
            manager, backend, routing):
        await wait_until(lambda: len(routing.routed()) == 2, 5)
        manager.set_desired(ready_only(spec, 1))
        [draining] = await wait_until(lambda: routing.in_state(S.DRAINING), 1)
        pid = backend.pid(draining.id)
        assert draining.id not in routing.routed()
        await asyncio.sleep(0.6)
        assert routing.in_state(S.DRAINING) and alive(pid), "still serving its in-flight request"
        busy["n"] = 0
        await wait_until(lambda: not routing.in_state(S.DRAINING), 1)
        await wait_until(lambda: not alive(pid), 1)
        assert [m.id for m in routing.members] == list(routing.routed()) and len(routing.members) == 1


async def test_drain_gives_up_after_drain_timeout():
    spec = pool_spec(capacity={"min": 2}, drain_timeout=0.5)
    async with running(spec, desired=ready_only(spec, 2), in_flight=lambda mid: 1) as (manager, backend, routing):
        await wait_until(lambda: len(routing.routed()) == 2, 5)
        manager.set_desired(ready_only(spec, 1))
        loop = asyncio.get_running_loop()
        [draining] = await wait_until(lambda: routing.in_state(S.DRAINING), 1)
        t0 = loop.time()
        await wait_until(lambda: draining.id not in {m.id for m in routing.members}, 3)
        assert loop.time() - t0 >= 0.45


async def test_stop_all_leaves_no_member_process_alive():
    spec = pool_spec(capacity={"min": 1, "max": 3}, shadow={"state": "paused", "size": 2})
    async with running(spec) as (manager, backend, routing):
        await wait_until(lambda: len(routing.in_state(S.SHADOW)) == 2 and routing.routed(), 5)
        children = pids(backend, routing)
        assert len(children) == 3 and all(alive(p) for p in children)
        await manager.stop_all()
        assert routing.members == [] and manager.members() == []
        assert not any(alive(p) for p in children)


async def test_backend_errors_are_survived():
    class Flaky(ProcessBackend):
        failures = 3

        async def list(self):
            if self.failures:
                self.failures -= 1
                raise OSError("engine unavailable")
            return await super().list()

    async with running(pool_spec(capacity={"min": 1}), backend=Flaky(owner="test")) as (manager, backend, routing):
        await wait_until(lambda: routing.routed(), 5)
        assert backend.failures == 0


async def test_members_that_never_boot_back_off_instead_of_relaunching_in_a_tight_loop():
    spec = pool_spec(command=f"{sys.executable} -c 'raise SystemExit(3)' {{port}}", capacity={"min": 1})
    async with running(spec) as (manager, backend, routing):
        await asyncio.sleep(1.6)
        launched = {mid for mid, state in routing.seen if state is S.LAUNCHING}
        failed = {mid for mid, state in routing.seen if state is S.FAILED}
        # Without back-off a 0.1 s loop would launch ~16; with 0.5 s, 1 s, 2 s it is a handful.
        assert 2 <= len(launched) <= 4 and failed <= launched and len(failed) >= len(launched) - 1


async def test_static_members_follow_their_health():
    port = free_port()
    cmd = [sys.executable, str(TINY), "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    spec = pool_spec(backend="static", command=None, servers=[f"127.0.0.1:{port}"])
    try:
        async with running(spec, backend=StaticBackend({"web": spec.servers})) as (manager, backend, routing):
            member_id = f"s-127.0.0.1:{port}"
            await wait_until(lambda: routing.routed() == {member_id}, 3)
            server.kill()
            server.wait()
            await wait_until(lambda: not routing.routed(), 2)
            assert [m.state for m in routing.members] == [S.FAILED]
            server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
            await wait_until(lambda: routing.routed() == {member_id}, 3)
        assert server.poll() is None, "static members are never stopped by warmfront"
    finally:
        server.kill()
        server.wait()


async def test_static_member_is_routed_before_any_check_and_failed_by_checks_that_say_why():
    port = free_port()   # nobody listens
    spec = pool_spec(backend="static", command=None, servers=[f"127.0.0.1:{port}"])
    member_id = f"s-127.0.0.1:{port}"
    with capture_logs() as logs:
        async with running(spec, backend=StaticBackend({"web": spec.servers})) as (manager, backend, routing):
            await wait_until(lambda: routing.routed() == {member_id}, 1)
            assert (member_id, S.LAUNCHING) not in routing.seen, "routed from the start, not after a check"
            await wait_until(lambda: not routing.routed(), 3)
            await asyncio.sleep(0.5)   # more failing checks while failed: counted, not logged again
            assert [(m.state, m.reason) for m in routing.members] == [
                (S.FAILED, "failed health checks: TCP connect -> connection refused")]
    failed = [e for e in logs if e["event"] == "member.check_failed"]
    assert len(failed) == spec.health.unhealthy_threshold, failed
    assert {(e["check"], e["status"], e["error"]) for e in failed} == {("tcp", None, "connection refused")}
    assert all(e["latency_ms"] >= 0 and e["member"] == member_id for e in failed)
    assert sum(manager.check_failures.values()) > len(failed)


async def test_static_pool_whose_health_path_is_a_404_stays_routed_unless_its_check_wants_2xx(tmp_path):
    server = PlainHTTPServer(tmp_path)
    member_id = f"s-127.0.0.1:{server.port}"
    checks = {"tcp": {}, "strict": {"path": "/healthz"}, "lenient": {"path": "/healthz", "expect_status": "200-499"}}
    try:
        with capture_logs() as logs:
            async with AsyncExitStack() as stack:
                routings = {}
                for name, health in checks.items():
                    spec = pool_spec(backend="static", command=None, servers=[f"127.0.0.1:{server.port}"],
                                     health=health)
                    _, _, routings[name] = await stack.enter_async_context(
                        running(spec, backend=StaticBackend({"web": spec.servers})))
                await wait_until(lambda: not routings["strict"].routed(), 3)
                await asyncio.sleep(0.6)   # three more checks of the other two
                assert [m.reason for m in routings["strict"].members] == ["failed health checks: GET /healthz -> 404"]
                for name in ("tcp", "lenient"):
                    assert routings[name].routed() == {member_id}, name
                    assert S.FAILED not in {state for _, state in routings[name].seen}, name
        failed = [e for e in logs if e["event"] == "member.check_failed"]
        assert failed and {(e["path"], e["status"], e["error"]) for e in failed} == {("/healthz", 404, None)}
    finally:
        server.stop()


async def test_static_member_without_active_checks_is_left_to_passive_ejection():
    port = free_port()   # nobody listens, and nothing probes it
    spec = pool_spec(backend="static", command=None, servers=[f"127.0.0.1:{port}"], health={"enabled": False})
    async with running(spec, backend=StaticBackend({"web": spec.servers})) as (manager, backend, routing):
        await wait_until(lambda: routing.routed() == {f"s-127.0.0.1:{port}"}, 1)
        await asyncio.sleep(0.6)
        assert routing.routed() == {f"s-127.0.0.1:{port}"} and manager.check_failures == {}


async def test_stop_all_ends_the_loop_even_when_a_wake_up_races_the_cancel():
    # On 3.11, asyncio.wait_for swallows a cancel that lands while the event it waits on is being
    # set; a loop built on it then outlives stop_all, which waits for it forever (a hung shutdown).
    for spins in range(4):
        for _ in range(10):
            manager = PoolManager("web", pool_spec(capacity={"min": 0}), ProcessBackend(owner="test"), interval=5)
            task = asyncio.create_task(manager.run())
            await asyncio.sleep(0.01)   # the loop is idle, waiting for a wake-up
            manager.wake()
            for _ in range(spins):
                await asyncio.sleep(0)
            async with asyncio.timeout(2):
                await manager.stop_all()
            assert task.done()
