"""The interface every backend (process, static, docker, swarm, simulated) offers the control loop.

Instances carry Docker-style labels so ownership works the same everywhere: a warmfront only adopts
and touches instances labelled `warmfront.managed=true` with its own `warmfront.instance`.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol

from config.models import Pool
from pools.usage import MemberUsage, ResourceLimits

LABEL_MANAGED = "warmfront.managed"
LABEL_POOL = "warmfront.pool"
LABEL_INSTANCE = "warmfront.instance"


LABEL_GENERATION = "warmfront.generation"
# Pool fields that shape the members themselves: a change means new members (a new generation).
MEMBER_FIELDS = ("backend", "command", "env", "servers", "docker", "swarm", "health", "warmup")


# Health fields added after members were first labelled, left out of the hash at these defaults so
# that upgrading warmfront does not make every running member another generation (and replace it).
LATER_HEALTH_DEFAULTS = {"enabled": True, "type": "http", "expect_status": "200-399"}


def member_generation(spec: Pool) -> str:
    """A short hash of what a member is built from: members of another generation are not adopted."""
    dumped = spec.model_dump(mode="json")
    shape = {f: dumped[f] for f in MEMBER_FIELDS}
    shape["health"] = {k: v for k, v in shape["health"].items()
                       if k not in LATER_HEALTH_DEFAULTS or v != LATER_HEALTH_DEFAULTS[k]}
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]


def member_labels(pool: str, owner: str, spec: Pool) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_POOL: pool, LABEL_INSTANCE: owner,
            LABEL_GENERATION: member_generation(spec)}


class InstanceStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"   # stopped on purpose; `start` brings it back on the same address
    EXITED = "exited"     # ended on its own (crash, kill)


@dataclass(slots=True)
class Instance:
    id: str
    pool: str
    host: str
    port: int
    status: InstanceStatus
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BackendEvent:
    kind: Literal["died"]
    instance_id: str
    pool: str
    exit_code: int | None = None
    reason: str = ""   # "oom": the kernel killed it for exceeding its memory limit


class BackendError(Exception):
    """The backend refused or failed an operation; the control loop logs it and retries later."""


class Backend(Protocol):
    async def list(self) -> list[Instance]: ...
    async def launch(self, pool: str, spec: Pool, port: int | None = None,
                     limits: ResourceLimits | None = None) -> Instance:
        """`limits` override the spec's `cpus` / `memory` for this member (right-sizing); its generation
        stays the spec's, so the pool still adopts it. Backends without per-member limits ignore them."""
        ...
    async def start(self, instance_id: str) -> None: ...
    async def pause(self, instance_id: str) -> None: ...
    async def resume(self, instance_id: str) -> None: ...
    async def resize(self, instance_id: str, cpus: float | None) -> None: ...
    async def stop(self, instance_id: str, timeout: float) -> None: ...
    async def remove(self, instance_id: str) -> None: ...
    def address(self, instance_id: str) -> tuple[str, int]: ...
    def events(self) -> "Subscription": ...

    async def usage(self, instance_ids: Sequence[str]) -> dict[str, MemberUsage]:
        """What each member uses now (cumulative counters and levels); members that cannot be measured
        (gone, stopped, not ours, somewhere we cannot see) are missing from the result."""
        ...


class Subscription:
    """One consumer's stream of backend events; registered at creation so nothing published after
    `events()` returns is missed."""

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[BackendEvent] = asyncio.Queue()

    def __aiter__(self) -> AsyncIterator[BackendEvent]:
        return self

    async def __anext__(self) -> BackendEvent:
        return await self._queue.get()

    def close(self) -> None:
        self._hub._subscribers.discard(self)


class EventHub:
    """Fan-out of backend events: several pool managers may share one backend."""

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        self._subscribers.add(sub)
        return sub

    def publish(self, event: BackendEvent) -> None:
        for sub in self._subscribers:
            sub._queue.put_nowait(event)
