"""Profiles: what kind of day a source has, what a request of a type costs, what a session asks next.

- `SourceClusters`: k-means (numpy, k-means++ start, fixed seed, best of a few restarts) on each
  source's mean day divided by its mean, so clusters group shapes, not volumes. A source with
  less than a day of history is matched to the closest centroid over the hours it has been
  seen, and borrows it as its daily shape (`update`, which the live loop calls at every refit).
- `ResourceProfile`: service time (mean and p95) of one request type, as request-weighted EWMAs
  over per-minute rows; the planner's service time.
- `SessionTransitions`: first-order Markov transitions between request types per session key,
  in bounded memory, so the pool a session needs next can be warmed before it asks.
- `AbortSlope`: how much a source's client abort rate rises per second of latency.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

SLOTS_PER_DAY = 288  # five-minute slots


# ---------------------------------------------------------------- daily shapes
def normalise_profiles(profiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows divided by their mean, and a mask of the rows that had traffic (mean > 0)."""
    profiles = np.atleast_2d(np.asarray(profiles, dtype=np.float64))
    means = profiles.mean(axis=1)
    usable = np.isfinite(means) & (means > 0)
    shapes = np.zeros_like(profiles)
    shapes[usable] = profiles[usable] / means[usable, None]
    return shapes, usable


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, restarts: int = 4,
           max_iter: int = 100) -> tuple[np.ndarray, np.ndarray, float]:
    """Lloyd's k-means with k-means++ starts; the best of `restarts` runs by inertia.

    Returns (centroids [k, d], labels [n], inertia). Deterministic for a given seed.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError("kmeans needs a non-empty [n, d] array")
    k = min(k, len(x))
    rng = np.random.default_rng(seed)
    sq_norms = np.einsum("ij,ij->i", x, x)
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(max(1, restarts)):
        centroids = _kmeans_plus_plus(x, sq_norms, k, rng)
        labels = np.full(len(x), -1)
        last = math.inf
        for _ in range(max_iter):
            distances = _sq_distances(x, sq_norms, centroids)
            new_labels = distances.argmin(axis=1)
            inertia = float(distances[np.arange(len(x)), new_labels].sum())
            # converged, or only trading points between near-equal centroids (duplicate rows)
            if np.array_equal(new_labels, labels) or inertia >= last * (1 - 1e-6):
                labels = new_labels
                break
            labels, last = new_labels, inertia
            centroids = _recentre(x, labels, centroids, distances)
        inertia = float(_sq_distances(x, sq_norms, centroids)[np.arange(len(x)), labels].sum())
        if best is None or inertia < best[2]:
            best = (centroids, labels, inertia)
    assert best is not None
    return best


def _sq_distances(x: np.ndarray, sq_norms: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    # ||x||² − 2x·c + ||c||² is one matrix product for all pairs; clip the rounding below zero.
    d = sq_norms[:, None] - 2.0 * x @ centroids.T + np.einsum("ij,ij->i", centroids, centroids)[None, :]
    return np.maximum(d, 0.0)


def _kmeans_plus_plus(x: np.ndarray, sq_norms: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centroids = [x[rng.integers(len(x))]]
    closest = _sq_distances(x, sq_norms, np.array(centroids))[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        # All points coincide with a centroid already: any choice is as good as another.
        pick = rng.integers(len(x)) if total <= 0 else rng.choice(len(x), p=closest / total)
        centroids.append(x[pick])
        closest = np.minimum(closest, _sq_distances(x, sq_norms, x[pick][None, :])[:, 0])
    return np.array(centroids)


def _recentre(x: np.ndarray, labels: np.ndarray, old: np.ndarray, distances: np.ndarray) -> np.ndarray:
    k = len(old)
    member = np.zeros((len(x), k))
    member[np.arange(len(x)), labels] = 1.0
    sums = member.T @ x   # one matrix product: np.add.at over [n, d] was 3 ms an iteration at n = 1,000
    counts = np.bincount(labels, minlength=k)
    centroids = old.copy()
    filled = counts > 0
    centroids[filled] = sums[filled] / counts[filled, None]
    # An empty cluster takes the point worst served by its own centroid, so k clusters stay in use.
    own = distances[np.arange(len(x)), labels]
    for cluster in np.flatnonzero(~filled):
        worst = int(own.argmax())
        centroids[cluster] = x[worst]
        own[worst] = -1.0
    return centroids


class SourceClusters:
    """Sources grouped by the shape of their mean day; sparse sources borrow their cluster's shape."""

    def __init__(self, k: int = 8, seed: int = 0, restarts: int = 4) -> None:
        self.k = k
        self.seed = seed
        self.restarts = restarts
        self.centroids = np.ones((0, SLOTS_PER_DAY))
        self._labels: dict[str, int] = {}

    def fit(self, ids: Sequence[str], daily_profiles: np.ndarray) -> np.ndarray:
        """Cluster the sources' mean days ([n, 288], raw or normalised); returns labels, −1 for
        sources without traffic (which stay unknown)."""
        shapes, usable = normalise_profiles(daily_profiles)
        if len(ids) != len(shapes):
            raise ValueError(f"{len(ids)} ids for {len(shapes)} profiles")
        labels = np.full(len(ids), -1)
        self._labels = {}
        if not usable.any():
            self.centroids = np.ones((0, shapes.shape[1]))
            return labels
        self.centroids, fitted, _ = kmeans(shapes[usable], self.k, seed=self.seed, restarts=self.restarts)
        labels[usable] = fitted
        self._labels = {sid: int(label) for sid, label in zip(ids, labels) if label >= 0}
        return labels

    def update(self, ids: Sequence[str], profiles: np.ndarray, seen: np.ndarray, min_seen: int = 12) -> None:
        """Refit on the series seen in every slot of the day, and match each of the others seen in
        at least `min_seen` slots (an hour of 5-minute bins) to the cluster closest over those
        slots, so `shape_for` answers for both. `profiles` and `seen` are [n, slots], as
        `Forecaster.daily_profiles` gives them. k is at most √(n/2), so that a centroid averages
        several sources rather than copying one."""
        profiles, seen = np.asarray(profiles, dtype=np.float64), np.asarray(seen, dtype=bool)
        full = np.asarray(seen.all(axis=1))
        k, self.k = self.k, max(1, min(self.k, int(math.sqrt(full.sum() / 2))))
        try:
            self.fit([sid for sid, f in zip(ids, full) if f], profiles[full])
        finally:
            self.k = k
        partial = np.flatnonzero(~full & (seen.sum(axis=1) >= min_seen))
        labels = self.assign(profiles[partial], seen[partial])
        self._labels.update((ids[i], label) for i, label in zip(partial.tolist(), labels.tolist()) if label >= 0)

    def shape_for(self, series_id: str) -> np.ndarray | None:
        """The centroid (mean 1, one value per slot) of the source's cluster; None when unknown."""
        label = self._labels.get(series_id)
        return None if label is None else self.centroids[label].copy()

    def assign(self, profiles: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Per row of `profiles` ([n, slots]), the cluster whose shape is closest comparing only
        the slots in its row of `masks` (e.g. the hours a new source has been seen so far); −1
        where nothing can be compared."""
        profiles = np.atleast_2d(np.asarray(profiles, dtype=np.float64))
        masks = np.atleast_2d(np.asarray(masks, dtype=bool)) & np.isfinite(profiles)
        labels = np.full(len(profiles), -1)
        if len(self.centroids) == 0 or len(profiles) == 0:
            return labels
        # Compare shapes over the seen slots only: each side divided by its own mean there.
        w = masks.astype(np.float64)
        x = np.where(masks, profiles, 0.0)
        n_seen = w.sum(axis=1)
        x_mean = np.divide(x.sum(axis=1), n_seen, out=np.zeros(len(x)), where=n_seen > 0)
        ok = x_mean > 0
        x = np.divide(x, x_mean[:, None], out=np.zeros_like(x), where=ok[:, None])
        c = self.centroids
        c_mean = np.divide(w @ c.T, n_seen[:, None], out=np.zeros((len(x), len(c))), where=n_seen[:, None] > 0)
        c_mean = np.where(c_mean > 0, c_mean, np.inf)
        # Σ_mask (x − c/μc)² = Σ x² − 2 Σ x·c / μc + Σ_mask c² / μc², for all rows and clusters at once
        d = (x * x).sum(axis=1)[:, None] - 2.0 * (x @ c.T) / c_mean + (w @ (c * c).T) / c_mean ** 2
        labels[ok] = d[ok].argmin(axis=1)
        return labels


# ---------------------------------------------------------------- resource profile
class ResourceProfile:
    """Per request type: service time per request, request-weighted EWMAs over minutes.

    Sums decay together (Σ latency / Σ requests), so a busy minute counts for more than a quiet
    one and the mean is a true per-request mean. The p95 comes from the latency histogram when
    one is given (bucket upper bounds `latency_bounds`, last bucket +Inf) and is a plain EWMA of
    the per-minute p95s.
    """

    def __init__(self, alpha: float = 0.1, latency_bounds: Sequence[float] = ()) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.latency_bounds = tuple(latency_bounds)
        self._requests = 0.0
        self._latency = 0.0
        self._p95: float | None = None
        self.minutes = 0

    def update(self, requests: float, latency_sum: float, latency_hist: Sequence[float] | None = None) -> None:
        """Fold in one minute's row; minutes without requests tell nothing about cost and are skipped."""
        if requests <= 0:
            return
        keep = 1.0 - self.alpha
        self._requests = keep * self._requests + requests
        self._latency = keep * self._latency + latency_sum
        if latency_hist is not None:
            p95 = histogram_quantile(latency_hist, self.latency_bounds, 0.95)
            self._p95 = p95 if self._p95 is None else self._p95 + self.alpha * (p95 - self._p95)
        self.minutes += 1

    @property
    def service_time_s(self) -> float | None:
        return self._latency / self._requests if self._requests > 0 else None

    @property
    def service_time_p95_s(self) -> float | None:
        return self._p95


def histogram_quantile(hist: Sequence[float] | np.ndarray, bounds: Sequence[float], q: float) -> float:
    """Quantile `q` of a histogram with bucket upper `bounds` (one more count for +Inf), linear
    inside the bucket as Prometheus does; the +Inf bucket reports the last finite bound."""
    counts = np.asarray(hist, dtype=np.float64)
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"{len(counts)} bucket counts for {len(bounds)} bounds (expected bounds + 1)")
    total = counts.sum()
    if total <= 0:
        return 0.0
    cumulative = np.cumsum(counts)
    bucket = int(np.searchsorted(cumulative, q * total))
    if bucket >= len(bounds):
        return float(bounds[-1]) if bounds else 0.0
    low = 0.0 if bucket == 0 else float(bounds[bucket - 1])
    below = 0.0 if bucket == 0 else float(cumulative[bucket - 1])
    return low + (float(bounds[bucket]) - low) * (q * total - below) / float(counts[bucket])


