"""Cost accounting: container-seconds per pool and tier, attributed to sources.

Seed 003 prices predictive allocation as a premium. So the capacity held ahead of need — shadow
members and ready members the forecast asked for above the baseline — is counted apart, and only
sources that opted in to the predictive tier are charged for it, by their share of the pool's
requests. Everything else (baseline, burst, members launching or draining) is shared by all sources
by their share of requests. Seconds with no requests to attribute them to are reported as
unattributed rather than spread silently.

Pure: a member timeline and request counts in, a report out.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

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
    predictive: bool
    requests: int
    share: float            # of the pool's requests
    shared_s: float         # baseline + burst + overhead, by share of all requests
    premium_s: float        # predictive tier, by share of opted-in requests
    total_s: float


@dataclass(frozen=True, slots=True)
class CostReport:
    since: float
    until: float
    pools: list[PoolCost]
    sources: list[SourceCost]

    def to_json(self) -> dict:
        return {
            "since": self.since, "until": self.until, "unit": "container-seconds",
            "pools": {p.pool: {"tiers": {k: round(v, 3) for k, v in p.seconds.items()},
                               "premium_s": round(p.premium_s, 3), "shared_s": round(p.shared_s, 3),
                               "total_s": round(p.premium_s + p.shared_s, 3), "requests": p.requests,
                               "unattributed_s": round(p.unattributed_s, 3)}
                      for p in self.pools},
            "sources": [{k: round(v, 6) if isinstance(v, float) else v for k, v in asdict(s).items()}
                        for s in self.sources],
        }

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["pool", "source", "predictive", "requests", "share", "shared_s", "premium_s", "total_s"])
        for s in self.sources:
            writer.writerow([s.pool, s.source, str(s.predictive).lower(), s.requests, f"{s.share:.6f}",
                             f"{s.shared_s:.3f}", f"{s.premium_s:.3f}", f"{s.total_s:.3f}"])
        for p in self.pools:
            if p.unattributed_s > 0:
                writer.writerow([p.pool, "", "", 0, "0", "", "", f"{p.unattributed_s:.3f}"])
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


def compute_costs(timeline: Mapping[str, Sequence[Sample]], requests: Mapping[str, Mapping[str, int]],
                  opted_out: set[str], since: float, until: float) -> CostReport:
    """`timeline`: samples per pool; `requests`: per pool, requests per source over the same window."""
    pools, sources = [], []
    for pool in sorted(set(timeline) | set(requests)):
        cost = PoolCost(pool, container_seconds(timeline.get(pool, ()), since, until))
        by_source = {s: n for s, n in requests.get(pool, {}).items() if n > 0}
        cost.requests = total = sum(by_source.values())
        opted_in = sum(n for s, n in by_source.items() if s not in opted_out)
        if total == 0:
            cost.unattributed_s = cost.shared_s + cost.premium_s
        elif opted_in == 0:
            cost.unattributed_s = cost.premium_s
        for source, n in sorted(by_source.items(), key=lambda kv: (-kv[1], kv[0])):
            predictive = source not in opted_out
            shared = cost.shared_s * n / total
            premium = cost.premium_s * n / opted_in if predictive and opted_in else 0.0
            sources.append(SourceCost(pool, source, predictive, n, n / total, shared, premium, shared + premium))
        pools.append(cost)
    return CostReport(since, until, pools, sources)
