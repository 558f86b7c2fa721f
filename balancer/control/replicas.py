"""Replicas of one warmfront sharing a PostgreSQL database: who leads, what the leader publishes,
what every replica reports back.

Every replica proxies and records history; exactly one — the holder of the replica set's
session-level advisory lock — plans and drives the pools. The lock lives as long as the leader's
database session: a leader that dies (even by SIGKILL) closes its connection and PostgreSQL
releases the lock at once; a live leader whose connection fails steps down on its next heartbeat.
A replica that takes the lock waits a fence (two heartbeats and a second) before it acts, so a
leader that lost its session has stopped acting by then.

Two tables, both keyed by the replica set's name:
- `warmfront_routing`: the leader's published members per pool (what is routed), with a version
  that only grows, across leaders too. Followers route from it; they run no pool manager.
- `warmfront_replicas`: one row per replica, renewed every heartbeat: its role, the routing version
  it applies, and its in-flight requests per member. The leader counts a member drained only when
  every live follower routes a version without it and has nothing in flight to it.

Everything here runs on the control process's loop (psycopg's async connection); the workers know
nothing of it.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog

from balancer.control.history_pg import redact
from pools.members import MemberState, MemberView

log = structlog.get_logger(__name__)

STALE_HEARTBEATS = 6    # a replica silent this many heartbeats is gone: its in-flight no longer counts
FORGET_AFTER_S = 600.0  # the leader deletes rows of replicas silent this long (they died without leaving)
FENCE_HEARTBEATS = 2    # a new leader waits this many heartbeats (+ FENCE_EXTRA_S) before it acts
FENCE_EXTRA_S = 1.0
CONNECT_TIMEOUT_S = 5

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS warmfront_routing (
        replica_set TEXT PRIMARY KEY, leader TEXT NOT NULL, version BIGINT NOT NULL,
        members JSONB NOT NULL, updated TIMESTAMPTZ NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS warmfront_replicas (
        replica_set TEXT NOT NULL, replica TEXT NOT NULL, address TEXT NOT NULL, role TEXT NOT NULL,
        seen_version BIGINT NOT NULL, in_flight JSONB NOT NULL, started TIMESTAMPTZ NOT NULL,
        renewed TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (replica_set, replica))""",
)


class ReplicaError(Exception):
    """The replica set's database cannot be reached or used (the message says which and why)."""


@dataclass(frozen=True, slots=True)
class Peer:
    """Another replica, as its last heartbeat row says."""
    replica: str
    address: str
    role: str
    seen_version: int
    in_flight: Mapping[str, int]
    age_s: float


@dataclass(slots=True)
class _Published:
    version: int = 0
    ready: dict[str, frozenset[str]] = field(default_factory=dict)   # pool -> routed member ids


def owner_of(name: str) -> str:
    """The `warmfront.instance` label every replica of the set gives members: the set owns them."""
    return f"wf-{name}"


def encode_members(members: Mapping[str, list[MemberView]]) -> str:
    return json.dumps({pool: [[m.id, m.host, m.port, m.state.value, m.prewarmed, m.shadow_state, m.since]
                              for m in views] for pool, views in members.items()})


def decode_members(data: Any) -> dict[str, list[MemberView]]:
    raw = json.loads(data) if isinstance(data, str) else data
    return {pool: [MemberView(i, pool, h, int(p), MemberState(s), bool(w), sh, float(t)) for i, h, p, s, w, sh, t in rows]
            for pool, rows in raw.items()}


