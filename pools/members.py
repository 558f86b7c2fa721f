"""What crosses the boundary between pools/ and the rest: members and their states."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class MemberState(StrEnum):
    LAUNCHING = "launching"   # created, process/container starting, not yet healthy
    WARMING = "warming"       # healthy, warm-up requests running
    SHADOW = "shadow"         # warmed, unrouted (running, paused or stopped: see MemberView.shadow_state)
    READY = "ready"           # routable
    DRAINING = "draining"     # unrouted, in-flight requests finishing
    RETIRED = "retired"       # stopped and removed
    FAILED = "failed"         # died or never became healthy


@dataclass(frozen=True, slots=True)
class MemberView:
    """One member as the control loop publishes it to the routing table and the status page."""
    id: str
    pool: str
    host: str
    port: int
    state: MemberState
    prewarmed: bool = False          # warmed before routing: takes full weight at once (no slow start)
    shadow_state: str | None = None  # running | paused | stopped, when state is SHADOW
    since: float = 0.0               # clock time of the last state change
    reason: str = ""                 # why it failed, when state is FAILED: "failed health checks: GET /healthz -> 404"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def why_none_ready(members: list[MemberView]) -> str:
    """What a pool's members are doing instead of serving, for the 503 it answers meanwhile:
    `1 member: failed health checks: GET /healthz -> 404`, `3 members: 2 failed (exited with code 1), 1 launching`."""
    if not members:
        return "no members"
    if len(members) == 1:
        m = members[0]
        return f"1 member: {m.reason or m.state.value}"
    groups: dict[tuple[MemberState, str], int] = {}
    for m in members:
        groups[m.state, m.reason] = groups.get((m.state, m.reason), 0) + 1
    parts = [f"{n} {state.value}" + (f" ({reason})" if reason else "") for (state, reason), n in groups.items()]
    return f"{len(members)} members: " + ", ".join(parts)
