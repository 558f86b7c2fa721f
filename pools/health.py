"""Active health checks (HTTP over one shared aiohttp session, or a TCP connect) and warm-up requests."""
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


@dataclass(frozen=True, slots=True)
class Probe:
    """One check's outcome and what it saw: the HTTP status, or why there was none."""
    ok: bool
    status: int | None = None
    error: str | None = None
    latency_ms: float = 0.0

    def describe(self, check: HealthCheck) -> str:
        """What was asked and what came back, for logs and 503 bodies: `GET /healthz -> 404`."""
        asked = f"GET {check.path}" if check.type == "http" else "TCP connect"
        return f"{asked} -> {self.status if self.status is not None else self.error}"


def _error(e: BaseException, timeout: float) -> str:
    cause = getattr(e, "os_error", None) or e   # aiohttp wraps the socket's error
    if isinstance(cause, (TimeoutError, asyncio.TimeoutError)):
        return f"no answer within {timeout:g}s"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    return f"{type(cause).__name__}: {cause}"


class Checker(Protocol):
    """What a PoolManager asks of its health checker: `HealthChecker` over HTTP, or
    `pools.backends.simulated.SimulatedHealth` on a virtual clock."""

    async def probe(self, host: str, port: int, check: HealthCheck) -> Probe: ...

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

    async def probe(self, host: str, port: int, check: HealthCheck) -> Probe:
        """One check: a GET of the health path, healthy when its status is in `expect_status`; or,
        for `tcp`, a connection opened and closed."""
        started = time.monotonic()
        status = None
        try:
            if check.type == "tcp":
                async with asyncio.timeout(check.timeout):
                    _, writer = await asyncio.open_connection(host, port)
                writer.close()
            else:
                async with self._client().get(f"http://{host}:{port}{check.path}", allow_redirects=False,
                                              timeout=aiohttp.ClientTimeout(total=check.timeout)) as r:
                    await r.read()
                    status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            return Probe(False, error=_error(e, check.timeout), latency_ms=_since(started))
        low, high = check.healthy_statuses
        return Probe(status is None or low <= status <= high, status, latency_ms=_since(started))

    async def wait_healthy(self, host: str, port: int, check: HealthCheck, deadline: float,
                           clock: Callable[[], float] = time.monotonic) -> bool:
        """Probe until `healthy_threshold` consecutive successes, or False once `deadline` (clock time) passes."""
        tracker = HealthTracker.for_check(check)
        while clock() < deadline:
            if tracker.observe((await self.probe(host, port, check)).ok):
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


def _since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
