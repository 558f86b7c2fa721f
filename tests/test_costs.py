"""Cost accounting against a scenario computed by hand."""
import csv
import io
import json

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
    rows = [r for r in csv.DictReader(io.StringIO(report.to_csv())) if r["row_kind"] == "source"]
    assert [(r["pool"], r["source"]) for r in rows] == [("web", "acme"), ("web", "beta")]
    assert float(rows[0]["total_s"]) == pytest.approx(390 * 0.75)


def test_csv_keeps_its_first_columns_and_adds_per_pool_per_tier_rows_equal_to_the_json():
    report = compute_costs({"web": TIMELINE, "api": TIMELINE[:1]}, {"web": {"acme": 3}}, {"acme"}, 0, 100)
    text = report.to_csv()
    assert text.splitlines()[0].startswith("pool,source,predictive,requests,share,shared_s,premium_s,total_s,row_kind,tier,seconds")
    rows = list(csv.DictReader(io.StringIO(text)))
    doc = report.to_json()
    tiers = {(r["pool"], r["tier"]): float(r["seconds"]) for r in rows if r["row_kind"] == "tier"}
    assert tiers == {(pool, tier): s for pool, p in doc["pools"].items() for tier, s in p["tiers"].items()}
    unattributed = {r["pool"]: float(r["total_s"]) for r in rows if r["row_kind"] == "unattributed"}
    assert unattributed == {pool: p["unattributed_s"] for pool, p in doc["pools"].items() if p["unattributed_s"]}
    # summing total_s still counts every container-second once: tier rows leave it empty
    assert sum(float(r["total_s"] or 0) for r in rows) == pytest.approx(
        sum(p["total_s"] for p in doc["pools"].values()))
    assert {r["row_kind"] for r in rows} == {"source", "unattributed", "tier"}


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


# ---------------------------------------------------------------- controls in force at the time
# Pool "web" holds 1 baseline, 1 predictive and 1 shadow member throughout: each second costs 1 shared
# and 2 premium container-seconds. acme sends 10 requests a minute, beta 30.
T0 = 1_699_999_980.0                # on a minute


class CostsStub:
    """What CostRoutes reads of the Operator: a clock, controls, the member timeline, and requests
    counted per minute as History counts them (a minute belongs to a window its start is in)."""

    def __init__(self, tmp_path, minutes=10):
        from balancer.operator.controls import Controls
        from balancer.operator.timeline import MemberTimeline
        self.now = T0
        self.path = tmp_path / "sources.json"
        self.controls = Controls(self.path, self.clock)
        self.timeline = MemberTimeline()
        self.timeline.add("web", Sample(T0, ready=2, baseline=1, predictive=1, shadow=1))
        self.minutes = {T0 + 60 * i: {"acme": 10, "beta": 30} for i in range(minutes)}

    def clock(self):
        return self.now

    async def requests_by_pool_source(self, since, until):
        out = {}
        for minute, counts in self.minutes.items():
            if since <= minute < until:
                for source, n in counts.items():
                    out[source] = out.get(source, 0) + n
        return {"web": out} if out else {}

    async def requests_by_pool_source_type(self, since, until):
        # acme sends the expensive type: 10 checkouts a minute against beta's 30 pages
        out = {}
        for minute, counts in self.minutes.items():
            if since <= minute < until:
                for source, n in counts.items():
                    rtype = "checkout" if source == "acme" else "page"
                    by_type = out.setdefault(source, {})
                    by_type[rtype] = by_type.get(rtype, 0) + n
        return {"web": out} if out else {}

    async def pool_resources(self, since, until):
        from balancer.operator.costs import PoolResources
        return {"web": PoolResources(cpus=0.5, memory_bytes=256 << 20, used_core_s=90.0, used_gib_s=30.0,
                                     cpu_per_request={"checkout": 0.04, "page": 0.005})}


async def get_costs(op, query):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from balancer.operator.routes.costs import CostRoutes
    app = web.Application()
    CostRoutes(op).add_routes(app.router)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/admin/costs?" + query)
        assert resp.status == 200, await resp.text()
        return await resp.json() if "format=csv" not in query else await resp.text()


def by_source(doc):
    return {s["source"]: s for s in doc["sources"]}


async def test_an_opt_out_keeps_the_premium_before_it_and_charges_none_after(tmp_path):
    from balancer.operator.controls import Controls, SourceUpdate
    op = CostsStub(tmp_path)
    op.now = T0 + 300
    before = await get_costs(op, f"since={T0:.0f}")
    assert by_source(before)["acme"]["premium_s"] == pytest.approx(600 * 10 / 40)
    op.controls.update_source("acme", SourceUpdate(predictive=False))       # at T0 + 300
    # the past is not rewritten: the same window answers the same after the opt-out
    assert await get_costs(op, f"since={T0:.0f}&until={T0 + 300:.0f}") == before
    op.now = T0 + 600
    doc = await get_costs(op, f"since={T0:.0f}")
    acme, beta = by_source(doc)["acme"], by_source(doc)["beta"]
    assert acme["premium_s"] == pytest.approx(by_source(before)["acme"]["premium_s"])   # none after 300
    assert beta["premium_s"] == pytest.approx(by_source(before)["beta"]["premium_s"] + 600)   # all of it after
    assert acme["shared_s"] == pytest.approx(600 * 10 / 40) and acme["predictive"] is False
    assert doc["pools"]["web"]["unattributed_s"] == 0.0
    assert sum(s["total_s"] for s in doc["sources"]) == pytest.approx(doc["pools"]["web"]["total_s"])
    assert (doc["since"], doc["until"]) == ("2023-11-14T22:13:00Z", "2023-11-14T22:23:00Z")
    # the history is kept with the controls: a restart attributes the same
    op.controls = Controls(op.path, op.clock)
    assert await get_costs(op, f"since={T0:.0f}") == doc
    assert json.loads(op.path.read_text())["predictive_history"] == {"acme": [[T0 + 300, False]]}


