"""predictor.resources: per-type costs from synthetic minutes with known truth, separability,
forecast demand, attribution to sources, and the VPA-like recommender. Deterministic seeds."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from predictor.resources import MIB, Recommender, estimate_costs, resource_demand, source_costs

TYPES = ("page", "api", "checkout")
CPU_TRUTH = np.array([0.002, 0.008, 0.030])      # CPU-seconds per request
BASELINE = 0.02                                   # cores per idle member
MEM_BASE = 80e6                                   # bytes per member
MEM_TRUTH = np.array([0.5e6, 2e6, 5e6])           # bytes per request/s sustained


def minutes(n: int = 60, seed: int = 1, noise: float = 0.01, types: int = 3):
    """Per-minute rows: 2-5 members, Poisson counts with a mix that varies minute to minute,
    multiplicative measurement noise on CPU (1 %) and memory (0.25 %)."""
    rng = np.random.default_rng(seed)
    members = rng.integers(2, 6, n).astype(float)
    member_s = members * 60.0
    rate = rng.uniform(5, 25, n)                                    # requests/s in the minute
    mix = rng.dirichlet(np.full(types, 2.0), n)
    counts = rng.poisson(mix * rate[:, None] * 60.0).astype(float)
    cpu = (BASELINE * member_s + counts @ CPU_TRUTH[:types]) * (1 + rng.normal(0, noise, n))
    mem = (MEM_BASE * members + (counts / 60.0) @ MEM_TRUTH[:types]) * (1 + rng.normal(0, noise / 4, n))
    return counts, cpu, mem, member_s


# ---------------------------------------------------------------- estimate_costs
def test_known_costs_are_recovered_within_10_percent_with_the_truth_in_the_intervals():
    counts, cpu, mem, member_s = minutes()
    est = estimate_costs(TYPES, counts, cpu, mem, member_s)
    assert est is not None and est.separable, est and est.note
    assert est.note == "" and est.minutes == 60 and est.r2_cpu > 0.9
    got = np.array(est.cpu_per_request)
    assert np.all(np.abs(got - CPU_TRUTH) <= 0.1 * CPU_TRUTH), got
    assert est.cpu_baseline_cores == pytest.approx(BASELINE, rel=0.1)
    inside = [lo <= t <= hi for (lo, hi), t in zip(est.cpu_interval, CPU_TRUTH)]
    assert sum(inside) >= 2, (est.cpu_interval, CPU_TRUTH)
    assert all(se > 0 for se in est.cpu_stderr) and est.cpu_baseline_stderr > 0
    # memory: a few MB of per-rate cost against hundreds of MB of baseline, so a looser bound
    mem_got = np.array(est.mem_per_rate)
    assert np.all(np.abs(mem_got - MEM_TRUTH) <= 0.15 * MEM_TRUTH), mem_got
    assert est.mem_baseline_bytes == pytest.approx(MEM_BASE, rel=0.05)
    # the pooled cost is the request-weighted mean cost of the mix seen
    weighted = float(counts.sum(axis=0) @ CPU_TRUTH / counts.sum())
    assert est.pooled_cpu_per_request == pytest.approx(weighted, rel=0.15)


def test_intervals_cover_the_truth_over_many_seeds():
    covered = total = 0
    for seed in range(10):
        counts, cpu, mem, member_s = minutes(seed=100 + seed)
        est = estimate_costs(TYPES, counts, cpu, mem, member_s, bootstrap=200, seed=seed)
        assert est is not None
        truth = (BASELINE, *CPU_TRUTH)
        bounds = ((est.cpu_baseline_cores - 1.645 * est.cpu_baseline_stderr,
                   est.cpu_baseline_cores + 1.645 * est.cpu_baseline_stderr), *est.cpu_interval)
        covered += sum(lo <= t <= hi for (lo, hi), t in zip(bounds, truth))
        total += len(truth)
    assert covered / total >= 0.75, (covered, total)   # nominal 90 %


def test_a_perfectly_proportional_mix_is_not_separable_but_the_pooled_cost_is_right():
    rng = np.random.default_rng(3)
    n = 40
    members = rng.integers(2, 5, n).astype(float)
    total = rng.poisson(600, n).astype(float) * 10
    counts = np.column_stack([0.7 * total, 0.3 * total])
    cpu = BASELINE * members * 60 + counts @ np.array([0.002, 0.030])
    mem = MEM_BASE * members
    est = estimate_costs(("page", "checkout"), counts, cpu, mem, members * 60)
    assert est is not None and not est.separable
    assert "page" in est.note and "checkout" in est.note and "same proportion" in est.note, est.note
    assert est.pooled_cpu_per_request == pytest.approx(0.7 * 0.002 + 0.3 * 0.030, rel=1e-3)
    assert est.pooled_cpu_baseline_cores == pytest.approx(BASELINE, rel=1e-3)
    assert json.loads(json.dumps(est.to_json(), allow_nan=False))["separable"] is False
    # the forecast still works: the pooled cost for both types
    dem = resource_demand(est, {"page": (7.0, 7.0, 7.0), "checkout": (3.0, 3.0, 3.0)}, members=2)
    assert dem.cores[0] == pytest.approx(7 * 0.002 + 3 * 0.030 + 2 * BASELINE, rel=1e-3)


def test_only_the_entangled_types_are_named():
    rng = np.random.default_rng(4)
    n = 60
    members = rng.integers(2, 6, n).astype(float)
    total = rng.poisson(500, n).astype(float) * 10
    api = rng.poisson(rng.uniform(100, 1500, n)).astype(float)
    counts = np.column_stack([0.7 * total, api, 0.3 * total])
    cpu = BASELINE * members * 60 + counts @ CPU_TRUTH
    est = estimate_costs(TYPES, counts, cpu, MEM_BASE * members, members * 60)
    assert est is not None and not est.separable
    assert "page and checkout" in est.note and "api" not in est.note, est.note


def test_a_type_whose_rate_never_varies_is_absorbed_by_the_baseline():
    rng = np.random.default_rng(5)
    n = 60
    members = np.full(n, 3.0)
    counts = np.column_stack([rng.poisson(rng.uniform(200, 2000, n)), rng.poisson(6000, n)]).astype(float)
    cpu = BASELINE * members * 60 + counts @ np.array([0.002, 0.008])
    est = estimate_costs(("page", "api"), counts, cpu, MEM_BASE * members, members * 60)
    assert est is not None and not est.separable
    assert "api" in est.note and "baseline" in est.note, est.note


def test_a_type_without_requests_is_named():
    counts, cpu, mem, member_s = minutes()
    counts = np.column_stack([counts, np.zeros(len(counts))])
    est = estimate_costs((*TYPES, "export"), counts, cpu, mem, member_s)
    assert est is not None and not est.separable and "export had no requests" in est.note


def test_fewer_than_ten_minutes_give_no_estimate():
    counts, cpu, mem, member_s = minutes(n=9)
    assert estimate_costs(TYPES, counts, cpu, mem, member_s) is None
    counts, cpu, mem, member_s = minutes(n=12)
    cpu[:3] = np.nan   # dropped rows count too
    assert estimate_costs(TYPES, counts, cpu, mem, member_s) is None


def test_estimates_are_deterministic_and_json_plain():
    counts, cpu, mem, member_s = minutes()
    a = estimate_costs(TYPES, counts, cpu, mem, member_s, seed=7)
    b = estimate_costs(TYPES, counts, cpu, mem, member_s, seed=7)
    assert a is not None and b is not None
    assert a == b and a.cpu_interval == b.cpu_interval
    doc = json.loads(json.dumps(a.to_json(), allow_nan=False))
    assert doc["types"] == list(TYPES) and len(doc["cpu_interval"]) == 3 and isinstance(doc["r2_cpu"], float)


def test_sixty_by_five_with_200_resamples_is_fast():
    rng = np.random.default_rng(9)
    n, truth = 60, np.array([0.002, 0.008, 0.030, 0.012, 0.0])
    members = rng.integers(2, 6, n).astype(float)
    counts = rng.poisson(rng.dirichlet(np.full(5, 2.0), n) * rng.uniform(300, 1500, n)[:, None]).astype(float)
    cpu = (BASELINE * members * 60 + counts @ truth) * (1 + rng.normal(0, 0.02, n))
    mem = MEM_BASE * members * (1 + rng.normal(0, 0.01, n))   # no per-rate memory: NNLS pins it at 0
    took = []
    for _ in range(3):
        start = time.perf_counter()
        est = estimate_costs([f"t{i}" for i in range(5)], counts, cpu, mem, members * 60, bootstrap=200)
        took.append(time.perf_counter() - start)
    assert est is not None
    assert min(took) < 0.2, took


# ---------------------------------------------------------------- resource_demand
def exact_estimate(bootstrap: int = 0):
    counts, _, _, member_s = minutes()
    members = member_s / 60
    cpu = BASELINE * member_s + counts @ CPU_TRUTH
    mem = MEM_BASE * members + (counts / 60) @ MEM_TRUTH
    est = estimate_costs(TYPES, counts, cpu, mem, member_s, bootstrap=bootstrap)
    assert est is not None and est.separable
    return est


def test_resource_demand_is_rate_times_cost_plus_the_baseline():
    est = exact_estimate()
    dem = resource_demand(est, {"page": (10.0, 8.0, 12.0), "api": (5.0, 4.0, 6.0)}, members=3)
    assert dem.cores == pytest.approx((0.02 + 0.04 + 0.06, 0.016 + 0.032 + 0.06, 0.024 + 0.048 + 0.06), rel=1e-6)
    assert dem.memory_bytes == pytest.approx(
        (10 * 0.5e6 + 5 * 2e6 + 3 * MEM_BASE, 8 * 0.5e6 + 4 * 2e6 + 3 * MEM_BASE, 12 * 0.5e6 + 6 * 2e6 + 3 * MEM_BASE),
        rel=1e-6)
    doc = dem.to_json()
    assert doc["cores"]["lower"] <= doc["cores"]["point"] <= doc["cores"]["upper"]
    # a type the estimate does not know costs the pooled cost
    unknown = resource_demand(est, {"search": (10.0, 10.0, 10.0)}, members=0)
    assert unknown.cores[0] == pytest.approx(10 * est.pooled_cpu_per_request)


def test_resource_demand_band_widens_by_the_cost_uncertainty():
    counts, cpu, mem, member_s = minutes(noise=0.03)
    est = estimate_costs(TYPES, counts, cpu, mem, member_s)
    assert est is not None
    dem = resource_demand(est, {"page": (10.0, 10.0, 10.0), "checkout": (2.0, 2.0, 2.0)}, members=2)
    point, lower, upper = dem.cores
    assert lower < point < upper   # no band in the rates: what is left is the costs'
    assert (upper - point) < 0.25 * point


# ---------------------------------------------------------------- source_costs
def test_source_costs_sum_to_the_pools_request_cpu():
    est = exact_estimate(bootstrap=50)
    by_source = {"mobile": {"page": 1000.0, "api": 200.0}, "partner": {"api": 5000.0, "checkout": 40.0},
                 "web": {"page": 300.0, "checkout": 60.0}}
    out = source_costs(est, by_source, window_s=600.0)
    pool = sum(n * est.cpu_cost(t) for by_type in by_source.values() for t, n in by_type.items())
    assert sum(s["cpu_s"] for s in out.values()) == pytest.approx(pool)
    assert pool == pytest.approx(1300 * 0.002 + 5200 * 0.008 + 100 * 0.030, rel=1e-6)
    assert sum(s["cpu_share"] for s in out.values()) == pytest.approx(1.0)
    assert sum(s["memory_share"] for s in out.values()) == pytest.approx(1.0)
    assert out["partner"]["memory_bytes"] == pytest.approx((5000 * 2e6 + 40 * 5e6) / 600, rel=1e-6)


# ---------------------------------------------------------------- Recommender
def feed(rec: Recommender, start: float, rounds: int, cores: float, memory: int, *, members: int = 2,
         step: float = 10.0, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    t = start
    for _ in range(rounds):
        rec.observe(t, list(cores + rng.uniform(-0.002, 0.002, members)), [memory] * members)
        t += step
    return t


def test_an_oversized_limit_is_recommended_down_to_use_plus_the_margin():
    rec = Recommender()
    feed(rec, 0.0, 60, 0.1, 100 * MIB)
    r = rec.recommend()
    assert r is not None and r.cpus is not None and 0.12 <= r.cpus <= 0.13, r
    assert r.memory_bytes == 115 * MIB and r.memory_max == 100 * MIB and r.samples == 120
    assert r.cpu_p95 is not None and 0.1 <= r.cpu_p95 <= 0.106
    assert json.loads(json.dumps(r.to_json()))["cpus"] == r.cpus


def test_none_before_enough_samples():
    rec = Recommender(min_samples=30)
    feed(rec, 0.0, 14, 0.1, 100 * MIB)          # 28 per-member samples
    assert rec.recommend() is None
    feed(rec, 140.0, 1, 0.1, 100 * MIB)
    assert rec.recommend() is not None


def test_an_oom_raises_memory_above_the_limit_until_the_window_passes():
    window = 600.0
    rec = Recommender(window_s=window)
    t = feed(rec, 0.0, 40, 0.1, 50 * MIB)
    oom_at = t
    rec.oom(oom_at, 64 * MIB)
    r = rec.recommend()
    assert r is not None and r.memory_bytes == 77 * MIB
    assert "oom at 64 MiB: memory raised to 77 MiB" in r.reasons
    t = feed(rec, t, 55, 0.1, 50 * MIB)           # 550 s on: still in the window
    r = rec.recommend()
    assert r is not None and r.memory_bytes == 77 * MIB
    feed(rec, oom_at + window + 2 * rec.bucket_s, 3, 0.1, 50 * MIB)   # the OOM has left the window
    r = rec.recommend()
    assert r is not None and r.memory_bytes == 58 * MIB and not any("oom" in why for why in r.reasons), r


def test_an_oom_before_enough_samples_still_raises_memory():
    rec = Recommender()
    feed(rec, 0.0, 2, 0.1, 50 * MIB)
    assert rec.recommend() is None
    rec.oom(20.0, 96 * MIB)
    r = rec.recommend()
    assert r is not None and r.cpus is None and r.memory_bytes == 116 * MIB   # 96 MiB × 1.2, up to a MiB


def test_throttling_raises_cpu_to_the_limit_plus_a_fifth():
    rec = Recommender()
    t = feed(rec, 0.0, 40, 0.1, 50 * MIB)
    rec.throttled(t, 0.5)
    r = rec.recommend()
    assert r is not None and r.cpus == pytest.approx(0.6) and any("throttled at 0.5" in why for why in r.reasons)


def test_bounds_are_respected():
    rec = Recommender(min_cpus=0.05, max_cpus=2.0, min_memory_bytes=32 * MIB, max_memory_bytes=512 * MIB)
    feed(rec, 0.0, 40, 0.001, 4 * MIB)
    r = rec.recommend()
    assert r is not None and r.cpus == 0.05 and r.memory_bytes == 32 * MIB
    big = Recommender(min_cpus=0.05, max_cpus=2.0, max_memory_bytes=512 * MIB)
    feed(big, 0.0, 40, 7.5, 2048 * MIB)
    big.oom(400.0, 4096 * MIB)
    r = big.recommend()
    assert r is not None and r.cpus == 2.0 and r.memory_bytes == 512 * MIB


def test_samples_older_than_the_window_are_dropped():
    rec = Recommender(window_s=300.0)
    t = feed(rec, 0.0, 30, 1.0, 400 * MIB)
    r = rec.recommend()
    assert r is not None and r.cpus is not None and r.cpus > 1.0
    feed(rec, t + 300.0, 31, 0.2, 100 * MIB)   # a whole window later
    r = rec.recommend()
    assert r is not None and r.cpus is not None and 0.23 <= r.cpus <= 0.25 and r.memory_bytes == 115 * MIB
    assert r.samples <= 2 * 32
