"""`warmfront demo`: a compressed day of traffic through warmfront, shown live.

It starts warmfront in-process in front of a pool of the demo backend (Docker containers of
`warmfront-testapp:latest` when an engine is reachable and the image exists, else local
processes), seeds two past days of history with the same daily shape, and drives real HTTP on
loopback: a gentle daily wave, a ramp at 09:00 that history knows about, and a burst at 12:00
that it does not. Every second it prints the simulated time, the actual and forecast rate and
the members ready and in shadow, so the shadows can be seen appearing before the ramp.

Time is compressed (default 1 real second = 5 simulated minutes): history, predictor and planner
run on a simulated clock; the proxy, members and requests are real. A request's real latency
spans `speed` times as many simulated seconds, so the history records it so scaled: Little's law
in simulated time then asks for the members the real load needs.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import numpy as np
import structlog

from balancer.wiring.app import App
from balancer.control.history import History
from balancer.logs import configure_logging
from config.models import Config, Pool, Route, RouteMatch, RoutingConfig, SourceRule
from pools.members import MemberState
from pools.ports import free_port

DAY = 86400.0
HOUR = 3600.0
START_TOD = 8 * HOUR             # the demo's simulated day starts at 08:00
RAMP_TOD = 9 * HOUR              # known from history: forecast, pre-warmed
BURST_TOD = 12 * HOUR            # not in history: met by the burst tier
WORK_S = 0.02                    # the demo backend's work per /api request
IMAGE = "warmfront-testapp:latest"
MAX_OUTSTANDING = 64             # the load generator's concurrency bound
LIVE_STATES = (MemberState.LAUNCHING, MemberState.WARMING, MemberState.SHADOW, MemberState.READY,
               MemberState.DRAINING)


@dataclass(frozen=True, slots=True)
class Pattern:
    """Requests per real second at a simulated time of day."""
    base: float = 15.0
    ramp: float = 200.0
    burst: float = 150.0

    def rate(self, t: float, with_burst: bool = True) -> float:
        tod = t % DAY
        wave = self.base * (1.0 + 0.3 * math.sin(2 * math.pi * (tod - 6 * HOUR) / DAY))
        since = tod - RAMP_TOD
        ramp = 0.0
        if 0 <= since < 15 * 60:                 # up over 15 minutes
            ramp = self.ramp * since / (15 * 60)
        elif 15 * 60 <= since < 2 * HOUR:        # plateau
            ramp = self.ramp
        elif 2 * HOUR <= since < 2.5 * HOUR:     # down over 30 minutes
            ramp = self.ramp * (1 - (since - 2 * HOUR) / (0.5 * HOUR))
        burst = self.burst if with_burst and BURST_TOD <= tod < BURST_TOD + 15 * 60 else 0.0
        return wave + ramp + burst


@dataclass(slots=True)
class Summary:
    backend: str
    simulated_hours: float
    requests: int = 0
    errors: int = 0
    cold_requests: int = 0               # arrived when every ready member's concurrency was in use
    member_minutes: float = 0.0          # simulated minutes of live members (ready, shadow, booting, draining)
    ready_member_minutes: float = 0.0
    max_ready: int = 0
    max_shadow: int = 0
    prewarmed_before_ramp_s: float | None = None   # simulated seconds between the first shadow and the ramp


class SimClock:
    """Simulated seconds: `start` at the moment `begin()` is called, then `speed` per real second."""

    def __init__(self, start: float, speed: float) -> None:
        self.start, self.speed = start, speed
        self._t0 = time.monotonic()

    def begin(self) -> None:
        self._t0 = time.monotonic()

    def __call__(self) -> float:
        return self.start + (time.monotonic() - self._t0) * self.speed


def docker_available() -> bool:
    try:
        import docker
        client = docker.from_env(timeout=3)
        try:
            client.ping()
            client.images.get(IMAGE)
            return True
        finally:
            client.close()
    except Exception:   # no SDK, no engine, no image: all mean "use processes"
        return False


def demo_config(backend: str, state_dir: Path) -> Config:
    common = {
        "concurrency": 2,
        "capacity": {"min": 1, "max": 5, "target_utilization": 0.7},
        "shadow": {"state": "running", "size": 0},
        # Simulated seconds: at 300x, 20 minutes of stabilisation is 4 real seconds, and a member
        # that boots in 1-2 real seconds takes 5-10 simulated minutes: launch_lead leaves room for a busy machine.
        "scaling": {"launch_lead": "30m", "scale_down_delay": "20m", "cooldown": "5m", "stable_window": "2m",
                    "panic_window": "1m"},
        "health": {"interval": "0.2s", "timeout": "1s"},
        "warmup": {"path": "/api/warmup", "requests": 3},
        "slow_start": 0, "startup_timeout": 20, "drain_timeout": 2, "stop_timeout": 2,
    }
    if backend == "docker":
        pool = {**common, "backend": "docker",
                "docker": {"image": IMAGE, "network": "host", "on_exit": "remove",
                           "command": "/usr/bin/python3.11 /app/app.py --port {port}",
                           "env": {"WORK_MS": str(int(WORK_S * 1000))}}}
    else:
        pool = {**common, "backend": "process",
                "command": f"{sys.executable} -m balancer.demo.backend --port {{port}} --work api={WORK_S}s"}
    routing = RoutingConfig(
        listen=f"127.0.0.1:{free_port()}", state_dir=str(state_dir),
        sources=[SourceRule(header="X-Tenant"), SourceRule(client_ip=True)],
        routes=[Route(name="api", match=RouteMatch(path_prefix="/api/"), pool="web", type="api")],
    )
    return Config(routing=routing, pools={"web": Pool.model_validate(pool)})


def seed_history(path: Path, pattern: Pattern, start: float, speed: float, days: float = 2.0) -> None:
    """Past days as the proxy would have recorded them in simulated time, without the burst."""
    rng = np.random.default_rng(7)
    history = History(path, clock=lambda: start)
    for minute in range(int(start - days * DAY), int(start), 60):
        # real requests per simulated minute: the rate times the real seconds a simulated minute lasts
        n = int(rng.poisson(pattern.rate(minute, with_burst=False) * 60 / speed))
        history.add_minute(minute, "acme", "api", n, n * WORK_S * speed)
    history.close()


class Load:
    """Real HTTP at the pattern's rate, with bounded concurrency; counts cold requests."""

    def __init__(self, url: str, app: App, pattern: Pattern, clock: SimClock, summary: Summary) -> None:
        self.url, self.app, self.pattern, self.clock, self.summary = url, app, pattern, clock, summary
        self.outstanding = 0
        self.sent_since_tick = 0
        self._slots = asyncio.Semaphore(MAX_OUTSTANDING)
        self._tasks: set[asyncio.Task] = set()

    async def run(self, session: aiohttp.ClientSession, until: float) -> None:
        owed = 0.0
        last = time.monotonic()
        while time.monotonic() < until:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            owed += self.pattern.rate(self.clock()) * (now - last)
            last = now
            while owed >= 1.0:
                owed -= 1.0
                await self._slots.acquire()
                task = asyncio.create_task(self._one(session))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _one(self, session: aiohttp.ClientSession) -> None:
        ready = sum(m.state is MemberState.READY for m in self.app.members["web"])
        if self.outstanding >= ready * self.app.cfg.pools["web"].concurrency:
            self.summary.cold_requests += 1
        self.outstanding += 1
        self.sent_since_tick += 1
        self.summary.requests += 1
        try:
            async with session.get(f"{self.url}/api/item", headers={"X-Tenant": "acme"}) as resp:
                await resp.read()
                if resp.status >= 500:
                    self.summary.errors += 1
        except (aiohttp.ClientError, asyncio.TimeoutError):
            self.summary.errors += 1
        finally:
            self.outstanding -= 1
            self._slots.release()


