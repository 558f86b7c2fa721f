"""One pool's control loop: observe the backend, check health, decide (pools.reconciler), act.

The decision is pure; this layer only performs it. Slow operations (boot, warm-up, stop) run as one
task per member, so the loop never waits on a single member and a member has one operation at a time.
What to reach is a published value (`set_desired`, a `DesiredState` from the control step), read
here and never asked for. The clock, the backend and the health checker are passed in: live they
are time.monotonic, docker/process/static and HTTP probes; in `warmfront simulate` a virtual
clock, `SimulatedBackend` and `SimulatedHealth` (pools.backends.simulated).
"""
from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass

import aiohttp
import structlog

from config.models import Pool
from pools.backends.base import (LABEL_GENERATION, Backend, BackendError, Instance, InstanceStatus, Subscription,
                                 member_generation)
from pools.health import Checker, HealthChecker, HealthTracker, Probe
from pools.members import MemberState, MemberView
from pools.usage import ResourceLimits
from pools.reconciler import (Action, Activate, Desired, DesiredState, Drain, Launch, ObservedMember, Park, Replace,
                              Retire, Warm, baseline_desired, decide)

log = structlog.get_logger()

MAX_BACKOFF = 10.0
# A pass that acted is followed by another at once (a drained member is retired, a booted one
# activated, without waiting for the interval); launches only wait for the member to boot.
MAX_PASSES = 4
# Members that die before becoming healthy (bad command, port clash) delay the next launch:
# 0.5 s, 1 s, 2 s ... up to MAX_BACKOFF, so a broken spec does not fork in a tight loop.
LAUNCH_BACKOFF = 0.5
RECENT_ACTIONS = 50
LEAD_SAMPLES = 20   # activation and launch times kept per kind, for the planner's lead times


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One scaling action or planner decision, as /admin/status lists them."""
    time: float
    action: str
    member: str | None
    reason: str


@dataclass(slots=True, eq=False)
class _Member:
    id: str
    host: str
    port: int
    state: MemberState
    since: float
    health: HealthTracker
    shadow_state: str | None = None
    prewarmed: bool = False
    task: asyncio.Task | None = None
    reason: str = ""   # why it failed, while FAILED

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()


class PoolManager:
    def __init__(self, name: str, spec: Pool, backend: Backend, *,
                 clock: Callable[[], float] = time.monotonic,
                 in_flight: Callable[[str], int] = lambda member_id: 0,
                 on_change: Callable[[str, list[MemberView]], None] = lambda pool, members: None,
                 desired: DesiredState | None = None,
                 checker: Checker | None = None,
                 interval: float = 0.5,
                 retire_other_generations: bool = True,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.name, self.spec, self.backend = name, spec, backend
        self.clock, self.in_flight, self.on_change = clock, in_flight, on_change
        self._desired = baseline_desired(name, spec, ())
        self._published = False   # a published value names this pool (else the spec's baseline)
        self._generation: tuple[Pool, str] | None = None
        self.interval = interval
        self.retire_other_generations = retire_other_generations
        self._leads: dict[str, deque] = {}   # cold | running | paused | stopped -> recent seconds
        self._checker: Checker = checker or HealthChecker()
        self._owns_checker = checker is None
        self._static = spec.backend == "static"
        self._members: dict[str, _Member] = {}
        self._wake = asyncio.Event()
        if desired is not None:
            self.set_desired(desired)
        self._run_task: asyncio.Task | None = None
        self._boot_failures = 0
        self._launch_after = 0.0
        self._log = log.bind(pool=name)
        self.wall_clock = wall_clock   # stamps recent_actions: the control loop's clock, simulated in the demo
        self.recent_actions: deque[ActionRecord] = deque(maxlen=RECENT_ACTIONS)
        # Members known to have been routed before this manager started (a replica taking over from a
        # leader reads them from the leader's published routing): adopted healthy, they are ready at
        # once even where running shadows make roles otherwise indistinguishable on the backend.
        self.adopt_ready: frozenset[str] = frozenset()
        self.check_failures: dict[str, int] = {}   # member state -> failed active health checks (for /metrics)
        # Right-sizing (`scaling.rightsize: apply`): the CPU and memory limits new members are launched with
        # and activated shadows are resized to; None launches with the spec's own.
        self.limits: ResourceLimits | None = None

    def members(self) -> list[MemberView]:
        return [MemberView(m.id, self.name, m.host, m.port, m.state, m.prewarmed,
                           m.shadow_state if m.state is MemberState.SHADOW else None, m.since, m.reason)
                for m in self._members.values()]

    def note(self, action: str, member: str | None, reason: str) -> None:
        """Remember an action and why, for /admin/status (the planner notes its decisions here too)."""
        self.recent_actions.append(ActionRecord(self.wall_clock(), action, member, reason))

    def wake(self) -> None:
        """Reconcile now rather than at the next interval (the desired state changed)."""
        self._wake.set()

    @property
    def desired(self) -> Desired:
        """What this manager reaches: its pool's entry of the last published state, else the baseline."""
        return self._desired if self._published else baseline_desired(self.name, self.spec, ())

    def set_desired(self, state: DesiredState) -> None:
        """Read a newly published desired state; reconcile at once when this pool's entry changed."""
        new = state.pools.get(self.name)
        before = self.desired
        self._desired, self._published = (new, True) if new is not None else (self._desired, False)
        if self.desired != before:
            self._wake.set()

    async def run(self) -> None:
        """Reconcile every `interval` and at once on member deaths and finished operations, until cancelled."""
        self._run_task = asyncio.current_task()
        events = self.backend.events()
        helpers = [asyncio.create_task(self._watch(events)), asyncio.create_task(self._health_loop())]
        backoff = 0.0
        passes = 0
        try:
            while True:
                self._wake.clear()
                try:
                    acted = await self.reconcile()
                    backoff = 0.0
                    passes = passes + 1 if acted else 0
                    if acted and passes < MAX_PASSES:
                        continue
                    passes = 0
                except Exception as e:  # a backend hiccup must not end the loop: back off and look again
                    backoff = min(max(2 * backoff, self.interval), MAX_BACKOFF)
                    self._log.warning("pool.backend_error", error=repr(e), retry_in=backoff)
                    await asyncio.sleep(backoff)
                    continue
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that lands as the
                # event is set, and this loop would then outlive stop_all (a hung shutdown).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval):
                        await self._wake.wait()
        finally:
            events.close()
            for t in helpers:
                t.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def stop_all(self, keep: bool | None = None) -> None:
        """Stop the loop, then stop and remove every member (static members are left alone).

        `keep` defaults to the docker or swarm pool's `on_exit: keep` (members survive for the next run to adopt);
        a pool rolled out by a reload passes False: its members are of a generation nobody will adopt."""
        run = self._run_task
        if run is not None and not run.done() and run is not asyncio.current_task():
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        busy = [m.task for m in self._members.values() if m.busy and m.task is not None]
        for t in busy:
            t.cancel()
        await asyncio.gather(*busy, return_exceptions=True)
        section = {"docker": self.spec.docker, "swarm": self.spec.swarm}.get(self.spec.backend)
        if keep is None:
            keep = section is not None and section.on_exit == "keep"
        if keep:
            self._log.info("pool.kept", members=len(self._members))
        elif not self._static:
            await asyncio.gather(*(self._remove(m, "shutdown") for m in list(self._members.values())),
                                 return_exceptions=True)
        self._members.clear()
        self._publish()
        if self._owns_checker:
            await self._checker.close()

    def measured_lead(self, kind: str) -> float | None:
        """Median time this pool took to bring a member in by `kind` (cold launch to healthy, or
        activation of a running, paused or stopped shadow); None before it has done so."""
        samples = self._leads.get(kind)
        return statistics.median(samples) if samples else None

    def lead_times(self) -> dict[str, float]:
        """Median measured seconds per kind of bring-up, for /admin/status."""
        return {kind: round(statistics.median(v), 4) for kind, v in self._leads.items() if v}

    def drain(self, member_id: str, reason: str) -> bool:
        """Take a ready member out of routing now; the reconciler retires it once drained (or at
        `drain_timeout`) and refills its place. False when it is not a ready, idle member."""
        m = self._members.get(member_id)
        if m is None or m.busy or m.state is not MemberState.READY:
            return False
        self._set(m, MemberState.DRAINING)
        self.note("drain", member_id, reason)
        self._log.info("member.draining", member=member_id, reason=reason, in_flight=self.in_flight(member_id))
        self.wake()
        return True

    async def reconcile(self) -> bool:
        """One level-triggered pass: observe the backend, decide, act. True when it did more than
        launch (what it did may call for more at once)."""
        await self._observe()
        if self._static:
            return False  # static members move only on health checks
        observed = [ObservedMember(m.id, m.state, m.since, m.shadow_state, self.in_flight(m.id), m.busy)
                    for m in self._members.values()]
        desired = self.desired
        actions = decide(desired, observed, self.clock())
        for action in actions:
            self.note(type(action).__name__.lower(), getattr(action, "member_id", None), _reason(action, desired))
            await self._act(action)
        if actions:
            counts = {s.value: n for s in MemberState if (n := sum(m.state is s for m in self._members.values()))}
            self._log.info("pool.reconciled", actions=[_describe(a) for a in actions], members=counts)
        return any(not isinstance(a, Launch) for a in actions)

    # ------------------------------------------------------------------ observing
    async def _observe(self) -> None:
        if self._generation is None or self._generation[0] is not self.spec:   # a reload assigns a new spec
            self._generation = (self.spec, member_generation(self.spec))
        generation = self._generation[1]
        instances: dict[str, Instance] = {}
        for i in await self.backend.list():
            if i.pool != self.name:
                continue
            if i.labels.get(LABEL_GENERATION, generation) == generation or i.id in self._members:
                instances[i.id] = i
            elif self.retire_other_generations:
                # Built from an earlier spec (changed while warmfront was down): drained and retired;
                # the reconciler launches this generation's members in their place.
                instances[i.id] = i
                if i.id not in self._members:
                    self._members[i.id] = _Member(i.id, i.host, i.port, MemberState.DRAINING, self.clock(),
                                                  HealthTracker.for_check(self.spec.health))
                    self._log.info("member.adopted", member=i.id, status=i.status.value,
                                   reason="other generation: retiring")
            # else: a reload is rolling it out; the old generation's manager owns it.
        new = [i for i in instances.values() if i.id not in self._members]
        if new:
            # Running members from before a restart are probed before anything is decided, so the
            # members that were serving are routed again at once instead of waking shadows.
            running = [i for i in new if i.status is InstanceStatus.RUNNING and not self._static]
            ok = await asyncio.gather(*(self._checker.probe(i.host, i.port, self.spec.health) for i in running))
            healthy = {i.id for i, probe in zip(running, ok) if probe.ok}
            for inst in new:
                self._adopt(inst, inst.id in healthy)
        for m in list(self._members.values()):
            if m.busy or m.state is MemberState.FAILED:
                continue
            found = instances.get(m.id)
            if found is None:
                self._fail(m, "vanished from the backend")
            elif found.status is InstanceStatus.EXITED:
                self._fail(m, "exited")

    def _adopt(self, inst: Instance, healthy: bool = False) -> None:
        """Take in an instance we did not launch in this run (static servers; members from before a restart)."""
        m = _Member(inst.id, inst.host, inst.port, MemberState.LAUNCHING, self.clock(),
                    HealthTracker.for_check(self.spec.health))
        self._members[m.id] = m
        if self._static:
            # Routed at once, as a plain reverse proxy would: the first request does not wait for
            # the first check, and failing checks (or passive ejection, with checks off) take it out.
            m.state = MemberState.READY
            m.health = HealthTracker.for_check(self.spec.health, healthy=True)
            self._log.info("member.ready", member=m.id, address=f"{m.host}:{m.port}", prewarmed=False,
                           checked=False)
        else:
            self._log.info("member.adopted", member=m.id, status=inst.status.value)
            if inst.status is InstanceStatus.RUNNING and healthy and (
                    self.spec.shadow.state != "running" or inst.id in self.adopt_ready):
                # Without running shadows, a running member can only have been a ready one: it
                # served traffic before the restart, so it is warm.
                m.state, m.prewarmed = MemberState.READY, True
                m.health = HealthTracker.for_check(self.spec.health, healthy=True)
                self._log.info("member.ready", member=m.id, address=f"{m.host}:{m.port}", prewarmed=True)
            elif inst.status is InstanceStatus.RUNNING:
                self._spawn(m, self._boot(m))
            elif inst.status in (InstanceStatus.PAUSED, InstanceStatus.STOPPED):
                m.state, m.shadow_state = MemberState.SHADOW, inst.status.value
            else:
                m.state = MemberState.FAILED
        self._publish()

    async def _watch(self, events: Subscription) -> None:
        async for ev in events:
            m = self._members.get(ev.instance_id)
            if ev.pool == self.name and ev.kind == "died" and m is not None:
                self._fail(m, f"exited with code {ev.exit_code}")

    async def _health_loop(self) -> None:
        check = self.spec.health
        while check.enabled:
            targets = [(m, m.state) for m in self._members.values() if not m.busy and self._checked(m)]
            results = await asyncio.gather(*(self._checker.probe(m.host, m.port, check) for m, _ in targets))
            try:
                for (m, state), probe in zip(targets, results):
                    # The member may have moved on while the probe was out; its result is then stale.
                    if self._members.get(m.id) is m and m.state is state and not m.busy:
                        self._record_health(m, probe)
            except Exception as e:  # e.g. a failing on_change: keep checking
                self._log.error("pool.health_error", error=repr(e))
            await asyncio.sleep(check.interval)

    def _checked(self, m: _Member) -> bool:
        if self._static:
            return True
        return m.state is MemberState.READY or (m.state is MemberState.SHADOW and m.shadow_state == "running")

    def _record_health(self, m: _Member, probe: Probe) -> None:
        check = self.spec.health
        reason = "" if probe.ok else f"failed health checks: {probe.describe(check)}"
        if not probe.ok:
            state = m.state.value if m.state is not MemberState.SHADOW else f"shadow:{m.shadow_state}"
            self.check_failures[state] = self.check_failures.get(state, 0) + 1
            # Every failure on the way to a verdict is logged; a failed (static) member's repeats only
            # when what they see changes, which its reason, and so the pool's 503 body, follows.
            if m.state is not MemberState.FAILED or reason != m.reason:
                self._log.warning("member.check_failed", member=m.id, address=f"{m.host}:{m.port}",
                                  **({"path": check.path} if check.type == "http" else {"check": "tcp"}),
                                  status=probe.status, error=probe.error, latency_ms=probe.latency_ms,
                                  failures=m.health.failures + 1)
            if m.state is MemberState.FAILED and reason != m.reason:
                m.reason = reason
                self._publish()
        verdict = m.health.observe(probe.ok)
        if verdict is True and self._static and m.state is not MemberState.READY:
            self._set(m, MemberState.READY)
            self._log.info("member.ready", member=m.id, address=f"{m.host}:{m.port}", prewarmed=False)
        elif verdict is False:
            self._fail(m, reason)

    # ------------------------------------------------------------------ acting
    async def _act(self, action: Action) -> None:
        if isinstance(action, Launch):
            await self._launch()
            return
        m = self._members.get(action.member_id)
        if m is None or m.busy:
            return
        match action:
            case Warm():
                self._set(m, MemberState.WARMING)
                self._spawn(m, self._warm(m))
            case Park(state=state):
                await self._park(m, state)
            case Activate():
                await self._activate(m)
            case Drain():
                self._set(m, MemberState.DRAINING)
                self._log.info("member.draining", member=m.id, in_flight=self.in_flight(m.id))
            case Retire(reason=reason):
                self._spawn(m, self._remove(m, reason))
            case Replace():
                self._spawn(m, self._remove(m, "failed"))

    async def _launch(self) -> None:
        if self.clock() < self._launch_after:
            return  # crash-loop back-off; a later pass decides again
        started = self.clock()
        limits = self.limits
        inst = await self.backend.launch(self.name, self.spec, limits=limits) if limits is not None else \
            await self.backend.launch(self.name, self.spec)
        if limits is not None:
            self.note("launch", inst.id, f"right-sized: cpus {limits.cpus if limits.cpus is not None else 'spec'}, "
                                         f"memory {limits.memory_bytes if limits.memory_bytes is not None else 'spec'}")
        m = _Member(inst.id, inst.host, inst.port, MemberState.LAUNCHING, self.clock(),
                    HealthTracker.for_check(self.spec.health))
        self._members[m.id] = m
        self._log.info("member.launched", member=m.id, address=f"{m.host}:{m.port}")
        self._spawn(m, self._boot(m, started, "cold"))
        self._publish()

    async def _boot(self, m: _Member, started: float | None = None, kind: str | None = None) -> None:
        deadline = self.clock() + self.spec.startup_timeout
        if await self._checker.wait_healthy(m.host, m.port, self.spec.health, deadline, self.clock):
            m.health = HealthTracker.for_check(self.spec.health, healthy=True)
            self._boot_failures = 0
            if kind is not None and started is not None:
                self._leads.setdefault(kind, deque(maxlen=LEAD_SAMPLES)).append(self.clock() - started)
        else:
            self._fail(m, f"not healthy within startup_timeout ({self.spec.startup_timeout}s)")

    async def _warm(self, m: _Member) -> None:
        try:
            await self._checker.warm(m.host, m.port, self.spec.warmup, self.spec.startup_timeout)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            self._fail(m, f"warm-up failed: {e!r}")
            return
        m.prewarmed = self.spec.warmup.requests > 0

    async def _park(self, m: _Member, state: str) -> None:
        if m.state is MemberState.SHADOW and m.shadow_state == "stopped":
            # A stopped member must boot again before it can be a running or paused shadow.
            await self.backend.start(m.id)
            self._set(m, MemberState.LAUNCHING)
            self._spawn(m, self._boot(m))
            return
        shrink = self.spec.shadow.cpus
        if shrink is not None and state != "stopped" and m.state is not MemberState.SHADOW:
            await self.backend.resize(m.id, shrink)   # a parked member needs next to no CPU
        if state == "paused":
            await self.backend.pause(m.id)
        elif m.shadow_state == "paused":
            await self.backend.resume(m.id)
        self._set(m, MemberState.SHADOW, shadow_state=state)
        if state == "stopped":
            self._spawn(m, self.backend.stop(m.id, self.spec.stop_timeout))
        self._log.info("member.parked", member=m.id, shadow_state=state, prewarmed=m.prewarmed)

    async def _activate(self, m: _Member) -> None:
        if m.state is MemberState.SHADOW:
            self._log.info("member.activated", member=m.id, shadow_state=m.shadow_state)
            started = self.clock()
            if m.shadow_state == "stopped":
                # Cold again after a restart: it boots and warms like a new member, counted as pipeline.
                await self.backend.start(m.id)
                m.prewarmed = False
                self._set(m, MemberState.LAUNCHING)
                self._spawn(m, self._boot(m, started, "stopped"))
                return
            cpus = self.limits.cpus if self.limits is not None else None
            restore = [self.backend.resize(m.id, cpus)] if self.spec.shadow.cpus is not None or cpus is not None else []
            if m.shadow_state == "paused":
                restore.append(self.backend.resume(m.id))
            await asyncio.gather(*restore)
            self._leads.setdefault(m.shadow_state or "running", deque(maxlen=LEAD_SAMPLES)).append(
                self.clock() - started)
        self._set(m, MemberState.READY)
        self._log.info("member.ready", member=m.id, address=f"{m.host}:{m.port}", prewarmed=m.prewarmed)

    async def _remove(self, m: _Member, reason: str) -> None:
        try:
            await self.backend.stop(m.id, self.spec.stop_timeout)
            await self.backend.remove(m.id)
        except BackendError as e:  # left in its state: the next pass decides to retire it again
            self._log.warning("member.retire_failed", member=m.id, error=str(e))
            return
        if self._members.pop(m.id, None) is not None:
            m.state = MemberState.RETIRED
            self._log.info("member.retired", member=m.id, reason=reason)
            self._publish()

    # ------------------------------------------------------------------ bookkeeping
    def _fail(self, m: _Member, reason: str) -> None:
        if m.state is MemberState.FAILED or self._members.get(m.id) is not m:
            return
        if m.task is not None and m.task is not asyncio.current_task():
            m.task.cancel()
        if m.state in (MemberState.LAUNCHING, MemberState.WARMING):
            self._boot_failures += 1
            self._launch_after = self.clock() + min(LAUNCH_BACKOFF * 2 ** (self._boot_failures - 1), MAX_BACKOFF)
        m.reason = reason
        self._set(m, MemberState.FAILED)
        self._log.warning("member.failed", member=m.id, reason=reason)
        self._wake.set()

    def _set(self, m: _Member, state: MemberState, shadow_state: str | None = None) -> None:
        m.state, m.shadow_state, m.since = state, shadow_state, self.clock()
        if state is not MemberState.FAILED:
            m.reason = ""
        self._publish()

    def _spawn(self, m: _Member, op: Coroutine) -> None:
        m.task = asyncio.create_task(op)
        m.task.add_done_callback(lambda t: self._finished(m, t))

    def _finished(self, m: _Member, task: asyncio.Task) -> None:
        self._wake.set()
        if not task.cancelled() and (e := task.exception()) is not None:
            self._fail(m, f"operation failed: {e!r}")

    def _publish(self) -> None:
        self.on_change(self.name, self.members())


def _reason(action: Action, desired: Desired) -> str:
    match action:
        case Retire(reason=reason):
            return reason
        case Replace():
            return "failed"
        case Park(state=state):
            return f"shadow ({state}): desired {desired.shadow} shadow"
        case _:
            return f"desired {desired.ready} ready + {desired.shadow} shadow"


def _describe(action: Action) -> str:
    name = type(action).__name__.lower()
    return f"{name} {action.member_id}" if hasattr(action, "member_id") else name
