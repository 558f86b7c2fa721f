"""Cost accounting against a scenario computed by hand."""
import csv
import io

import pytest

from balancer.operator.costs import compute_costs, container_seconds
from balancer.operator.timeline import Sample, sample
from pools.members import MemberState, MemberView

# Pool "web", window [0, 100):
#   t=0..40   baseline 2, shadow 1
#   t=40..70  baseline 2, predictive 1 (the shadow activated), 1 launching (the new shadow)
#   t=70..100 baseline 2, predictive 1, shadow 1, burst 1
# baseline 2*100 = 200; shadow 1*40 + 1*30 = 70; predictive_ready 1*30 + 1*30 = 60;
# overhead 1*30 = 30; burst 1*30 = 30. Premium 130, shared 260.
TIMELINE = [
    Sample(0, ready=2, baseline=2, shadow=1),
    Sample(40, ready=3, baseline=2, predictive=1, launching=1),
    Sample(70, ready=4, baseline=2, predictive=1, burst=1, shadow=1),
]


def test_container_seconds_per_tier_match_the_hand_computed_timeline():
    assert container_seconds(TIMELINE, 0, 100) == {
        "baseline": 200.0, "burst": 30.0, "overhead": 30.0, "predictive_ready": 60.0, "shadow": 70.0}


def test_window_edges_cut_samples_and_the_last_sample_holds_until_the_end():
    # [20, 50): 20 s of the first sample, 10 s of the second
    assert container_seconds(TIMELINE, 20, 50) == {
        "baseline": 60.0, "burst": 0.0, "overhead": 10.0, "predictive_ready": 10.0, "shadow": 20.0}


def test_premium_goes_to_opted_in_sources_only_and_shared_by_all_requests():
    # acme 600 requests, beta 300 (opted out), gamma 100: shares 0.6 / 0.3 / 0.1.
    # shared 260 -> 156 / 78 / 26. Premium 130 over opted-in 700 requests -> acme 111.428..., gamma 18.571...
    report = compute_costs({"web": TIMELINE}, {"web": {"acme": 600, "beta": 300, "gamma": 100}},
                           opted_out={"beta"}, since=0, until=100)
    by = {s.source: s for s in report.sources}
    assert by["acme"].shared_s == pytest.approx(156.0)
    assert by["beta"].shared_s == pytest.approx(78.0) and by["beta"].premium_s == 0.0
    assert by["gamma"].shared_s == pytest.approx(26.0)
    assert by["acme"].premium_s == pytest.approx(130 * 6 / 7)
    assert by["gamma"].premium_s == pytest.approx(130 / 7)
    assert sum(s.total_s for s in report.sources) == pytest.approx(390.0)   # everything attributed
    assert [s.source for s in report.sources] == ["acme", "beta", "gamma"]
    doc = report.to_json()
    assert doc["pools"]["web"]["premium_s"] == 130.0 and doc["pools"]["web"]["shared_s"] == 260.0
    assert doc["pools"]["web"]["unattributed_s"] == 0.0


def test_premium_with_nobody_opted_in_is_unattributed_not_spread():
    report = compute_costs({"web": TIMELINE}, {"web": {"beta": 10}}, {"beta"}, 0, 100)
    assert report.sources[0].total_s == pytest.approx(260.0)
    assert report.pools[0].unattributed_s == pytest.approx(130.0)


def test_csv_has_a_row_per_pool_and_source():
    report = compute_costs({"web": TIMELINE}, {"web": {"acme": 3, "beta": 1}}, set(), 0, 100)
    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert [(r["pool"], r["source"]) for r in rows] == [("web", "acme"), ("web", "beta")]
    assert float(rows[0]["total_s"]) == pytest.approx(390 * 0.75)


def test_sample_splits_ready_members_into_tiers():
    members = [MemberView(f"m{i}", "web", "127.0.0.1", 9000 + i, MemberState.READY) for i in range(5)]
    members += [MemberView("s1", "web", "127.0.0.1", 9100, MemberState.SHADOW, shadow_state="paused"),
                MemberView("s2", "web", "127.0.0.1", 9101, MemberState.SHADOW, shadow_state="stopped"),
                MemberView("l1", "web", "127.0.0.1", 9102, MemberState.WARMING)]
    s = sample(7.0, members, baseline_min=2, predictive_wanted=2)
    assert (s.ready, s.baseline, s.predictive, s.burst) == (5, 2, 2, 1)
    assert (s.shadow, s.shadow_stopped, s.launching, s.draining) == (1, 1, 1, 0)


def test_the_member_timeline_survives_a_restart_and_reaches_back_past_memory(tmp_path):
    from balancer.operator.timeline import MemberTimeline
    path = tmp_path / "timeline.sqlite3"
    tl = MemberTimeline(keep=2, path=path)     # memory holds the last 2 samples of 3
    for s in TIMELINE:
        tl.add("web", s)
    tl.close()
    again = MemberTimeline(keep=2, path=path)
    try:
        assert again.series("web", since=TIMELINE[1].t) == TIMELINE[1:]   # memory, reloaded at start
        assert again.series("web", since=TIMELINE[0].t) == TIMELINE   # older than memory: from SQLite
        assert container_seconds(again.series("web", TIMELINE[0].t), TIMELINE[0].t, TIMELINE[-1].t + 60) == \
            container_seconds(TIMELINE, TIMELINE[0].t, TIMELINE[-1].t + 60)
    finally:
        again.close()
