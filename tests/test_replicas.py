"""The replica set on a real PostgreSQL: one leader, takeover when its session dies, routing
published by the leader and followed by the others, drains that wait for every replica."""
from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from balancer.control.replicas import FENCE_EXTRA_S, ReplicaError, ReplicaSet, decode_members, encode_members
from pools.members import MemberState, MemberView
from tests.pgkit import postgres  # noqa: F401 (fixture)
from tests.pools_support import wait_until

HEARTBEAT = 0.1


class Seat:
    """One replica's ReplicaSet running, with what its callbacks saw."""

    def __init__(self, url: str, replica: str, in_flight: dict[str, int] | None = None) -> None:
        self.in_flight = in_flight if in_flight is not None else {}
        self.set = ReplicaSet(url, "shop", replica, f"127.0.0.1:{8000 + len(replica)}", heartbeat=HEARTBEAT,
                              local_in_flight=lambda: self.in_flight)
        self.led = 0
        self.stepped_down = 0
        self.routing: list[dict[str, list[MemberView]]] = []
        self.task: asyncio.Task | None = None

    async def start(self) -> "Seat":
        await self.set.open()
        self.task = asyncio.create_task(self.set.run(self._lead, self._down, self.routing.append))
        return self

    async def _lead(self) -> None:
        self.led += 1

    async def _down(self) -> None:
        self.stepped_down += 1

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.set.close()

    async def kill_session(self, url: str) -> None:
        """What SIGKILL does to a replica's session: the server ends it (the lock goes with it)."""
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                         (f"warmfront {self.set.replica}",))


def view(mid: str, state: MemberState = MemberState.READY) -> MemberView:
    return MemberView(mid, "web", "127.0.0.1", 9000 + len(mid), state, True, None, 1.0)


def test_members_round_trip_through_json():
    members = {"web": [view("a"), MemberView("b", "web", "10.0.0.2", 81, MemberState.SHADOW, False, "paused", 2.5)]}
    assert decode_members(encode_members(members)) == members


async def test_exactly_one_leads_and_a_follower_takes_over_within_seconds_when_the_leaders_session_dies(postgres):
    url = postgres.create_database("replicas_takeover")
    a = await Seat(url, "a").start()
    await wait_until(lambda: a.set.leading, 5)
    b = await Seat(url, "b").start()
    try:
        await asyncio.sleep(10 * HEARTBEAT)
        assert (a.set.leading, b.set.leading) == (True, False) and b.led == 0
        assert b.set.status()["role"] == "follower" and {p.replica for p in a.set.live_peers()} == {"b"}

        await a.kill_session(url)
        t0 = time.monotonic()
        await wait_until(lambda: b.set.leading, 5)
        took = time.monotonic() - t0
        assert took >= FENCE_EXTRA_S, "the new leader acted before the fence"
        assert took < 5
        await wait_until(lambda: a.stepped_down == 1, 2)
        await asyncio.sleep(10 * HEARTBEAT)   # a reconnects and finds the lock taken
        assert (a.set.leading, b.set.leading) == (False, True) and b.led == 1
        assert a.set.status()["role"] == "follower"
    finally:
        await a.stop()
        await b.stop()


async def test_followers_route_what_the_leader_publishes_and_versions_only_grow(postgres):
    url = postgres.create_database("replicas_routing")
    a = await Seat(url, "a").start()
    await wait_until(lambda: a.set.leading, 5)
    b = await Seat(url, "b").start()
    try:
        a.set.publish({"web": [view("m1"), view("m2")]})
        await wait_until(lambda: b.routing and {m.id for m in b.routing[-1]["web"]} == {"m1", "m2"}, 3)
        first = b.set.seen_version
        a.set.publish({"web": [view("m1")]})
        await wait_until(lambda: [m.id for m in b.routing[-1]["web"]] == ["m1"], 3)
        assert b.set.seen_version > first and b.set.leader == "a"
        await a.stop()   # a clean exit: the row and the session go
        await wait_until(lambda: b.set.leading, 5)
        b.set.publish({"web": [view("m1"), view("m3")]})
        await wait_until(lambda: b.set.seen_version > first + 1, 3)
    finally:
        await a.stop()
        await b.stop()


async def test_a_drained_member_counts_busy_until_every_follower_routes_without_it_and_has_nothing_in_flight(postgres):
    url = postgres.create_database("replicas_drain")
    a = await Seat(url, "a").start()
    await wait_until(lambda: a.set.leading, 5)
    follower_in_flight = {"m2": 3}
    b = await Seat(url, "b", follower_in_flight).start()
    try:
        a.set.publish({"web": [view("m1"), view("m2")]})
        await wait_until(lambda: b.routing, 3)
        await wait_until(lambda: a.set.in_flight("m2") == 3, 3)   # the follower's requests count
        assert a.set.in_flight("m1") == 0
        a.set.publish({"web": [view("m1"), view("m2", MemberState.DRAINING)]})
        follower_in_flight.clear()
        # Until b reports a version without m2, it may still be sending it requests.
        assert a.set.in_flight("m2") >= 1
        await wait_until(lambda: a.set.in_flight("m2") == 0, 3)
        assert b.set.seen_version == a.set.seen_version
        await b.stop()   # a replica that has gone no longer holds a drain up
        assert a.set.in_flight("m2") == 0
    finally:
        await a.stop()
        await b.stop()


async def test_an_unreachable_database_is_a_clear_error_without_the_password():
    s = ReplicaSet("postgresql://warmfront:s3cret@127.0.0.1:1/shop", "shop", "a", "127.0.0.1:1")
    with pytest.raises(ReplicaError) as e:
        await s.open()
    assert "127.0.0.1:1/shop" in str(e.value) and "s3cret" not in str(e.value)
