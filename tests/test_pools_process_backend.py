"""The process backend against real child processes serving HTTP on 127.0.0.1."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from pools.backends.base import (LABEL_GENERATION, LABEL_INSTANCE, LABEL_MANAGED, LABEL_POOL, BackendError,
                                 InstanceStatus, member_generation)
from pools.backends.process import ProcessBackend
from tests.pools_support import TINY, alive, answers, fetch, pool_spec, proc_state, wait_until


@pytest.fixture
async def backend(tmp_path):
    b = ProcessBackend(owner="test-wf", log_dir=tmp_path / "members")
    yield b
    await b.close()


async def booted(backend, spec, pool="web"):
    inst = await backend.launch(pool, spec)
    await wait_until(lambda: answers(inst.host, inst.port), 5)
    return inst


async def test_launch_runs_the_command_on_a_loopback_port_with_port_env_and_labels(backend, tmp_path):
    # Bare `python`: resolves only because the backend puts this interpreter's directory first on PATH.
    spec = pool_spec(command=f"python {TINY} --port {{port}}", env={"WF_TEST": "on-{port}"})
    inst = await booted(backend, spec)
    body = await asyncio.to_thread(fetch, inst.host, inst.port)
    assert inst.id == "p-web-1" and inst.host == "127.0.0.1"
    assert body["port_env"] == str(inst.port) and body["wf_test"] == f"on-{inst.port}"
    assert os.path.dirname(body["executable"]) == os.path.dirname(sys.executable)
    assert inst.labels == {LABEL_MANAGED: "true", LABEL_POOL: "web", LABEL_INSTANCE: "test-wf",
                           LABEL_GENERATION: member_generation(spec)}
    assert backend.address(inst.id) == (inst.host, inst.port)
    assert (await backend.launch("web", spec)).id == "p-web-2"
    await wait_until(lambda: (tmp_path / "members" / "p-web-1.log").read_text().startswith("listening"), 2)


async def test_children_stay_in_warmfront_process_group(backend):
    inst = await booted(backend, pool_spec())
    assert os.getpgid(backend.pid(inst.id)) == os.getpgid(0)


async def test_pause_stops_the_process_and_resume_continues_it(backend):
    inst = await booted(backend, pool_spec())
    pid = backend.pid(inst.id)
    await backend.pause(inst.id)
    await wait_until(lambda: proc_state(pid) == "T", 1)  # SIGSTOP lands asynchronously
    assert [i.status for i in await backend.list()] == [InstanceStatus.PAUSED]
    await backend.resume(inst.id)
    assert proc_state(pid) != "T"
    assert (await asyncio.to_thread(fetch, inst.host, inst.port))["pid"] == pid


async def test_stop_escalates_to_sigkill_after_timeout_and_reaps(backend):
    inst = await booted(backend, pool_spec(command=f"{sys.executable} {TINY} --port {{port}} --ignore-term"))
    pid = backend.pid(inst.id)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await backend.stop(inst.id, timeout=0.3)
    assert 0.3 <= loop.time() - t0 < 2
    assert not alive(pid), "killed and reaped: not even a zombie is left"
    assert (await backend.list())[0].status is InstanceStatus.STOPPED


async def test_stop_of_a_paused_member_terminates_it_without_waiting_for_sigkill(backend):
    inst = await booted(backend, pool_spec())
    pid = backend.pid(inst.id)
    await backend.pause(inst.id)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await backend.stop(inst.id, timeout=3)
    assert loop.time() - t0 < 1 and not alive(pid)


async def test_start_brings_a_stopped_member_back_on_its_address(backend):
    inst = await booted(backend, pool_spec())
    old = backend.pid(inst.id)
    await backend.stop(inst.id, timeout=1)
    await backend.start(inst.id)
    await wait_until(lambda: answers(inst.host, inst.port), 5)
    assert backend.pid(inst.id) not in (None, old)


async def test_unexpected_exit_is_reported_as_died_but_a_requested_stop_is_not(backend):
    events = backend.events()
    a = await booted(backend, pool_spec())
    b = await booted(backend, pool_spec())
    await backend.stop(a.id, timeout=1)
    os.kill(backend.pid(b.id), signal.SIGKILL)
    ev = await asyncio.wait_for(anext(events), 2)
    assert (ev.kind, ev.instance_id, ev.pool, ev.exit_code) == ("died", b.id, "web", -signal.SIGKILL)
    assert {i.id: i.status for i in await backend.list()} == {a.id: InstanceStatus.STOPPED,
                                                              b.id: InstanceStatus.EXITED}
    events.close()


async def test_remove_kills_the_process_and_forgets_the_member(backend):
    inst = await booted(backend, pool_spec())
    pid = backend.pid(inst.id)
    await backend.remove(inst.id)
    assert not alive(pid) and await backend.list() == []
    with pytest.raises(BackendError):
        await backend.pause(inst.id)


async def test_launch_without_command_is_a_backend_error(backend):
    spec = pool_spec().model_copy(update={"command": None})
    with pytest.raises(BackendError):
        await backend.launch("web", spec)


def test_children_die_with_warmfront_even_on_sigkill(tmp_path):
    script = textwrap.dedent(f"""
        import asyncio, sys
        sys.path[:0] = {[os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]!r}
        from pools.backends.process import ProcessBackend
        from tests.pools_support import pool_spec
        async def main():
            backend = ProcessBackend()
            inst = await backend.launch("web", pool_spec())
            print(backend.pid(inst.id), flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
        """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    child = 0
    try:
        child = int(next(line for line in parent.stdout if line.strip().isdigit()))
        assert alive(child) and os.getpgid(child) == parent.pid
        parent.kill()
        parent.wait()
        asyncio.run(wait_until(lambda: not alive(child) or proc_state(child) == "Z", 2))
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child and alive(child) and proc_state(child) != "Z":
            os.kill(child, signal.SIGKILL)
