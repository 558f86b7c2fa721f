"""Resource profiles, the maths: what a request of each type costs in CPU and memory, what the pool
will need, and what each member should be allowed. Pure: arrays in, frozen values out (the I/O is
balancer.control.resources).

- `estimate_costs`: rows are minutes (or any fixed-length sample interval, `minute_s`). CPU is a
  flow, so CPU-seconds in a row = b_cpu × member-seconds + Σ_t c_t × requests_t: b_cpu is the cores
  an idle member burns, c_t CPU-seconds per request of type t. Memory is a level, not a flow: the
  bytes resident in a row = b_mem × members + Σ_t k_t × rate_t, so k_t is *bytes per request/s of
  sustained rate* (what a type keeps resident while it arrives at 1/s: buffers, sessions, caches),
  b_mem an idle member's footprint. Both are non-negative least squares (a cost below zero is not a
  cost), uncertainty is a pairs bootstrap over rows (it makes no homoscedasticity assumption:
  Poisson counts are not), and a separability test says when the rows cannot tell the types apart,
  in which case the single pooled cost per request is what the forecast should use.
- `resource_demand`: forecast rates per type × those costs + the baseline of the members.
- `source_costs`: CPU-seconds and memory shares per source from its per-type counts.
- `Recommender`: a Kubernetes-VPA-like right-sizer per pool: a high percentile of per-member cores
  and the peak of per-member memory, each plus a margin, bounded, raised after an OOM kill or CPU
  throttling, the raise held until the window has passed.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIB = 1 << 20
MIN_ROWS = 10            # fewer rows than this: no estimate at all
MAX_CONDITION = 30.0     # of the column-scaled design: above it the costs are not told apart
MAX_CORRELATION = 0.95   # between two types' counts: they came in (nearly) the same proportion
LOADING = 0.3            # a column is part of a near-dependency when it carries this share of its direction
INTERVAL = (5.0, 95.0)   # the bootstrap's percentile interval: 90 %
BASELINE = "the idle baseline"


# ---------------------------------------------------------------- per-type costs
@dataclass(frozen=True, slots=True)
class CostEstimate:
    """Per-type CPU and memory costs of one pool, with bootstrap uncertainty.

    Units: `cpu_per_request` CPU-seconds per request; `cpu_baseline_cores` cores per member alive;
    `mem_per_rate` bytes resident per request/s of sustained rate (memory is a level: a type arriving
    at 2/s holds twice what it holds at 1/s, however long it lasts); `mem_baseline_bytes` bytes per
    member. Stderrs are the bootstrap's standard deviations, intervals its 5th and 95th percentiles
    (at an estimate pinned to 0 by the non-negativity the interval is [0, x]).

    When `separable` is False the per-type values are one arbitrary split of what the rows cannot
    tell apart (their stderrs show it); use the `pooled_*` fit (one cost for every request, the
    mix as seen) instead: `resource_demand` and `source_costs` do. `note` says which types and why.
    """
    types: tuple[str, ...]
    cpu_per_request: tuple[float, ...]
    cpu_stderr: tuple[float, ...]
    cpu_interval: tuple[tuple[float, float], ...]
    cpu_baseline_cores: float
    cpu_baseline_stderr: float
    mem_per_rate: tuple[float, ...]
    mem_stderr: tuple[float, ...]
    mem_baseline_bytes: float
    mem_baseline_stderr: float
    pooled_cpu_per_request: float          # one cost for every request of the mix seen (always fitted)
    pooled_cpu_stderr: float
    pooled_cpu_baseline_cores: float       # the pooled fit's idle baseline (pairs with its cost)
    pooled_mem_per_rate: float
    pooled_mem_baseline_bytes: float
    minutes: int                           # rows fitted (minutes, or sample intervals of `minute_s`)
    separable: bool
    note: str                              # "" when separable
    r2_cpu: float
    condition: float                       # of the column-scaled design (inf: exactly dependent)
    minute_s: float = 60.0
    # bootstrap draws, rows = resamples; columns [baseline, *types] (pooled: [baseline, all]).
    # Read only; `resource_demand` evaluates its band on them so the coefficients' covariance counts.
    cpu_draws: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), compare=False, repr=False)
    mem_draws: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), compare=False, repr=False)
    pooled_cpu_draws: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), compare=False, repr=False)
    pooled_mem_draws: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)), compare=False, repr=False)

    def cpu_cost(self, rtype: str) -> float:
        """CPU-seconds per request of `rtype`: its own estimate when separable, else the pooled one."""
        if self.separable and rtype in self.types:
            return self.cpu_per_request[self.types.index(rtype)]
        return self.pooled_cpu_per_request

    def mem_cost(self, rtype: str) -> float:
        """Bytes per request/s of `rtype`: its own estimate when separable, else the pooled one."""
        if self.separable and rtype in self.types:
            return self.mem_per_rate[self.types.index(rtype)]
        return self.pooled_mem_per_rate

    def to_json(self) -> dict[str, Any]:
        """Plain floats and lists (no NaN or inf), for /admin/status."""
        return {
            "types": list(self.types),
            "cpu_per_request": [float(v) for v in self.cpu_per_request],
            "cpu_stderr": [float(v) for v in self.cpu_stderr],
            "cpu_interval": [[float(lo), float(hi)] for lo, hi in self.cpu_interval],
            "cpu_baseline_cores": float(self.cpu_baseline_cores),
            "cpu_baseline_stderr": float(self.cpu_baseline_stderr),
            "mem_per_rate": [float(v) for v in self.mem_per_rate],
            "mem_stderr": [float(v) for v in self.mem_stderr],
            "mem_baseline_bytes": float(self.mem_baseline_bytes),
            "mem_baseline_stderr": float(self.mem_baseline_stderr),
            "pooled_cpu_per_request": float(self.pooled_cpu_per_request),
            "pooled_cpu_stderr": float(self.pooled_cpu_stderr),
            "pooled_cpu_baseline_cores": float(self.pooled_cpu_baseline_cores),
            "pooled_mem_per_rate": float(self.pooled_mem_per_rate),
            "pooled_mem_baseline_bytes": float(self.pooled_mem_baseline_bytes),
            "minutes": int(self.minutes),
            "minute_s": float(self.minute_s),
            "separable": bool(self.separable),
            "note": self.note,
            "r2_cpu": float(self.r2_cpu),
            "condition": float(self.condition) if math.isfinite(self.condition) else None,
            "units": {"cpu_per_request": "cpu-seconds per request", "cpu_baseline_cores": "cores per member",
                      "mem_per_rate": "bytes per request/s sustained", "mem_baseline_bytes": "bytes per member"},
        }


def estimate_costs(types: Sequence[str], counts: np.ndarray, cpu: np.ndarray, mem: np.ndarray, member_s: np.ndarray,
                   *, minute_s: float = 60.0, bootstrap: int = 200, seed: int = 0) -> CostEstimate | None:
    """Per-type CPU-seconds per request and bytes per request/s, from rows of one pool.

    `counts[m, t]` requests of `types[t]` in row m, `cpu[m]` CPU-seconds the pool used in it,
    `mem[m]` its summed resident bytes, `member_s[m]` member-seconds alive in it; rows are `minute_s`
    long. Rows with a non-finite value are dropped. None with fewer than 10 rows, or none with a
    member alive.

    The bootstrap resamples rows `bootstrap` times and refits both models and the pooled one on the
    same resamples, vectorised (`_fit`: every resample's normal equations at once, then a batched
    active-set step for those a zero cost makes infeasible, `scipy.optimize.nnls` only for what is
    left). Measured on a 2-core machine, 60 rows × 5 types, 200 resamples: 2.7 ms median with every
    cost positive, 4 ms with true costs of 0 (flat memory, one free type); a loop of `nnls` calls
    over the same resamples takes ≈ 20 ms, the fit without bootstrap 0.6 ms.
    """
    types = tuple(types)
    if not types:
        return None
    counts = np.asarray(counts, dtype=np.float64).reshape(-1, len(types))
    cpu = np.asarray(cpu, dtype=np.float64).ravel()
    mem = np.asarray(mem, dtype=np.float64).ravel()
    member_s = np.asarray(member_s, dtype=np.float64).ravel()
    if not (len(counts) == len(cpu) == len(mem) == len(member_s)):
        raise ValueError("counts, cpu, mem and member_s need one row per minute each")
    ok = np.isfinite(counts).all(axis=1) & np.isfinite(cpu) & np.isfinite(mem) & np.isfinite(member_s)
    counts, cpu, mem, member_s = np.maximum(counts[ok], 0), cpu[ok], mem[ok], np.maximum(member_s[ok], 0)
    rows = len(cpu)
    if rows < MIN_ROWS or member_s.sum() <= 0:
        return None

    # CPU and memory share one design up to a constant (members = member_s / minute_s, rates =
    # counts / minute_s): fit on [member_s, counts] and rescale the memory coefficients.
    x = np.column_stack([member_s, counts])
    y = np.column_stack([cpu, mem])
    pooled_x = np.column_stack([member_s, counts.sum(axis=1)])
    rng = np.random.default_rng(seed)
    weights = _resample_weights(rng, rows, max(0, int(bootstrap)))
    coef, draws = _fit(x, y, weights)
    pooled, pooled_draws = _fit(pooled_x, y, weights)

    fitted = x @ coef[:, 0]
    ss_res = float(np.sum((cpu - fitted) ** 2))
    ss_tot = float(np.sum((cpu - cpu.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res <= 1e-18 * max(1.0, float(cpu @ cpu)) else 0.0)
    separable, note, condition = _separability(types, x)

    # memory: a coefficient on member_s is b_mem / minute_s, one on counts k_t / minute_s
    mem_coef = coef[:, 1] * minute_s
    mem_draws = draws[:, :, 1] * minute_s
    cpu_draws = draws[:, :, 0]
    cpu_se, cpu_lo, cpu_hi = _spread(cpu_draws, coef[:, 0])
    mem_se, _, _ = _spread(mem_draws, mem_coef)
    pooled_se, _, _ = _spread(pooled_draws[:, :, 0], pooled[:, 0])
    for a in (cpu_draws, mem_draws):
        a.flags.writeable = False
    pooled_cpu_draws = np.ascontiguousarray(pooled_draws[:, :, 0])
    pooled_mem_draws = pooled_draws[:, :, 1] * minute_s
    pooled_cpu_draws.flags.writeable = False
    pooled_mem_draws.flags.writeable = False
    return CostEstimate(
        types=types,
        cpu_per_request=tuple(float(v) for v in coef[1:, 0]),
        cpu_stderr=tuple(float(v) for v in cpu_se[1:]),
        cpu_interval=tuple((float(lo), float(hi)) for lo, hi in zip(cpu_lo[1:], cpu_hi[1:])),
        cpu_baseline_cores=float(coef[0, 0]),
        cpu_baseline_stderr=float(cpu_se[0]),
        mem_per_rate=tuple(float(v) for v in mem_coef[1:]),
        mem_stderr=tuple(float(v) for v in mem_se[1:]),
        mem_baseline_bytes=float(mem_coef[0]),
        mem_baseline_stderr=float(mem_se[0]),
        pooled_cpu_per_request=float(pooled[1, 0]),
        pooled_cpu_stderr=float(pooled_se[1]),
        pooled_cpu_baseline_cores=float(pooled[0, 0]),
        pooled_mem_per_rate=float(pooled[1, 1] * minute_s),
        pooled_mem_baseline_bytes=float(pooled[0, 1] * minute_s),
        minutes=rows, separable=separable, note=note, r2_cpu=r2, condition=condition, minute_s=float(minute_s),
        cpu_draws=cpu_draws, mem_draws=mem_draws, pooled_cpu_draws=pooled_cpu_draws, pooled_mem_draws=pooled_mem_draws,
    )


def _resample_weights(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """[n, rows] multiplicities of each row in each resample (a row drawn k times weighs k)."""
    picks = rng.integers(0, rows, size=(n, rows)) + (np.arange(n) * rows)[:, None]
    return np.bincount(picks.ravel(), minlength=n * rows).reshape(n, rows).astype(np.float64)


def _fit(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NNLS of each column of `y` on `x`, on all rows and on each weighted resample.

    Returns ([p, k] coefficients, [n, p, k] bootstrap coefficients). Columns of x and y are scaled
    to unit norm first (NNLS is unchanged by positive column scaling; the numerics are not).

    Every resample is solved at once, each step exact where it is accepted: the unconstrained
    normal equations first (a feasible unconstrained minimum is the NNLS minimum); those a zero
    cost makes infeasible go through `_active_set`, batched, starting from the full fit's zeros
    (most resamples share them, so a true cost of 0, common for memory, costs no loop), accepted
    where the KKT conditions hold (the problem is convex, so they are sufficient). What is
    left goes to `scipy.optimize.nnls` one resample at a time."""
    # imported here: scipy.optimize costs 50 MiB and 0.7 s at import, which a control process with
    # no measured pool (static servers only) never needs to pay
    from scipy.optimize import nnls

    xs_norm = np.linalg.norm(x, axis=0)
    xs_norm[xs_norm == 0] = 1.0
    ys_norm = np.linalg.norm(y, axis=0)
    ys_norm[ys_norm == 0] = 1.0
    xs, ys = x / xs_norm, y / ys_norm
    p, k = xs.shape[1], ys.shape[1]
    coef = np.column_stack([nnls(xs, ys[:, j])[0] for j in range(k)])
    n = len(weights)
    draws = np.zeros((n, p, k))
    if n:
        wx = weights[:, :, None] * xs[None]                    # [n, m, p]
        gram = wx.transpose(0, 2, 1) @ xs                      # [n, p, p]
        rhs = wx.transpose(0, 2, 1) @ ys                       # [n, p, k]
        draws = _solve(gram, rhs)
        for j in range(k):
            bad = np.nonzero(~(np.isfinite(draws[:, :, j]) & (draws[:, :, j] >= 0)).all(axis=1))[0]
            if len(bad):
                beta, ok = _active_set(gram[bad], rhs[bad, :, j], coef[:, j] > 0, tol=1e-9 * len(xs))
                draws[bad[ok], :, j] = beta[ok]
                bad = bad[~ok]
            for b in bad:
                root = np.sqrt(weights[b])
                draws[b, :, j] = nnls(xs * root[:, None], ys[:, j] * root)[0]
    scale = ys_norm[None, :] / xs_norm[:, None]
    return coef * scale, draws * scale[None]