async def test_per_tier_csv_rows_through_the_route_equal_its_json(tmp_path):
    op = CostsStub(tmp_path)
    op.now = T0 + 600
    doc = await get_costs(op, "since=10m&format=json")
    rows = list(csv.DictReader(io.StringIO(await get_costs(op, "since=10m&format=csv"))))
    assert {r["tier"]: float(r["seconds"]) for r in rows if r["row_kind"] == "tier"} == doc["pools"]["web"]["tiers"]


def test_a_change_takes_effect_in_costs_from_the_next_whole_minute():
    from balancer.operator.costs import attribution_intervals
    a, b = frozenset(), frozenset({"acme"})
    # changed at 330 -> from 360 (at 300, on the minute, from 300); twice within a minute -> the last wins
    assert attribution_intervals(0, 600, [(0, a), (330, b)]) == [(0, 360, a), (360, 600, b)]
    assert attribution_intervals(0, 600, [(0, a), (300, b)]) == [(0, 300, a), (300, 600, b)]
    assert attribution_intervals(0, 600, [(0, a), (330, b), (350, a)]) == [(0, 600, a)]
    # a window beginning inside a minute goes with the controls at its first whole minute
    assert attribution_intervals(30, 600, [(30, a), (50, b)]) == [(30, 600, b)]
    # changes at or after the end do not cut it
    assert attribution_intervals(0, 600, [(0, a), (590, b)]) == [(0, 600, a)]


def test_a_sources_file_without_history_keeps_its_settings_in_force_since_forever(tmp_path):
    from balancer.operator.controls import Controls, SourceUpdate
    path = tmp_path / "sources.json"
    path.write_text(json.dumps({"sources": [{"source": "beta", "predictive": False}]}))
    now = [T0 + 600]
    controls = Controls(path, lambda: now[0])
    assert controls.opted_out_between(0, T0) == [(0, frozenset({"beta"}))]
    controls.update_source("beta", SourceUpdate(predictive=True))          # opts back in at T0 + 600
    assert controls.predictive_at("beta", T0) is False and controls.predictive_at("beta", T0 + 600) is True
    assert controls.opted_out_between(T0, T0 + 900) == [(T0, frozenset({"beta"})), (T0 + 600, frozenset())]
    controls.update_source("beta", SourceUpdate(latency_sensitivity="high"))   # not a change of opt-in
    assert controls.predictive_changes == {"beta": [(T0 + 600, True)]}


def test_a_stored_history_that_does_not_hold_is_skipped(tmp_path):
    from balancer.operator.controls import Controls
    path = tmp_path / "sources.json"
    path.write_text(json.dumps({"sources": [{"source": "a", "predictive": False}, {"source": "b"}],
                                "predictive_history": {"a": [[5, True]], "b": [[1, False], [2, True]],
                                                       "gone": [[1, False]]}}))
    controls = Controls(path)
    assert controls.predictive_changes == {"b": [(1.0, False), (2.0, True)]}   # a's ends elsewhere than now
    assert controls.predictive_at("a", 0) is False and controls.predictive_at("b", 1.5) is False


async def test_costs_in_core_and_gib_seconds_reserved_by_tier_and_used_by_type_cost(tmp_path):
    op = CostsStub(tmp_path)
    op.now = T0 + 600
    doc = await get_costs(op, f"since={T0:.0f}")
    res = doc["resources"]["web"]
    tiers = doc["pools"]["web"]["tiers"]
    # reserved: container-seconds x the limits (0.5 cores, 0.25 GiB per member)
    assert res["reserved_core_s"] == {t: pytest.approx(sec * 0.5) for t, sec in tiers.items()}
    assert res["reserved_gib_s"] == {t: pytest.approx(sec * 0.25) for t, sec in tiers.items()}
    assert (res["used_core_s"], res["used_gib_s"]) == (90.0, 30.0)
    acme, beta = by_source(doc)["acme"], by_source(doc)["beta"]
    assert acme["core_s"] == pytest.approx(acme["total_s"] * 0.5)
    # used CPU follows the type costs: 100 checkouts x 40 ms against 300 pages x 5 ms
    assert acme["used_core_s"] == pytest.approx(90.0 * 4.0 / (4.0 + 1.5), abs=1e-3)
    assert acme["used_core_s"] + beta["used_core_s"] == pytest.approx(90.0, abs=1e-3)
    assert acme["used_gib_s"] == pytest.approx(30.0 * 100 / 400)   # memory by share of requests
    rows = list(csv.DictReader(io.StringIO(await get_costs(op, f"since={T0:.0f}&format=csv"))))
    shadow = next(r for r in rows if r["row_kind"] == "tier" and r["tier"] == "shadow")
    assert float(shadow["core_s"]) == pytest.approx(tiers["shadow"] * 0.5)
    acme_row = next(r for r in rows if r["row_kind"] == "source" and r["source"] == "acme")
    assert float(acme_row["used_core_s"]) == pytest.approx(acme["used_core_s"], abs=1e-3)
