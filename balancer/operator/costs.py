"""Cost accounting: container-seconds per pool and tier, attributed to sources.

Seed 003 prices predictive allocation as a premium. So the capacity held ahead of need — shadow
members and ready members the forecast asked for above the baseline — is counted apart, and only
sources that opted in to the predictive tier are charged for it, by their share of the pool's
requests. Everything else (baseline, burst, members launching or draining) is shared by all sources
by their share of requests. Seconds with no requests to attribute them to are reported as
unattributed rather than spread silently.

Controls are those in force at the time: the window is cut into intervals wherever a source opted
in or out, and each interval is attributed on its own, with its own requests. Requests are counted
per minute, so intervals start on a minute: a change takes effect in costs from the first minute
that starts at or after it.

Pure: a member timeline, the controls in force and request counts in, a report out.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence, Set
from dataclasses import asdict, dataclass, field

from balancer.operator.requests import iso
from balancer.operator.timeline import Sample

TIERS = ("baseline", "burst", "overhead", "predictive_ready", "shadow")


@dataclass(slots=True)
class PoolCost:
    pool: str
    seconds: dict[str, float] = field(default_factory=lambda: {t: 0.0 for t in TIERS})
    requests: int = 0
    unattributed_s: float = 0.0

    @property
    def premium_s(self) -> float:
        return self.seconds["predictive_ready"] + self.seconds["shadow"]

    @property
    def shared_s(self) -> float:
        return self.seconds["baseline"] + self.seconds["burst"] + self.seconds["overhead"]


@dataclass(frozen=True, slots=True)
class SourceCost:
    pool: str
    source: str
    predictive: bool        # opted in during the last interval it sent requests in
    requests: int
    share: float            # of the pool's requests
    shared_s: float         # baseline + burst + overhead, by share of all requests
    premium_s: float        # predictive tier, by share of opted-in requests
    total_s: float


@dataclass(frozen=True, slots=True)
class Interval:
    """A stretch of the window with one set of controls in force, and the requests counted in it."""
    since: float
    until: float
    opted_out: Set[str]
    requests: Mapping[str, Mapping[str, int]]     # per pool, requests per source


CSV_COLUMNS = ["pool", "source", "predictive", "requests", "share", "shared_s", "premium_s", "total_s",
               "row_kind", "tier", "seconds"]


@dataclass(frozen=True, slots=True)
class CostReport:
    since: float
    until: float
    pools: list[PoolCost]
    sources: list[SourceCost]

    def to_json(self) -> dict:
        return {
            "since": iso(self.since), "until": iso(self.until), "unit": "container-seconds",
            "pools": {p.pool: {"tiers": {k: round(v, 3) for k, v in p.seconds.items()},
                               "premium_s": round(p.premium_s, 3), "shared_s": round(p.shared_s, 3),
                               "total_s": round(p.premium_s + p.shared_s, 3), "requests": p.requests,
                               "unattributed_s": round(p.unattributed_s, 3)}
                      for p in self.pools},
            "sources": [{k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(s).items()}
                        for s in self.sources],
        }

    def to_csv(self) -> str:
        """The columns of CSV_COLUMNS; `row_kind` tells the rows apart, in this order: `source` (a
        source's costs in a pool), `unattributed` (a pool's seconds nobody could be charged for, in
        `total_s`), `tier` (a pool's container-seconds in one tier: `tier`, `seconds`). Summing
        `total_s` over all rows still gives everything once; the tier rows leave it empty."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for s in self.sources:
            writer.writerow([s.pool, s.source, str(s.predictive).lower(), s.requests, f"{s.share:.6f}",
                             f"{s.shared_s:.3f}", f"{s.premium_s:.3f}", f"{s.total_s:.3f}", "source", "", ""])
        for p in self.pools:
            if p.unattributed_s > 0:
                writer.writerow([p.pool, "", "", 0, "0", "", "", f"{p.unattributed_s:.3f}", "unattributed", "", ""])
        for p in self.pools:
            for tier, seconds in p.seconds.items():
                writer.writerow([p.pool, "", "", "", "", "", "", "", "tier", tier, f"{seconds:.3f}"])
        return out.getvalue()


def container_seconds(samples: Sequence[Sample], since: float, until: float) -> dict[str, float]:
    """Seconds per tier over [since, until): each sample holds until the next one (the last until `until`)."""
    seconds = {t: 0.0 for t in TIERS}
    for i, s in enumerate(samples):
        end = samples[i + 1].t if i + 1 < len(samples) else until
        held = min(end, until) - max(s.t, since)
        if held <= 0:
            continue
        seconds["baseline"] += s.baseline * held
        seconds["burst"] += s.burst * held
        seconds["overhead"] += (s.launching + s.draining) * held
        seconds["predictive_ready"] += s.predictive * held
        seconds["shadow"] += s.shadow * held
    return seconds


def attribution_intervals(since: float, until: float, in_force: Sequence[tuple[float, Set[str]]],
                          step: float = 60.0) -> list[tuple[float, float, Set[str]]]:
    """[since, until) cut where the opted-out sources change: (from, to, opted out) in time order.

    `in_force`: the opted-out sources from each time on, in time order, the first from `since`
    (Controls.opted_out_between). Each cut is moved to the first `step` (the minute requests are
    counted by) starting at or after the change, and the first interval goes with the controls in
    force at its first whole minute: every interval then holds whole minutes of requests. Neighbours
    with the same controls are one interval."""
    first = _ceil(since, step)
    starts: list[float] = []
    sets: list[Set[str]] = []
    for t, opted_out in in_force:
        start = max(_ceil(t, step), first)
        if starts and start >= until:
            break
        if starts and starts[-1] == start:     # a later change in the same minute wins
            starts.pop()
            sets.pop()
        if not sets or sets[-1] != opted_out:
            starts.append(start)
            sets.append(opted_out)
    starts[0] = since
    return list(zip(starts, [*starts[1:], until], sets))


def compute_costs(timeline: Mapping[str, Sequence[Sample]], requests: Mapping[str, Mapping[str, int]],
                  opted_out: Set[str], since: float, until: float) -> CostReport:
    """One set of controls over the whole window: `requests` per pool, requests per source in it."""
    return compute_costs_over(timeline, [Interval(since, until, opted_out, requests)])


def compute_costs_over(timeline: Mapping[str, Sequence[Sample]], intervals: Sequence[Interval]) -> CostReport:
    """`timeline`: samples per pool; `intervals`: consecutive, in time order, together the window.
    Each interval's seconds go to the requests counted in it, by the controls in force in it."""
    pools: dict[str, PoolCost] = {}
    charged: dict[tuple[str, str], _Charge] = {}
    for iv in intervals:
        for pool in sorted(set(timeline) | set(iv.requests)):
            part = PoolCost(pool, container_seconds(timeline.get(pool, ()), iv.since, iv.until))
            by_source = {s: n for s, n in iv.requests.get(pool, {}).items() if n > 0}
            total = sum(by_source.values())
            opted_in = sum(n for s, n in by_source.items() if s not in iv.opted_out)
            cost = pools.setdefault(pool, PoolCost(pool))
            for tier, seconds in part.seconds.items():
                cost.seconds[tier] += seconds
            cost.requests += total
            if total == 0:
                cost.unattributed_s += part.shared_s + part.premium_s
            elif opted_in == 0:
                cost.unattributed_s += part.premium_s
            for source, n in by_source.items():
                charge = charged.setdefault((pool, source), _Charge())
                charge.predictive = source not in iv.opted_out
                charge.requests += n
                charge.shared_s += part.shared_s * n / total
                charge.premium_s += part.premium_s * n / opted_in if charge.predictive and opted_in else 0.0
    sources = [SourceCost(pool, source, c.predictive, c.requests, c.requests / pools[pool].requests,
                          c.shared_s, c.premium_s, c.shared_s + c.premium_s)
               for (pool, source), c in sorted(charged.items(), key=lambda kv: (kv[0][0], -kv[1].requests, kv[0][1]))]
    since = intervals[0].since if intervals else 0.0
    until = intervals[-1].until if intervals else since
    return CostReport(since, until, [pools[p] for p in sorted(pools)], sources)


@dataclass(slots=True)
class _Charge:
    predictive: bool = True
    requests: int = 0
    shared_s: float = 0.0
    premium_s: float = 0.0


def _ceil(t: float, step: float) -> float:
    return math.ceil(t / step) * step
