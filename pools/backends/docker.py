"""Members as Docker containers, driven through the Docker SDK.

Labels are the contract: a container is ours only if it carries `warmfront.managed=true` and our
`warmfront.instance`; everything else on the engine is invisible to list() and refused by every
operation. Labels also carry what a restarted warmfront needs to adopt a member: its pool, the
port its address uses, its network mode and its configured CPU limit.

SDK calls block, so they run on a private thread pool; every docker/requests failure surfaces as
BackendError, because the daemon may vanish and the control loop must outlive it.
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import re
import secrets
import shlex
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import docker
import docker.errors
import requests
import structlog

from config.models import Pool
from pools.backends.base import (LABEL_INSTANCE, LABEL_MANAGED, LABEL_POOL, BackendError, BackendEvent, EventHub,
                                 Instance, InstanceStatus, Subscription, member_labels)
from pools.ports import free_port
from pools.usage import MemberUsage, ResourceLimits, container_usage

log = structlog.get_logger()

LABEL_PORT = "warmfront.port"        # the port of the member's address (host port, or container port on a network)
LABEL_NETWORK = "warmfront.network"  # host | publish | <user network name>
LABEL_CPUS = "warmfront.cpus"        # the member's CPU limit at launch, restored by resize(id, None) even after a restart

# A container from before a restart that ended with these codes was stopped, not crashed:
# 0 is a clean exit on SIGTERM, 143 is death by SIGTERM as reported by the init process.
CLEAN_EXIT_CODES = frozenset({0, 143})
EVENTS_BACKOFF_MIN, EVENTS_BACKOFF_MAX = 0.1, 5.0

T = TypeVar("T")
# instance id -> (container id, whether it has a network namespace of its own): what usage() reads
_Targets = Mapping[str, tuple[str, bool]]


class _Gone(BackendError):
    """The container does not exist (any more)."""


@dataclass(slots=True)
class _Member:
    container_id: str
    name: str
    pool: str
    network: str
    host: str
    port: int
    cpus: float | None
    labels: dict[str, str]
    known_since: float


class DockerBackend:
    def __init__(self, owner: str, base_url: str | None = None, host_ip: str = "127.0.0.1",
                 request_timeout: float = 10.0, publish_network: str | None = None) -> None:
        """`publish_network`: the network `publish`-mode containers join; None means the daemon's default bridge."""
        self.owner = owner
        self.host_ip = host_ip
        self._base_url = base_url
        self._timeout = request_timeout
        self._publish_network = publish_network
        self._client_obj: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        # Private so slow stops never starve other users of the default executor.
        self._executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="docker-backend")
        self._members: dict[str, _Member] = {}   # by name (the Instance id); verified as ours
        self._stopped: set[str] = set()           # names stopped on purpose: STOPPED rather than EXITED
        # Container ids whose next `die` we caused. Cleared by the stream itself (die/start/destroy), so
        # a die that is still in flight when start() returns cannot be mistaken for a crash.
        self._quiet: set[str] = set()
        self._oomed: set[str] = set()             # container ids the engine reported `oom` for since their start
        self._pids: dict[str, int] = {}           # container id -> main pid, where usage() finds its cgroup
        self._hub = EventHub()
        self._events_thread: threading.Thread | None = None
        self._events_stream: Any = None
        self._closed = threading.Event()

    # ------------------------------------------------------------------ Backend protocol
    async def list(self) -> list[Instance]:
        asked_at = time.monotonic()
        rows = await self._call("list containers", lambda c: c.api.containers(all=True, filters={
            "label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={self.owner}"]}))
        instances, seen = [], set()
        for row in rows:
            labels = row.get("Labels") or {}
            if not self._is_ours(labels):
                continue  # the filter already did this; a wrong filter must still not leak foreign containers
            name = row["Names"][0].lstrip("/")
            state = row.get("State", "")
            first_sight = name not in self._members
            m = self._remember(row["Id"], name, labels, row.get("NetworkSettings"))
            if first_sight and state in ("created", "exited", "dead"):
                try:
                    await self._judge_adopted_exit(m)
                except _Gone:  # removed since the listing
                    del self._members[name]
                    continue
            seen.add(name)
            instances.append(Instance(name, m.pool, m.host, m.port, self._status(name, state), dict(labels)))
        for name, m in list(self._members.items()):
            # Gone behind our back; a member launched while the listing was under way is merely not in it yet.
            if name not in seen and m.known_since < asked_at:
                del self._members[name]
                self._stopped.discard(name)
                self._pids.pop(m.container_id, None)
        return instances

    async def launch(self, pool: str, spec: Pool, port: int | None = None,
                     limits: ResourceLimits | None = None) -> Instance:
        """`limits` override the spec's cpus and memory for this member; `warmfront.cpus` records the CPU
        it got (what a shadow's resize restores), the generation stays the spec's."""
        d = spec.docker
        if d is None:
            raise BackendError(f"pool {pool!r} has no docker section")
        cpus, memory = limits.over(d.cpus, d.memory) if limits is not None else (d.cpus, d.memory)
        network = d.network
        port = port or free_port(self.host_ip)
        inner = port if network == "host" else (d.container_port or port)
        name = f"wf-{re.sub(r'[^A-Za-z0-9_.-]', '-', pool)}-{secrets.token_hex(3)}"
        labels = {**member_labels(pool, self.owner, spec), LABEL_NETWORK: network,
                  LABEL_PORT: str(inner if network not in ("host", "publish") else port)}
        if cpus is not None:
            labels[LABEL_CPUS] = repr(float(cpus))
        env = {k: v.replace("{port}", str(inner)) for k, v in {**d.env, **spec.env}.items()}
        env["PORT"] = str(inner)
        kwargs: dict[str, Any] = {
            "image": d.image, "name": name, "labels": labels, "environment": env,
            # Substitute after splitting so a port never needs quoting and other braces survive.
            "command": [a.replace("{port}", str(inner)) for a in shlex.split(d.command)] if d.command else None,
            "init": d.init,
        }
        if cpus is not None:
            kwargs["nano_cpus"] = _nano(cpus)
        if memory is not None:
            kwargs["mem_limit"] = memory
        if network == "host":
            kwargs["network_mode"] = "host"
        elif network == "publish":
            # A host port chosen here (not by the daemon) survives stop/start, so the address stays put.
            kwargs["ports"] = {f"{inner}/tcp": (self.host_ip, port)}
            if self._publish_network:
                kwargs["network"] = self._publish_network
        else:
            kwargs["network"] = network
        info = await self._call(f"launch {name}", lambda c: _create_and_start(c, kwargs))
        m = self._remember(info["Id"], name, labels, info.get("NetworkSettings"))
        log.info("docker.launched", member=name, pool=pool, image=d.image, address=f"{m.host}:{m.port}")
        return Instance(name, pool, m.host, m.port, InstanceStatus.RUNNING, dict(labels))

    async def start(self, instance_id: str) -> None:
        m = await self._member(instance_id)
        self._stopped.discard(m.name)
        await self._call(f"start {m.name}", lambda c: c.api.start(m.container_id))
        if m.network not in ("host", "publish"):  # the daemon may hand out a new IP on every start
            info = await self._call(f"inspect {m.name}", lambda c: c.api.inspect_container(m.container_id))
            self._remember(m.container_id, m.name, m.labels, info.get("NetworkSettings"))

    async def pause(self, instance_id: str) -> None:
        m = await self._member(instance_id)
        await self._call(f"pause {m.name}", lambda c: c.api.pause(m.container_id))

    async def resume(self, instance_id: str) -> None:
        m = await self._member(instance_id)
        await self._call(f"unpause {m.name}", lambda c: c.api.unpause(m.container_id))

    async def resize(self, instance_id: str, cpus: float | None) -> None:
        """Change the CPU limit in place; None restores the pool's configured limit (or none)."""
        m = await self._member(instance_id)
        target = cpus if cpus is not None else m.cpus
        await self._call(f"resize {m.name}", lambda c: _update_nano_cpus(c, m.container_id, target))

    async def stop(self, instance_id: str, timeout: float) -> None:
        m = await self._member(instance_id)
        self._stopped.add(m.name)
        self._expect_death(m.container_id)
        # The daemon unpauses a paused container itself; SIGKILL follows after `timeout` whole seconds.
        await self._call(f"stop {m.name}", lambda c: c.api.stop(m.container_id, timeout=max(0, math.ceil(timeout))))

    async def remove(self, instance_id: str) -> None:
        try:
            m = await self._member(instance_id)
        except _Gone:
            return
        self._expect_death(m.container_id)
        try:
            await self._call(f"remove {m.name}", lambda c: c.api.remove_container(m.container_id, force=True))
        except _Gone:
            pass
        self._members.pop(m.name, None)
        self._stopped.discard(m.name)
        self._pids.pop(m.container_id, None)

    def address(self, instance_id: str) -> tuple[str, int]:
        m = self._members.get(instance_id)
        if m is None:
            raise BackendError(f"unknown docker member {instance_id!r}")
        return m.host, m.port

    def events(self) -> Subscription:
        """Deaths we did not cause; the first call starts following the daemon's event stream."""
        sub = self._hub.subscribe()
        if self._events_thread is None:
            loop = asyncio.get_running_loop()
            self._events_thread = threading.Thread(target=self._follow_events, args=(loop, time.time()),
                                                   name=f"docker-events-{self.owner}", daemon=True)
            self._events_thread.start()
        return sub

    async def usage(self, instance_ids: Sequence[str]) -> dict[str, MemberUsage]:
        """Each member's cgroup counters, read from the files of its main process's cgroup (≈0.5 ms per
        member); the engine's stats API (one call per container, bench/usage.py) only where those files
        cannot be read from here. Host-network members have no network counters of their own."""
        targets: dict[str, tuple[str, bool]] = {}
        for instance_id in instance_ids:
            with contextlib.suppress(BackendError):   # gone or not ours: not measured
                m = await self._member(instance_id)
                targets[instance_id] = (m.container_id, m.network != "host")
        return await self._containers_usage(targets)

    async def close(self) -> None:
        """Stop following events and drop the connection; containers are left as they are."""
        self._closed.set()
        self._close_stream()
        if self._events_thread is not None:
            await asyncio.to_thread(self._events_thread.join, 2.0)
        if self._client_obj is not None:
            self._client_obj.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ ownership and state
    def _is_ours(self, labels: dict[str, str]) -> bool:
        return labels.get(LABEL_MANAGED) == "true" and labels.get(LABEL_INSTANCE) == self.owner

    async def _member(self, instance_id: str) -> _Member:
        """The member behind an id, refusing anything that does not carry our labels."""
        m = self._members.get(instance_id)
        if m is not None:
            return m
        info = await self._call(f"inspect {instance_id}", lambda c: c.api.inspect_container(instance_id))
        labels = (info.get("Config") or {}).get("Labels") or {}
        if not self._is_ours(labels):
            raise BackendError(f"refusing to touch container {instance_id!r}: it is not a warmfront member "
                               f"of instance {self.owner!r}")
        return self._remember(info["Id"], info["Name"].lstrip("/"), labels, info.get("NetworkSettings"))

    def _remember(self, container_id: str, name: str, labels: dict[str, str],
                  network_settings: dict | None) -> _Member:
        network = labels.get(LABEL_NETWORK, "host")
        port = int(labels.get(LABEL_PORT, "0"))
        cpus = float(labels[LABEL_CPUS]) if LABEL_CPUS in labels else None
        old = self._members.get(name)
        if network in ("host", "publish"):
            host = self.host_ip
        else:
            ip = (((network_settings or {}).get("Networks") or {}).get(network) or {}).get("IPAddress")
            # A stopped container has no IP; its name still resolves on a user network's DNS.
            host = ip or (old.host if old is not None else name)
        m = _Member(container_id, name, labels.get(LABEL_POOL, ""), network, host, port, cpus, dict(labels),
                    old.known_since if old is not None else time.monotonic())
        self._members[name] = m
        return m

    async def _judge_adopted_exit(self, m: _Member) -> None:
        """A container first seen not running (left by a previous run) counts as stopped on purpose
        only if it ended cleanly; a crash stays a crash."""
        info = await self._call(f"inspect {m.name}", lambda c: c.api.inspect_container(m.container_id))
        state = info.get("State") or {}
        if state.get("ExitCode") in CLEAN_EXIT_CODES and not state.get("OOMKilled"):
            self._stopped.add(m.name)

    def _status(self, name: str, state: str) -> InstanceStatus:
        if state in ("running", "restarting"):
            return InstanceStatus.RUNNING
        if state == "paused":
            return InstanceStatus.PAUSED
        if state == "removing" or name in self._stopped:
            return InstanceStatus.STOPPED
        return InstanceStatus.EXITED

    def _expect_death(self, container_id: str) -> None:
        # Only the event stream clears this set, so only fill it while a stream is being followed.
        if self._events_thread is not None:
            self._quiet.add(container_id)

    # ------------------------------------------------------------------ usage
    async def _containers_usage(self, targets: _Targets) -> dict[str, MemberUsage]:
        """One executor call reads every container with a known pid; the rest (first sight, restarted,
        stopped, or on an engine whose pids are not this machine's) are inspected anew."""
        if not targets:
            return {}
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self._executor, self._read_cgroups, targets)
        rest = [i for i in targets if i not in found]
        anew = await asyncio.gather(*(self._usage_anew(i, *targets[i]) for i in rest))
        found.update((i, u) for i, u in zip(rest, anew) if u is not None)
        return found

    def _read_cgroups(self, targets: _Targets) -> dict[str, MemberUsage]:
        found = {}
        for instance_id, (container_id, own_netns) in targets.items():
            pid = self._pids.get(container_id)
            if pid is not None and (u := container_usage(instance_id, container_id, pid, own_netns)) is not None:
                found[instance_id] = u
        return found

    async def _usage_anew(self, instance_id: str, container_id: str, own_netns: bool) -> MemberUsage | None:
        """The container's current pid from the engine, then its cgroup files; the stats API when the
        files are not readable here. None when it is not running (nothing to measure) or gone."""
        try:
            info = await self._call(f"inspect {instance_id}", lambda c: c.api.inspect_container(container_id))
        except BackendError:
            return None
        state = info.get("State") or {}
        pid = int(state.get("Pid") or 0)
        if not state.get("Running") or pid <= 0:   # a paused container is still Running
            self._pids.pop(container_id, None)
            return None
        self._pids[container_id] = pid
        loop = asyncio.get_running_loop()
        u = await loop.run_in_executor(self._executor, container_usage, instance_id, container_id, pid, own_netns)
        if u is not None:
            return u
        try:
            stats = await self._call(f"stats {instance_id}",
                                     lambda c: c.api.stats(container_id, stream=False, one_shot=True))
        except BackendError:
            return None
        return _usage_from_stats(instance_id, stats, info.get("HostConfig") or {}, own_netns)

    # ------------------------------------------------------------------ daemon access
    def _client(self) -> docker.DockerClient:
        with self._client_lock:
            if self._client_obj is None:
                # Version negotiation talks to the daemon, so this is where an unreachable one shows first.
                if self._base_url is not None:
                    self._client_obj = docker.DockerClient(base_url=self._base_url, timeout=self._timeout)
                else:
                    self._client_obj = docker.from_env(timeout=self._timeout)
            return self._client_obj

    async def _call(self, what: str, fn: Callable[[docker.DockerClient], T]) -> T:
        if self._closed.is_set():
            raise BackendError(f"docker {what}: backend is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guarded, what, fn)

    def _guarded(self, what: str, fn: Callable[[docker.DockerClient], T]) -> T:
        try:
            return fn(self._client())
        except BackendError:
            raise
        except docker.errors.NotFound as e:
            raise _Gone(f"docker {what}: {_explain(e)}") from e
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as e:
            raise BackendError(f"docker {what}: {_explain(e)}") from e

    # ------------------------------------------------------------------ events
    def _follow_events(self, loop: asyncio.AbstractEventLoop, since: float) -> None:
        last_nano = int(since * 1e9)
        backoff = EVENTS_BACKOFF_MIN
        filters = {"type": "container", "label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={self.owner}"]}
        while not self._closed.is_set():
            try:
                # `since` replays what happened while we were disconnected, so no death is lost.
                stream = self._client().api.events(since=f"{last_nano // 10**9}.{last_nano % 10**9:09d}",
                                                   filters=filters, decode=True)
                self._events_stream = stream
                if self._closed.is_set():
                    break
                log.debug("docker.events_connected", owner=self.owner)
                backoff = EVENTS_BACKOFF_MIN
                for ev in stream:
                    nano = int(ev.get("timeNano") or 0)
                    if nano <= last_nano:
                        continue  # already seen before the reconnect
                    last_nano = nano
                    self._on_event(loop, ev)
            except Exception as e:  # broken stream, daemon gone, loop closed: retry until close()
                if self._closed.is_set():
                    break
                log.warning("docker.events_lost", owner=self.owner, error=_explain(e), retry_in=backoff)
            else:
                if self._closed.is_set():
                    break
                log.warning("docker.events_lost", owner=self.owner, error="stream ended", retry_in=backoff)
            self._closed.wait(backoff)
            backoff = min(backoff * 2, EVENTS_BACKOFF_MAX)
        self._close_stream()

    def _on_event(self, loop: asyncio.AbstractEventLoop, ev: dict) -> None:
        actor = ev.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        container_id = actor.get("ID") or ev.get("id", "")
        if not self._is_ours(attrs):
            return
        action = ev.get("Action") or ev.get("status")
        if action in ("start", "destroy"):
            self._quiet.discard(container_id)
            self._oomed.discard(container_id)
            return
        if action == "oom":
            # The engine reports the kernel's OOM kill before the container's `die` (if it dies of it: a
            # killed child process leaves the container running), so the death to come carries the reason.
            self._oomed.add(container_id)
            return
        if action != "die":
            return
        reason = "oom" if container_id in self._oomed else ""
        self._oomed.discard(container_id)
        if container_id in self._quiet:
            self._quiet.discard(container_id)
            return
        code = int(attrs["exitCode"]) if attrs.get("exitCode", "").lstrip("-").isdigit() else None
        event = BackendEvent("died", attrs.get("name", container_id), attrs.get(LABEL_POOL, ""), code, reason)
        log.info("docker.died", member=event.instance_id, pool=event.pool, exit_code=code, reason=reason or action)
        try:
            loop.call_soon_threadsafe(self._hub.publish, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self._closed.set()

    def _close_stream(self) -> None:
        stream, self._events_stream = self._events_stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:  # already broken; closing is best effort
                pass


def _create_and_start(client: docker.DockerClient, kwargs: dict[str, Any]) -> dict:
    # create + start rather than run(): run() would try to pull a missing image and leave a created
    # container behind when start fails (port taken, bad command), which would look like a member.
    container = client.containers.create(**kwargs)
    try:
        container.start()
        return client.api.inspect_container(container.id)
    except Exception:
        try:
            container.remove(force=True)
        except docker.errors.DockerException:
            pass  # the start error is the one worth reporting
        raise


def _usage_from_stats(instance_id: str, stats: dict, host_config: dict, own_netns: bool) -> MemberUsage | None:
    """The stats API's view (the fallback): the same working set (usage minus inactive file pages, v1
    `total_inactive_file` or v2 `inactive_file`); it reports no OOM kills, and the limits come from
    the container's HostConfig (its memory_stats.limit is the host's memory when there is none)."""
    cpu = stats.get("cpu_stats") or {}
    memory = stats.get("memory_stats") or {}
    if not memory or "total_usage" not in (cpu.get("cpu_usage") or {}):
        return None   # a container that stopped meanwhile has empty stats
    usage = int(memory.get("usage", 0))
    inner = memory.get("stats") or {}
    inactive = int(inner.get("total_inactive_file", inner.get("inactive_file", 0)))
    nets = (stats.get("networks") or {}).values()
    nano, quota = int(host_config.get("NanoCpus") or 0), int(host_config.get("CpuQuota") or 0)
    cpu_limit = nano / 1e9 if nano else quota / int(host_config.get("CpuPeriod") or 100_000) if quota > 0 else None
    return MemberUsage(
        instance_id, cpu["cpu_usage"]["total_usage"] / 1e9, max(0, usage - inactive),
        int(memory.get("max_usage", usage)),   # cgroup v2 engines report no peak
        sum(int(n.get("rx_bytes", 0)) for n in nets) if own_netns else None,
        sum(int(n.get("tx_bytes", 0)) for n in nets) if own_netns else None,
        cpu_throttled_seconds=int((cpu.get("throttling_data") or {}).get("throttled_time", 0)) / 1e9,
        cpu_limit=cpu_limit, memory_limit=int(host_config.get("Memory") or 0) or None)


def _nano(cpus: float) -> int:
    return int(round(cpus * 1e9))


def _update_nano_cpus(client: docker.DockerClient, container_id: str, cpus: float | None) -> None:
    # The SDK's update_container knows only CpuQuota/CpuPeriod, which the daemon refuses to change on a
    # container created with NanoCpus (and vice versa); the API itself takes NanoCpus, like `docker update --cpus`.
    if cpus is None:
        # The daemon cannot clear NanoCpus once set: all of the host's CPUs is the same as no limit.
        cpus = client.info()["NCPU"]
    api = client.api
    response = api.post(f"{api.base_url}/v{api.api_version}/containers/{container_id}/update",
                        json={"NanoCpus": _nano(cpus)})
    try:
        response.raise_for_status()
    except requests.exceptions.HTTPError as e:
        docker.errors.create_api_error_from_http_exception(e)  # raises the SDK's APIError / NotFound


def _explain(e: BaseException) -> str:
    if isinstance(e, docker.errors.ImageNotFound):
        return f"{e.explanation or e} (images are not pulled automatically: pull or build it first)"
    if isinstance(e, docker.errors.APIError) and e.explanation:
        return str(e.explanation)
    return str(e) or type(e).__name__
