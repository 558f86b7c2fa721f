"""Members as Docker Swarm services: one service with one replica per member.

A replicated service of N lets Swarm choose which task a scale-in kills; one service per member
lets warmfront drain and remove exactly the member it chose. Restarts are warmfront's too (restart
condition `none`): a task that ends leaves its service with no running task, which list() reports
as EXITED, and the manager replaces it.

The contract is the docker backend's: `warmfront.*` labels on the service and on its task's
container, nothing unlabelled is seen or touched, the port lives in a label for adoption. The daemon
access, the error mapping and the container event stream are DockerBackend's (this is a subclass):
task containers carry the labels, so their deaths arrive on the same stream, named by their service.

Pausing and resizing act on the task's container, which only the engine of the task's node can do.
warmfront talks to one engine (`swarm.host`, a manager), so members of a pool with paused shadows or
`shadow.cpus` are constrained to that engine's node; pause/resize of a task elsewhere is refused.
Measuring (`usage`) likewise reads the task container's cgroup on that node only; members elsewhere
are not measured.
"""
from __future__ import annotations

import asyncio
import builtins
import contextlib
import re
import secrets
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import docker
import docker.errors
import structlog
from docker.types import ContainerSpec, Placement, Resources, RestartPolicy, ServiceMode, TaskTemplate

from config.models import Pool
from pools.backends.base import (LABEL_INSTANCE, LABEL_MANAGED, LABEL_POOL, BackendError, Instance, InstanceStatus,
                                 member_labels)
from pools.backends.docker import (LABEL_CPUS, LABEL_NETWORK, LABEL_PORT, DockerBackend, _Gone, _nano,
                                   _update_nano_cpus)
from pools.ports import free_port
from pools.usage import MemberUsage, ResourceLimits

log = structlog.get_logger()

LABEL_SERVICE = "com.docker.swarm.service.name"   # set by Swarm on every task container
# Task states before and at running; anything else (complete, failed, rejected, shutdown, orphaned, ...) has ended.
LIVE_STATES = frozenset({"new", "allocated", "pending", "assigned", "accepted", "ready", "preparing", "starting",
                         "running"})
PLACED_STATES = LIVE_STATES - {"new", "allocated", "pending"}
SCHEDULE_TIMEOUT = 15.0   # longest wait for a new task to be given a node before the launch fails
POLL = 0.05
STOP_SLACK = 2.0    # past the grace period, a task container still running on our engine is killed
STOP_LIMIT = 30.0   # past the grace period, a stop that has not ended fails


@dataclass(slots=True)
class _Service:
    service_id: str
    name: str
    pool: str
    network: str
    host: str
    port: int
    cpus: float | None
    labels: dict[str, str]
    known_since: float
    node_id: str = ""          # the node of its latest task
    container_id: str = ""     # the container of its latest task


