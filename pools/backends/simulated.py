"""The simulated backend: members on a virtual clock, acted on by the same reconcile decisions as live.

This is the thin actor of `warmfront simulate`. `pools.reconciler.decide` chooses the actions; this
module only performs them with modelled delays (a cold launch, an activation per shadow state) and
accounts for what the members cost and serve. It is a fluid model: a member serves `member_rate`
requests per second from the moment it is ready; draining is instant because no request is in flight
between steps.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

from pools.members import MemberState
from pools.reconciler import (Action, Activate, Desired, Drain, Launch, ObservedMember, Park, Replace, Retire,
                              Warm, decide)

# Medians from bench/activation.py (README "Activation"): a stopped shadow boots again, i.e. is cold.
DEFAULT_ACTIVATION = {"running": 0.001, "paused": 0.015}
_COUNTS_FULL = (MemberState.LAUNCHING, MemberState.WARMING, MemberState.READY, MemberState.DRAINING)


@dataclass(frozen=True, slots=True)
class Delays:
    cold: float = 60.0                                       # launch to healthy, seconds
    activation: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ACTIVATION))

    def activate(self, shadow_state: str | None) -> float:
        return self.activation.get(shadow_state or "", self.cold)


@dataclass(slots=True)
class SimMember:
    id: str
    state: MemberState
    since: float
    busy_until: float = -math.inf    # an operation (boot, activation) is under way until then
    shadow_state: str | None = None


class SimulatedPool:
    """Members of one pool and one policy. `reconcile(desired, now)` is the manager's pass."""

    def __init__(self, delays: Delays, shadow_cost: float = 0.2, max_passes: int = 4) -> None:
        self.delays = delays
        self.shadow_cost = shadow_cost
        self.max_passes = max_passes
        self.members: dict[str, SimMember] = {}
        self.activations = 0            # shadows made ready
        self.launches = 0
        self._next_id = 0
        self._cache: tuple[int, float, list[float]] | None = None   # (ready, cost weight, sorted ready times)
        self._settled: tuple[Desired, float] | None = None   # (desired, next op end) of an empty decision

    def reconcile(self, desired: Desired, now: float) -> None:
        """Decide and act until the decision is empty: the live manager wakes at once when an
        operation finishes, so a warmed member is activated in the same instant, not a pass later."""
        if self._settled is not None and self._settled[0] == desired and now < self._settled[1]:
            return  # decide is pure and nothing it sees has changed: it would return nothing again
        for _ in range(self.max_passes):
            actions = decide(desired, self.observed(now), now)
            if not actions:
                self._settled = (desired, self._next_end(now))
                return
            self._settled = None
            for action in actions:
                self._act(action, now)
            if all(isinstance(a, Launch) for a in actions):
                return

    def observed(self, now: float) -> list[ObservedMember]:
        return [ObservedMember(m.id, m.state, m.since, m.shadow_state, 0, m.busy_until > now)
                for m in self.members.values()]

    def ready_seconds(self, t0: float, t1: float) -> float:
        """Member-seconds of routable capacity in [t0, t1): activations under way count from their end."""
        starts = self._summary()[2]
        settled = bisect.bisect_right(starts, t0)
        return settled * (t1 - t0) + sum(max(0.0, t1 - s) for s in starts[settled:])

    def ready_count(self) -> int:
        return self._summary()[0]

    def ready_ids(self) -> list[str]:
        return [m.id for m in self.members.values() if m.state is MemberState.READY]

    def cost_weight(self) -> float:
        """Cost per second now: running members 1, shadows `shadow_cost`."""
        return self._summary()[1]

    def _summary(self) -> tuple[int, float, list[float]]:
        # Members change only in `_act`, a few times a day per member; steps read this 10^5 times.
        if self._cache is None:
            ms = self.members.values()
            starts = sorted(max(m.since, m.busy_until) for m in ms if m.state is MemberState.READY)
            weight = (sum(1 for m in ms if m.state in _COUNTS_FULL)
                      + self.shadow_cost * sum(1 for m in ms if m.state is MemberState.SHADOW))
            self._cache = (len(starts), weight, starts)
        return self._cache

    def _next_end(self, now: float) -> float:
        return min((m.busy_until for m in self.members.values() if m.busy_until > now), default=math.inf)

    def _act(self, action: Action, now: float) -> None:
        self._cache = None
        if isinstance(action, Launch):
            self._next_id += 1
            self.launches += 1
            mid = f"sim-{self._next_id}"
            self.members[mid] = SimMember(mid, MemberState.LAUNCHING, now, busy_until=now + self.delays.cold)
            return
        m = self.members.get(action.member_id)
        if m is None:
            return
        match action:
            case Warm():
                m.state, m.since = MemberState.WARMING, now    # warm-up requests take no time here
            case Park(state=state):
                m.state, m.shadow_state, m.since = MemberState.SHADOW, state, now
            case Activate():
                if m.state is MemberState.SHADOW:
                    m.busy_until = now + self.delays.activate(m.shadow_state)
                    self.activations += 1
                m.state, m.shadow_state, m.since = MemberState.READY, None, now
            case Drain():
                m.state, m.since = MemberState.DRAINING, now
            case Retire() | Replace():
                del self.members[m.id]

