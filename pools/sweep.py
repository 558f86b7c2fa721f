"""Folds and the cold/cost frontier: how `warmfront simulate` judges a policy without tuning it to one trace.

Folds. The scored part of a replay is cut into K consecutive windows of equal length. Every policy
learns online and never peeks (see `pools.simulate`), so a window is scored by a policy that has
learned only from what precedes it: one replay gives K train-on-the-past, score-the-window folds.
Each window's oracle is planned for that window alone. `spread` gives the min / median / max over
folds of each policy's cold rate, cold requests and container-minutes against reactive's, and
cost against the oracle's.

Frontier. `sweep` replays reactive over a range of target utilisations and predictive over a range
of planning quantiles and target utilisations (and fixed shadow sizes), all from one `Prepared`
(one forecast path), and
`frontier` keeps each policy's Pareto points (no other point of that policy is both cheaper and
colder). `verdict` reads, per fold, predictive's frontier at reactive's default cost (goal: at most
a quarter of its cold requests), whether the default configuration sits on the frontier, and the
moonshot: predictive's cost at reactive's cold rate against the oracle's.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from pools.simulate import POLICIES, Prepared, SimPool, SimResult, make_policy, oracle, replay_policy

REACTIVE_TARGETS = (0.5, 0.6, 0.7, 0.8, 0.9)
PREDICTIVE_QUANTILES = (0.6, 0.75, 0.9, 0.97)
PREDICTIVE_TARGETS = (0.7, 0.8)   # the forecast tier's target utilisation (the pool's capacity.target_utilization)
SHADOW_SIZES = (0, 3)             # fixed shadows on top of the forecast's, tried at the default quantile and target
COLD_GOAL = 0.25          # predictive's cold requests at reactive's cost, as a share of reactive's
SPREAD_METRICS = ("cold_rate", "cold_vs_reactive", "cost_vs_reactive", "cost_vs_oracle")


# ---------------------------------------------------------------------------------------- folds
def fold_summaries(result: SimResult, k: int) -> list[dict]:
    """Per fold: its window (seconds from the start of scoring) and every policy's summary over it."""
    out = []
    for w in result.windows(k):
        policies = result.summary(w)
        r = policies["reactive"]
        for row in policies.values():
            row["cold_vs_reactive"] = _ratio(row["cold_requests"], r["cold_requests"])
            row["cost_vs_reactive"] = _ratio(row["container_minutes"], r["container_minutes"])
        out.append({"from_s": w.start * result.step_s, "to_s": w.stop * result.step_s, "policies": policies})
    return out