def _active_set(gram: np.ndarray, rhs: np.ndarray, start: np.ndarray, *, tol: float,
                iterations: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """NNLS of many small problems at once from their normal equations ([n, p, p], [n, p]).

    An active-set iteration vectorised over the problems, each with its own passive set (the
    others held at 0 by masking the system): from `start`, drop the coefficients that came out
    negative, else free the zeroed one whose gradient pulls up most. Returns the solutions and
    which satisfy the KKT conditions (those are exact: the problem is convex); the rest (a cycle,
    or out of iterations) are for `scipy.optimize.nnls`."""
    n, p = rhs.shape
    mask = np.broadcast_to(start, (n, p)).copy()
    beta = np.zeros((n, p))
    done = np.zeros(n, dtype=bool)
    failed = np.zeros(n, dtype=bool)     # a singular system: left to nnls
    eye = np.eye(p, dtype=bool)
    for _ in range(iterations or 3 * p):
        todo = np.nonzero(~done & ~failed)[0]
        if not len(todo):
            break
        m = mask[todo]
        both = m[:, :, None] & m[:, None, :]
        g = np.where(both, gram[todo], np.where(eye, 1.0, 0.0))
        b = _solve(g, (rhs[todo] * m)[:, :, None])[:, :, 0]
        b[~m] = 0.0
        beta[todo] = b
        grad = rhs[todo] - np.einsum("bij,bj->bi", gram[todo], b)   # Xᵀ W (y − Xβ)
        finite = np.isfinite(b).all(axis=1)
        neg = (b < 0) & m
        pull = np.where(m, -np.inf, grad)
        ok = finite & ~neg.any(axis=1) & (pull <= tol).all(axis=1)
        done[todo[ok]] = True
        failed[todo[~finite]] = True
        drop = ~ok & finite & neg.any(axis=1)
        rows = todo[drop]
        mask[rows] &= ~neg[drop]
        add = ~ok & finite & ~neg.any(axis=1)
        rows = todo[add]
        mask[rows, pull[add].argmax(axis=1)] = True
    return beta, done


def _solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Batched normal equations; a singular system gives NaN (its resample falls through to NNLS)."""
    try:
        return np.linalg.solve(gram, rhs)
    except np.linalg.LinAlgError:
        out = np.full(rhs.shape, np.nan)
        for b in range(len(gram)):
            try:
                out[b] = np.linalg.solve(gram[b], rhs[b])
            except np.linalg.LinAlgError:
                pass
        return out


def _spread(draws: np.ndarray, point: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standard error and 90 % percentile interval of each column of the bootstrap draws."""
    if len(draws) < 2:
        return np.zeros_like(point), point.copy(), point.copy()
    lo, hi = np.percentile(draws, INTERVAL, axis=0)
    return draws.std(axis=0, ddof=1), lo, hi


def _separability(types: tuple[str, ...], x: np.ndarray) -> tuple[bool, str, float]:
    """Can the rows tell the types (and the idle baseline) apart? (separable, note, condition number)

    Three tests, each naming what it catches: a type with no requests; a near-linear dependency of
    the column-scaled design (condition number above 30: the columns in the directions of its small
    singular values are the ones entangled: two types in a fixed proportion, or a type whose rate
    barely varies beside the members' count, which the baseline absorbs); and two types whose counts
    correlate above 0.95."""
    notes: list[str] = []
    empty = [i for i in range(1, x.shape[1]) if not np.any(x[:, i] > 0)]
    for i in empty:
        notes.append(f"{types[i - 1]} had no requests in the window: its cost is unknown (the pooled cost stands in).")
    live = [i for i in range(x.shape[1]) if i not in empty]
    xs = x[:, live] / np.linalg.norm(x[:, live], axis=0)
    _, sv, vt = np.linalg.svd(xs, full_matrices=False)
    condition = float(sv[0] / sv[-1]) if sv[-1] > sv[0] * 1e-12 else math.inf
    groups: list[set[int]] = []
    for s, v in zip(sv, vt):
        if s * MAX_CONDITION >= sv[0]:
            continue
        a = np.abs(v)
        group = {live[i] for i in np.nonzero(a >= LOADING * a.max())[0]}
        for g in [g for g in groups if g & group]:
            groups.remove(g)
            group |= g
        groups.append(group)
    for g in sorted(groups, key=min):
        names = [types[i - 1] for i in sorted(g) if i > 0]
        if 0 in g and len(names) == 1:
            notes.append(f"{names[0]}'s rate barely varied beside the members' count: its cost cannot be told apart "
                         f"from {BASELINE}; the pool's total is still estimated.")
        elif 0 in g:
            notes.append(f"{_join(names + [BASELINE])} moved together (condition number {_cond(condition)}): their "
                         "costs cannot be told apart; the pool's total is still estimated.")
        else:
            notes.append(f"{_join(names)} always came in the same proportion: their costs cannot be told apart; "
                         "the pool's total is still estimated.")
    covered = set().union(*groups) if groups else set()
    cols = [i for i in live if i > 0]
    if len(cols) >= 2:
        c = x[:, cols] - x[:, cols].mean(axis=0)
        sd = np.sqrt((c * c).sum(axis=0))
        sd[sd == 0] = np.inf   # a constant column correlates with nothing (the SVD test catches it)
        corr = (c.T @ c) / np.outer(sd, sd)
        for a in range(len(cols)):
            for b in range(a + 1, len(cols)):
                if corr[a, b] > MAX_CORRELATION and not {cols[a], cols[b]} <= covered:
                    notes.append(f"{types[cols[a] - 1]} and {types[cols[b] - 1]} nearly always came in the same "
                                 f"proportion (correlation {corr[a, b]:.2f}): their costs cannot be told apart; "
                                 "the pool's total is still estimated.")
    return not notes, " ".join(notes), condition


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _cond(c: float) -> str:
    return "∞" if not math.isfinite(c) else f"{c:.0f}"


# ---------------------------------------------------------------- forecast demand
@dataclass(frozen=True, slots=True)
class ResourceDemand:
    """Cores and resident bytes a pool will need at one horizon, each (point, lower, upper)."""
    cores: tuple[float, float, float]
    memory_bytes: tuple[float, float, float]
    members: float

    def to_json(self) -> dict[str, Any]:
        return {"cores": dict(zip(("point", "lower", "upper"), (float(v) for v in self.cores))),
                "memory_bytes": dict(zip(("point", "lower", "upper"), (float(v) for v in self.memory_bytes))),
                "members": float(self.members)}


def resource_demand(estimate: CostEstimate, rates: Mapping[str, tuple[float, float, float]],
                    members: float) -> ResourceDemand:
    """Σ_type rate × cost + baseline × members, for cores and for memory, at one horizon.

    `rates` maps type -> (point, lower, upper) requests/s. The point uses the point costs at the
    point rates. The band is the forecast's band widened by the costs' uncertainty: lower is the
    5th percentile over the bootstrap draws at the lower rates, upper the 95th at the upper rates
    (never inside the rate band alone). Evaluating on the draws, rather than adding stderrs, keeps
    the coefficients' covariance (two costs the rows trade against each other do not both err
    high). Not separable: the pooled fit (one cost, its own baseline) for every type; types the
    estimate does not know use the pooled cost and its draws."""
    pooled_mode = not estimate.separable
    known = {t: i for i, t in enumerate(estimate.types)} if not pooled_mode else {}
    # design rows at the three rate bounds: [members, rate of each known type, rate of everything else]
    nk = len(estimate.types)
    design = np.zeros((3, nk + 2))
    design[:, 0] = members
    for rtype, bounds in rates.items():
        r = np.maximum(np.asarray(bounds, dtype=np.float64), 0.0)
        i = known.get(rtype)
        if i is None:
            design[:, nk + 1] += r
        else:
            design[:, i + 1] += r
    cpu_coef = np.concatenate([[estimate.pooled_cpu_baseline_cores if pooled_mode else estimate.cpu_baseline_cores],
                               estimate.cpu_per_request, [estimate.pooled_cpu_per_request]])
    mem_coef = np.concatenate([[estimate.pooled_mem_baseline_bytes if pooled_mode else estimate.mem_baseline_bytes],
                               estimate.mem_per_rate, [estimate.pooled_mem_per_rate]])
    point = design @ cpu_coef
    mem_point = design @ mem_coef
    cores = _band(design, point, _draws(estimate.cpu_draws, estimate.pooled_cpu_draws, nk, pooled_mode))
    memory = _band(design, mem_point, _draws(estimate.mem_draws, estimate.pooled_mem_draws, nk, pooled_mode))
    return ResourceDemand(cores, memory, float(members))


def _draws(full: np.ndarray, pooled: np.ndarray, nk: int, pooled_mode: bool) -> np.ndarray:
    """Bootstrap draws laid out like `resource_demand`'s design: [baseline, known types, other]."""
    n = len(pooled)
    if n == 0:
        return np.zeros((0, nk + 2))
    out = np.zeros((n, nk + 2))
    out[:, nk + 1] = pooled[:, 1]
    if pooled_mode:
        out[:, 0] = pooled[:, 0]
    else:
        out[:, : nk + 1] = full
    return out


def _band(design: np.ndarray, at: np.ndarray, draws: np.ndarray) -> tuple[float, float, float]:
    """(point, lower, upper) of design rows (point, lower, upper rates) against point costs and draws."""
    lower, upper = float(at[1]), float(at[2])
    if len(draws) >= 2:
        lower = min(lower, float(np.percentile(draws @ design[1], INTERVAL[0])))
        upper = max(upper, float(np.percentile(draws @ design[2], INTERVAL[1])))
    p = float(at[0])
    return p, max(0.0, min(lower, p)), max(upper, p)


# ---------------------------------------------------------------- attribution to sources
def source_costs(estimate: CostEstimate, counts_by_source: Mapping[str, Mapping[str, float]], *,
                 window_s: float | None = None) -> dict[str, dict[str, float]]:
    """CPU-seconds and memory shares of each source, from its requests per type over a window.

    Per source: `requests`, `cpu_s` (Σ_type count × CPU-seconds per request), `cpu_share` of the
    sources' total and `memory_share` (Σ_type count × bytes per request/s, over the total: a source
    holds memory in proportion to the rate it sustains, and over one window rate ∝ count). With
    `window_s`, also `memory_bytes`: what its average rate over the window keeps resident. Only the
    request-driven part is attributed: the idle baseline belongs to no source (the caller spreads it
    if it wants to). When no type shows a memory cost, memory shares follow the CPU shares (and the
    request shares when there is no CPU either), so shares always sum to 1 over sources with traffic."""
    cpu: dict[str, float] = {}
    mem: dict[str, float] = {}
    req: dict[str, float] = {}
    for source, by_type in counts_by_source.items():
        cpu[source] = sum(max(0.0, float(n)) * estimate.cpu_cost(t) for t, n in by_type.items())
        mem[source] = sum(max(0.0, float(n)) * estimate.mem_cost(t) for t, n in by_type.items())
        req[source] = sum(max(0.0, float(n)) for n in by_type.values())
    total_cpu, total_mem, total_req = sum(cpu.values()), sum(mem.values()), sum(req.values())

    def share(values: dict[str, float], total: float, s: str) -> float:
        return values[s] / total if total > 0 else 0.0

    out: dict[str, dict[str, float]] = {}
    for s in counts_by_source:
        cpu_share = share(cpu, total_cpu, s) if total_cpu > 0 else share(req, total_req, s)
        row = {"requests": req[s], "cpu_s": cpu[s], "cpu_share": cpu_share,
               "memory_share": share(mem, total_mem, s) if total_mem > 0 else cpu_share}
        if window_s is not None and window_s > 0:
            row["memory_bytes"] = mem[s] / window_s
        out[s] = row
    return out


# ---------------------------------------------------------------- right-sizing
@dataclass(frozen=True, slots=True)
class Recommendation:
    """Per-member limits for a pool. `cpus` is None when there are too few samples to size CPU (and
    no throttling to go on); `memory_bytes` likewise without an OOM kill: a recommendation made on an
    OOM kill alone raises memory and leaves CPU to the spec."""
    cpus: float | None
    memory_bytes: int | None
    cpu_p95: float | None       # the percentile of per-member cores the CPU target came from
    memory_max: int | None      # the highest per-member memory in the window
    samples: int                # per-member samples in the window
    reasons: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "memory_bytes": self.memory_bytes,
                "cpu_p95": None if self.cpu_p95 is None else round(float(self.cpu_p95), 4),
                "memory_max": self.memory_max, "samples": int(self.samples), "reasons": list(self.reasons)}


