"""Profiles: k-means recovers planted daily shapes, resource profiles, Markov next types, abort sensitivity."""
from __future__ import annotations


import numpy as np
import pytest

from predictor.profiles import (
    SLOTS_PER_DAY, AbortSlope, ResourceProfile, SessionTransitions, SourceClusters, histogram_quantile, kmeans,
)

SLOT = np.arange(SLOTS_PER_DAY)
# Three daily shapes (mean 1): office hours, evening peak, flat with a night batch.
SHAPES = np.array([
    1 + 0.9 * np.sin(2 * np.pi * (SLOT - 96) / 288),
    1 + 0.9 * np.sin(2 * np.pi * (SLOT - 180) / 288),
    np.where((SLOT >= 24) & (SLOT < 48), 3.0, 1.0),
])
SHAPES /= SHAPES.mean(axis=1, keepdims=True)


def planted(per_cluster: int = 40, seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Sources of very different volumes drawn around the three shapes."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(3), per_cluster)
    volume = rng.uniform(1, 1000, size=len(truth))[:, None]
    profiles = volume * SHAPES[truth] * rng.normal(1, 0.15, size=(len(truth), SLOTS_PER_DAY))
    ids = [f"src{i}" for i in range(len(truth))]
    return ids, np.clip(profiles, 0, None), truth


def test_kmeans_recovers_planted_clusters_up_to_permutation():
    ids, profiles, truth = planted()
    clusters = SourceClusters(k=3, seed=7)
    labels = clusters.fit(ids, profiles)
    mapping = {t: set(labels[truth == t].tolist()) for t in range(3)}
    assert all(len(found) == 1 for found in mapping.values()), mapping
    assert len({next(iter(found)) for found in mapping.values()}) == 3


def test_kmeans_is_deterministic_for_a_seed():
    _, profiles, _ = planted(seed=2)
    a = kmeans(profiles / profiles.mean(axis=1, keepdims=True), 3, seed=5)
    b = kmeans(profiles / profiles.mean(axis=1, keepdims=True), 3, seed=5)
    assert np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_shape_for_returns_the_centroid_of_the_sources_cluster():
    ids, profiles, truth = planted()
    clusters = SourceClusters(k=3, seed=1)
    clusters.fit(ids, profiles)
    for index in (0, 50, 100):
        shape = clusters.shape_for(ids[index])
        assert shape is not None and shape.shape == (SLOTS_PER_DAY,)
        assert shape.mean() == pytest.approx(1.0)
        assert np.abs(shape - SHAPES[truth[index]]).max() < 0.15
    assert clusters.shape_for("never-seen") is None


def test_silent_sources_stay_unknown():
    ids, profiles, _ = planted(per_cluster=5)
    profiles[3] = 0.0
    clusters = SourceClusters(k=3)
    labels = clusters.fit(ids, profiles)
    assert labels[3] == -1 and clusters.shape_for(ids[3]) is None
    assert clusters.shape_for(ids[4]) is not None


def test_assign_matches_a_partial_day_to_its_cluster():
    ids, profiles, truth = planted()
    clusters = SourceClusters(k=3, seed=1)
    labels = clusters.fit(ids, profiles)
    evening = labels[truth.tolist().index(1)]
    # Six hours of a new source with the evening shape, at a volume none of the others had.
    newcomer = 5000 * SHAPES[1]
    seen = (SLOT >= 144) & (SLOT < 216)
    everything = np.ones(SLOTS_PER_DAY, dtype=bool)
    found = clusters.assign(np.stack([np.where(seen, newcomer, np.nan), newcomer, 0 * newcomer]),
                            np.stack([seen, everything, everything]))
    assert found.tolist() == [evening, evening, -1]   # a silent row cannot be compared
    assert SourceClusters().assign(newcomer, everything).tolist() == [-1]  # not fitted


def test_update_fits_whole_days_and_lends_young_series_the_shape_they_match():
    ids, profiles, truth = planted()
    seen = np.ones_like(profiles, dtype=bool)
    hours = (SLOT >= 144) & (SLOT < 216)
    young = np.stack([700 * SHAPES[t] * hours for t in range(3)] + [np.where(SLOT < 6, 9.0, 0.0)])
    young_seen = np.stack([hours] * 3 + [SLOT < 6])   # the last has seen only half an hour
    clusters = SourceClusters(k=3, seed=1)
    clusters.update(ids + ["new0", "new1", "new2", "brand-new"], np.vstack([profiles, young]),
                    np.vstack([seen, young_seen]))
    for t in range(3):
        borrowed = clusters.shape_for(f"new{t}")
        assert borrowed is not None and np.abs(borrowed - SHAPES[t]).max() < 0.15
        assert np.array_equal(borrowed, clusters.shape_for(ids[truth.tolist().index(t)]))
    assert clusters.shape_for("brand-new") is None   # under min_seen slots: nothing to match on
    assert clusters.k == 3   # k shrinks for a fit with few sources, not for good


# ---------------------------------------------------------------- resource profile
def test_resource_profile_learns_request_weighted_service_time():
    profile = ResourceProfile(alpha=0.2)
    assert profile.service_time_s is None
    for _ in range(50):
        profile.update(requests=100, latency_sum=100 * 0.050)
        profile.update(requests=10, latency_sum=10 * 0.500)
        profile.update(requests=0, latency_sum=0.0)  # idle minute: ignored
    # Request-weighted: (100·0.05 + 10·0.5·(1/0.8)) / (100 + 10/0.8), dominated by the busy minutes.
    assert profile.service_time_s == pytest.approx((5.0 + 5.0 / 0.8) / (100 + 10 / 0.8), rel=1e-3)
    assert profile.minutes == 100


def test_resource_profile_p95_tracks_the_histogram():
    bounds = (0.01, 0.1, 1.0)
    profile = ResourceProfile(alpha=0.5, latency_bounds=bounds)
    for _ in range(30):
        # 90 requests in (0.01, 0.1], 10 in (0.1, 1.0]: the 95th lies halfway through the third bucket.
        profile.update(100, 100 * 0.08, latency_hist=[0, 90, 10, 0])
    assert profile.service_time_p95_s == pytest.approx(0.55)
    for _ in range(30):
        profile.update(100, 100 * 0.005, latency_hist=[100, 0, 0, 0])
    assert profile.service_time_p95_s == pytest.approx(0.0095, rel=1e-3)


def test_histogram_quantile_edges():
    assert histogram_quantile([0, 0, 5], (1.0, 2.0), 0.5) == 2.0  # +Inf bucket: last finite bound
    assert histogram_quantile([0, 0, 0], (1.0, 2.0), 0.5) == 0.0
    with pytest.raises(ValueError):
        histogram_quantile([1, 2], (1.0, 2.0), 0.5)


# ---------------------------------------------------------------- next request type
CHAIN = {
    "page": {"api": 0.6, "static": 0.2},   # the remaining 0.2: the session ends
    "api": {"api": 0.5, "page": 0.3},
    "static": {"page": 0.9},
}


def simulate_sessions(model: SessionTransitions, sessions: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    t = 0.0
    for s in range(sessions):
        rtype = "page"
        while rtype is not None:
            t += 1.0
            model.observe(f"user{s}", rtype, t)
            options = CHAIN[rtype]
            pick = rng.random()
            rtype = None
            for dst, p in options.items():
                if pick < p:
                    rtype = dst
                    break
                pick -= p
    model.observe("last", "page", t + 2 * model.session_gap)  # lets the final sessions expire


def test_markov_next_type_probabilities_are_recovered():
    model = SessionTransitions(session_gap=30.0)
    simulate_sessions(model, 4000)
    for src, row in CHAIN.items():
        found = model.next_distribution(src)
        assert set(found) == set(row)
        for dst, p in row.items():
            assert found[dst] == pytest.approx(p, abs=0.03), (src, dst)
    assert model.next_distribution("unknown") == {}


def test_expected_next_weights_transitions_by_current_counts():
    model = SessionTransitions(session_gap=30.0)
    simulate_sessions(model, 4000)
    expected = model.expected_next({"page": 100, "static": 10})
    assert expected["api"] == pytest.approx(60, abs=4)
    assert expected["static"] == pytest.approx(20, abs=4)
    assert expected["page"] == pytest.approx(9, abs=1)
    assert sum(expected.values()) < 110  # some sessions end


def test_interleaved_sessions_are_kept_apart():
    model = SessionTransitions()
    for i in range(10):
        model.observe("a", "page", float(i))
        model.observe("b", "api", float(i))
    assert model.next_distribution("page") == {"page": 1.0}
    assert model.next_distribution("api") == {"api": 1.0}


def test_session_memory_is_capped_least_recently_seen_first():
    model = SessionTransitions(max_sessions=100)
    for i in range(1000):
        model.observe(f"user{i}", "page", float(i))
    assert len(model) == 100
    model.observe("user999", "api", 1000.0)   # still remembered: a transition
    model.observe("user0", "api", 1001.0)     # evicted long ago: a fresh session
    assert model.next_distribution("page") == {"api": 1.0}
    assert len(model) == 100


# ---------------------------------------------------------------- latency sensitivity
def slope_of(latency, aborts, requests, half_life: float = 0) -> float:
    running = AbortSlope(half_life=half_life)
    for x, a, n in zip(latency, aborts, requests):
        running.update(x, a, n)
    return running.slope


def test_abort_slope_is_the_slope_of_abort_rate_on_latency():
    rng = np.random.default_rng(4)
    latency = rng.uniform(0.05, 2.0, size=500)
    requests = rng.integers(50, 500, size=500).astype(float)
    aborts = rng.binomial(requests.astype(int), 0.01 + 0.05 * latency).astype(float)
    assert slope_of(latency, aborts, requests) == pytest.approx(0.05, rel=0.1)
    # A source whose clients never give up, and one whose latency never varied.
    assert slope_of(latency, np.zeros(500), requests) == pytest.approx(0.0, abs=1e-9)
    assert slope_of(np.full(10, 0.3), np.arange(10.0), np.full(10, 100.0)) == 0.0
    assert slope_of([], [], []) == 0.0


def test_decay_lets_a_changed_workflow_take_over():
    model = SessionTransitions(session_gap=30.0)
    for i in range(20):
        model.observe(f"s{i}", "browse", 0.0)
        model.observe(f"s{i}", "cart", 1.0)
    assert model.transitions() == {"browse": {"cart": 1.0}}
    model.decay(0.1)
    for i in range(20):
        model.observe(f"t{i}", "browse", 2.0)
        model.observe(f"t{i}", "checkout", 3.0)
    after = model.next_distribution("browse")
    assert after["checkout"] == pytest.approx(20 / 22) and after["cart"] == pytest.approx(2 / 22)


def test_running_abort_slope_equals_the_batch_fit_and_forgets():
    rng = np.random.default_rng(3)
    latency = rng.uniform(0.1, 2.0, 300)
    requests = rng.integers(1, 200, 300).astype(float)
    aborts = rng.binomial(requests.astype(int), np.clip(0.01 + 0.08 * latency, 0, 1)).astype(float)
    running = slope_of(latency, aborts, requests)   # no forgetting: the batch least squares exactly
    batch = np.polyfit(latency, aborts / requests, 1, w=np.sqrt(requests))[0]   # weighted by requests
    assert running == pytest.approx(batch, rel=1e-9)
    assert running == pytest.approx(0.08, abs=0.02)
    forgetting = AbortSlope(half_life=50)
    for x, a, n in zip(latency, aborts, requests):
        forgetting.update(x, a, n)
    for x, n in zip(latency, requests):   # then latency stops mattering
        forgetting.update(x, 0.02 * n, n)
    assert forgetting.slope < 0.01 and AbortSlope().slope == 0.0
