"""Members per pool over time: sampled every few seconds, kept in memory for a bounded window.

The dashboard plots it and cost accounting integrates it. Ready members are split into tiers
at sampling time: the baseline is `capacity.min`; above it, as many as the planner's predictive
tier asks for count as predictive, the rest as burst.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from pools.members import MemberState, MemberView


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    ready: int = 0
    baseline: int = 0          # ready members of the baseline tier
    predictive: int = 0        # ready members the forecast asked for above baseline (pre-warmed capacity)
    burst: int = 0             # ready members live load asked for beyond that
    shadow: int = 0            # shadow members holding resources (running or paused)
    shadow_stopped: int = 0    # stopped shadows hold disk only
    launching: int = 0         # launching or warming
    draining: int = 0


def sample(t: float, members: Iterable[MemberView], baseline_min: int, predictive_wanted: int) -> Sample:
    counts = {s: 0 for s in MemberState}
    stopped = 0
    for m in members:
        counts[m.state] += 1
        stopped += m.state is MemberState.SHADOW and m.shadow_state == "stopped"
    ready = counts[MemberState.READY]
    baseline = min(ready, baseline_min)
    predictive = min(ready - baseline, max(0, predictive_wanted))
    return Sample(t, ready, baseline, predictive, ready - baseline - predictive,
                  counts[MemberState.SHADOW] - stopped, stopped,
                  counts[MemberState.LAUNCHING] + counts[MemberState.WARMING], counts[MemberState.DRAINING])


class MemberTimeline:
    """Per pool, samples in time order; the oldest fall off past `keep` samples."""

    def __init__(self, keep: int = 17280) -> None:       # a day at one sample per 5 s
        self.keep = keep
        self._pools: dict[str, deque[Sample]] = {}

    def add(self, pool: str, s: Sample) -> None:
        series = self._pools.get(pool)
        if series is None:
            series = self._pools[pool] = deque(maxlen=self.keep)
        series.append(s)

    def pools(self) -> list[str]:
        return list(self._pools)

    def series(self, pool: str, since: float = float("-inf")) -> list[Sample]:
        """Samples from the last one at or before `since` on: it tells what held at `since`."""
        samples = list(self._pools.get(pool, ()))
        first = 0
        for i, s in enumerate(samples):
            if s.t <= since:
                first = i
            else:
                break
        return samples[first:]
