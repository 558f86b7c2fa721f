"""`warmfront demo`: the same compressed day through warmfront and through a reactive autoscaler.

It starts warmfront in-process with two pools of the demo backend (Docker containers of
`warmfront-testapp:latest` when an engine is reachable and the image exists, else local
processes), identical but for how they scale: `warmfront` forecasts (`scaling.mode:
forecast-and-scale`) and keeps paused shadows, `reactive` sizes on live load only (`scaling.mode:
reactive`, no shadows). Every request of the day is sent to both, so they meet the same traffic on
the same machine. The day holds three events: a ramp at 09:00 that two seeded past days of history
know about, a campaign at 11:00 declared in events.yaml, and a spike at 12:00 that nothing
announces, met by the burst tier from the paused shadows. Every second it prints both pools side by
side; at the end both summaries (cold requests, the spike's apart, and member-minutes).

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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import aiohttp
import numpy as np
import structlog

from balancer.control.history import History
from balancer.logs import configure_logging
from balancer.wiring.app import App
from config.events import EVENTS_FILE
from config.models import Config, Pool, Route, RouteMatch, RoutingConfig, SourceRule
from pools.members import MemberState
from pools.ports import free_port

DAY = 86400.0
HOUR = 3600.0
START_TOD = 8 * HOUR             # the demo's simulated day starts at 08:00
RAMP_TOD = 9 * HOUR              # in history: forecast, pre-warmed
CAMPAIGN_TOD = 10.75 * HOUR      # declared in events.yaml: forecast
CAMPAIGN_S = 30 * 60
SPIKE_TOD = 12.25 * HOUR         # announced nowhere: met by the burst tier from paused shadows
SPIKE_S = 15 * 60
WORK_S = 0.1                     # the demo backend's work per /api request
CONCURRENCY = 2                  # requests one member serves at once
SHADOWS = 2                      # paused shadows the warmfront pool keeps (shadow.size)
SOURCE = "acme"
IMAGE = "warmfront-testapp:latest"
MAX_OUTSTANDING = 64             # the load generator's concurrency bound, per pool
SAMPLE_S = 0.05                  # how often members are counted, real seconds
POLICIES = ("warmfront", "reactive")
LIVE_STATES = (MemberState.LAUNCHING, MemberState.WARMING, MemberState.SHADOW, MemberState.READY,
               MemberState.DRAINING)


@dataclass(frozen=True, slots=True)
class Pattern:
    """Requests per real second at a simulated time of day."""
    base: float = 4.0
    ramp: float = 50.0
    campaign: float = 8.0        # multiplier, as declared in events.yaml
    spike: float = 40.0

    def rate(self, t: float, unplanned: bool = True) -> float:
        """`unplanned=False`: the day as history knows it, without the campaign and the spike."""
        tod = t % DAY
        wave = self.base * (1.0 + 0.3 * math.sin(2 * math.pi * (tod - 6 * HOUR) / DAY))
        since = tod - RAMP_TOD
        ramp = 0.0
        if 0 <= since < 15 * 60:                 # up over 15 minutes
            ramp = self.ramp * since / (15 * 60)
        elif 15 * 60 <= since < HOUR:            # plateau
            ramp = self.ramp
        elif HOUR <= since < 1.5 * HOUR:         # down over 30 minutes
            ramp = self.ramp * (1 - (since - HOUR) / (0.5 * HOUR))
        if not unplanned:
            return wave + ramp
        campaign = self.campaign if CAMPAIGN_TOD <= tod < CAMPAIGN_TOD + CAMPAIGN_S else 1.0
        spike = self.spike if in_spike(t) else 0.0
        return (wave + ramp) * campaign + spike


def in_spike(t: float) -> bool:
    return SPIKE_TOD <= t % DAY < SPIKE_TOD + SPIKE_S


@dataclass(slots=True)
class PolicyStats:
    """What one pool did with the day. A cold request arrived while every ready member of the pool
    had its `concurrency` requests in flight, or while none was ready."""
    pool: str
    requests: int = 0
    errors: int = 0
    cold_requests: int = 0               # all of the day's, the spike's included
    cold_in_spike: int = 0               # arrived during the unannounced spike
    member_minutes: float = 0.0          # simulated minutes of live members (ready, shadow, booting, draining)
    ready_member_minutes: float = 0.0
    shadow_member_minutes: float = 0.0
    max_ready: int = 0
    max_shadow: int = 0
    shadow_before_ramp: int = 0          # most shadow members up at once before the ramp
    prewarmed_before_ramp_s: float | None = None   # simulated seconds between the first shadow and the ramp
    spike_response_s: float | None = None   # real seconds from the spike's start to a ready member more
    ready_at_spike: int = 0
    max_ready_in_spike: int = 0
    lead_times_s: dict[str, float] = field(default_factory=dict)   # measured bring-up medians, real seconds

    @property
    def cold_outside_spike(self) -> int:
        return self.cold_requests - self.cold_in_spike


@dataclass(slots=True)
class Summary:
    backend: str
    simulated_hours: float
    warmfront: PolicyStats
    reactive: PolicyStats

    def as_json(self) -> dict:
        out = asdict(self)
        for name in POLICIES:
            out[name]["cold_outside_spike"] = getattr(self, name).cold_outside_spike
        return out


class SimClock:
    """Simulated seconds: `start` until `begin()` is called, then `speed` per real second. Held
    still while the pools come up, so the day does not begin before they have and time never
    runs backwards for history and planner."""

    def __init__(self, start: float, speed: float) -> None:
        self.start, self.speed = start, speed
        self._t0: float | None = None

    def begin(self) -> None:
        self._t0 = time.monotonic()

    def __call__(self) -> float:
        return self.start if self._t0 is None else self.start + (time.monotonic() - self._t0) * self.speed


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
    """Two pools alike in everything but scaling: same backend, capacity, windows and health."""
    # Simulated seconds: at 600x, 20 minutes of stabilisation is 2 real seconds, and a member
    # that boots in 1-5 real seconds (a busy machine) takes 10-50 simulated minutes; a launch_lead
    # of an hour puts the forecast's 60-minute horizon in the shadow pool's view.
    scaling = {"launch_lead": "60m", "scale_down_delay": "20m", "cooldown": "5m", "stable_window": "2m",
               "panic_window": "1m"}
    common = {
        "concurrency": CONCURRENCY,
        "capacity": {"min": 1, "max": 8, "target_utilization": 0.7},
        "scaling": scaling,
        "health": {"interval": "0.2s", "timeout": "1s"},
        "warmup": {"path": "/api/warmup", "requests": 3},
        "slow_start": 0, "startup_timeout": 20, "drain_timeout": 2, "stop_timeout": 2,
    }
    if backend == "docker":
        common |= {"backend": "docker",
                   "docker": {"image": IMAGE, "network": "host", "on_exit": "remove",
                              "command": "/usr/bin/python3.11 /app/app.py --port {port}",
                              "env": {"WORK_MS": str(int(WORK_S * 1000))}}}
    else:
        common |= {"backend": "process",
                   "command": f"{sys.executable} -m balancer.demo.backend --port {{port}} --work api={WORK_S}s"}
    pools = {
        "warmfront": Pool.model_validate({**common, "shadow": {"state": "paused", "size": SHADOWS}}),
        "reactive": Pool.model_validate({**common, "scaling": {**scaling, "mode": "reactive"}}),
    }
    # One path, two request types: the X-Policy header picks the pool, so the reactive pool's
    # traffic never feeds the warmfront pool's forecast.
    routes = [Route(name=name, match=RouteMatch(path_prefix="/api/", headers={"X-Policy": name}), pool=name,
                    type=request_type(name)) for name in POLICIES]
    routing = RoutingConfig(listen=f"127.0.0.1:{free_port()}", state_dir=str(state_dir),
                            sources=[SourceRule(header="X-Tenant"), SourceRule(client_ip=True)], routes=routes)
    return Config(routing=routing, pools=pools, directory=str(state_dir))


def request_type(policy: str) -> str:
    return "api" if policy == "warmfront" else f"api-{policy}"


def write_events(directory: Path, day: float, pattern: Pattern) -> None:
    """The campaign, declared as a user would: events.yaml beside the config."""
    start = datetime.fromtimestamp(day + CAMPAIGN_TOD, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    (directory / EVENTS_FILE).write_text(
        "events:\n"
        "  - name: spring-launch\n"
        "    kind: campaign\n"
        f"    start: {start}\n"
        f"    duration: {CAMPAIGN_S // 60}m\n"
        f"    scope: {{source: {SOURCE}}}\n"
        f"    multiplier: {pattern.campaign:g}\n")


def seed_history(path: Path, pattern: Pattern, start: float, speed: float, days: float = 2.0) -> None:
    """Past days of the warmfront pool's traffic as the proxy would have recorded them in simulated
    time: the daily ramp, no campaign and no spike."""
    rng = np.random.default_rng(7)
    history = History(path, clock=lambda: start)
    for minute in range(int(start - days * DAY), int(start), 60):
        # real requests per simulated minute: the rate times the real seconds a simulated minute lasts
        n = int(rng.poisson(pattern.rate(minute, unplanned=False) * 60 / speed))
        history.add_minute(minute, SOURCE, request_type("warmfront"), n, n * WORK_S * speed)
    history.close()


class Load:
    """Real HTTP at the pattern's rate, each request sent to both pools; counts cold requests."""

    def __init__(self, url: str, app: App, pattern: Pattern, clock: SimClock, summary: Summary) -> None:
        self.url, self.app, self.pattern, self.clock = url, app, pattern, clock
        self.stats = {name: getattr(summary, name) for name in POLICIES}
        self.outstanding = dict.fromkeys(POLICIES, 0)
        self.sent_since_tick = 0
        self._slots = {name: asyncio.Semaphore(MAX_OUTSTANDING) for name in POLICIES}
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
                self.sent_since_tick += 1
                spike = in_spike(self.clock())
                for name in POLICIES:
                    await self._slots[name].acquire()
                    task = asyncio.create_task(self._one(session, name, spike))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _one(self, session: aiohttp.ClientSession, pool: str, spike: bool) -> None:
        stats = self.stats[pool]
        ready = sum(m.state is MemberState.READY for m in self.app.members[pool])
        if self.outstanding[pool] >= ready * self.app.cfg.pools[pool].concurrency:
            stats.cold_requests += 1
            stats.cold_in_spike += spike
        self.outstanding[pool] += 1
        stats.requests += 1
        try:
            async with session.get(f"{self.url}/api/item", headers={"X-Tenant": SOURCE, "X-Policy": pool}) as resp:
                await resp.read()
                if resp.status >= 500:
                    stats.errors += 1
        except (aiohttp.ClientError, asyncio.TimeoutError):
            stats.errors += 1
        finally:
            self.outstanding[pool] -= 1
            self._slots[pool].release()