def _hhmm(t: float) -> str:
    tod = int(t % DAY)
    return f"{tod // 3600:02d}:{tod % 3600 // 60:02d}"


async def _report(app: App, load: Load, clock: SimClock, summary: Summary, speed: float, until: float,
                  out) -> None:
    """One line per real second; integrates member-minutes and notes when pre-warming began."""
    last_t = clock()
    ramp_at = clock.start - clock.start % DAY + RAMP_TOD
    while time.monotonic() < until:
        await asyncio.sleep(1.0)
        now = clock()
        members = app.members["web"]
        counts = {s: sum(m.state is s for m in members) for s in MemberState}
        live = sum(counts[s] for s in LIVE_STATES)
        summary.member_minutes += live * (now - last_t) / 60
        summary.ready_member_minutes += counts[MemberState.READY] * (now - last_t) / 60
        last_t = now
        ready, shadow = counts[MemberState.READY], counts[MemberState.SHADOW]
        summary.max_ready, summary.max_shadow = max(summary.max_ready, ready), max(summary.max_shadow, shadow)
        if shadow and summary.prewarmed_before_ramp_s is None and now < ramp_at:
            summary.prewarmed_before_ramp_s = round(ramp_at - now)
        status = app.control.pool_status("web") if app.control else {}
        near = next(iter(status.get("forecast", ())), None)
        d = status.get("desired", {})
        fc = (f"forecast {near['rate'] * speed:5.0f} [{near['lower'] * speed:4.0f}-{near['upper'] * speed:4.0f}]"
              if near else "forecast     -")
        booting = counts[MemberState.LAUNCHING] + counts[MemberState.WARMING]
        flags = "".join(f"  anomaly ({a['direction']})" for a in status.get("anomalies", ()))
        print(f"sim {_hhmm(now)}  actual {load.sent_since_tick:5d} req/s  {fc} req/s  "
              f"ready {ready} shadow {shadow} booting {booting}  "
              f"plan: baseline {d.get('baseline', '-')} predictive {d.get('predictive', '-')} "
              f"burst {d.get('burst', '-')} shadow {d.get('shadow', '-')}"
              f"{flags}", file=out, flush=True)
        load.sent_since_tick = 0


