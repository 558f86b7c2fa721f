"""Active health checks and warm-up requests against members, over one shared aiohttp session."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from config.models import HealthCheck, Warmup

# Between probes while a member boots: short, so a fresh member is routable soon after it listens.
BOOT_PROBE_INTERVAL = 0.02


@dataclass(slots=True)
class HealthTracker:
    """Consecutive-result thresholds turning single probes into a verdict (None until decided)."""
    healthy_threshold: int
    unhealthy_threshold: int
    healthy: bool | None = None
    successes: int = 0
    failures: int = 0

    @classmethod
    def for_check(cls, check: HealthCheck, healthy: bool | None = None) -> HealthTracker:
        return cls(max(1, check.healthy_threshold), max(1, check.unhealthy_threshold), healthy)

    def observe(self, ok: bool) -> bool | None:
        """Record one probe; return the new verdict when it changes, else None."""
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.healthy is not True and self.successes >= self.healthy_threshold:
                self.healthy = True
                return True
        else:
            self.failures, self.successes = self.failures + 1, 0
            if self.healthy is not False and self.failures >= self.unhealthy_threshold:
                self.healthy = False
                return False
        return None


class Checker(Protocol):
    """What a PoolManager asks of its health checker: `HealthChecker` over HTTP, or
    `pools.backends.simulated.SimulatedHealth` on a virtual clock."""

    async def probe(self, host: str, port: int, check: HealthCheck) -> bool: ...

    async def wait_healthy(self, host: str, port: int, check: HealthCheck, deadline: float,
                           clock: Callable[[], float]) -> bool: ...

    async def warm(self, host: str, port: int, warmup: Warmup, timeout: float) -> int: ...

    async def close(self) -> None: ...


class HealthChecker:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No keep-alive: a pooled connection to a member that was paused or replaced would
            # report on the past, not on the member as it is now.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=True))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def probe(self, host: str, port: int, check: HealthCheck) -> bool:
        """One GET of the health path; 2xx and 3xx count as healthy."""
        try:
            async with self._client().get(f"http://{host}:{port}{check.path}", allow_redirects=False,
                                          timeout=aiohttp.ClientTimeout(total=check.timeout)) as r:
                await r.read()
                return 200 <= r.status < 400
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def wait_healthy(self, host: str, port: int, check: HealthCheck, deadline: float,
                           clock: Callable[[], float] = time.monotonic) -> bool:
        """Probe until `healthy_threshold` consecutive successes, or False once `deadline` (clock time) passes."""
        tracker = HealthTracker.for_check(check)
        while clock() < deadline:
            if tracker.observe(await self.probe(host, port, check)):
                return True
            await asyncio.sleep(BOOT_PROBE_INTERVAL)
        return False

    async def warm(self, host: str, port: int, warmup: Warmup, timeout: float) -> int:
        """Send the warm-up requests one after another; return how many got a non-5xx answer.
        Connection failures raise: a member that cannot take warm-up traffic is not healthy."""
        answered = 0
        for _ in range(warmup.requests):
            async with self._client().get(f"http://{host}:{port}{warmup.path}", allow_redirects=False,
                                          timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                await r.read()
                answered += r.status < 500
        return answered
