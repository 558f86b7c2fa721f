"""Members as local child processes: the embedded default where no Docker engine is reachable.

Children stay in warmfront's process group (so operators and `pgrep -g` see them as ours) and ask
the kernel to SIGKILL them when warmfront dies, even by SIGKILL, so none outlives it.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import structlog

from config.models import Pool
from pools.backends.base import (
    BackendError,
    BackendEvent,
    EventHub,
    Instance,
    InstanceStatus,
    Subscription,
    member_labels,
)
from pools.ports import free_port
from pools.usage import MemberUsage, ResourceLimits, process_usage

log = structlog.get_logger()

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent_pid: int):
    # PDEATHSIG fires when the *thread* that forked exits, so launch() must run on the loop's
    # thread (never in an executor thread that may end while warmfront lives).
    def preexec() -> None:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:  # parent died before prctl took effect
            os._exit(1)
    return preexec


@dataclass(slots=True)
class _Child:
    instance: Instance
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    exited: asyncio.Future | None = None   # resolved with the exit code once reaped
    stopping: bool = False                 # an exit we asked for is not a death

    @property
    def alive(self) -> bool:
        return self.exited is not None and not self.exited.done()

    def spawned(self) -> tuple[subprocess.Popen, asyncio.Future]:
        """The process and its exit future; a member is only signalled once spawned."""
        if self.proc is None or self.exited is None:
            raise BackendError(f"{self.instance.id} was never started")
        return self.proc, self.exited


class ProcessBackend:
    def __init__(self, owner: str = "local", log_dir: str | Path | None = None, host: str = "127.0.0.1") -> None:
        self.owner = owner
        self.host = host
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._children: dict[str, _Child] = {}
        self._counters: dict[str, int] = {}
        self._hub = EventHub()

    async def list(self) -> list[Instance]:
        return [c.instance for c in self._children.values()]

    async def launch(self, pool: str, spec: Pool, port: int | None = None,
                     limits: ResourceLimits | None = None) -> Instance:
        """`limits` are accepted and ignored: a child process has no cgroup of its own to limit (it
        shares warmfront's), so right-sizing has nothing to apply here."""
        if not spec.command:
            raise BackendError(f"pool {pool!r} has no command to launch")
        port = port or free_port(self.host)
        self._counters[pool] = n = self._counters.get(pool, 0) + 1
        instance_id = f"p-{pool}-{n}"
        # Substitute after splitting so a port never needs quoting and other braces survive.
        argv = [a.replace("{port}", str(port)) for a in shlex.split(spec.command)]
        env = {**os.environ, **{k: v.replace("{port}", str(port)) for k, v in spec.env.items()}}
        env["PORT"] = str(port)
        # `warmfront ...` and `python` must resolve to this venv even when it is not activated.
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", os.defpath)
        instance = Instance(instance_id, pool, self.host, port, InstanceStatus.RUNNING, member_labels(pool, self.owner, spec))
        child = _Child(instance, argv, env)
        self._spawn(child)
        self._children[instance_id] = child
        return instance

    async def start(self, instance_id: str) -> None:
        child = self._child(instance_id)
        if child.instance.status in (InstanceStatus.STOPPED, InstanceStatus.EXITED):
            self._spawn(child)

    async def pause(self, instance_id: str) -> None:
        child = self._child(instance_id)
        self._signal(child, signal.SIGSTOP)
        child.instance.status = InstanceStatus.PAUSED

    async def resume(self, instance_id: str) -> None:
        child = self._child(instance_id)
        self._signal(child, signal.SIGCONT)
        child.instance.status = InstanceStatus.RUNNING

    async def resize(self, instance_id: str, cpus: float | None) -> None:
        """Local processes have no CPU quota to shrink; shadows save CPU by pausing instead."""

    async def stop(self, instance_id: str, timeout: float) -> None:
        child = self._child(instance_id)
        if child.alive:
            proc, exited = child.spawned()
            child.stopping = True
            self._signal(child, signal.SIGTERM)
            self._signal(child, signal.SIGCONT)  # a paused process only acts on SIGTERM once continued
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(exited)
            except TimeoutError:
                if child.alive:  # it may have exited while the timeout was being handled
                    proc.kill()
                await exited
        child.instance.status = InstanceStatus.STOPPED

    async def remove(self, instance_id: str) -> None:
        if instance_id in self._children:
            await self.stop(instance_id, 0)
            del self._children[instance_id]

    def address(self, instance_id: str) -> tuple[str, int]:
        inst = self._child(instance_id).instance
        return inst.host, inst.port

    def events(self) -> Subscription:
        return self._hub.subscribe()

    async def usage(self, instance_ids: Sequence[str]) -> dict[str, MemberUsage]:
        """CPU and memory of each running member's process tree, from /proc (no limits, no network
        namespace of its own). The reads run in one executor call: ~0.18 ms per member (bench/usage.py)
        is tens of ms for a large pool, too long to hold the control loop."""
        pids = {i: pid for i in instance_ids if (pid := self.pid(i)) is not None}
        if not pids:
            return {}
        return await asyncio.to_thread(_read_usage, pids)

    def pid(self, instance_id: str) -> int | None:
        """The live process of a member, for operators and tests; None when it is not running."""
        child = self._children.get(instance_id)
        if child is None or not child.alive:
            return None
        return child.spawned()[0].pid

    async def close(self) -> None:
        """Kill and reap every child still known: the last line of defence at shutdown."""
        await asyncio.gather(*(self.remove(i) for i in list(self._children)), return_exceptions=True)

    def _child(self, instance_id: str) -> _Child:
        try:
            return self._children[instance_id]
        except KeyError:
            raise BackendError(f"unknown process member {instance_id!r}") from None

    def _spawn(self, child: _Child) -> None:
        inst = child.instance
        out: int | BinaryIO = subprocess.DEVNULL
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self._log_dir / f"{inst.id}.log", "ab")
        try:
            proc = subprocess.Popen(child.argv, env=child.env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, close_fds=True,
                                    preexec_fn=_die_with_parent(os.getpid()))
        except OSError as e:
            raise BackendError(f"cannot start {inst.id}: {e}") from e
        finally:
            if not isinstance(out, int):
                out.close()
        loop = asyncio.get_running_loop()
        child.proc, child.exited, child.stopping = proc, loop.create_future(), False
        inst.status = InstanceStatus.RUNNING
        # A pidfd turns child exit into a loop wake-up: immediate, no thread, no SIGCHLD handler.
        pidfd = os.pidfd_open(proc.pid)
        loop.add_reader(pidfd, self._on_exit, child, proc, pidfd)
        log.debug("process.spawned", member=inst.id, pid=proc.pid, argv=child.argv)

    def _on_exit(self, child: _Child, proc: subprocess.Popen, pidfd: int) -> None:
        asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)
        code = proc.wait()  # already exited: this only reaps, so no zombie is left
        if child.proc is not proc:
            return
        child.spawned()[1].set_result(code)
        if child.stopping:
            child.instance.status = InstanceStatus.STOPPED
        else:
            child.instance.status = InstanceStatus.EXITED
            self._hub.publish(BackendEvent("died", child.instance.id, child.instance.pool, code))

    @staticmethod
    def _signal(child: _Child, sig: signal.Signals) -> None:
        if not child.alive:
            raise BackendError(f"{child.instance.id} is not running")
        child.spawned()[0].send_signal(sig)


def _read_usage(pids: dict[str, int]) -> dict[str, MemberUsage]:
    return {i: u for i, pid in pids.items() if (u := process_usage(i, pid)) is not None}