def _hhmm(t: float) -> str:
    tod = int(t % DAY)
    return f"{tod // 3600:02d}:{tod % 3600 // 60:02d}"


def _counts(app: App, pool: str) -> dict[MemberState, int]:
    members = app.members[pool]
    return {s: sum(m.state is s for m in members) for s in MemberState}


async def _sample(app: App, clock: SimClock, summary: Summary, until: float) -> None:
    """Count both pools' members every SAMPLE_S: member-minutes, shadows before the ramp, and how
    long after the spike began each pool had a ready member more."""
    day = clock.start - clock.start % DAY
    ramp_at, spike_at = day + RAMP_TOD, day + SPIKE_TOD
    ready_at_spike: dict[str, int] = {}
    spike_real = 0.0
    last_t = clock()
    while time.monotonic() < until:
        await asyncio.sleep(SAMPLE_S)
        now = clock()
        minutes = (now - last_t) / 60
        last_t = now
        for name in POLICIES:
            stats, counts = getattr(summary, name), _counts(app, name)
            ready, shadow = counts[MemberState.READY], counts[MemberState.SHADOW]
            stats.member_minutes += sum(counts[s] for s in LIVE_STATES) * minutes
            stats.ready_member_minutes += ready * minutes
            stats.shadow_member_minutes += shadow * minutes
            stats.max_ready, stats.max_shadow = max(stats.max_ready, ready), max(stats.max_shadow, shadow)
            if now < ramp_at:
                stats.shadow_before_ramp = max(stats.shadow_before_ramp, shadow)
                if shadow and stats.prewarmed_before_ramp_s is None:
                    stats.prewarmed_before_ramp_s = round(ramp_at - now)
            if now >= spike_at and name not in ready_at_spike:
                ready_at_spike[name], spike_real = ready, time.monotonic()
                stats.ready_at_spike = ready
            if in_spike(now):
                stats.max_ready_in_spike = max(stats.max_ready_in_spike, ready)
                if name in ready_at_spike and stats.spike_response_s is None and ready > ready_at_spike[name]:
                    stats.spike_response_s = round(time.monotonic() - spike_real, 2)


