"""Wiring for `warmfront run`: the one place that knows balancer/, pools/ and config/ together.

Data flows one way: pools publish their members → a routing table is built and swapped into the
proxy → the proxy writes counters → history and metrics read them. The proxy never waits on the
control loop.
"""
from __future__ import annotations

import asyncio
import gc
import math
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from balancer.control.history import History
from balancer.control.history_store import StoreError, open_store
from balancer.control.loop import ControlLoop
from balancer.control.resources import ResourceWatch
from balancer.control.replicas import ReplicaError, ReplicaSet, owner_of
from balancer.control.workers import WorkerSet, default_workers
from balancer.dataplane.access_log import resolve as access_log_path
from balancer.dataplane.proxy import make_ssl_context
from balancer.dataplane.routing import CompiledRoute, PoolTargets, RoutingTable, SourceExtractor, Target
from balancer.logs import configure_logging
from balancer.operator import routes
from balancer.operator.metrics import make_registry
from balancer.operator.requests import iso
from balancer.operator.server import admin_needs_token, make_admin_app, status_sources
from balancer.operator.state import Operator
from balancer.wiring.backends import Backends, BackendUnavailable
from balancer.wiring.reload import ReloadResult, reload_config
from config.loader import ConfigError
from config.models import Config, HealthCheck, Pool, Route, RoutingConfig
from pools.backends.base import Backend
from pools.manager import PoolManager
from pools.members import MemberState, MemberView, why_none_ready
from pools.ports import parse_hostport

log = structlog.get_logger("warmfront")

FIRST_PLAN_WAIT_S = 10.0   # longest start-up waits for the control loop's first plan
FLUSH_BEFORE_SAMPLE_S = 0.5   # longest a resource sample waits for the workers' counts


class StartupError(Exception):
    """warmfront cannot start as configured (the message says why)."""


def static_config(servers: list[tuple[str, int]], health_path: str | None = None, active: bool = True) -> Config:
    """`warmfront run --to HOST:PORT ...`: one static pool, one catch-all route, no files.

    Like `caddy reverse-proxy --to`, it just forwards: a server is routed from the start and checked
    only for accepting connections, or, given `health_path` (`--health-path`), for answering it with
    anything but a server error; `active=False` (`--no-health-check`) leaves it to passive ejection."""
    if health_path is not None and not health_path.startswith("/"):
        raise ConfigError("--health-path", 0, "-", f"must start with / (got {health_path!r})")
    health = (HealthCheck(type="tcp", enabled=active) if health_path is None else
              HealthCheck(type="http", path=health_path, expect_status="200-499", enabled=active))
    pool = Pool(backend="static", servers=[f"{h}:{p}" for h, p in servers], health=health)
    routing = RoutingConfig(routes=[Route(name="default", pool="default", type="default")])
    return Config(routing=routing, pools={"default": pool})


