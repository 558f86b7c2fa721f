"""The operator's state: source controls, the event feed and the member timeline, and what the
resources (balancer.operator.routes) compute from them and from the `Host` they serve.

The Host (the App) owns everything read here (config, members, managers, history, control loop).
Every refusal is an `ApiError`, answered as JSON with a message; nothing returns a 5xx for bad input.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from balancer.control.history import MinuteRow
from balancer.control.history_store import StoreError
from balancer.operator.costs import GIB, PoolResources
from balancer.operator.controls import Bounded, Controls, Release, constrain, override_json
from balancer.operator.eventfeed import EventFeed
from balancer.operator.host import Host
from balancer.operator.requests import iso
from balancer.operator.server import ApiError
from balancer.operator.timeline import MemberTimeline, sample
from config.events import EVENTS_FILE
from pools.reconciler import Desired
from predictor.events import Event

log = structlog.get_logger(__name__)

SAMPLE_INTERVAL = 5.0


class Operator:
    def __init__(self, app: Host, clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.clock = clock
        cfg = app.cfg
        self.controls = Controls(app.state_dir / "sources.json", clock)
        self.controls.on_override = self.republish
        self.release = Release()
        self.bounded: dict[str, tuple[Bounded, float | None]] = {}   # pool -> its last bound, and until a release holds
        self.events = EventFeed(Path(cfg.directory) / EVENTS_FILE if cfg.directory else None,
                                app.state_dir / "events.json")
        self.events.replace_yaml(self.events.read_yaml())
        self.timeline = MemberTimeline(path=app.state_dir / "timeline.sqlite3", retention=cfg.routing.history.retention)

    # ---------------------------------------------------------------- hooks for the App
    def bound(self, pool: str, desired: Desired) -> Desired:
        """The control loop's plan for `pool` bounded by manual overrides and maintenance events:
        applied as the loop publishes its desired state (ControlLoop.bound). A bound that ends lets
        go of what it raised the pool to after the pool's scale_down_delay, as a planner decrease does."""
        override, maintenance = self.controls.active_override(pool), self.maintenance(pool)
        bounded = constrain(desired, override, maintenance)
        spec = self.app.cfg.pools.get(pool)
        delay = spec.scaling.scale_down_delay if spec is not None else 0.0
        held, until = self.release.held(pool, self.clock(), delay, bounded)
        if held:
            bounded = constrain(desired, override, maintenance, held)
        self.bounded[pool] = (bounded, until)
        return bounded.desired

    def republish(self) -> None:
        """An override changed: publish the desired state with it now, not at the next step."""
        if self.app.control is not None:
            self.app.control.publish()

    def maintenance(self, pool: str) -> list[Event]:
        now = self.clock()
        return [e for e in self.events.book.matching({"pool": pool}, now, math.nextafter(now, math.inf))
                if e.kind == "maintenance"]

    def status(self) -> dict[str, Any]:
        """App.status() plus what the operator set: overrides, opted-out sources, events."""
        st = self.app.status()
        for name, pool in st.get("pools", {}).items():
            pool["override"] = self.override_json(name)
            # `desired` is what the pool is driven to, bounds applied; the planner's own is `planned`
            pool["planned"] = pool.pop("desired", None)
            pool["desired"] = self.desired_json(name)
            for anomaly in pool.get("anomalies", ()):
                anomaly["start"] = iso(anomaly["start"])
        for s in st.get("sources", []):
            s["predictive"] = self.controls.predictive(s.get("source", ""))
        replica = st.get("replica")
        if replica is not None and replica.get("leading_since") is not None:
            replica["leading_since"] = iso(replica["leading_since"])
        st["events"] = [self.event_json(e) for e in self.events.book.list()]
        if self.events.skipped:
            st["events_skipped"] = self.events.skipped
        return st

    def override_json(self, pool: str) -> dict[str, Any] | None:
        """The pool's override with what it drives the pool to (`effective`, `shadowed_by`)."""
        bounded, _ = self.bounded.get(pool, (None, None))
        return override_json(self.controls.active_override(pool), bounded)

    def desired_json(self, pool: str) -> dict[str, Any] | None:
        """What the pool is driven to as last published, and what set its ready count (`set_by`: null
        for the plan, `override`, `event:NAME`, `capacity.max`, or `scale_down_delay` with
        `held_until` while a released bound is let go). None for a pool the loop does not drive."""
        if pool not in self.bounded:
            return None
        bounded, until = self.bounded[pool]
        return {"ready": bounded.desired.ready, "shadow": bounded.desired.shadow, "set_by": bounded.by,
                "held_until": iso(until) if until is not None else None}

    def sample_members(self) -> None:
        now = self.clock()
        for name, spec in self.app.cfg.pools.items():
            plan = self._plan(name)
            self.timeline.add(name, sample(now, self.app.members.get(name, ()), spec.capacity.min,
                                           plan.predictive if plan is not None else 0))

    async def sample_loop(self, interval: float = SAMPLE_INTERVAL) -> None:
        while True:
            self.sample_members()
            await asyncio.sleep(interval)

    def _plan(self, name: str):
        control = self.app.control
        try:
            return control.plan_of(name) if control is not None else None
        except KeyError:
            return None

    def pool_named(self, request: web.Request) -> str:
        name = request.match_info["name"]
        if name not in self.app.cfg.pools:
            raise ApiError(404, f"no pool named {name!r}")
        return name

    def within_capacity(self, pool: str, key: str, count: int | None) -> None:
        limit = self.app.cfg.pools[pool].capacity.max
        if count is not None and count > limit:
            raise ApiError(400, f"{key}: must be at most {limit}, the capacity.max of pool {pool!r} (got {count})",
                           key=key)

    def pools_of_type(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for route in self.app.cfg.routing.routes:
            pools = out.setdefault(route.type, [])
            if route.pool not in pools:
                pools.append(route.pool)
        return out

    async def _minute_rows(self, since: float, until: float) -> list[MinuteRow]:
        """History's rows in [since, until), read in a worker thread: a day of minutes (and, on a
        shared PostgreSQL history, a network round trip) must not hold the proxy's control loop."""
        self.app.history.seal()   # what is counted so far becomes readable off the loop thread
        return await asyncio.to_thread(self.app.history.minute_rows, since, until, False)

    async def requests_by_pool_source(self, since: float, until: float) -> dict[str, dict[str, int]]:
        pools_of = self.pools_of_type()
        out: dict[str, dict[str, int]] = {}
        for row in await self._minute_rows(since, until):
            for pool in pools_of.get(row.type, ()):
                by_source = out.setdefault(pool, {})
                by_source[row.source] = by_source.get(row.source, 0) + row.requests
        return out

    async def requests_by_pool_source_type(self, since: float, until: float) -> dict[str, dict[str, dict[str, int]]]:
        """Per pool, per source, requests per type in [since, until)."""
        pools_of = self.pools_of_type()
        out: dict[str, dict[str, dict[str, int]]] = {}
        for row in await self._minute_rows(since, until):
            for pool in pools_of.get(row.type, ()):
                by_type = out.setdefault(pool, {}).setdefault(row.source, {})
                by_type[row.type] = by_type.get(row.type, 0) + row.requests
        return out

    async def pool_resources(self, since: float, until: float) -> dict[str, PoolResources]:
        """Per managed pool: its members' limits, what they used in [since, until) as the history store
        holds it (per minute, written by balancer.control.resources), and the per-type CPU estimates."""
        try:
            rows = await asyncio.to_thread(self.app.history.usage, None, since, until)
        except StoreError as e:
            log.warning("costs.usage_unreadable", error=str(e))
            rows = {}
        used: dict[str, list[float]] = {}
        for (_, pool), row in rows.items():
            acc = used.setdefault(pool, [0.0, 0.0])
            acc[0] += row[0]
            acc[1] += row[2] / GIB
        watch = self.app.resources
        out: dict[str, PoolResources] = {}
        for name, spec in self.app.cfg.pools.items():
            if spec.backend == "static":
                continue
            section = spec.docker if spec.backend == "docker" else spec.swarm if spec.backend == "swarm" else None
            cpus = float(section.cpus) if section is not None and section.cpus is not None else None
            memory = int(section.memory) if section is not None and section.memory is not None else None
            applied = watch.applied(name) if watch is not None else None
            if applied is not None:
                cpus = applied.cpus if applied.cpus is not None else cpus
                memory = applied.memory_bytes if applied.memory_bytes is not None else memory
            costs = dict(watch.cpu_profile(name)[0]) if watch is not None else {}
            if name in used or cpus or memory:
                core_s, gib_s = used.get(name, (0.0, 0.0))
                out[name] = PoolResources(cpus, memory, core_s, gib_s, costs)
        return out

    async def usage_by_pool_minute(self, since: float, until: float) -> dict[str, dict[int, tuple[float, float]]]:
        """Per pool, per minute start: the mean (cores, GiB) its members used (the history store's rows)."""
        try:
            rows = await asyncio.to_thread(self.app.history.usage, None, since, until)
        except StoreError as e:
            log.warning("dashboard.usage_unreadable", error=str(e))
            return {}
        out: dict[str, dict[int, tuple[float, float]]] = {}
        for (minute, pool), row in rows.items():
            out.setdefault(pool, {})[int(minute)] = (row[0] / 60.0, row[2] / 60.0 / GIB)
        return out

    async def requests_by_pool_minute(self, since: float, until: float) -> dict[str, dict[int, int]]:
        pools_of = self.pools_of_type()
        out: dict[str, dict[int, int]] = {}
        for row in await self._minute_rows(since, until):
            for pool in pools_of.get(row.type, ()):
                by_minute = out.setdefault(pool, {})
                by_minute[row.minute] = by_minute.get(row.minute, 0) + row.requests
        return out

    def traffic_by_source(self, since: float) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.app.history.summary(since):
            out[s.source] = out.get(s.source, 0) + s.requests
        return out

    def event_json(self, e: Event) -> dict[str, Any]:
        return {"name": e.name, "kind": e.kind, "start": iso(e.start), "end": iso(e.end),
                "scope": {e.scope_key: e.scope_value}, "multiplier": e.multiplier,
                "learned_multiplier": None if e.multiplier is not None else self.events.book.uplift(e.kind),
                "pin": e.pin, "drain": e.drain, "origin": self.events.origin(e.name)}

