"""Unmanaged servers listed in the config: health-checked and routed, never launched or stopped."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from config.models import Pool
from pools.backends.base import BackendError, EventHub, Instance, InstanceStatus, Subscription
from pools.ports import parse_hostport
from pools.usage import MemberUsage, ResourceLimits


class StaticBackend:
    def __init__(self, servers: Mapping[str, Sequence[str]]) -> None:
        """`servers`: pool name -> its `HOST:PORT` entries (Pool.servers)."""
        self._instances: dict[str, Instance] = {}
        for pool, entries in servers.items():
            for entry in entries:
                host, port = parse_hostport(entry)
                iid = f"s-{host}:{port}"
                self._instances[iid] = Instance(iid, pool, host, port, InstanceStatus.RUNNING)
        self._hub = EventHub()  # nothing publishes: we cannot see these servers die, only fail checks

    async def list(self) -> list[Instance]:
        return list(self._instances.values())

    async def launch(self, pool: str, spec: Pool, port: int | None = None,
                     limits: ResourceLimits | None = None) -> Instance:
        raise BackendError(f"static pool {pool!r} cannot launch members; list them in `servers`")

    async def start(self, instance_id: str) -> None:
        self._refuse(instance_id, "start")

    async def pause(self, instance_id: str) -> None:
        self._refuse(instance_id, "pause")

    async def resume(self, instance_id: str) -> None:
        self._refuse(instance_id, "resume")

    async def resize(self, instance_id: str, cpus: float | None) -> None:
        """Not ours to resize."""

    async def stop(self, instance_id: str, timeout: float) -> None:
        self._refuse(instance_id, "stop")

    async def remove(self, instance_id: str) -> None:
        self._refuse(instance_id, "remove")

    def address(self, instance_id: str) -> tuple[str, int]:
        inst = self._instances[instance_id]
        return inst.host, inst.port

    def events(self) -> Subscription:
        return self._hub.subscribe()

    async def usage(self, instance_ids: Sequence[str]) -> dict[str, MemberUsage]:
        """Nothing: these servers run somewhere warmfront has no view into."""
        return {}

    @staticmethod
    def _refuse(instance_id: str, op: str) -> None:
        raise BackendError(f"static member {instance_id} is not managed by warmfront; cannot {op} it")
