"""What the operator surface reads from the process it serves, and the one refusal it maps.

The App (balancer.wiring.app) satisfies `Host`; the operator modules never import the wiring, so
data and imports flow one way: wiring → operator → control and data plane values.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from balancer.control.history import History
from balancer.control.loop import ControlLoop
from balancer.control.resources import ResourceWatch
from config.models import Config
from pools.manager import PoolManager
from pools.members import MemberView


class ReloadRefused(Exception):
    """A reload that cannot be applied as asked (no config directory to re-read)."""


class Host(Protocol):
    """Read-only views of the App: the operator never replaces them."""

    @property
    def cfg(self) -> Config: ...
    @property
    def state_dir(self) -> Path: ...
    @property
    def token(self) -> str | None: ...
    @property
    def history(self) -> History: ...
    @property
    def control(self) -> ControlLoop | None: ...
    @property
    def resources(self) -> ResourceWatch | None: ...
    @property
    def managers(self) -> Mapping[str, PoolManager]: ...
    @property
    def members(self) -> Mapping[str, Sequence[MemberView]]: ...

    def status(self) -> dict[str, Any]: ...

    async def reload(self) -> Any: ...