async def _report(app: App, load: Load, clock: SimClock, summary: Summary, speed: float, until: float,
                  out: TextIO) -> None:
    """One line per real second: the actual rate, warmfront's forecast and both pools' members."""
    marks = {RAMP_TOD: "ramp (in history)", CAMPAIGN_TOD: "campaign (declared)", SPIKE_TOD: "spike (unannounced)"}
    last = clock()
    while time.monotonic() < until:
        await asyncio.sleep(1.0)
        now = clock()
        status = app.control.pool_status("warmfront") if app.control else {}
        near = next(iter(status.get("forecast", ())), None)
        fc = (f"forecast {near['rate'] * speed:4.0f} [{near['lower'] * speed:3.0f}-{near['upper'] * speed:4.0f}]"
              if near else "forecast    -          ")
        wf, re = _counts(app, "warmfront"), _counts(app, "reactive")
        booting = {name: c[MemberState.LAUNCHING] + c[MemberState.WARMING] for name, c in (("wf", wf), ("re", re))}
        mark = "".join(f"  <- {text}" for tod, text in marks.items() if last % DAY < tod <= now % DAY)
        print(f"sim {_hhmm(now)}  actual {load.sent_since_tick:4d} req/s | warmfront {fc}  "
              f"ready {wf[MemberState.READY]} shadow {wf[MemberState.SHADOW]} booting {booting['wf']}  "
              f"cold {summary.warmfront.cold_requests:4d} | reactive ready {re[MemberState.READY]} "
              f"booting {booting['re']}  cold {summary.reactive.cold_requests:4d}{mark}", file=out, flush=True)
        load.sent_since_tick = 0
        last = now