def spread(folds: Sequence[dict]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per policy and metric: min, median and max over the folds (folds where it is undefined, e.g.
    reactive had no cold request to compare with, are left out and counted)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for name in POLICIES:
        out[name] = {}
        for metric in SPREAD_METRICS:
            values = [f["policies"][name][metric] for f in folds if f["policies"][name].get(metric) is not None]
            out[name][metric] = ({"min": round(min(values), 6), "median": round(statistics.median(values), 6),
                                  "max": round(max(values), 6), "folds": len(values)} if values else
                                 {"min": None, "median": None, "max": None, "folds": 0})
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b > 0 else None


# ---------------------------------------------------------------------------------------- sweep
@dataclass(frozen=True, slots=True)
class Point:
    policy: str                      # reactive | predictive
    knobs: dict[str, float]          # {"target": 0.7} or {"quantile": 0.9, "shadow": 0}
    default: bool                    # the configuration `simulate` runs without --sweep
    folds: tuple[dict, ...]          # per fold: requests, cold_requests, cold_rate, container_minutes
    total: dict


def sweep(prepared: Prepared, k: int, targets: Sequence[float] = REACTIVE_TARGETS,
          quantiles: Sequence[float] = PREDICTIVE_QUANTILES, utilisations: Sequence[float] = PREDICTIVE_TARGETS,
          shadows: Sequence[int] = SHADOW_SIZES, progress: Callable[[float], None] | None = None
          ) -> tuple[list[Point], list[dict]]:
    """Every reactive target, every predictive (quantile, target utilisation) and, at the default
    quantile and target, every fixed shadow size; each one replay over all pools, scored on `k`
    folds; and the oracle per fold. Defaults: reactive's `cfg.reactive_target`, the first pool's
    scaling.quantile, capacity.target_utilization and shadow.size."""
    base = prepared.pools
    spec = base[0].spec
    default_target = prepared.cfg.reactive_target
    d_q, d_u, d_s = spec.scaling.quantile, spec.capacity.target_utilization, spec.shadow.size
    runs: list[tuple[str, dict[str, float], tuple[SimPool, ...]]] = []
    for t in sorted(set(targets) | {default_target}):
        runs.append(("reactive", {"target": t}, base))
    combos = {(q, u, d_s) for q in set(quantiles) | {d_q} for u in set(utilisations) | {d_u}}
    combos |= {(d_q, d_u, size) for size in shadows}
    for q, u, size in sorted(combos):
        pools = tuple(_variant(p, q, u, size) for p in base)
        runs.append(("predictive", {"quantile": q, "target": u, "shadow": size}, pools))
    points = []
    for n, (policy, knobs, pools) in enumerate(runs):
        cfg = replace(prepared.cfg, reactive_target=knobs.get("target", prepared.cfg.reactive_target))
        per_pool = [replay_policy(pool, make_policy(policy, replace(prepared, cfg=cfg), i, pool), prepared.demands[i],
                                  cfg, prepared.scored_from) for i, pool in enumerate(pools)]
        result = SimResult(cfg.step_s, prepared.scored_from, np.zeros(len(per_pool[0].demand)),
                           {policy: per_pool}, cfg.delays.cold)
        folds = score_folds(result, policy, k)
        default = (knobs == {"target": default_target} if policy == "reactive"
                   else knobs == {"quantile": d_q, "target": d_u, "shadow": d_s})
        points.append(Point(policy, knobs, default, folds, _score(result, policy, slice(0, len(result.demand)))))
        if progress is not None:
            progress((n + 1) / len(runs))
    oracles = []
    scored = [d[prepared.scored_from:] for d in prepared.demands]
    n_steps = len(scored[0])
    edges = [round(i * n_steps / k) for i in range(k + 1)]
    for a, b in zip(edges, edges[1:]):
        minutes = sum(oracle(d[a:b], p.member_rate, prepared.cfg.step_s, prepared.cfg.delays.cold, 0).totals()
                      ["container_minutes"] for d, p in zip(scored, base))
        oracles.append({"container_minutes": round(minutes, 1)})
    return points, oracles


def _variant(pool: SimPool, quantile: float, target: float, shadow: int) -> SimPool:
    size = min(shadow, pool.spec.capacity.max)
    state = pool.spec.shadow.state if pool.spec.shadow.state != "none" or size == 0 else "paused"
    return variant(pool, {"scaling.quantile": quantile, "capacity.target_utilization": target,
                          "shadow.size": size, "shadow.state": state})


def variant(pool: SimPool, knobs: dict[str, object]) -> SimPool:
    """`pool` with some of its spec's settings changed, named `section.field` (`scaling.quantile`,
    `capacity.target_utilization`, `shadow.size`, ...); the result is validated as a config is."""
    spec = pool.spec
    sections: dict[str, dict[str, object]] = {}
    for name, value in knobs.items():
        section, key = name.split(".", 1)
        sections.setdefault(section, {})[key] = value
    updates = {}
    for section, fields in sections.items():
        current = getattr(spec, section)
        updates[section] = type(current).model_validate(current.model_dump() | fields)
    return replace(pool, spec=spec.model_copy(update=updates))


def score_folds(result: SimResult, policy: str, k: int) -> tuple[dict, ...]:
    """Requests, cold requests and rate and container-minutes of `policy` on each of `k` folds."""
    return tuple(_score(result, policy, w) for w in result.windows(k))


def _score(result: SimResult, policy: str, w: slice) -> dict:
    parts = [r.window(w).totals() for r in result.runs[policy]]
    requests = sum(p["requests"] for p in parts)
    cold = sum(p["cold_requests"] for p in parts)
    return {"requests": int(round(requests)), "cold_requests": int(round(cold)),
            "cold_rate": round(cold / requests, 7) if requests else 0.0,
            "container_minutes": round(sum(p["container_minutes"] for p in parts), 1)}


# ---------------------------------------------------------------------------------------- frontier
def frontier(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto points of (cost, cold), cheapest first: each colder-free than every cheaper one."""
    out: list[tuple[float, float]] = []
    for cost, cold in sorted(points):
        if not out or cold < out[-1][1]:
            out.append((cost, cold))
    return out


def cold_at(front: Sequence[tuple[float, float]], cost: float) -> float | None:
    """The frontier's cold requests at `cost` (linear between its points; None below its cheapest)."""
    if not front or cost < front[0][0]:
        return None
    for (c0, y0), (c1, y1) in zip(front, front[1:]):
        if c0 <= cost <= c1:
            return y0 + (y1 - y0) * (cost - c0) / (c1 - c0) if c1 > c0 else min(y0, y1)
    return front[-1][1]


def cost_at(front: Sequence[tuple[float, float]], cold: float) -> float | None:
    """The frontier's cost at `cold` requests (None when no point is that warm)."""
    if not front or cold < front[-1][1]:
        return None
    for (c0, y0), (c1, y1) in zip(front, front[1:]):
        if y1 <= cold <= y0:
            return c0 + (c1 - c0) * (y0 - cold) / (y0 - y1) if y0 > y1 else c0
    return front[0][0]


def verdict(points: Sequence[Point], oracles: Sequence[dict]) -> list[dict]:
    """Per fold: the goal (predictive's frontier at reactive's default cost has ≤ ¼ of its cold
    requests), whether the default predictive configuration is on the predictive frontier, and the
    moonshot ratio (predictive's cost at reactive's cold requests / the oracle's)."""
    out = []
    for f, orc in enumerate(oracles):
        ref = next(p for p in points if p.policy == "reactive" and p.default).folds[f]
        pred = [p for p in points if p.policy == "predictive"]
        front = frontier([(p.folds[f]["container_minutes"], p.folds[f]["cold_requests"]) for p in pred])
        at_cost = cold_at(front, ref["container_minutes"])
        default = next(p for p in pred if p.default).folds[f]
        dc, dy = default["container_minutes"], default["cold_requests"]
        dominated = any(c <= dc and y <= dy and (c < dc or y < dy)
                        for c, y in ((p.folds[f]["container_minutes"], p.folds[f]["cold_requests"]) for p in pred))
        at_cold = cost_at(front, ref["cold_requests"])
        floor = orc["container_minutes"]
        out.append({
            "reactive_cold_requests": ref["cold_requests"], "reactive_container_minutes": ref["container_minutes"],
            "predictive_cold_at_reactive_cost": None if at_cost is None else round(at_cost, 1),
            "cold_share_at_reactive_cost": (None if at_cost is None else
                                            round(at_cost / ref["cold_requests"], 4) if ref["cold_requests"] else
                                            (0.0 if at_cost == 0 else None)),
            "goal_met": at_cost is not None and at_cost <= COLD_GOAL * ref["cold_requests"],
            "default_on_frontier": not dominated,
            "cost_vs_oracle_at_reactive_cold": (None if at_cold is None or floor <= 0 else round(at_cold / floor, 3)),
        })
    return out


def sweep_json(points: Sequence[Point], oracles: Sequence[dict]) -> dict:
    return {"points": [{"policy": p.policy, "knobs": p.knobs, "default": p.default, "total": p.total,
                        "folds": list(p.folds)} for p in points],
            "oracle": list(oracles), "verdict": verdict(points, oracles)}