# ---------------------------------------------------------------- next request type
_END = None  # the "session ended" state: no next request


class SessionTransitions:
    """First-order Markov chain over request types, learned from requests grouped by session key.

    A session ends after `session_gap` seconds without a request; that ending is a transition
    too, so `next_distribution` sums to at most 1 and `expected_next` does not assume every
    request is followed by another. At most `max_sessions` sessions are remembered (least
    recently seen dropped first); times are expected to be non-decreasing.
    """

    def __init__(self, max_sessions: int = 100_000, session_gap: float = 1800.0) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        self.max_sessions = max_sessions
        self.session_gap = session_gap
        self._sessions: OrderedDict[Hashable, tuple[str, float]] = OrderedDict()
        self._counts: dict[str, dict[str | None, float]] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def observe(self, session_key: Hashable, rtype: str, t: float) -> None:
        self._expire(t)
        last = self._sessions.pop(session_key, None)
        if last is not None:
            self._count(last[0], rtype)
        self._sessions[session_key] = (rtype, t)
        if len(self._sessions) > self.max_sessions:
            # Evicted while possibly still active: its next step is unknown, so nothing is counted.
            self._sessions.popitem(last=False)

    def _expire(self, now: float) -> None:
        # Oldest first: the dict is in order of last request, so expiry stops at the first live one.
        while self._sessions:
            key, (rtype, seen) = next(iter(self._sessions.items()))
            if now - seen <= self.session_gap:
                return
            del self._sessions[key]
            self._count(rtype, _END)

    def _count(self, src: str, dst: str | None) -> None:
        row = self._counts.setdefault(src, {})
        row[dst] = row.get(dst, 0.0) + 1.0

    def decay(self, factor: float) -> None:
        """Weigh what was learned so far by `factor` (0–1), so the model follows a changing workflow."""
        for row in self._counts.values():
            for dst in row:
                row[dst] *= factor

    def transitions(self) -> dict[str, dict[str, float]]:
        """Every learned `next_distribution`, by request type."""
        return {src: self.next_distribution(src) for src in self._counts}

    def next_distribution(self, rtype: str) -> dict[str, float]:
        """P(next request is of each type | this request is `rtype`); the rest is P(session ends)."""
        row = self._counts.get(rtype)
        if not row:
            return {}
        total = sum(row.values())
        return {dst: n / total for dst, n in row.items() if dst is not _END}

    def expected_next(self, counts_by_type: Mapping[str, float]) -> dict[str, float]:
        """Expected requests of each type in the next step, given this step's requests per type."""
        expected: dict[str, float] = {}
        for src, count in counts_by_type.items():
            for dst, p in self.next_distribution(src).items():
                expected[dst] = expected.get(dst, 0.0) + count * p
        return expected


