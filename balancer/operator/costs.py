"""Cost accounting: container-seconds (and core-seconds, GiB-seconds) per pool and tier, attributed to sources.

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
               "row_kind", "tier", "seconds", "core_s", "gib_s", "used_core_s", "used_gib_s"]


@dataclass(frozen=True, slots=True)
class PoolResources:
    """What a pool's members reserve and used, for pricing by resource rather than by container."""
    cpus: float | None                 # CPU limit per member: a container-second reserves this many core-seconds
    memory_bytes: int | None           # memory limit per member
    used_core_s: float = 0.0           # measured over the window (balancer.control.resources)
    used_gib_s: float = 0.0
    cpu_per_request: Mapping[str, float] = field(default_factory=dict)   # type -> CPU-seconds (estimated)


@dataclass(frozen=True, slots=True)
class SourceResources:
    core_s: float | None       # reserved: its container-seconds x the pool's CPU limit
    gib_s: float | None
    used_core_s: float         # measured use, attributed by its requests weighted by their type's CPU cost
    used_gib_s: float          # measured memory, by its share of requests


@dataclass(frozen=True, slots=True)
class CostReport:
    since: float
    until: float
    pools: list[PoolCost]
    sources: list[SourceCost]
    resources: Mapping[str, PoolResources] = field(default_factory=dict)
    source_resources: Mapping[tuple[str, str], SourceResources] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "since": iso(self.since), "until": iso(self.until), "unit": "container-seconds",
            "pools": {p.pool: {"tiers": {k: round(v, 3) for k, v in p.seconds.items()},
                               "premium_s": round(p.premium_s, 3), "shared_s": round(p.shared_s, 3),
                               "total_s": round(p.premium_s + p.shared_s, 3), "requests": p.requests,
                               "unattributed_s": round(p.unattributed_s, 3)}
                      for p in self.pools},
            "sources": [{**{k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(s).items()},
                         **self._source_resources_json(s)}
                        for s in self.sources],
        } | ({"resources": {name: self._pool_resources_json(name) for name in sorted(self.resources)}}
             if self.resources else {})

    def _pool_resources_json(self, pool: str) -> dict:
        r = self.resources[pool]
        cost = next((p for p in self.pools if p.pool == pool), PoolCost(pool))
        return {"unit": "core-seconds, GiB-seconds", "cpus": r.cpus, "memory_bytes": r.memory_bytes,
                "reserved_core_s": {t: _r3(sec * r.cpus) for t, sec in cost.seconds.items()} if r.cpus else None,
                "reserved_gib_s": {t: _r3(sec * r.memory_bytes / GIB) for t, sec in cost.seconds.items()}
                if r.memory_bytes else None,
                "used_core_s": _r3(r.used_core_s), "used_gib_s": _r3(r.used_gib_s),
                "cpu_per_request_s": {t: round(c, 6) for t, c in sorted(r.cpu_per_request.items())}}

    def _source_resources_json(self, s: SourceCost) -> dict:
        r = self.source_resources.get((s.pool, s.source))
        if r is None:
            return {}
        return {"core_s": _r3(r.core_s), "gib_s": _r3(r.gib_s), "used_core_s": _r3(r.used_core_s),
                "used_gib_s": _r3(r.used_gib_s)}

    def to_csv(self) -> str:
        """The columns of CSV_COLUMNS; `row_kind` tells the rows apart, in this order: `source` (a
        source's costs in a pool), `unattributed` (a pool's seconds nobody could be charged for, in
        `total_s`), `tier` (a pool's container-seconds in one tier: `tier`, `seconds`). Summing
        `total_s` over all rows still gives everything once; the tier rows leave it empty."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for s in self.sources:
            r = self.source_resources.get((s.pool, s.source))
            extra = [_f3(r.core_s), _f3(r.gib_s), _f3(r.used_core_s), _f3(r.used_gib_s)] if r else ["", "", "", ""]
            writer.writerow([s.pool, s.source, str(s.predictive).lower(), s.requests, f"{s.share:.6f}",
                             f"{s.shared_s:.3f}", f"{s.premium_s:.3f}", f"{s.total_s:.3f}", "source", "", "", *extra])
        for p in self.pools:
            if p.unattributed_s > 0:
                writer.writerow([p.pool, "", "", 0, "0", "", "", f"{p.unattributed_s:.3f}", "unattributed", "", "",
                                 "", "", "", ""])
        for p in self.pools:
            res = self.resources.get(p.pool)
            for tier, seconds in p.seconds.items():
                core = _f3(seconds * res.cpus) if res is not None and res.cpus else ""
                gib = _f3(seconds * res.memory_bytes / GIB) if res is not None and res.memory_bytes else ""
                writer.writerow([p.pool, "", "", "", "", "", "", "", "tier", tier, f"{seconds:.3f}", core, gib, "", ""])
        return out.getvalue()


def with_resources(report: CostReport, pools: Mapping[str, PoolResources],
                   requests: Mapping[str, Mapping[str, Mapping[str, int]]]) -> CostReport:
    """`report` with core-seconds and GiB-seconds: reserved ones follow the container-seconds (a source
    reserves its container-seconds x the pool's limits), used ones are the pool's measured use shared by
    requests, CPU weighted by each request type's estimated CPU cost (by request count where none is
    known). `requests`: per pool, per source, requests per type over the window."""
    out: dict[tuple[str, str], SourceResources] = {}
    for s in report.sources:
        r = pools.get(s.pool)
        if r is None:
            continue
        by_source = requests.get(s.pool, {})
        total_w = sum(_cpu_weight(types, r.cpu_per_request) for types in by_source.values())
        total_n = sum(sum(types.values()) for types in by_source.values())
        mine = by_source.get(s.source, {})
        out[(s.pool, s.source)] = SourceResources(
            s.total_s * r.cpus if r.cpus else None, s.total_s * r.memory_bytes / GIB if r.memory_bytes else None,
            r.used_core_s * _cpu_weight(mine, r.cpu_per_request) / total_w if total_w > 0 else 0.0,
            r.used_gib_s * sum(mine.values()) / total_n if total_n > 0 else 0.0)
    return CostReport(report.since, report.until, report.pools, report.sources, dict(pools), out)


GIB = float(1 << 30)


def _cpu_weight(types: Mapping[str, int], costs: Mapping[str, float]) -> float:
    if not costs:
        return float(sum(types.values()))
    return sum(n * costs.get(t, 0.0) for t, n in types.items())


def _r3(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _f3(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}"


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
