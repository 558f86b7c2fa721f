"""Which backend object runs a pool's members: one per kind (and per Docker daemon or Swarm manager),
shared by the pools using it, made on first use and closed at shutdown.

`App` takes a `Backends` (default: this one, making the real backends from the config); a test
or a simulation passes one whose `make` returns its own `Backend` (pools.backends.base) instead.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from config.models import Config, Pool
from pools.backends.base import Backend

Key = tuple[str, ...]
Make = Callable[[Key, Config], Backend]


class BackendUnavailable(Exception):
    """A pool asks for a backend this build cannot run."""


def backend_key(name: str, spec: Pool) -> Key:
    if spec.backend in ("process", "static"):
        return (spec.backend,)
    if spec.backend == "docker" and spec.docker is not None:
        return ("docker", spec.docker.host or "")
    if spec.backend == "swarm" and spec.swarm is not None:
        return ("swarm", spec.swarm.host or "")
    raise BackendUnavailable(f"pools.{name}.backend: {spec.backend!r} is not available yet")


class Backends:
    def __init__(self, make: Make | None = None) -> None:
        self.made: dict[Key, Backend] = {}
        self.retired: list[Backend] = []
        self.owner = ""                    # the instance id, set by the App before the first pool
        self.state_dir = Path(".")
        self._make = make

    def for_pool(self, name: str, spec: Pool, cfg: Config) -> Backend:
        key = backend_key(name, spec)
        if key not in self.made:
            self.made[key] = (self._make or self.make)(key, cfg)
        return self.made[key]

    def make(self, key: Key, cfg: Config) -> Backend:
        if key[0] == "process":
            from pools.backends.process import ProcessBackend
            return ProcessBackend(owner=self.owner, log_dir=self.state_dir / "members")
        if key[0] == "static":
            from pools.backends.static import StaticBackend
            return StaticBackend({n: p.servers for n, p in cfg.pools.items() if p.backend == "static"})
        if key[0] == "swarm":
            from pools.backends.swarm import SwarmBackend
            return SwarmBackend(owner=self.owner, base_url=key[1] or None)
        from pools.backends.docker import DockerBackend
        return DockerBackend(owner=self.owner, base_url=key[1] or None)

    def renew_static(self) -> None:
        """The static backend holds the server lists: a reload that changes them builds a new one
        (the old object is kept for closing at shutdown)."""
        old = self.made.pop(("static",), None)
        if old is not None:
            self.retired.append(old)

    def all(self) -> list[Backend]:
        return [*self.made.values(), *self.retired]

    async def close(self) -> None:
        for b in self.all():
            close = getattr(b, "close", None)
            if close is not None and inspect.isawaitable(result := close()):
                await result