class App:
    def __init__(self, cfg: Config, listen: tuple[str, int] | None = None,
                 admin: tuple[str, int] | None = None, state_dir: str | None = None,
                 clock: Callable[[], float] = time.time, plan_interval: float = 5.0,
                 workers: int | None = None, log_level: str = "info", time_scale: float = 1.0,
                 backends: Backends | None = None, access_log: str | None = None, log_format: str | None = None):
        self.cfg = cfg
        # History, predictor and planner run on `clock` (the demo compresses time, tests stop it);
        # the proxy and the pool managers keep real time.
        self.clock = clock
        self.plan_interval = plan_interval
        r = cfg.routing
        self.listen = listen or parse_hostport(r.listen)
        self.admin_addr = admin or parse_hostport(r.admin.listen)
        self.state_dir = Path(state_dir or r.state_dir)
        self.worker_count = workers or r.workers or default_workers()
        self.log_level, self.log_format = log_level, log_format   # the workers log as the control process does
        try:   # `--access-log` over routing.yaml's; checked here so a bad path stops start-up once
            self.access_log = access_log_path(access_log or r.access_log)
        except OSError as e:
            raise StartupError(f"cannot open the access log: {e}") from None
        # `clock` seconds per real second: 1 live; the demo runs a day in minutes. Workers report
        # every 30 clock seconds or more often, so a batch blurs a minute's edge by half a minute at most.
        self.time_scale = time_scale
        self.report_interval = min(1.0, 30.0 / time_scale)
        self.instance_id = ""   # the owner of our members: read or created in the state dir at start
        self.replica_id = ""    # this process's identity: the instance id, or its own id in a replica set
        self.replicas: ReplicaSet | None = None   # one of several replicas (routing.yaml `replicas:`)
        self._control_tasks: list[asyncio.Task] = []   # the planner and the pool managers: the leader's part
        self.reloads = {"applied": 0, "rejected": 0}   # for /metrics
        self.started = time.time()
        self.token = os.environ.get(r.admin.token_env) or None
        if admin_needs_token(self.admin_addr[0]) and not self.token:
            raise StartupError(f"admin listener {self.admin_addr[0]}:{self.admin_addr[1]} is beyond "
                               f"loopback: set a bearer token in ${r.admin.token_env}")
        self.members: dict[str, list[MemberView]] = {name: [] for name in cfg.pools}
        self.tasks: list[asyncio.Task] = []
        self.backends = backends if backends is not None else Backends()   # which Backend runs a pool's members
        self.managers: dict[str, PoolManager] = {}
        self.control: ControlLoop | None = None
        self.resources: ResourceWatch | None = None   # members' CPU and memory, on the leader
        self.admin_runner: web.AppRunner | None = None

    # ---------------------------------------------------------------- the loop's one-way flow
    def build_table(self) -> RoutingTable:
        r = self.cfg.routing
        pools = {}
        for name, spec in self.cfg.pools.items():
            views = self.members.get(name, [])
            targets = tuple(Target(m.id, m.host, m.port, m.prewarmed) for m in views if m.state == MemberState.READY)
            unready = "" if targets else f'no ready member in pool "{name}" ({why_none_ready(views)})'
            # A failed static server comes back only through a check; a managed pool replaces its failed members.
            waits = not (spec.backend == "static" and views and all(m.state is MemberState.FAILED for m in views))
            pools[name] = PoolTargets.from_spec(name, spec, targets, unready, waits)
        return RoutingTable([CompiledRoute(rt) for rt in r.routes], SourceExtractor(r.sources), pools,
                            r.preserve_host)

    def on_members(self, pool: str, members: list[MemberView]) -> None:
        self.members[pool] = list(members)
        self.publish_table()
        if self.replicas is not None and self.replicas.leading:
            self.replicas.publish({name: views for name, views in self.members.items() if self.led(name)})

    def led(self, pool: str) -> bool:
        """Whether the pool is driven by the replica set's leader (else by every replica: static pools)."""
        spec = self.cfg.pools.get(pool)
        return spec is not None and spec.backend != "static"

    def drives(self, pool: str) -> bool:
        """Whether this process runs the pool's manager: always when alone; static pools on every replica,
        the others on the leader only."""
        return self.replicas is None or not self.led(pool) or self.replicas.leading

    def in_flight(self, member_id: str) -> int:
        """Requests in flight to a member through this replica's workers, and (leading) through the others."""
        local = self.workers.in_flight(member_id)
        return local + self.replicas.in_flight(member_id) if self.replicas is not None else local

    def _local_in_flight(self) -> dict[str, int]:
        return {m.id: self.workers.in_flight(m.id) for views in self.members.values() for m in views}

    def _follow(self, members: dict[str, list[MemberView]]) -> None:
        """A follower routes what the leader published for the pools the leader drives."""
        for pool, views in members.items():
            if self.led(pool):
                self.members[pool] = views
        self.publish_table()

    def publish_table(self) -> None:
        """Build the routing table from the config and the ready members; the workers get it."""
        self.table = self.build_table()
        self.workers.set_table(self.table)

    def status(self) -> dict[str, Any]:
        pools: dict[str, dict[str, Any]] = {}
        for name, spec in self.cfg.pools.items():
            members: list[dict[str, Any]] = []
            for m in self.members.get(name, ()):
                st = self.workers.member_stats(m.id)
                members.append({
                    "id": m.id, "state": m.state.value, "address": m.address,
                    "in_flight": st.in_flight if st else 0, "requests": st.requests if st else 0,
                    "ejected": bool(st and st.ejected_until > self.workers.now),
                    "prewarmed": m.prewarmed, "shadow_state": m.shadow_state, "reason": m.reason or None,
                })
            counts: dict[str, int] = {}
            for row in members:
                counts[row["state"]] = counts.get(row["state"], 0) + 1
            pools[name] = {
                "backend": spec.backend,
                "capacity": {"min": spec.capacity.min, "max": spec.capacity.max,
                             "target_utilization": spec.capacity.target_utilization},
                "shadow": {"state": spec.shadow.state, "size": spec.shadow.size},
                "counts": counts,
                "members": members,
            }
            if self.control is not None:
                pools[name].update(self.control.pool_status(name))
            if self.resources is not None and self.control is not None and spec.backend != "static":
                planned = self.control.pools.get(name)
                pools[name]["resources"] = self.resources.status(name, planned.demand if planned else (),
                                                                 planned.forecast if planned else ())
            manager = self.managers.get(name)
            pools[name]["lead_times_s"] = manager.lead_times() if manager is not None else {}
            pools[name]["recent_actions"] = [
                {"time": iso(a.time), "action": a.action, "member": a.member, "reason": a.reason}
                for a in list(manager.recent_actions)[-20:]] if manager is not None else []
        return {
            "instance": self.instance_id,
            "replica": self.replicas.status() if self.replicas is not None else None,
            "uptime_s": round(time.time() - self.started, 1),
            "listen": f"{self.listen[0]}:{self.listen[1]}",
            "workers": self.workers.status(),
            "pools": pools,
            "sources": status_sources(self.history, 86400),
            "models": self.control.model_status() if self.control is not None else [],
            "next_types": self.control.next_types() if self.control is not None else {},
        }

    # ---------------------------------------------------------------- lifecycle
    def _load_instance_id(self) -> str:
        """This warmfront's identity, kept in the state dir so a restart adopts its own members."""
        path = self.state_dir / "instance-id"
        try:
            value = path.read_text().strip()
            if value:
                return value
        except FileNotFoundError:
            pass
        value = "wf-" + secrets.token_hex(6)
        path.write_text(value + "\n")
        return value

    def open_history(self) -> History:
        """The request history the workers feed and the control loop reads: SQLite in the state
        dir, or the PostgreSQL database `history.url` names (a database that does not answer
        stops start-up here)."""
        h = self.cfg.routing.history
        try:
            return History(open_store(h.url, self.state_dir / "history.sqlite3"), h.max_sources, h.retention,
                           clock=self.clock, time_scale=self.time_scale)
        except StoreError as e:
            raise StartupError(str(e)) from None

    def _backend_for(self, name: str, spec: Pool) -> Backend:
        """The pool's backend, from the injected `Backends` (shared per kind and Docker daemon)."""
        self.backends.owner, self.backends.state_dir = self.instance_id, self.state_dir
        try:
            return self.backends.for_pool(name, spec, self.cfg)
        except BackendUnavailable as e:
            raise StartupError(str(e)) from None

    async def start(self) -> None:
        r = self.cfg.routing
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.replica_id = self._load_instance_id()
        # Replicas of one set own members together, so whichever leads adopts the others' members.
        self.instance_id = owner_of(r.replicas.name) if r.replicas is not None else self.replica_id
        self.history = self.open_history()
        if r.tls:
            make_ssl_context(r.tls.cert, r.tls.key)   # a bad certificate stops start-up here, not in every worker
        self.workers = WorkerSet(self.worker_count, self.listen, r.timeouts, r.limits, self.history,
                                 tls=(r.tls.cert, r.tls.key) if r.tls else None, log_level=self.log_level,
                                 report_interval=self.report_interval, access_log=self.access_log,
                                 log_format=self.log_format)
        self.workers.bind()
        self.listen = self.workers.listen
        self.publish_table()
        self.managers = {}
        self.operator = Operator(self, self.clock)
        self.control = ControlLoop(self.cfg, self.history, lambda: self.members, self.in_flight,
                                   self.managers, clock=self.clock, plan_interval=self.plan_interval,
                                   events=self.operator.events.book, controls=self.operator.controls,
                                   bound=self.operator.bound, time_scale=self.time_scale)
        registry = make_registry(lambda: self.workers.stats, lambda: self.members, self._control_status,
                                 lambda: self.workers.restarts, self._process_view)
        self.admin_runner = web.AppRunner(make_admin_app(self.operator.status, registry, self.token,
                                                         lambda web_app: routes.install(web_app, self.operator)),
                                          access_log=None, handle_signals=False)
        await self.admin_runner.setup()
        await web.TCPSite(self.admin_runner, self.admin_addr[0], self.admin_addr[1]).start()
        gc.freeze()   # see below: what was built so far lives as long as the process
        await self.workers.start()
        log.info("proxy.started", listen=f"{self.listen[0]}:{self.listen[1]}",
                 admin=f"{self.admin_addr[0]}:{self.admin_addr[1]}", tls=bool(r.tls),
                 state_dir=str(self.state_dir), workers=self.worker_count)

        if r.replicas is not None:
            self.replicas = ReplicaSet(
                r.history.url or "", r.replicas.name, self.replica_id,
                r.replicas.advertise or f"{self.listen[0]}:{self.listen[1]}", heartbeat=r.replicas.heartbeat,
                local_in_flight=self._local_in_flight)
            try:
                await self.replicas.open()
            except ReplicaError as e:
                raise StartupError(str(e)) from None
        for name, spec in self.cfg.pools.items():
            if self.drives(name):
                self.managers[name] = self.make_manager(name, spec)
        self.tasks.append(asyncio.create_task(self.history.run(r.history.flush_interval)))
        self.tasks.append(asyncio.create_task(self.operator.sample_loop()))
        # Static pools route at once, on every replica.
        for name, m in self.managers.items():
            if not self.led(name):
                self.tasks.append(asyncio.create_task(m.run()))
        if self.replicas is None:
            await self._start_control()
        else:   # the planner and the other managers start when (and while) this replica leads
            self.tasks.append(asyncio.create_task(self.replicas.run(self._lead, self._step_down, self._follow)))
        # What start-up built lives as long as the process: keep it out of the collector's full
        # passes, which run on whichever thread allocates (the proxy's too) and hold the GIL for
        # as long as they take (≈ 100 ms over a large heap).
        gc.freeze()

    async def _start_control(self) -> None:
        """The planner and the managers of the pools it drives. The first plan comes before the
        managers' first pass, so they start from the forecast; the step runs off the event loop (the
        proxy serves meanwhile), and a long replay of history does not hold the managers back past
        FIRST_PLAN_WAIT_S: they start from the baseline and follow the plan when it comes."""
        assert self.control is not None
        self.resources = ResourceWatch(self.cfg, self.history, self.managers, clock=self.clock,
                                       flush=lambda: self.workers.flush(timeout=FLUSH_BEFORE_SAMPLE_S))
        self.control.cpu_profile = self.resources.cpu_profile
        self._control_tasks.append(asyncio.create_task(self.resources.run()))
        first = asyncio.create_task(self.control.step())
        self._control_tasks.append(first)
        await asyncio.wait({first}, timeout=FIRST_PLAN_WAIT_S)
        self._control_tasks.append(asyncio.create_task(self.control.run()))   # its first step waits for `first`
        for name, m in self.managers.items():
            if self.led(name):
                self._control_tasks.append(asyncio.create_task(m.run()))

    async def _lead(self) -> None:
        """This replica took the set's lock: adopt the members (same owner), plan and drive the pools."""
        for name, spec in self.cfg.pools.items():
            if self.led(name) and name not in self.managers:
                manager = self.make_manager(name, spec)
                manager.adopt_ready = frozenset(m.id for m in self.members.get(name, ())
                                                if m.state is MemberState.READY)
                self.managers[name] = manager
        if self.replicas is not None:
            self.replicas.publish({name: views for name, views in self.members.items() if self.led(name)})
        self._control_tasks.append(asyncio.create_task(self._start_control()))

    async def _step_down(self) -> None:
        """The lock is lost: stop planning and acting at once, leave every member as it is (the next
        leader adopts them) and keep routing the last table until the next leader publishes."""
        tasks, self._control_tasks = self._control_tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        led = [name for name in self.managers if self.led(name)]
        for name in led:
            manager = self.managers.pop(name)
            manager.on_change = lambda pool, members: None   # stopping must not empty the routing table
            await manager.stop_all(keep=True)

    async def stop(self) -> None:
        """SIGTERM: stop accepting, finish in-flight requests, flush history, stop members."""
        log.info("proxy.stopping", pending=self.workers.pending())
        await self.workers.stop(grace=max([p.drain_timeout for p in self.cfg.pools.values()] + [5.0]))
        for t in self.tasks + self._control_tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, *self._control_tasks, return_exceptions=True)
        if self.resources is not None:
            await self.resources.close()
        # A replica with live peers leaves its members to the next leader, whatever the pool's on_exit says.
        keep = True if self.replicas is not None and self.replicas.live_peers() else None
        await asyncio.gather(*(m.stop_all(keep=keep if self.led(n) else None) for n, m in self.managers.items()),
                             return_exceptions=True)
        if self.replicas is not None:
            await self.replicas.close()
        await self._close_backends()
        self.history.close()
        self.operator.timeline.close()
        if self.admin_runner is not None:
            await self.admin_runner.cleanup()
        log.info("proxy.stopped")

    def make_manager(self, name: str, spec: Pool, retire_other_generations: bool = True) -> PoolManager:
        """A pool's manager, reaching the desired state the control loop publishes (its plan within
        the operator's overrides); it starts from the one published last."""
        return PoolManager(name, spec, self._backend_for(name, spec),
                           in_flight=self.in_flight, on_change=self.on_members,
                           desired=self.control.published if self.control is not None else None, wall_clock=self.clock,
                           retire_other_generations=retire_other_generations)

    async def reload(self) -> ReloadResult:
        """SIGHUP and POST /admin/reload: see balancer.wiring.reload."""
        try:
            result = await reload_config(self)
        except Exception:
            self.reloads["rejected"] += 1
            raise
        self.reloads["applied"] += 1
        return result

    def _process_view(self) -> dict[str, Any]:
        """What /metrics reads of the control process besides the data plane's counters."""
        pools_of: dict[str, list[str]] = {}
        for route in self.cfg.routing.routes:
            pools_of.setdefault(route.type, []).append(route.pool)
        errors: dict[tuple[str, str], list[float]] = {}
        for row in self.control.model_status() if self.control is not None else []:
            for pool in pools_of.get(row["type"], ()):
                for horizon, e in row["errors"].items():
                    mase = e.get("mase") if isinstance(e, dict) else None
                    if mase is not None and math.isfinite(mase) and e.get("scored", 1) > 0:
                        errors.setdefault((pool, horizon), []).append(float(mase))
        return {"workers": {w["slot"]: w["pid"] for w in self.workers.status()},
                "reloads": self.reloads,
                "check_failures": {name: dict(m.check_failures) for name, m in self.managers.items()},
                "forecast_errors": errors,
                "resources": self.resources.metrics() if self.resources is not None else {}}

    def _control_status(self) -> dict[str, dict[str, Any]]:
        if self.control is None:
            return {}
        return {name: self.control.pool_status(name) for name in self.cfg.pools}

    async def _close_backends(self) -> None:
        await self.backends.close()


