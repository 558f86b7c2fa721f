"""Hot reload (SIGHUP, POST /admin/reload): re-read the YAML and apply it without dropping a request.

Everything is read and validated before anything changes: an invalid file raises the loader's
ConfigError (file:line: key) and the running config stays. A valid one is applied in one step on
the event loop — the new routing table is swapped in atomically — and then pools catch up:

- a pool whose members would be built differently (backend, command, image, env, health, warm-up)
  rolls: a new PoolManager starts beside the old one, the old members keep serving until the new
  pool has as many ready members as it needs (its `capacity.min`, at most as many as were ready),
  then they leave routing and drain (in-flight requests finish, up to `drain_timeout`) and stop;
- a pool whose other settings changed (capacity, scaling, shadow, timeouts) is retuned in place;
- a removed pool drains and stops; an added pool starts.

Listen addresses, the state dir, the number of workers, the access log, TLS and history settings
need a restart; they are reported.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Protocol

import structlog

from balancer.control.loop import ControlLoop
from balancer.control.resources import ResourceWatch
from balancer.control.workers import WorkerSet
from balancer.operator.host import ReloadRefused
from balancer.operator.state import Operator
from balancer.wiring.backends import Backends
from config.loader import load_config
from config.models import Config, Pool
from pools.backends.base import MEMBER_FIELDS
from pools.manager import PoolManager
from pools.members import MemberState, MemberView

log = structlog.get_logger(__name__)

RESTART_FIELDS = ("listen", "admin", "state_dir", "workers", "access_log", "tls", "history")
ROLL_POLL = 0.1


class App(Protocol):
    """What a reload reads and replaces of the running app (balancer.wiring.app.App), so this
    module does not import the app that calls it."""
    cfg: Config
    operator: Operator
    backends: Backends
    managers: dict[str, PoolManager]
    members: dict[str, list[MemberView]]
    tasks: list[asyncio.Task]
    control: ControlLoop | None
    resources: ResourceWatch | None
    workers: WorkerSet

    def publish_table(self) -> None: ...

    def on_members(self, pool: str, members: list[MemberView]) -> None: ...

    def make_manager(self, name: str, spec: Pool, retire_other_generations: bool = True) -> PoolManager: ...

    def drives(self, pool: str) -> bool: ...


@dataclass(slots=True)
class ReloadResult:
    directory: str
    routes: int
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rolled: list[str] = field(default_factory=list)
    retuned: list[str] = field(default_factory=list)
    events: int = 0
    restart_needed: list[str] = field(default_factory=list)


def restart_fields(old: Config, new: Config) -> list[str]:
    return [f for f in RESTART_FIELDS if getattr(old.routing, f) != getattr(new.routing, f)]


def needs_roll(old: Pool, new: Pool) -> bool:
    return any(getattr(old, f) != getattr(new, f) for f in MEMBER_FIELDS)


async def reload_config(app: App) -> ReloadResult:
    directory = app.cfg.directory
    if directory is None:
        raise ReloadRefused("no config directory to reload: warmfront was started with --to")
    new = load_config(directory)            # ConfigError: nothing has changed yet
    events = app.operator.events.read_yaml()
    old = app.cfg
    result = ReloadResult(directory, len(new.routing.routes), events=len(events))
    result.restart_needed = restart_fields(old, new)
    result.added = [n for n in new.pools if n not in old.pools]
    result.removed = [n for n in old.pools if n not in new.pools]
    common = [n for n in new.pools if n in old.pools and old.pools[n] != new.pools[n]]
    result.rolled = [n for n in common if needs_roll(old.pools[n], new.pools[n])]
    result.retuned = [n for n in common if n not in result.rolled]

    # From here on, no await until the table is swapped: requests see the old table or the new one.
    app.cfg = new
    app.operator.events.replace_yaml(events)
    # A rolled pool's old and new managers share the backend: members carry the generation of the
    # spec they were built from (pools.backends.base.member_generation) and each manager adopts only
    # its own. Static servers carry no labels; the static backend holds the server lists, so it is
    # rebuilt from the new config (the old object is kept for closing at shutdown).
    if any(new.pools[n].backend == "static" for n in result.rolled + result.added):
        app.backends.renew_static()
    # A follower of a replica set runs no manager for the pools the leader drives: for those it only
    # takes the new config (the leader rolls them; the follower routes what the leader publishes).
    for name in result.retuned:
        if name in app.managers:
            app.managers[name].spec = new.pools[name]
            app.managers[name].wake()
    outgoing: dict[str, PoolManager] = {}
    for name in result.rolled + result.removed:
        if name in app.managers:
            outgoing[name] = app.managers.pop(name)
    for name in result.added + result.rolled:
        app.members.setdefault(name, [])
        if not app.drives(name):
            continue
        # While a pool rolls, the outgoing manager drains the old generation's members.
        app.managers[name] = app.make_manager(name, new.pools[name], retire_other_generations=name not in outgoing)
    for name, manager in outgoing.items():
        manager.retire_other_generations = False   # the new generation's members belong to the new manager
        incoming = app.managers.get(name)
        app.tasks.append(asyncio.create_task(_roll(app, name, manager, incoming)))
    for name in result.added + result.rolled:
        if name in app.managers:
            app.tasks.append(asyncio.create_task(app.managers[name].run()))
    if app.control is not None:
        app.control.reconfigure(new)
        if app.resources is not None:
            app.resources.reconfigure(new)
    app.publish_table()
    log.info("config.reloaded", directory=directory, added=result.added, removed=result.removed,
             rolled=result.rolled, retuned=result.retuned, restart_needed=result.restart_needed)
    return result


async def _roll(app: App, name: str, old: PoolManager, new: PoolManager | None) -> None:
    """Serve from the old members until the new ones are ready, then drain and stop the old ones."""
    outgoing: list[MemberView] = old.members()
    draining = False

    def publish() -> None:
        shown = [replace(m, state=MemberState.DRAINING) if draining else m for m in outgoing]
        if new is None and not shown:
            app.members.pop(name, None)
            app.publish_table()
            return
        app.on_members(name, (new.members() if new is not None else []) + shown)

    def on_old(pool: str, members: list[MemberView]) -> None:
        outgoing[:] = members
        publish()

    old.on_change = on_old
    if new is not None:
        new.on_change = lambda pool, members: publish()
    publish()
    try:
        if new is not None:
            was_ready = sum(m.state is MemberState.READY for m in outgoing)
            need = min(new.spec.capacity.min, was_ready)
            while sum(m.state is MemberState.READY for m in new.members()) < need:
                await asyncio.sleep(ROLL_POLL)
        draining = True
        publish()
        log.info("pool.rolling", pool=name, draining=[m.id for m in outgoing])
        deadline = time.monotonic() + old.spec.drain_timeout
        while any(app.workers.in_flight(m.id) for m in outgoing) and time.monotonic() < deadline:
            await asyncio.sleep(ROLL_POLL)
    finally:
        await old.stop_all(keep=False)
        if new is not None:
            new.retire_other_generations = True   # anything of the old generation left is now stale
        outgoing.clear()
        publish()
        log.info("pool.rolled", pool=name)
