"""The reconcile decision: desired capacity and observed members in, actions out. Pure: no I/O, no clock.

Counting (all against `Desired`):
- ready    = READY members;
- shadow   = SHADOW members (running, paused or stopped);
- pipeline = LAUNCHING and WARMING members, whose destination is decided when they finish;
- DRAINING and FAILED members hold no capacity and do not count against `max_members`.
A `busy` member has an operation under way (booting, warming, stopping); it is counted, never acted on.
An idle LAUNCHING member is booted and healthy; an idle WARMING member has finished its warm-up.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from config.models import Pool
from pools.members import MemberState

# Activation speed of a shadow: the fastest are used first and kept longest.
_SHADOW_SPEED = {"running": 0, "paused": 1, "stopped": 2}


@dataclass(frozen=True, slots=True)
class Desired:
    ready: int
    shadow: int
    shadow_state: str          # running | paused | stopped | none (none = no shadow tier)
    max_members: int           # ready + shadow + pipeline never exceeds this
    drain_timeout: float       # a draining member is retired after this even with requests in flight


@dataclass(frozen=True, slots=True)
class DesiredState:
    """Every managed pool's `Desired` as one published value, overrides and maintenance applied.

    The control step builds it whole and hands it to the pool managers, as the routing table is
    handed to the proxy; a manager reads its pool's entry and calls nothing back. A pool without an
    entry (no plan yet) reaches its spec's baseline."""
    pools: Mapping[str, Desired] = field(default_factory=lambda: MappingProxyType({}))
    at: float = 0.0   # clock time of the step that published it

    @classmethod
    def of(cls, pools: Mapping[str, Desired], at: float = 0.0) -> DesiredState:
        return cls(MappingProxyType(dict(pools)), at)


@dataclass(frozen=True, slots=True)
class ObservedMember:
    id: str
    state: MemberState
    since: float = 0.0                 # clock time of the last state change
    shadow_state: str | None = None
    in_flight: int = 0
    busy: bool = False


@dataclass(frozen=True, slots=True)
class Launch:
    """Create one new member; where it ends up (ready or shadow) is decided once it is warm."""


@dataclass(frozen=True, slots=True)
class Warm:
    member_id: str


@dataclass(frozen=True, slots=True)
class Park:
    """Make the member a shadow in `state` (running, paused or stopped)."""
    member_id: str
    state: str


@dataclass(frozen=True, slots=True)
class Activate:
    """Make the member routable: a shadow is resumed or started; a booted or warm one just goes ready."""
    member_id: str


@dataclass(frozen=True, slots=True)
class Drain:
    member_id: str


@dataclass(frozen=True, slots=True)
class Retire:
    member_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Replace:
    """Remove a failed member at once (no drain); its place is refilled by the Activate or Launch
    actions of the same plan, since it no longer counts."""
    member_id: str


Action = Launch | Warm | Park | Activate | Drain | Retire | Replace


def baseline_desired(pool: str, spec: Pool, observed: Sequence[ObservedMember]) -> Desired:
    """Capacity straight from the pool spec: `min` ready and the configured shadow tier."""
    return Desired(ready=spec.capacity.min, shadow=spec.shadow.size, shadow_state=spec.shadow.state,
                   max_members=spec.capacity.max, drain_timeout=spec.drain_timeout)


def decide(desired: Desired, observed: Sequence[ObservedMember], now: float) -> list[Action]:
    actions: list[Action] = []
    idle = [m for m in observed if not m.busy]

    actions += [Replace(m.id) for m in idle if m.state is MemberState.FAILED]
    for m in idle:
        if m.state is MemberState.DRAINING:
            if m.in_flight <= 0:
                actions.append(Retire(m.id, "drained"))
            elif now - m.since >= desired.drain_timeout:
                actions.append(Retire(m.id, "drain timeout"))

    cap = max(0, desired.max_members)
    want_ready = min(max(0, desired.ready), cap)
    want_shadow = 0 if desired.shadow_state == "none" else min(max(0, desired.shadow), cap - want_ready)

    ready = [m for m in observed if m.state is MemberState.READY]
    shadows = [m for m in observed if m.state is MemberState.SHADOW]
    booted = [m for m in idle if m.state is MemberState.LAUNCHING]
    warmed = [m for m in idle if m.state is MemberState.WARMING]
    in_progress = sum(1 for m in observed if m.busy and m.state in (MemberState.LAUNCHING, MemberState.WARMING))
    idle_shadows = sorted((m for m in shadows if not m.busy),
                          key=lambda m: (_SHADOW_SPEED.get(m.shadow_state or "", 3), m.since))

    # Warm members, then shadows (fastest first), fill ready slots before anything new is launched.
    ready_need = want_ready - len(ready)
    activated = activated_shadows = 0
    while ready_need > activated and warmed:
        actions.append(Activate(warmed.pop(0).id))
        activated += 1
    while ready_need > activated and idle_shadows:
        actions.append(Activate(idle_shadows.pop(0).id))
        activated += 1
        activated_shadows += 1
    # With nothing routable at all, a healthy member serves now rather than after its warm-up.
    if not ready and not activated:
        while ready_need > activated and booted:
            actions.append(Activate(booted.pop(0).id))
            activated += 1
    actions += [Warm(m.id) for m in booted]
    ready_after = len(ready) + activated

    shadow_after = len(shadows) - activated_shadows
    for m in warmed:
        if shadow_after < want_shadow:
            actions.append(Park(m.id, desired.shadow_state))
            shadow_after += 1
        else:
            actions.append(Retire(m.id, "surplus"))

    pipeline = in_progress + len(booted)
    total = ready_after + shadow_after + pipeline
    need = max(0, want_ready - ready_after) + max(0, want_shadow - shadow_after) - pipeline
    actions += [Launch() for _ in range(max(0, min(need, cap - total)))]

    # Scale down: shadows go before ready members; the slowest shadows go first.
    surplus = max(0, shadow_after - want_shadow)
    retiring = idle_shadows[len(idle_shadows) - min(surplus, len(idle_shadows)):]
    actions += [Retire(m.id, "surplus") for m in reversed(retiring)]
    if desired.shadow_state != "none":
        actions += [Park(m.id, desired.shadow_state) for m in idle_shadows[:len(idle_shadows) - len(retiring)]
                    if m.shadow_state != desired.shadow_state]

    surplus_ready = len(ready) - want_ready
    if surplus_ready > 0:
        # Least in flight first, then the newest: the member with the least to lose.
        by_cost = sorted((m for m in ready if not m.busy), key=lambda m: (m.in_flight, -m.since))
        actions += [Drain(m.id) for m in by_cost[:surplus_ready]]
    return actions