# ---------------------------------------------------------------- latency sensitivity
class AbortSlope:
    """Rise in a source's client abort rate per second of mean latency (≥ 0): least squares of
    abort rate on latency over per-minute rows, weighted by requests, kept as running sums with
    exponential forgetting (`half_life` in rows), so the live loop learns it for every source in
    O(1) memory; 0 while latency has not varied."""

    def __init__(self, half_life: float = 1440.0) -> None:
        self.decay = 0.5 ** (1.0 / half_life) if half_life > 0 else 1.0
        # Σw, Σw·x, Σw·x², Σw·r, Σw·x·r  (w requests, x latency s, r abort rate); plain floats: the
        # live loop updates one per source per minute, and a numpy call per update cost 4 µs
        self._sums = (0.0, 0.0, 0.0, 0.0, 0.0)

    def update(self, latency_s: float, aborts: float, requests: float) -> None:
        if requests <= 0 or not math.isfinite(latency_s):
            return
        w, x, r = float(requests), float(latency_s), float(aborts) / float(requests)
        d = self.decay
        sw, sx, sxx, sr, sxr = self._sums
        self._sums = (sw * d + w, sx * d + w * x, sxx * d + w * x * x, sr * d + w * r, sxr * d + w * x * r)

    @property
    def weight(self) -> float:
        return float(self._sums[0])

    @property
    def slope(self) -> float:
        sw, sx, sxx, sr, sxr = self._sums
        if sw <= 0:
            return 0.0
        x_mean = sx / sw
        spread = sxx - sw * x_mean * x_mean
        if spread <= 1e-12 * max(1.0, sw):
            return 0.0
        slope = (sxr - x_mean * sr) / spread
        return max(0.0, float(slope)) if math.isfinite(slope) else 0.0