class ReplicaSet:
    """This replica's seat in the set: heartbeat, election, publishing (leader) and following."""

    def __init__(self, url: str, name: str, replica: str, address: str, *, heartbeat: float = 0.5,
                 local_in_flight: Callable[[], Mapping[str, int]] = dict) -> None:
        self.url, self.name, self.replica, self.address = url, name, replica, address
        self.heartbeat = heartbeat
        self.local_in_flight = local_in_flight   # member -> requests in flight through this replica
        self.leading = False
        self.leader: str | None = None           # the replica that published last
        self.leader_since: float | None = None   # wall time this replica began to lead
        self.seen_version = 0                    # the routing version this replica applies
        self.peers: dict[str, Peer] = {}
        self.started = time.time()
        self._conn: psycopg.AsyncConnection | None = None
        self._published = _Published()
        self._unrouted_at: dict[str, int] = {}   # member -> the version that stopped routing it
        self._dirty: dict[str, list[MemberView]] | None = None
        self._wake = asyncio.Event()
        self._failures = 0

    # ------------------------------------------------------------------ lifecycle
    async def open(self) -> None:
        """Connect and create the tables; a ReplicaError (password-free) when that fails."""
        try:
            await self._connect()
        except (psycopg.Error, OSError) as e:
            raise ReplicaError(f"replica set {self.name!r}: cannot use the database at {redact(self.url)}: "
                               f"{_first_line(e)}") from None

    async def close(self) -> None:
        """Leave: drop the row and the session (which releases the lock if held)."""
        conn, self._conn = self._conn, None
        self.leading = False
        if conn is None:
            return
        with contextlib.suppress(psycopg.Error, OSError):
            async with asyncio.timeout(2):
                await conn.execute("DELETE FROM warmfront_replicas WHERE replica_set = %s AND replica = %s",
                                   (self.name, self.replica))
        with contextlib.suppress(psycopg.Error, OSError):
            await conn.close()

    async def run(self, on_lead: Callable[[], Awaitable[None]], on_step_down: Callable[[], Awaitable[None]],
                  on_routing: Callable[[dict[str, list[MemberView]]], None]) -> None:
        """Until cancelled: every heartbeat renew, elect, publish or follow. A database error costs
        the lead at once (the managers stop; the proxy keeps routing what it has) and is retried."""
        while True:
            try:
                if self._conn is None:
                    await self._connect()
                    log.info("replicas.connected", replica=self.replica, database=redact(self.url))
                if not self.leading and await self._try_lock():
                    log.info("replicas.lock_taken", replica=self.replica, fence_s=self._fence())
                    await asyncio.sleep(self._fence())
                    await self._query("SELECT 1")   # still ours after the fence?
                    self.leading, self.leader, self.leader_since = True, self.replica, time.time()
                    self._unrouted_at.clear()
                    await self._renew()
                    log.info("replicas.leading", replica=self.replica, replica_set=self.name)
                    await on_lead()
                if self.leading and self._dirty is not None:
                    await self._write_routing()
                await self._renew()
                await self._read(on_routing)
                self._failures = 0
            except (psycopg.Error, OSError, TimeoutError) as e:
                self._failures += 1
                await self._lost(e, on_step_down)
            except Exception as e:   # a failing callback: give up the lock rather than lead half-way
                self._failures += 1
                log.error("replicas.error", replica=self.replica, error=repr(e))
                await self._lost(e, on_step_down)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._backoff()):
                    await self._wake.wait()
            self._wake.clear()

    # ------------------------------------------------------------------ leader side
    def publish(self, members: Mapping[str, list[MemberView]]) -> None:
        """The leader's members changed: written at once by the heartbeat task (the last value wins)."""
        if self.leading:
            self._dirty = {pool: list(views) for pool, views in members.items()}
            self._wake.set()

    def in_flight(self, member: str) -> int:
        """What the other live replicas still have in flight to `member` (leader side). A follower that
        does not yet route a version without the member counts 1: it may still send it requests."""
        unrouted = self._unrouted_at.get(member)
        total = 0
        for p in self.live_peers():
            if unrouted is not None and p.seen_version < unrouted:
                total += 1
            else:
                total += p.in_flight.get(member, 0)
        return total

    def live_peers(self) -> list[Peer]:
        """The other replicas heard from within STALE_HEARTBEATS heartbeats."""
        return [p for p in self.peers.values() if p.age_s <= STALE_HEARTBEATS * self.heartbeat]

    def status(self) -> dict[str, Any]:
        peers = [{"replica": p.replica, "address": p.address, "role": p.role, "routing_version": p.seen_version,
                  "heartbeat_age_s": round(p.age_s, 2)} for p in sorted(self.peers.values(), key=lambda p: p.replica)]
        return {"replica_set": self.name, "replica": self.replica, "address": self.address,
                "role": "leader" if self.leading else "follower", "leader": self.leader,
                "leading_since": self.leader_since if self.leading else None,
                "routing_version": self.seen_version, "connected": self._conn is not None, "peers": peers}

    # ------------------------------------------------------------------ the database
    async def _connect(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                                     application_name=f"warmfront {self.replica}")
        try:
            for sql in _SCHEMA:
                # concurrent first starts may race on CREATE TABLE IF NOT EXISTS: the loser retries
                with contextlib.suppress(psycopg.errors.UniqueViolation):
                    await conn.execute(sql)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = self._conn
        if conn is None:
            raise psycopg.OperationalError("not connected")
        async with asyncio.timeout(max(2.0, 4 * self.heartbeat)):
            cur = await conn.execute(sql, params)
            return await cur.fetchall() if cur.description is not None else []

    async def _try_lock(self) -> bool:
        rows = await self._query("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (f"warmfront:{self.name}",))
        return bool(rows and rows[0][0])

    async def _renew(self) -> None:
        local = {m: n for m, n in self.local_in_flight().items() if n}
        await self._query(
            "INSERT INTO warmfront_replicas (replica_set, replica, address, role, seen_version, in_flight, started,"
            " renewed) VALUES (%s, %s, %s, %s, %s, %s, to_timestamp(%s), now())"
            " ON CONFLICT (replica_set, replica) DO UPDATE SET address = EXCLUDED.address, role = EXCLUDED.role,"
            " seen_version = EXCLUDED.seen_version, in_flight = EXCLUDED.in_flight, renewed = now()",
            (self.name, self.replica, self.address, "leader" if self.leading else "follower", self.seen_version,
             json.dumps(local), self.started))

    async def _write_routing(self) -> None:
        members, self._dirty = self._dirty, None
        assert members is not None
        try:
            rows = await self._query(
                "INSERT INTO warmfront_routing (replica_set, leader, version, members, updated)"
                " VALUES (%s, %s, 1, %s, now()) ON CONFLICT (replica_set) DO UPDATE SET leader = EXCLUDED.leader,"
                " version = warmfront_routing.version + 1, members = EXCLUDED.members, updated = now()"
                " RETURNING version", (self.name, self.replica, encode_members(members)))
        except BaseException:
            if self._dirty is None:
                self._dirty = members   # written on the next pass instead
            raise
        version = int(rows[0][0])
        ready = {pool: frozenset(m.id for m in views if m.state is MemberState.READY) for pool, views in members.items()}
        for pool, before in self._published.ready.items():
            for member in before - ready.get(pool, frozenset()):
                self._unrouted_at[member] = version
        live = {m.id for views in members.values() for m in views}
        self._unrouted_at = {m: v for m, v in self._unrouted_at.items() if m in live}
        self._published = _Published(version, ready)
        self.seen_version, self.leader = version, self.replica

    async def _read(self, on_routing: Callable[[dict[str, list[MemberView]]], None]) -> None:
        rows = await self._query("SELECT replica, address, role, seen_version, in_flight,"
                                 " extract(epoch FROM now() - renewed) FROM warmfront_replicas"
                                 " WHERE replica_set = %s AND replica <> %s", (self.name, self.replica))
        self.peers = {r: Peer(r, a, role, int(v), _counts(f), float(age)) for r, a, role, v, f, age in rows}
        if self.leading:
            if any(p.age_s > FORGET_AFTER_S for p in self.peers.values()):   # replicas that died without leaving
                await self._query("DELETE FROM warmfront_replicas WHERE replica_set = %s"
                                  " AND renewed < now() - make_interval(secs => %s)", (self.name, FORGET_AFTER_S))
            return
        routing = await self._query("SELECT leader, version, members FROM warmfront_routing WHERE replica_set = %s",
                                    (self.name,))
        if not routing:
            return
        leader, version, members = routing[0]
        self.leader = leader
        if int(version) != self.seen_version:
            on_routing(decode_members(members))
            self.seen_version = int(version)

    async def _lost(self, error: BaseException, on_step_down: Callable[[], Awaitable[None]]) -> None:
        was_leading, self.leading = self.leading, False
        conn, self._conn = self._conn, None
        log.warning("replicas.database_error", replica=self.replica, database=redact(self.url),
                    error=_first_line(error), leading=was_leading, retry_in=self._backoff())
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()   # the session goes, and with it the lock if we held it
        if was_leading:
            log.warning("replicas.stepped_down", replica=self.replica, reason="database session lost")
            await on_step_down()

    def _fence(self) -> float:
        return FENCE_HEARTBEATS * self.heartbeat + FENCE_EXTRA_S

    def _backoff(self) -> float:
        return self.heartbeat if self._failures == 0 else min(self.heartbeat * 2 ** self._failures, 5.0)


def _counts(data: Any) -> dict[str, int]:
    raw = json.loads(data) if isinstance(data, str) else (data or {})
    return {str(k): int(v) for k, v in raw.items()}


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
