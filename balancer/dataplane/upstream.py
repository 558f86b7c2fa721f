"""Members as the data plane sees them: in-flight counts, idle connections, passive ejection, choice.

`Upstream` objects outlive routing-table swaps (keyed by member id) so that a member taken out of
routing keeps its in-flight count until its requests finish — the drain decision reads it.
"""
from __future__ import annotations

import asyncio
from random import random, sample
from typing import Any, Generic, Protocol, TypeVar

import structlog

from balancer.dataplane.routing import PoolTargets, Target
from balancer.dataplane.stats import QUEUE_WAIT_BUCKETS, Histogram, UpstreamStats

log = structlog.get_logger("warmfront.balancer")

MAX_IDLE_PER_MEMBER = 128


class Pooled(Protocol):
    """An idle connection as a member keeps it (the proxy's `UpstreamConnection`)."""
    @property
    def transport(self) -> asyncio.Transport | None: ...
    def close(self) -> None: ...


C = TypeVar("C", bound=Pooled)


class Upstream(Generic[C]):
    __slots__ = ("id", "pool", "host", "port", "in_flight", "requests", "failures", "ejections",
                 "ejected_until", "routable_since", "prewarmed", "idle", "routed")

    def __init__(self, target: Target, pool: str, now: float):
        self.id = target.id
        self.pool = pool
        self.host = target.host
        self.port = target.port
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self.routable_since = now
        self.prewarmed = target.prewarmed
        self.idle: list[C] = []
        self.routed = True

    def take_idle(self) -> C | None:
        idle = self.idle
        while idle:
            c = idle.pop()
            if c.transport is not None and not c.transport.is_closing():
                return c
        return None

    def give_back(self, conn: C) -> None:
        if self.routed and len(self.idle) < MAX_IDLE_PER_MEMBER:
            self.idle.append(conn)
        else:
            conn.close()

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for c in idle:
            c.close()

    def stats(self) -> UpstreamStats:
        return UpstreamStats(self.in_flight, self.requests, self.failures, self.ejected_until)


class UpstreamPool(Generic[C]):
    """The routable members of one pool and the choice among them."""

    __slots__ = ("name", "members", "conf", "waiters", "queue_wait")

    def __init__(self, name: str, queue_wait: Histogram | None = None):
        self.name = name
        self.members: list[Upstream[C]] = []
        self.conf: PoolTargets | None = None
        # Exchanges waiting for a member (woken by `Proxy.set_table`); typed loosely because the
        # exchange module imports this one.
        self.waiters: list[Any] = []
        # Where dispatches observe their wait for a member: the proxy's `ProxyStats.queue_wait` entry.
        self.queue_wait = queue_wait if queue_wait is not None else Histogram(QUEUE_WAIT_BUCKETS)

    def choose(self, now: float, exclude: tuple[Upstream[C], ...] = ()) -> Upstream[C] | None:
        """Least outstanding requests among two random healthy members (power of two choices).

        A member inside its slow-start window counts as busier in proportion to how new it is.
        When every member is ejected, all of them are candidates again (Envoy's panic routing):
        a degraded pool answers rather than refusing everything.
        """
        members = self.members
        n = len(members)
        if n == 1:
            m = members[0]
            return None if m in exclude else m
        if n == 0:
            return None
        if not exclude:
            # Common case first: two distinct random members, neither ejected.
            i = int(random() * n)
            j = int(random() * (n - 1))
            if j >= i:
                j += 1
            a, b = members[i], members[j]
            if a.ejected_until <= now and b.ejected_until <= now:
                return a if self._load(a, now) <= self._load(b, now) else b
        cands = [m for m in members if m.ejected_until <= now and m not in exclude]
        if not cands:
            cands = [m for m in members if m not in exclude]
            if not cands:
                return None
        if len(cands) == 1:
            return cands[0]
        a, b = sample(cands, 2)
        return a if self._load(a, now) <= self._load(b, now) else b

    def _load(self, m: Upstream[C], now: float) -> float:
        load = m.in_flight + 1.0
        if m.prewarmed:
            return load
        ss = self.conf.slow_start if self.conf else 0.0
        if ss > 0:
            age = now - m.routable_since
            if age < ss:
                load /= max(0.05, age / ss)
        return load

    def report_failure(self, m: Upstream[C], now: float) -> bool:
        """Count a failure of `m`; True when it ejects the member."""
        m.failures += 1
        conf = self.conf
        if conf and m.failures >= conf.eject_after and m.ejected_until <= now:
            m.ejections += 1
            backoff = min(conf.eject_max, conf.eject_base * (2 ** (m.ejections - 1)))
            m.ejected_until = now + backoff
            m.close_idle()
            log.warning("member.ejected", pool=self.name, member=m.id, failures=m.failures, seconds=backoff)
            return True
        return False

    @staticmethod
    def report_success(m: Upstream[Any]) -> None:
        if m.failures:
            m.failures = 0
            if m.ejected_until:
                m.ejected_until = 0.0
                m.ejections = 0