async def _serve(app: App) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload_on_signal(app)))
    except BaseException:
        await _teardown_partial(app)
        raise
    await stop.wait()
    await app.stop()


async def _reload_on_signal(app: App) -> None:
    try:
        await app.reload()
    except Exception as e:  # ConfigError and friends: logged, the running config stays
        log.error("config.reload_rejected", error=str(e), signal="SIGHUP")


async def _teardown_partial(app: App) -> None:
    for t in app.tasks + app._control_tasks:
        t.cancel()
    workers = getattr(app, "workers", None)
    if workers is not None:
        await workers.stop(grace=0)
    for m in app.managers.values():
        await m.stop_all()
    await app._close_backends()
    if app.replicas is not None:
        await app.replicas.close()
    if app.admin_runner is not None:
        await app.admin_runner.cleanup()


def run_forever(cfg: Config, listen=None, admin=None, state_dir=None, log_level: str = "info",
                workers: int | None = None, access_log: str | None = None, log_format: str | None = None) -> int:
    import uvloop

    configure_logging(log_level, json=None if log_format is None else log_format == "json")
    try:
        app = App(cfg, listen, admin, state_dir, workers=workers, log_level=log_level, access_log=access_log,
                  log_format=log_format)
        uvloop.run(_serve(app))
    except StartupError as e:
        print(f"warmfront: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"warmfront: cannot listen: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:   # the data-plane workers did not start
        print(f"warmfront: {e}", file=sys.stderr)
        return 1
    return 0