def _scenario(backend: str, app: App, speed: float, pattern: Pattern) -> str:
    return (
        f"warmfront demo: one compressed day, every request sent to two {backend} pools behind "
        f"http://{app.listen[0]}:{app.listen[1]} (status: http://{app.admin_addr[0]}:{app.admin_addr[1]}/admin/status)\n"
        f"  warmfront  scaling.mode forecast-and-scale, {SHADOWS} paused shadows (shadow.size), two past days of history\n"
        f"  reactive   scaling.mode reactive: sized on live in-flight requests only, no shadows\n"
        f"  both       min 1, max 8 members of concurrency {CONCURRENCY}, {WORK_S * 1000:.0f} ms of work per request\n"
        f"scenario, 1 real second = {speed / 60:g} simulated minutes, rates in real req/s:\n"
        f"  {_hhmm(RAMP_TOD)}  daily ramp +{pattern.ramp:g} req/s for an hour: in history, so forecast\n"
        f"  {_hhmm(CAMPAIGN_TOD)}  campaign spring-launch x{pattern.campaign:g} for {CAMPAIGN_S // 60} min: "
        f"declared in {EVENTS_FILE}, so forecast\n"
        f"  {_hhmm(SPIKE_TOD)}  spike +{pattern.spike:g} req/s for {SPIKE_S // 60} min: unannounced, met by the "
        f"burst tier (warmfront: from paused shadows)\n"
        f"a cold request arrived while every ready member of its pool had {CONCURRENCY} requests in flight, "
        f"or none was ready")


