"""The simulated backend: members that exist only on a clock, for `warmfront simulate`.

A real `Backend` (the Protocol in pools.backends.base), so the real `PoolManager` acts on it, with
`SimulatedHealth` as its health checker: a launched member answers its health check `Delays.cold`
seconds later, a paused one resumes in `Delays.activation["paused"]` (a running shadow is
routed at once, as live: the manager only restores its CPU), a stopped one boots again (cold).
Nothing here waits on anything but the clock it is given and `asyncio.sleep`, so on
`pools.virtual.VirtualClockLoop` a day of members costs no real time. Simulated members never
crash; warm-up requests take no time.
"""
from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from config.models import HealthCheck, Pool, Warmup
from pools.backends.base import BackendError, EventHub, Instance, InstanceStatus, Subscription, member_labels
from pools.health import Probe
from pools.usage import MemberUsage, ResourceLimits

# Medians from bench/activation.py (README "Activation"): a stopped shadow boots again, i.e. is cold.
DEFAULT_ACTIVATION = {"running": 0.001, "paused": 0.015}
HOST = "simulated"


@dataclass(frozen=True, slots=True)
class Delays:
    cold: float = 60.0                                       # launch to healthy, seconds
    activation: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ACTIVATION))

    def activate(self, shadow_state: str | None) -> float:
        return self.activation.get(shadow_state or "", self.cold)


class SimulatedBackend:
    """Instances on `clock`; the port is the instance's number, so the health checker finds it."""

    def __init__(self, delays: Delays, clock: Callable[[], float], owner: str = "simulate") -> None:
        self.delays, self.clock, self.owner = delays, clock, owner
        self.instances: dict[str, Instance] = {}
        self.launches = 0
        self._boots_at: dict[int, float] = {}   # port -> when the member answers its health check
        self._hub = EventHub()

    async def list(self) -> list[Instance]:
        return list(self.instances.values())

    async def launch(self, pool: str, spec: Pool, port: int | None = None,
                     limits: ResourceLimits | None = None) -> Instance:
        """`limits` are ignored: a simulated member has no CPU or memory to limit."""
        self.launches += 1
        port = port if port is not None else self.launches
        inst = Instance(f"sim-{self.launches}", pool, HOST, port, InstanceStatus.RUNNING,
                        member_labels(pool, self.owner, spec))
        self.instances[inst.id] = inst
        self._boots_at[port] = self.clock() + self.delays.cold
        return inst

    async def start(self, instance_id: str) -> None:
        inst = self._get(instance_id)
        if inst.status is not InstanceStatus.RUNNING:
            inst.status = InstanceStatus.RUNNING
            self._boots_at[inst.port] = self.clock() + self.delays.cold

    async def pause(self, instance_id: str) -> None:
        self._get(instance_id).status = InstanceStatus.PAUSED

    async def resume(self, instance_id: str) -> None:
        inst = self._get(instance_id)
        await asyncio.sleep(self.delays.activation.get("paused", 0.0))
        inst.status = InstanceStatus.RUNNING

    async def resize(self, instance_id: str, cpus: float | None) -> None:
        self._get(instance_id)

    async def stop(self, instance_id: str, timeout: float) -> None:
        self._get(instance_id).status = InstanceStatus.STOPPED

    async def remove(self, instance_id: str) -> None:
        inst = self.instances.pop(instance_id, None)
        if inst is not None:
            self._boots_at.pop(inst.port, None)

    def address(self, instance_id: str) -> tuple[str, int]:
        inst = self._get(instance_id)
        return inst.host, inst.port

    def events(self) -> Subscription:
        return self._hub.subscribe()

    async def usage(self, instance_ids: Sequence[str]) -> dict[str, MemberUsage]:
        """Nothing: simulated members use no resources (simulate models them from the trace)."""
        return {}

    def answers_at(self, port: int) -> float:
        """When the member on `port` answers its health check (inf: never, as things stand)."""
        return self._boots_at.get(port, math.inf)

    def _get(self, instance_id: str) -> Instance:
        inst = self.instances.get(instance_id)
        if inst is None:
            raise BackendError(f"no simulated instance {instance_id}")
        return inst


class SimulatedHealth:
    """The `PoolManager`'s health checker for a `SimulatedBackend`: a member is healthy once it has
    booted and while it runs; waiting for a boot is one sleep until then, not a probe every 20 ms."""

    def __init__(self, backend: SimulatedBackend) -> None:
        self.backend = backend

    async def probe(self, host: str, port: int, check: HealthCheck) -> Probe:
        inst = next((i for i in self.backend.instances.values() if i.port == port), None)
        return Probe(inst is not None and inst.status is InstanceStatus.RUNNING
                     and self.backend.answers_at(port) <= self.backend.clock())

    async def wait_healthy(self, host: str, port: int, check: HealthCheck, deadline: float,
                           clock: Callable[[], float]) -> bool:
        at = self.backend.answers_at(port)
        if at > deadline:
            await asyncio.sleep(max(0.0, deadline - clock()))
            return False
        await asyncio.sleep(max(0.0, at - clock()))
        return True

    async def warm(self, host: str, port: int, warmup: Warmup, timeout: float) -> int:
        return warmup.requests

    async def close(self) -> None:
        return None