async def run_demo(duration: float, speed: float, backend: str, state_dir: Path, out) -> Summary:
    pattern = Pattern()
    # Today, 08:00 simulated: the past two days exist in history, the ramp is an hour away.
    start = math.floor(time.time() / DAY) * DAY + START_TOD
    clock = SimClock(start, speed)
    cfg = demo_config(backend, state_dir)
    seed_history(state_dir / "history.sqlite3", pattern, start, speed)
    app = App(cfg, admin=("127.0.0.1", free_port()), state_dir=str(state_dir), clock=clock,
              plan_interval=0.5, time_scale=speed)
    summary = Summary(backend=backend, simulated_hours=round(duration * speed / HOUR, 2))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        print(f"warmfront demo: {backend} pool 'web' behind http://{app.listen[0]}:{app.listen[1]}, status at "
              f"http://{app.admin_addr[0]}:{app.admin_addr[1]}/admin/status\n"
              f"1 real second = {speed / 60:g} simulated minutes; ramp at {_hhmm(RAMP_TOD)} (in history), "
              f"burst at {_hhmm(BURST_TOD)} (not); rates below in real req/s", file=out, flush=True)
        clock.begin()
        until = time.monotonic() + duration
        load = Load(f"http://127.0.0.1:{app.listen[1]}", app, pattern, clock, summary)
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout,
                                         connector=aiohttp.TCPConnector(limit=MAX_OUTSTANDING)) as session:
            tasks = [asyncio.create_task(load.run(session, until)),
                     asyncio.create_task(_report(app, load, clock, summary, speed, until, out))]
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
            # the load finishes on its own at `until`; Ctrl-C stops it at once
            await asyncio.wait(tasks, timeout=0 if stop.is_set() else duration + 15)
            for t in tasks + [stopped]:
                t.cancel()
            await asyncio.gather(*tasks, stopped, return_exceptions=True)
    finally:
        await app.stop()
    summary.member_minutes = round(summary.member_minutes, 1)
    summary.ready_member_minutes = round(summary.ready_member_minutes, 1)
    return summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="warmfront demo", description="A compressed day of traffic through warmfront.")
    p.add_argument("--duration", type=float, default=180.0, help="real seconds to run (default 180)")
    p.add_argument("--speed", type=float, default=300.0,
                   help="simulated seconds per real second (default 300: 1 s = 5 minutes)")
    p.add_argument("--quick", action="store_true", help="a 30-second run at 600x (08:00 to 13:00), for tests")
    p.add_argument("--backend", choices=("auto", "docker", "process"), default="auto",
                   help=f"docker needs a reachable engine and {IMAGE}; auto picks docker when it can")
    p.add_argument("--state-dir", help="keep history and member logs here (default: a temporary directory)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.add_argument("--log-level", default="warning")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.duration, args.speed = 30.0, 600.0
    backend = args.backend
    if backend == "auto":
        backend = "docker" if docker_available() else "process"
    configure_logging(args.log_level)
    structlog.get_logger("warmfront").info("demo.starting", backend=backend)
    import uvloop

    with tempfile.TemporaryDirectory(prefix="warmfront-demo-") as tmp:
        state_dir = Path(args.state_dir) if args.state_dir else Path(tmp)
        state_dir.mkdir(parents=True, exist_ok=True)
        summary = uvloop.run(run_demo(args.duration, args.speed, backend, state_dir, sys.stdout))
    cold_pct = 100 * summary.cold_requests / summary.requests if summary.requests else 0.0
    print(f"\nsummary: {summary.requests} requests, {summary.errors} errors, {summary.cold_requests} cold requests "
          f"({cold_pct:.1f}%), {summary.member_minutes:g} member-minutes "
          f"({summary.ready_member_minutes:g} ready) over {summary.simulated_hours:g} simulated hours")
    if summary.prewarmed_before_ramp_s is not None:
        print(f"pre-warming: shadow members were up {summary.prewarmed_before_ramp_s / 60:.0f} simulated minutes "
              f"before the {_hhmm(RAMP_TOD)} ramp")
    else:
        print("pre-warming: no shadow member was up before the ramp")
    if args.json:
        print(json.dumps(asdict(summary)))
    return 0 if summary.requests and summary.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