class Recommender:
    """VPA-style right-sizing of one pool's members.

    CPU: the `cpu_percentile` (95) of per-member cores over the window × (1 + margin), at least the
    throttled limit × 1.2 after CPU throttling, bounded to [min_cpus, max_cpus], rounded up to 0.01.
    Memory: the highest per-member memory in the window × (1 + margin) (never below that highest),
    at least the limit an OOM kill hit × 1.2 (an unknown limit: the highest memory seen), bounded,
    rounded up to 1 MiB. An OOM or throttling raise holds until the event leaves the window.

    Storage is bounded whatever the members and the sampling rate: the window is a ring of
    `buckets` (+1) time buckets, each holding a log histogram of per-member cores (3 % wide bins
    from 1 mcore to 1024 cores), the sample count, the peak memory and the OOM and throttling
    events. VPA's decaying histogram never forgets a sample; here a whole bucket expires at once,
    so the window is exact to one bucket (1/120 of it: 12 minutes of 24 h) and an OOM raise ends
    when the window has passed. The percentile reads the upper edge of its bin (≤ 3 % high, as VPA
    rounds up). A recommendation needs `min_samples` per-member samples, except that an OOM kill or
    throttling alone gives one (for the resource it concerns): it needs no statistics.
    """

    LO = 1e-3
    RATIO = 1.03
    BINS = int(math.ceil(math.log(1024.0 / 1e-3) / math.log(1.03))) + 1

    def __init__(self, *, window_s: float = 86_400.0, min_samples: int = 30, margin: float = 0.15,
                 cpu_percentile: float = 95.0, min_cpus: float = 0.05, max_cpus: float = 64.0,
                 min_memory_bytes: int = 16 * MIB, max_memory_bytes: int | None = None,
                 oom_bump: float = 1.2, throttle_bump: float = 1.2, buckets: int = 120) -> None:
        if window_s <= 0 or buckets < 1:
            raise ValueError("window_s must be > 0 and buckets >= 1")
        self.window_s = float(window_s)
        self.min_samples = min_samples
        self.margin = margin
        self.cpu_percentile = cpu_percentile
        self.min_cpus, self.max_cpus = min_cpus, max_cpus
        self.min_memory_bytes, self.max_memory_bytes = min_memory_bytes, max_memory_bytes
        self.oom_bump, self.throttle_bump = oom_bump, throttle_bump
        self.buckets = buckets
        self.bucket_s = self.window_s / buckets
        slots = buckets + 1
        self._bucket = np.full(slots, -1, dtype=np.int64)      # absolute bucket number each slot holds
        self._hist = np.zeros((slots, self.BINS), dtype=np.int32)
        self._n = np.zeros(slots, dtype=np.int64)
        self._mem = np.zeros(slots, dtype=np.int64)            # peak per-member memory
        self._oom = np.zeros(slots, dtype=np.int64)            # OOM kills
        self._oom_limit = np.zeros(slots, dtype=np.int64)      # highest limit hit (0: unknown)
        self._throttle = np.zeros(slots)                       # highest throttled CPU limit (0: none)
        self._latest = -math.inf
        self._edges = self.LO * self.RATIO ** np.arange(self.BINS)   # upper edge of each bin

    # ---------------------------------------------------------- input
    def observe(self, t: float, per_member_cores: Sequence[float], per_member_memory: Sequence[int]) -> None:
        """One sample round: the cores (CPU-seconds over the interval / interval) and resident bytes of
        each serving member. Non-finite values are ignored, negative ones taken as 0."""
        slot = self._slot(t)
        if slot is None:
            return
        cores = np.asarray(per_member_cores, dtype=np.float64).ravel()
        cores = np.maximum(cores[np.isfinite(cores)], 0.0)
        if len(cores):
            np.add.at(self._hist[slot], self._bin(cores), 1)
            self._n[slot] += len(cores)
        memory = np.asarray(per_member_memory, dtype=np.float64).ravel()
        memory = memory[np.isfinite(memory)]
        if len(memory):
            self._mem[slot] = max(int(self._mem[slot]), int(memory.max()))

    def oom(self, t: float, memory_limit: int | None) -> None:
        """A member was OOM-killed at `memory_limit` bytes (None: the limit is not known)."""
        slot = self._slot(t)
        if slot is not None:
            self._oom[slot] += 1
            if memory_limit:
                self._oom_limit[slot] = max(int(self._oom_limit[slot]), int(memory_limit))

    def throttled(self, t: float, cpu_limit: float) -> None:
        """A member's CPU was throttled a material share of the interval at `cpu_limit` cores."""
        slot = self._slot(t)
        if slot is not None and cpu_limit > 0:
            self._throttle[slot] = max(float(self._throttle[slot]), float(cpu_limit))

    def _slot(self, t: float) -> int | None:
        b = int(math.floor(t / self.bucket_s))
        if t > self._latest:
            self._latest = t
        if b < math.floor(self._latest / self.bucket_s) - self.buckets:
            return None                       # older than the window
        slot = b % len(self._bucket)
        if self._bucket[slot] != b:
            if self._bucket[slot] > b:
                return None                   # its slot already holds a newer bucket
            self._bucket[slot] = b
            self._hist[slot] = 0
            self._n[slot] = self._mem[slot] = self._oom[slot] = self._oom_limit[slot] = 0
            self._throttle[slot] = 0.0
        return slot

    def _bin(self, cores: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore"):
            k = np.floor(np.log(np.maximum(cores, 1e-12) / self.LO) / math.log(self.RATIO)) + 1
        return np.clip(k, 0, self.BINS - 1).astype(np.intp)

    # ---------------------------------------------------------- output
    def recommend(self, now: float | None = None) -> Recommendation | None:
        """The limits for the window ending at `now` (default: the latest time observed). None before
        `min_samples` per-member samples unless an OOM kill or throttling is in the window."""
        if now is None:
            now = self._latest
        if not math.isfinite(now):
            return None
        alive = (self._bucket >= 0) & (self._bucket >= math.floor(now / self.bucket_s) - self.buckets) & \
            (self._bucket <= math.floor(now / self.bucket_s))
        n = int(self._n[alive].sum())
        ooms = int(self._oom[alive].sum())
        throttle = float(self._throttle[alive].max(initial=0.0))
        enough = n >= self.min_samples
        if not enough and not ooms and throttle <= 0:
            return None
        reasons: list[str] = []

        cpu_p95: float | None = None
        if n:
            hist = self._hist[alive].sum(axis=0)
            k = int(np.searchsorted(np.cumsum(hist), self.cpu_percentile / 100.0 * n - 1e-9))
            cpu_p95 = float(self._edges[min(k, self.BINS - 1)])
        memory_max = int(self._mem[alive].max()) if n else None

        cpus: float | None = None
        if enough and cpu_p95 is not None:
            cpus = cpu_p95 * (1 + self.margin)
            reasons.append(f"cpu p{self.cpu_percentile:g} {cpu_p95:.3f} cores +{self.margin:.0%}: "
                           f"{_ceil_to(cpus, 0.01):g} cpus")
        if throttle > 0:
            raised = throttle * self.throttle_bump
            if cpus is None or raised > cpus:
                cpus = raised
                reasons.append(f"throttled at {throttle:g} cpus: cpu raised to {_ceil_to(raised, 0.01):g}")
        if cpus is not None:
            cpus = _ceil_to(cpus, 0.01)
            if cpus < self.min_cpus:
                cpus = self.min_cpus
                reasons.append(f"cpu raised to the minimum {self.min_cpus:g}")
            elif cpus > self.max_cpus:
                cpus = self.max_cpus
                reasons.append(f"cpu capped at the maximum {self.max_cpus:g}")

        memory: float | None = None
        if (enough or ooms) and memory_max:
            memory = max(memory_max * (1 + self.margin), memory_max)
            reasons.append(f"memory peak {_mib(memory_max)} +{self.margin:.0%}: {_mib(_ceil_to(memory, MIB))}")
        if ooms:
            limit = int(self._oom_limit[alive].max())
            ref = limit or memory_max
            if ref:
                raised = ref * self.oom_bump
                what = f"oom at {_mib(ref)}" if limit else f"oom (limit unknown, peak {_mib(ref)})"
                if memory is None or raised > memory:
                    memory = raised
                    reasons.append(f"{what}: memory raised to {_mib(_ceil_to(raised, MIB))}")
                else:
                    reasons.append(f"{what}: already below the peak's target")
        memory_bytes: int | None = None
        if memory is not None:
            memory_bytes = int(_ceil_to(memory, MIB))
            if memory_bytes < self.min_memory_bytes:
                memory_bytes = self.min_memory_bytes
                reasons.append(f"memory raised to the minimum {_mib(self.min_memory_bytes)}")
            elif self.max_memory_bytes is not None and memory_bytes > self.max_memory_bytes:
                memory_bytes = self.max_memory_bytes
                reasons.append(f"memory capped at the maximum {_mib(self.max_memory_bytes)}")
        if cpus is None and memory_bytes is None:
            return None
        return Recommendation(cpus, memory_bytes, cpu_p95, memory_max, n, tuple(reasons))


def _ceil_to(x: float, step: float) -> float:
    """Round up to a multiple of `step` (a hair of float error is not a step)."""
    q = math.ceil(x / step - 1e-9) * step
    return round(q, 10) if step < 1 else q


def _mib(b: float) -> str:
    return f"{b / MIB:.0f} MiB"
