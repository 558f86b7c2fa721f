"""An asyncio event loop on a virtual clock: `warmfront simulate` runs the real `PoolManager` in it.

`loop.time()` is virtual. When nothing is ready to run, the loop jumps its clock to the next timer
instead of waiting for it, so `asyncio.sleep(60)` costs no real time and a 27-day replay takes as
long as its callbacks do. Work handed to a thread (`asyncio.to_thread`, `run_in_executor`) runs at
once, inline: it takes no virtual time, and nothing can race the clock. There is no I/O: a
coroutine that waits on a socket, or on nothing at all, is a deadlock and raises.
"""
from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, TypeVar, TypeVarTuple, Unpack

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class _JumpSelector(selectors.SelectSelector):
    """Never waits: `select(timeout)` moves the loop's clock `timeout` ahead and reports no I/O."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list:
        if timeout is None:
            raise RuntimeError("virtual clock: nothing is scheduled and nothing is ready (a deadlock)")
        if timeout > 0:
            self._loop.advance(timeout)
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        super().__init__(_JumpSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def run_in_executor(self, executor: Executor | None, func: Callable[[Unpack[Ts]], T],
                        *args: Unpack[Ts]) -> asyncio.Future[T]:
        fut: asyncio.Future[T] = self.create_future()
        try:
            fut.set_result(func(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine, as an executor would
            fut.set_exception(e)
        return fut


def run_virtual(main: Coroutine[Any, Any, T], start: float = 0.0) -> T:
    """Run `main` to completion on a fresh virtual-clock loop starting at `start`."""
    loop = VirtualClockLoop(start)
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