async def run_demo(duration: float, speed: float, backend: str, state_dir: Path, out: TextIO) -> Summary:
    pattern = Pattern()
    # Today, 08:00 simulated: the past two days exist in history, the ramp is an hour away.
    day = math.floor(time.time() / DAY) * DAY
    start = day + START_TOD
    clock = SimClock(start, speed)
    cfg = demo_config(backend, state_dir)
    write_events(state_dir, day, pattern)
    seed_history(state_dir / "history.sqlite3", pattern, start, speed)
    app = App(cfg, admin=("127.0.0.1", free_port()), state_dir=str(state_dir), clock=clock,
              plan_interval=0.5, time_scale=speed)
    summary = Summary(backend, round(duration * speed / HOUR, 2), PolicyStats("warmfront"), PolicyStats("reactive"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.start()
        print(_scenario(backend, app, speed, pattern), file=out, flush=True)
        waited = await _baseline(app, stop)
        print(f"both pools at their baseline after {waited:.1f} s (warmfront: 1 ready, {SHADOWS} paused shadows; "
              f"reactive: 1 ready); the day begins", file=out, flush=True)
        clock.begin()
        until = time.monotonic() + duration
        load = Load(f"http://127.0.0.1:{app.listen[1]}", app, pattern, clock, summary)
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=MAX_OUTSTANDING * len(POLICIES))
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            tasks = [asyncio.create_task(load.run(session, until)),
                     asyncio.create_task(_sample(app, clock, summary, until)),
                     asyncio.create_task(_report(app, load, clock, summary, speed, until, out))]
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
            # the load finishes on its own at `until`; Ctrl-C stops it at once
            await asyncio.wait(tasks, timeout=0 if stop.is_set() else duration + 15)
            for t in tasks + [stopped]:
                t.cancel()
            await asyncio.gather(*tasks, stopped, return_exceptions=True)
        for name in POLICIES:
            getattr(summary, name).lead_times_s = app.managers[name].lead_times()
    finally:
        await app.stop()
    for name in POLICIES:
        stats = getattr(summary, name)
        for key in ("member_minutes", "ready_member_minutes", "shadow_member_minutes"):
            setattr(stats, key, round(getattr(stats, key), 1))
    return summary


async def _baseline(app: App, stop: asyncio.Event, timeout: float = 60.0) -> float:
    """Real seconds until every pool has its `capacity.min` ready and `shadow.size` shadows."""
    began = time.monotonic()
    while time.monotonic() - began < timeout and not stop.is_set():
        if all(_counts(app, name)[MemberState.READY] >= spec.capacity.min
               and _counts(app, name)[MemberState.SHADOW] >= spec.shadow.size for name, spec in app.cfg.pools.items()):
            break
        await asyncio.sleep(0.1)
    return time.monotonic() - began


def _spike_line(stats: PolicyStats, speed: float) -> str:
    if stats.spike_response_s is None:
        return f"{stats.pool} added no ready member during it (ready {stats.ready_at_spike} at its start)"
    how = ""
    if stats.pool == "warmfront" and "paused" in stats.lead_times_s:
        how = f", a paused shadow activates in {stats.lead_times_s['paused'] * 1000:.0f} ms"
    elif "cold" in stats.lead_times_s:
        how = f", a cold launch takes {stats.lead_times_s['cold']:.1f} s"
    return (f"{stats.pool} went from {stats.ready_at_spike} to {stats.max_ready_in_spike} ready, the first "
            f"added {stats.spike_response_s:.2f} s after it began "
            f"({stats.spike_response_s * speed / 60:.0f} simulated min{how})")


def print_summary(summary: Summary, speed: float, out: TextIO) -> None:
    wf, re = summary.warmfront, summary.reactive
    print(f"\nsummary over {summary.simulated_hours:g} simulated hours; cold requests as defined above, "
          f"member-minutes in simulated minutes", file=out)
    print(f"  {'pool':9}  {'requests':>8}  {'errors':>6}  {'cold, rest of day':>17}  {'cold, spike':>11}  "
          f"member-minutes (ready / shadow)", file=out)
    for s in (wf, re):
        print(f"  {s.pool:9}  {s.requests:8d}  {s.errors:6d}  {s.cold_outside_spike:17d}  {s.cold_in_spike:11d}  "
              f"{s.member_minutes:g} ({s.ready_member_minutes:g} / {s.shadow_member_minutes:g})", file=out)
    if wf.prewarmed_before_ramp_s is not None:
        print(f"pre-warming: warmfront had up to {wf.shadow_before_ramp} shadow members up from "
              f"{wf.prewarmed_before_ramp_s / 60:.0f} simulated minutes before the {_hhmm(RAMP_TOD)} ramp", file=out)
    else:
        print(f"pre-warming: no shadow member was up before the {_hhmm(RAMP_TOD)} ramp", file=out)
    print(f"unannounced spike at {_hhmm(SPIKE_TOD)}: {_spike_line(wf, speed)}; {_spike_line(re, speed)}", file=out)
    fewer = (f"{re.cold_outside_spike / wf.cold_outside_spike:.1f}x fewer" if wf.cold_outside_spike
             else "none at all")
    ratio = wf.member_minutes / re.member_minutes if re.member_minutes else float("nan")
    verdict = "fewer" if wf.cold_outside_spike < re.cold_outside_spike else "NOT fewer"
    print(f"outside the unannounced spike warmfront served {wf.cold_outside_spike} cold requests against reactive's "
          f"{re.cold_outside_spike} ({fewer if verdict == 'fewer' else verdict}), for {ratio:.2f}x its "
          f"member-minutes (paused shadows hold memory, no CPU)", file=out, flush=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="warmfront demo",
                                description="The same compressed day through warmfront and a reactive autoscaler.")
    p.add_argument("--duration", type=float, default=180.0, help="real seconds to run (default 180)")
    p.add_argument("--speed", type=float, default=300.0,
                   help="simulated seconds per real second (default 300: 1 s = 5 minutes)")
    p.add_argument("--quick", action="store_true", help="a 30-second run at 600x (08:00 to 13:00), for tests")
    p.add_argument("--backend", choices=("auto", "docker", "process"), default="auto",
                   help=f"docker needs a reachable engine and {IMAGE}; auto picks docker when it can")
    p.add_argument("--state-dir", help="keep history, events.yaml and member logs here (default: a temporary "
                                       "directory)")
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
    print_summary(summary, args.speed, sys.stdout)
    if args.json:
        print(json.dumps(summary.as_json()))
    ok = all(s.requests and s.errors == 0 for s in (summary.warmfront, summary.reactive))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
