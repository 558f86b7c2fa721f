"""Anomalies: k bins outside the interval open one dated at the first; blips do not; k bins inside close it."""
from __future__ import annotations

import pytest

from predictor.anomaly import AnomalyDetector

BIN = 60.0
LOWER, UPPER = 80.0, 120.0


def feed(detector: AnomalyDetector, actuals: list[float], series_id: str = "acme/api"):
    """Feed actuals against a fixed interval; returns (bin index, anomaly) for each change."""
    changes = []
    for i, actual in enumerate(actuals):
        found = detector.update(series_id, i * BIN, actual, LOWER, UPPER)
        if found is not None:
            changes.append((i, found))
    return changes


def test_spike_of_k_bins_opens_an_anomaly_dated_at_its_first_bin_and_closes_after_k_inside():
    detector = AnomalyDetector(k=3)
    actuals = [100.0] * 10 + [150, 300, 240, 200] + [100.0] * 6
    (opened_at, opened), (closed_at, closed) = feed(detector, actuals)

    assert opened_at == 12  # raised on the k-th bin outside...
    assert opened.start == 10 * BIN  # ...but dated from the first
    assert opened.end is None and opened.direction == "up"
    assert closed_at == 16  # third bin back inside
    assert (closed.start, closed.end) == (10 * BIN, 14 * BIN)
    assert closed.peak == 300 and closed.size == pytest.approx(300 / UPPER)
    assert detector.active() == []


@pytest.mark.parametrize("blip", [[300.0], [300.0, 250.0], [10.0, 5.0]])
def test_blips_shorter_than_k_bins_raise_nothing(blip):
    detector = AnomalyDetector(k=3)
    actuals = [100.0] * 5 + blip + [100.0] * 5 + blip + [100.0] * 5
    assert feed(detector, actuals) == []
    assert detector.active() == [] and detector._states == {}


def test_run_must_stay_on_one_side():
    detector = AnomalyDetector(k=3)
    assert feed(detector, [100.0, 200.0, 10.0, 200.0, 10.0, 100.0]) == []


def test_anomaly_stays_open_through_short_dips_inside():
    detector = AnomalyDetector(k=3)
    actuals = [100.0] * 3 + [10.0] * 4 + [100.0, 100.0] + [20.0] * 3 + [100.0] * 2
    changes = feed(detector, actuals)
    assert len(changes) == 1
    (_, opened), = changes
    assert opened.direction == "down" and opened.start == 3 * BIN
    active, = detector.active()
    assert active.end is None and active.peak == 10.0
    assert active.size == pytest.approx(10.0 / LOWER)


def test_series_inside_their_interval_hold_no_state():
    detector = AnomalyDetector(k=2)
    for i in range(1000):
        detector.update(f"s{i}", 0.0, 100.0, LOWER, UPPER)
    assert detector._states == {}
    for i in range(1000):
        detector.update(f"s{i}", BIN, 500.0 if i == 5 else 100.0, LOWER, UPPER)
    assert set(detector._states) == {"s5"}


def test_zero_interval_sizes_against_min_bound():
    detector = AnomalyDetector(k=1, min_bound=1.0)
    found = detector.update("quiet", 0.0, 7.0, 0.0, 0.0)
    assert found is not None and found.size == 7.0