class SwarmBackend(DockerBackend):
    def __init__(self, owner: str, base_url: str | None = None, host_ip: str = "127.0.0.1",
                 request_timeout: float = 10.0) -> None:
        """`host_ip`: the address of a host-network task whose node advertises none (0.0.0.0)."""
        super().__init__(owner, base_url=base_url, host_ip=host_ip, request_timeout=request_timeout)
        self._services: dict[str, _Service] = {}   # by service name (the Instance id); verified as ours
        self._node_addr: dict[str, str] = {}
        self._local_node = ""                     # the node whose engine is the one we talk to

    # ------------------------------------------------------------------ Backend protocol
    async def list(self) -> list[Instance]:
        asked_at = time.monotonic()
        ours = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={self.owner}"]}
        services = [s for s in await self._call("list services", lambda c: c.api.services(filters=ours))
                    if self._is_ours(s["Spec"].get("Labels") or {})]
        ids = [s["ID"] for s in services]
        tasks = await self._call("list tasks", lambda c: c.api.tasks(filters={"service": ids})) if ids else []
        # Pause is a container state Swarm does not know; only containers on our engine's node can be paused.
        paused = {row["Id"] for row in await self._call("list containers", lambda c: c.api.containers(
            filters={**ours, "status": "paused"}))}
        instances, seen = [], set()
        for svc in services:
            task = _latest([t for t in tasks if t.get("ServiceID") == svc["ID"]])
            s = await self._note(svc, task)
            seen.add(s.name)
            instances.append(Instance(s.name, s.pool, s.host, s.port, _status(svc, task, paused), dict(s.labels)))
        for name, s in list(self._services.items()):
            if name not in seen and s.known_since < asked_at:
                del self._services[name]   # removed behind our back
        return instances

    async def launch(self, pool: str, spec: Pool, port: int | None = None,
                     limits: ResourceLimits | None = None) -> Instance:
        """`limits` override the spec's cpus and memory for this member's task (see DockerBackend.launch)."""
        sw = spec.swarm
        if sw is None:
            raise BackendError(f"pool {pool!r} has no swarm section")
        cpus, memory = limits.over(sw.cpus, sw.memory) if limits is not None else (sw.cpus, sw.memory)
        port = port or free_port(self.host_ip)
        name = f"wf-{re.sub(r'[^A-Za-z0-9_-]', '-', pool)}-{secrets.token_hex(3)}"
        labels = {**member_labels(pool, self.owner, spec), LABEL_NETWORK: sw.network, LABEL_PORT: str(port)}
        if cpus is not None:
            labels[LABEL_CPUS] = repr(float(cpus))
        env = {k: v.replace("{port}", str(port)) for k, v in {**sw.env, **spec.env}.items()}
        env["PORT"] = str(port)
        constraints = list(sw.constraints)
        if spec.shadow.state == "paused" or spec.shadow.cpus is not None:
            constraints.append(f"node.id=={await self._engine_node()}")   # where pause/resize can reach
        container = ContainerSpec(
            sw.image, labels=labels, env=[f"{k}={v}" for k, v in env.items()], init=sw.init,
            # Substitute after splitting so a port never needs quoting and other braces survive.
            command=[a.replace("{port}", str(port)) for a in shlex.split(sw.command)] if sw.command else None,
            stop_grace_period=int(spec.stop_timeout * 1e9))
        template = TaskTemplate(
            container, restart_policy=RestartPolicy("none"),
            resources=Resources(cpu_limit=_nano(cpus) if cpus is not None else None, mem_limit=memory),
            placement=Placement(constraints=constraints or None,
                                preferences=[("spread", p.split("=", 1)[1]) for p in sw.placement] or None))
        await self._call(f"launch {name}", lambda c: c.api.create_service(
            template, name=name, labels=labels, mode=ServiceMode("replicated", 1), networks=[sw.network]))
        try:
            s = await self._placed(name)
        except BaseException:
            # Best effort: a service left behind (manager gone meanwhile) is listed and adopted later.
            with contextlib.suppress(BackendError):
                await self._forget(name)
            raise
        log.info("swarm.launched", member=name, pool=pool, image=sw.image, node=s.node_id,
                 address=f"{s.host}:{s.port}")
        return Instance(name, pool, s.host, s.port, InstanceStatus.RUNNING, dict(labels))

    async def start(self, instance_id: str) -> None:
        """One replica again, on the node it ran on, so its address does not move."""
        s = await self._service(instance_id)
        pin = f"node.id=={s.node_id}" if s.node_id else None
        earlier = frozenset(t["ID"] for t in await self._tasks(s.service_id))
        await self._call(f"start {s.name}", lambda c: _scale(c, s.service_id, 1, pin))
        await self._placed(s.name, earlier)

    async def pause(self, instance_id: str) -> None:
        s = await self._local_container(instance_id, "pause")
        await self._call(f"pause {s.name}", lambda c: c.api.pause(s.container_id))

    async def resume(self, instance_id: str) -> None:
        s = await self._local_container(instance_id, "resume")
        await self._call(f"unpause {s.name}", lambda c: c.api.unpause(s.container_id))

    async def resize(self, instance_id: str, cpus: float | None) -> None:
        """Change the task container's CPU limit in place (a service update would replace the task)."""
        s = await self._local_container(instance_id, "resize")
        target = cpus if cpus is not None else s.cpus
        await self._call(f"resize {s.name}", lambda c: _update_nano_cpus(c, s.container_id, target))

    async def stop(self, instance_id: str, timeout: float) -> None:
        """Zero replicas: Swarm sends SIGTERM and SIGKILL after the grace period set at launch."""
        s = await self._refresh(await self._service(instance_id))
        if s.container_id:
            self._expect_death(s.container_id)
        await self._call(f"stop {s.name}", lambda c: _scale(c, s.service_id, 0, None))
        started = time.monotonic()
        enforced = False
        while True:
            live = [t for t in await self._tasks(s.service_id) if t["Status"]["State"] in LIVE_STATES]
            if not live:
                return
            waited = time.monotonic() - started
            if not enforced and waited > timeout + STOP_SLACK:
                # A loaded node's agent can be late to act on (or to report) the scale-in: a task container on our
                # engine is checked, and killed if it outlived its grace period; one already gone ends the wait.
                enforced = True
                if await self._enforce_stop(s.name, live):
                    return
            if waited > timeout + STOP_LIMIT:
                raise BackendError(f"swarm stop {s.name}: its task was still running {waited:.0f}s later")
            await asyncio.sleep(POLL * 4)

    async def _enforce_stop(self, name: str, live: builtins.list[dict]) -> bool:
        """True when every live task's container is known to have ended on our engine."""
        here = await self._engine_node()
        ended = True
        for task in live:
            cid = ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID")
            if task.get("NodeID") != here or not cid:
                ended = False
                continue
            try:
                state: dict = await self._call(f"inspect task container of {name}", _container_state(cid))
            except _Gone:
                continue
            if state.get("Running"):
                ended = False
                log.warning("swarm.stop_enforced", member=name, container=cid[:12])
                with contextlib.suppress(_Gone):
                    await self._call(f"kill {name}", _kill(cid))
        return ended

    async def remove(self, instance_id: str) -> None:
        try:
            s = await self._refresh(await self._service(instance_id))   # its current task's container
        except _Gone:
            self._services.pop(instance_id, None)
            return
        if s.container_id:
            self._expect_death(s.container_id)
            self._pids.pop(s.container_id, None)
        await self._forget(s.name)

    async def usage(self, instance_ids: Sequence[str]) -> dict[str, MemberUsage]:
        """The task containers on our engine's node, measured as the docker backend measures containers;
        members whose task runs elsewhere (or has no container yet) are not measured."""
        try:
            here = await self._engine_node()
        except BackendError:
            return {}
        targets: dict[str, tuple[str, bool]] = {}
        for instance_id in instance_ids:
            with contextlib.suppress(BackendError):
                s = await self._service(instance_id)
                if s.node_id == here and s.container_id:
                    targets[instance_id] = (s.container_id, s.network != "host")
        return await self._containers_usage(targets)

    def address(self, instance_id: str) -> tuple[str, int]:
        s = self._services.get(instance_id)
        if s is None:
            raise BackendError(f"unknown swarm member {instance_id!r}")
        return s.host, s.port

    # ------------------------------------------------------------------ services and tasks
    async def _service(self, instance_id: str) -> _Service:
        """The member behind an id, refusing any service that does not carry our labels."""
        s = self._services.get(instance_id)
        if s is not None:
            return s
        svc = await self._call(f"inspect {instance_id}", lambda c: c.api.inspect_service(instance_id))
        if not self._is_ours(svc["Spec"].get("Labels") or {}):
            raise BackendError(f"refusing to touch service {instance_id!r}: it is not a warmfront member "
                               f"of instance {self.owner!r}")
        return await self._refresh_service(svc)

    async def _refresh_service(self, svc: dict) -> _Service:
        tasks = await self._tasks(svc["ID"])
        return await self._note(svc, _latest(tasks))

    async def _refresh(self, s: _Service) -> _Service:
        svc = await self._call(f"inspect {s.name}", lambda c: c.api.inspect_service(s.service_id))
        return await self._refresh_service(svc)

    async def _note(self, svc: dict, task: dict | None) -> _Service:
        labels = svc["Spec"].get("Labels") or {}
        name = svc["Spec"]["Name"]
        old = self._services.get(name)
        network = labels.get(LABEL_NETWORK, "host")
        node_id = (task or {}).get("NodeID") or (old.node_id if old else "")
        container_id = (((task or {}).get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID") or (
            old.container_id if old else "")
        host = old.host if old else ""
        if old is not None and old.container_id != container_id:
            self._pids.pop(old.container_id, None)   # its task was replaced (stop and start)
        if network == "host" and node_id:
            host = await self._address_of(node_id)
        elif network != "host":
            host = _task_ip(task, network) or host
        s = _Service(svc["ID"], name, labels.get(LABEL_POOL, ""), network, host or self.host_ip,
                     int(labels.get(LABEL_PORT, "0")), float(labels[LABEL_CPUS]) if LABEL_CPUS in labels else None,
                     dict(labels), old.known_since if old else time.monotonic(), node_id, container_id)
        self._services[name] = s
        return s

    async def _placed(self, name: str, earlier: frozenset[str] = frozenset()) -> _Service:
        """Wait until the service's new task (not one of `earlier`) has a node and an address; a task Swarm
        cannot place or that fails before running (no such image, no node meeting the constraints) fails here."""
        deadline = time.monotonic() + SCHEDULE_TIMEOUT
        while True:
            svc = await self._call(f"inspect {name}", lambda c: c.api.inspect_service(name))
            tasks = await self._tasks(svc["ID"])
            task = _latest([t for t in tasks if t["ID"] not in earlier])
            status = (task or {}).get("Status") or {}
            state = status.get("State", "")
            if task is not None and state in PLACED_STATES:
                return await self._note(svc, task)
            # A pending task with an error is one the scheduler has already found no node for.
            if task is not None and (state not in LIVE_STATES or state == "pending" and status.get("Err")) \
                    or time.monotonic() > deadline:
                why = status.get("Err") or status.get("Message")
                raise BackendError(f"swarm launch {name}: task {state or 'not created'}{': ' + why if why else ''}")
            await asyncio.sleep(POLL)

    async def _tasks(self, service_id: str) -> builtins.list[dict]:
        return await self._call("list tasks", lambda c: c.api.tasks(filters={"service": service_id}))

    async def _forget(self, name: str) -> None:
        try:
            await self._call(f"remove {name}", lambda c: c.api.remove_service(name))
        except _Gone:
            pass
        self._services.pop(name, None)

    async def _local_container(self, instance_id: str, what: str) -> _Service:
        s = await self._refresh(await self._service(instance_id))
        if s.node_id != await self._engine_node():
            raise BackendError(f"swarm {what} {s.name}: its task runs on node {s.node_id or '?'}, whose engine "
                               "warmfront does not reach (only the engine at swarm.host)")
        if not s.container_id:
            raise BackendError(f"swarm {what} {s.name}: its task has no container yet")
        return s

    async def _engine_node(self) -> str:
        if not self._local_node:
            info = await self._call("info", lambda c: c.info())
            self._local_node = (info.get("Swarm") or {}).get("NodeID") or ""
            if not self._local_node:
                raise BackendError("the engine at swarm.host is not part of a swarm (docker swarm init / join)")
        return self._local_node

    async def _address_of(self, node_id: str) -> str:
        if node_id not in self._node_addr:
            node = await self._call(f"inspect node {node_id}", lambda c: c.api.inspect_node(node_id))
            addr = (node.get("Status") or {}).get("Addr") or ""
            self._node_addr[node_id] = addr if addr not in ("", "0.0.0.0") else self.host_ip
        return self._node_addr[node_id]

    # ------------------------------------------------------------------ events
    def _on_event(self, loop: asyncio.AbstractEventLoop, ev: dict) -> None:
        # A member is its service: the death of its task's container is reported under the service's name.
        attrs = (ev.get("Actor") or {}).get("Attributes") or {}
        if attrs.get(LABEL_SERVICE):
            attrs["name"] = attrs[LABEL_SERVICE]
        super()._on_event(loop, ev)


def _latest(tasks: list[dict]) -> dict | None:
    """The task that is the member now: the one Swarm wants running (one replica: at most one), else the
    last to change (it ended, or the service is scaled to zero)."""
    return max(tasks, key=lambda t: (t.get("DesiredState") == "running", (t.get("Version") or {}).get("Index", 0)),
               default=None)


def _status(svc: dict, task: dict | None, paused: set[str]) -> InstanceStatus:
    replicas = ((svc["Spec"].get("Mode") or {}).get("Replicated") or {}).get("Replicas", 1)
    if replicas == 0:
        return InstanceStatus.STOPPED
    if task is None:
        return InstanceStatus.RUNNING   # just created: Swarm has not made its task yet
    status = task.get("Status") or {}
    if status.get("State") not in LIVE_STATES:
        return InstanceStatus.EXITED
    if (status.get("ContainerStatus") or {}).get("ContainerID") in paused:
        return InstanceStatus.PAUSED
    return InstanceStatus.RUNNING


def _task_ip(task: dict | None, network: str) -> str:
    for att in (task or {}).get("NetworksAttachments") or []:
        if ((att.get("Network") or {}).get("Spec") or {}).get("Name") == network and att.get("Addresses"):
            return att["Addresses"][0].split("/")[0]
    return ""


def _container_state(container_id: str) -> Callable[[docker.DockerClient], dict]:
    return lambda c: c.api.inspect_container(container_id)["State"]


def _kill(container_id: str) -> Callable[[docker.DockerClient], None]:
    return lambda c: c.api.kill(container_id)


def _scale(client: docker.DockerClient, service_id: str, replicas: int, pin: str | None) -> None:
    svc = client.api.inspect_service(service_id)
    template = None
    if pin is not None:
        template = svc["Spec"]["TaskTemplate"]
        placement = template.setdefault("Placement", {})
        constraints = [c for c in placement.get("Constraints") or [] if not c.startswith("node.id==")]
        placement["Constraints"] = [*constraints, pin]
    client.api.update_service(service_id, svc["Version"]["Index"], task_template=template,
                              mode=ServiceMode("replicated", replicas), fetch_current_spec=True)
