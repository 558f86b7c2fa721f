"""The reconcile decision, table-driven and without any process: desired + observed -> actions."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.models import Pool
from pools.members import MemberState as S
from pools.reconciler import (Activate, Desired, Drain, Launch, ObservedMember, Park, Replace, Retire, Warm,
                              baseline_desired, decide)

NOW = 100.0


def d(ready: int, shadow: int = 0, state: str = "none", max_members: int = 4, drain: float = 30.0) -> Desired:
    return Desired(ready, shadow, state, max_members, drain)


def m(id: str, state: S, **kw) -> ObservedMember:
    return ObservedMember(id, state, **kw)


CASES = [
    # (name, desired, observed, expected actions in order)
    ("empty pool launches min", d(2), [], [Launch(), Launch()]),
    ("empty pool launches ready plus shadow", d(2, 1, "running"), [], [Launch()] * 3),
    ("launches stop at max", d(2, 3, "paused", max_members=4), [], [Launch()] * 4),
    ("steady state does nothing", d(1, 1, "paused"),
     [m("a", S.READY), m("b", S.SHADOW, shadow_state="paused")], []),
    ("members still booting are counted, not relaunched", d(2),
     [m("a", S.LAUNCHING, busy=True), m("b", S.WARMING, busy=True)], []),
    ("with nothing routable a booted member serves at once", d(1), [m("a", S.LAUNCHING)], [Activate("a")]),
    ("a booted member warms up when the pool already serves", d(2),
     [m("a", S.READY), m("b", S.LAUNCHING)], [Warm("b")]),
    ("a warm member fills a ready slot", d(2), [m("a", S.READY), m("b", S.WARMING)], [Activate("b")]),
    ("a warm member not needed ready is parked as shadow", d(1, 1, "paused"),
     [m("a", S.READY), m("b", S.WARMING)], [Park("b", "paused")]),
    ("a warm member needed nowhere is retired", d(1), [m("a", S.READY), m("b", S.WARMING)],
     [Retire("b", "surplus")]),
    ("shadows are activated before anything is launched, then the shadow tier is refilled", d(2, 1, "paused"),
     [m("a", S.READY), m("b", S.SHADOW, shadow_state="paused")], [Activate("b"), Launch()]),
    ("the fastest shadow is activated first", d(2, 2, "paused"),
     [m("a", S.READY), m("s", S.SHADOW, shadow_state="stopped"), m("p", S.SHADOW, shadow_state="paused"),
      m("r", S.SHADOW, shadow_state="running")],
     [Activate("r"), Park("s", "paused")]),
    ("a failed ready member is replaced by a shadow and the shadow refilled", d(1, 1, "running"),
     [m("a", S.FAILED), m("b", S.SHADOW, shadow_state="running")], [Replace("a"), Activate("b"), Launch()]),
    ("a failed member without shadows is replaced by a launch", d(1), [m("a", S.FAILED)],
     [Replace("a"), Launch()]),
    ("a draining member with requests in flight waits", d(1),
     [m("a", S.READY), m("b", S.DRAINING, since=NOW - 5, in_flight=1)], []),
    ("a drained member is retired", d(1), [m("a", S.READY), m("b", S.DRAINING, since=NOW - 5)],
     [Retire("b", "drained")]),
    ("a draining member is retired at drain timeout even with requests in flight", d(1, drain=30),
     [m("a", S.READY), m("b", S.DRAINING, since=NOW - 30, in_flight=3)], [Retire("b", "drain timeout")]),
    ("a member already being retired is left alone", d(1),
     [m("a", S.READY), m("b", S.DRAINING, since=NOW - 99, busy=True)], []),
    ("scale down drains the ready members with least in flight, newest first", d(1),
     [m("a", S.READY, since=1, in_flight=0), m("b", S.READY, since=2, in_flight=0),
      m("c", S.READY, since=3, in_flight=4)],
     [Drain("b"), Drain("a")]),
    ("shadows are retired before ready members are drained", d(2),
     [m("a", S.READY, since=1), m("b", S.READY, since=2), m("c", S.READY, since=3), m("s1", S.SHADOW, shadow_state="running", since=1),
      m("s2", S.SHADOW, shadow_state="running", since=2)],
     [Retire("s2", "surplus"), Retire("s1", "surplus"), Drain("c")]),
    ("the slowest shadow is retired first", d(1, 1, "paused"),
     [m("a", S.READY), m("p", S.SHADOW, shadow_state="paused"), m("s", S.SHADOW, shadow_state="stopped")],
     [Retire("s", "surplus")]),
    ("a lowered max trims the shadow tier first", d(2, 2, "paused", max_members=3),
     [m("a", S.READY), m("b", S.READY), m("s1", S.SHADOW, shadow_state="paused", since=1),
      m("s2", S.SHADOW, shadow_state="paused", since=2)],
     [Retire("s2", "surplus")]),
    ("shadow size without a shadow state means no shadows", d(1, 2, "none"), [m("a", S.READY)], []),
    ("shadows follow a changed shadow state", d(1, 1, "stopped"),
     [m("a", S.READY), m("b", S.SHADOW, shadow_state="running")], [Park("b", "stopped")]),
    ("draining and failed members do not hold capacity against max", d(2, max_members=2),
     [m("a", S.READY), m("b", S.DRAINING, since=NOW, in_flight=1), m("c", S.FAILED, busy=True)],
     [Launch()]),
]


@pytest.mark.parametrize("desired,observed,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(desired, observed, expected):
    assert decide(desired, observed, NOW) == expected


def test_baseline_desired_reads_capacity_min_and_the_shadow_tier():
    spec = Pool.model_validate({"command": "srv --port {port}", "capacity": {"min": 3, "max": 7},
                                "shadow": {"state": "paused", "size": 2}, "drain_timeout": 12})
    assert baseline_desired("api", spec, []) == Desired(3, 2, "paused", 7, 12.0)


# ------------------------------------------------------------------ invariants over any observed state
members = st.lists(
    st.builds(ObservedMember, id=st.uuids().map(str), state=st.sampled_from(list(S)),
              since=st.floats(0, NOW), shadow_state=st.sampled_from(["running", "paused", "stopped"]),
              in_flight=st.integers(0, 3), busy=st.booleans()),
    max_size=10)
desireds = st.builds(Desired, ready=st.integers(0, 6), shadow=st.integers(0, 4),
                     shadow_state=st.sampled_from(["none", "running", "paused", "stopped"]),
                     max_members=st.integers(0, 8), drain_timeout=st.floats(0, 60))


@settings(max_examples=300, deadline=None)
@given(desired=desireds, observed=members)
def test_decide_invariants(desired, observed):
    actions = decide(desired, observed, NOW)
    by_id = {o.id: o for o in observed}
    touched = [a.member_id for a in actions if not isinstance(a, Launch)]
    assert len(touched) == len(set(touched)), "one action per member per pass"
    assert all(not by_id[i].busy for i in touched), "busy members are never acted on"
    holding = sum(o.state in (S.READY, S.SHADOW, S.LAUNCHING, S.WARMING) for o in observed)
    launches = sum(isinstance(a, Launch) for a in actions)
    if launches:
        assert holding + launches <= desired.max_members
    for a in actions:
        o = by_id.get(getattr(a, "member_id", None))
        if isinstance(a, Retire) and o.state is S.DRAINING:
            assert o.in_flight == 0 or NOW - o.since >= desired.drain_timeout
        if isinstance(a, Drain):
            assert o.state is S.READY
        if isinstance(a, Replace):
            assert o.state is S.FAILED
    # An idle shadow (or a warm member) takes a free ready slot rather than waiting for a launch.
    ready_gap = min(desired.ready, desired.max_members) - sum(o.state is S.READY for o in observed)
    idle_shadows = [o for o in observed if o.state is S.SHADOW and not o.busy]
    if ready_gap > 0 and idle_shadows:
        assert any(isinstance(a, Activate) and by_id[a.member_id].state is S.SHADOW for a in actions) \
            or any(isinstance(a, Activate) and by_id[a.member_id].state is S.WARMING for a in actions)
