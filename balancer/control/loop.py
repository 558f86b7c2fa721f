"""The live control loop of `warmfront run`: history → predictor → planner → pool managers.

Per step (every `plan_interval`, a few seconds):
1. feed the predictor every minute that closed since the last step, read from `History`
   (sealed rows included), and the learned service time per request type;
2. refit the predictor when it says so (first clustering the series' daily profiles, so that young
   series borrow the shape of the cluster they match), learn the uplift of events whose window
   has closed, and start its statsmodels tier for the busiest series in
   a worker process when due (seconds of CPU and 250 MB of imports that are not the proxy's; its
   result is applied by a later step, never awaited);
3. retire series without a request for `RETIRE_AFTER_S` (a day), so the forecaster's size
   follows the sources that are alive, not every name ever seen;
4. forecast every series (source × type), sum the request types routed to each pool, and
   compare the last closed bin of each pool with the interval forecast for it (anomalies);
5. plan each managed pool from that demand and the live in-flight load (sampled every
   `sample_interval`), and publish what every manager should reach as one frozen `DesiredState`
   (the plans bounded by the operator's overrides and maintenance events, `bound`); a manager
   whose entry changed reconciles at once. The operator republishes (`publish`) when it sets or
   clears an override, so a pin does not wait for the next step.

The proxy's event loop runs none of 1–4: a step copies its inputs on the loop (`StepInputs`:
the clock, the requests tapped since the last step, the pools' specs, a finished statsmodels
job — O(1) work after `History.seal`), computes in a worker thread (`ControlLoop.compute`: a
function of those inputs and of state only that thread touches — forecaster, profiles, session
model, anomaly detector), and applies the `StepResult` back on the loop in O(pools): the
per-pool demand, forecast and status, then `plan`, which is pure and small. What
/admin/status reads from the loop is part of that result, so it costs nothing to serve. The
worker shares the GIL with the proxy; `GIL_SWITCH_S` bounds how long it holds it at a time
(measured: bench/loop_probe.py). Moving `compute` into its own process later means sending
`StepInputs` and `StepResult` instead of passing them.

Nothing here is on the proxy's request path: the proxy writes counters, this loop reads them.
All times come from `clock`, so the demo can compress a day into minutes and tests can stop time.
"""
from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog


from balancer.control.history import LATENCY_BOUNDS, OTHER, History, MinuteRow
from config.events import EVENTS_FILE, load_events
from config.models import Config, Pool
from pools.manager import PoolManager
from pools.members import MemberState, MemberView
from pools.planner import CpuBudget, Plan, PlannerState, TypeDemand
from pools.reconciler import Desired, DesiredState, baseline_desired
from pools.step import (HORIZONS_S, SENSITIVITIES, BinScores, BurstHeights, LoadSamples, PoolObservation,
                        SeriesForecasts, plan_pool, pool_demand)
from predictor.anomaly import AnomalyDetector
from predictor.engine import Forecaster
from predictor.heavy import HeavyJob, HeavyResult, compute as compute_heavy, start_process
from predictor.events import EventBook, UpliftWatch
from predictor.profiles import AbortSlope, ResourceProfile, SessionTransitions, SourceClusters, histogram_quantile

log = structlog.get_logger("warmfront")

MINUTE = 60
BUFFER_DAYS = 2.0
# Measured activation lead per shadow state (README, activation benchmark, medians); a stopped
# shadow boots again, so it is as slow as a cold launch.
MIN_LATENCY_SAMPLE = 3        # requests in a minute before its p95 counts
LATENCY_RECENT_S = 300.0
LEARNED_HIGH_SLOPE = 0.05     # abort rate rising 5 points per second of latency: plan the source as `high`
LEARNED_MIN_REQUESTS = 500.0  # (decayed) requests behind a learned slope before it counts      # an abandon_after breach older than this no longer raises the quantile
SESSION_GAP_S = 1800.0        # a source silent this long has ended its session
SESSION_DECAY_PER_HOUR = 0.9  # weight of older transitions, so the model follows the workflow
HEAVY_TIMEOUT_S = 900.0   # a statsmodels job takes seconds; one this late lost its worker
RETIRE_AFTER_S = 86400.0  # a series without a request for this long leaves the forecaster (not History)
MODEL_ROWS = 50           # series /admin/status lists under "models", flagged first
# Longest the step's worker thread holds the GIL while the proxy's loop waits for it (CPython's
# default is 5 ms, and a proxied request waits for the GIL twice); set when a loop is built.
GIL_SWITCH_S = 0.001


@dataclass(frozen=True, slots=True)
class PoolForecast:
    """Forecast arrivals into one pool at one horizon, requests per second."""
    horizon_s: float
    rate: float
    lower: float
    upper: float


class SourcePolicy(Protocol):
    """The operator's per-source settings the loop honours (balancer.operator.controls.Controls)."""

    def predictive(self, source: str) -> bool: ...

    def profile(self, source: str) -> Any: ...   # a WorkloadProfile with .rates(bin_starts), or None

    def source(self, source: str) -> Any: ...    # a SourceControl: .latency_sensitivity, .abandon_after


@dataclass(frozen=True, slots=True)
class PoolOutlook:
    """One pool's part of a step's result: what the planner and /admin/status read."""
    forecast: tuple[PoolForecast, ...] = ()
    demand: tuple[TypeDemand, ...] = ()
    latency: tuple[dict[str, Any], ...] = ()     # sources planned at a non-default quantile, and why
    anomalies: tuple[dict[str, Any], ...] = ()   # open anomalies of the pool, as /admin/status lists them
    anomaly_up: bool = False                     # one of them is upward: the planner sizes for bursts
    sessions: Mapping[str, float] = field(default_factory=dict)   # req/s per type sessions will bring
    observation: PoolObservation | None = None   # what the demand was computed from (the plan adds live load)


@dataclass(frozen=True, slots=True)
class StepInputs:
    """What a step reads on the loop thread: copies (or values never mutated in place)."""
    now: float
    requests: Sequence[tuple[str, str]]          # (source, type) of each request since the last step
    specs: Mapping[str, Pool]
    pools_of_type: Mapping[str, Sequence[str]]   # replaced whole by reconfigure, never mutated
    heavy: HeavyResult | None                    # a finished statsmodels job to apply
    heavy_running: bool                          # a job is still in its worker process


@dataclass(frozen=True, slots=True)
class StepResult:
    """What a step hands back to the loop thread."""
    pools: Mapping[str, PoolOutlook]
    models: tuple[dict[str, Any], ...]           # /admin/status "models", first MODEL_ROWS
    next_types: Mapping[str, Mapping[str, float]]
    heavy_job: HeavyJob | None                   # statsmodels work to start in a process
    series: int                                  # series the forecaster holds


@dataclass(slots=True)
class _PoolState:
    """Loop-thread state of one pool: its spec, live load samples, the latest outlook and plan."""
    spec: Pool
    planner: PlannerState = field(default_factory=PlannerState)
    plan: Plan | None = None
    desired: Desired | None = None
    outlook: PoolOutlook = field(default_factory=PoolOutlook)
    load: LoadSamples = field(default_factory=LoadSamples)

    @property
    def demand(self) -> tuple[TypeDemand, ...]:
        return self.outlook.demand

    @property
    def forecast(self) -> tuple[PoolForecast, ...]:
        return self.outlook.forecast


class ControlLoop:
    def __init__(self, cfg: Config, history: History, members: Callable[[], Mapping[str, Sequence[MemberView]]],
                 in_flight: Callable[[str], int], managers: Mapping[str, PoolManager], *,
                 clock: Callable[[], float], plan_interval: float = 5.0, sample_interval: float = 1.0,
                 forecaster: Forecaster | None = None, events: EventBook | None = None,
                 controls: SourcePolicy | None = None,
                 bound: Callable[[str, Desired], Desired] | None = None, time_scale: float = 1.0) -> None:
        self.cfg, self.history, self.clock = cfg, history, clock
        # `clock` seconds per real second (the demo compresses a day): the managers measure lead
        # times in real seconds, the planner plans in clock seconds.
        self.time_scale = time_scale
        self.members_fn, self.in_flight, self.managers = members, in_flight, managers
        self.plan_interval, self.sample_interval = plan_interval, sample_interval
        self.events = events if events is not None else EventBook(_events_of(cfg))
        self.uplifts = UpliftWatch(self.events)   # learns the uplift of events that declare none
        self.controls = controls   # read (never written) by the worker thread too
        self.bound = bound         # the operator's overrides and maintenance, applied as a plan is published
        self.published = DesiredState()   # what the managers reach; replaced whole, never mutated
        # State of the thread running `compute` (one step at a time; the loop thread does not touch it).
        self._series: dict[str, tuple[str, str]] = {}   # series id -> (source, type)
        self._first_seen: dict[str, float] = {}   # series id -> clock time of its first request
        self._last_seen: dict[str, int] = {}      # series id -> last minute with a request
        # Young series borrow the daily shape of the cluster their first hours match (`compute`).
        self.clusters = SourceClusters()
        self.forecaster = forecaster or Forecaster(clock, shape_for=self.clusters.shape_for, multipliers=self._multipliers,
                                                   long_history=self._long_history)
        self.anomalies = AnomalyDetector()
        self.profiles: dict[str, ResourceProfile] = {}
        self._scores = BinScores(self.forecaster.bin_s, self.anomalies)
        self._bursts = BurstHeights(self.forecaster.bin_s)   # what the shadow pool holds for unforecast bursts
        # Next request type per session (keyed by source): which pool a session will need next.
        self.sessions = SessionTransitions(max_sessions=100_000, session_gap=SESSION_GAP_S)
        self._sessions_decayed = clock()
        self._type_rates: dict[str, float] = {}     # req/s per type in the last closed minute (opted-in sources)
        self._session_rates: dict[str, float] = {}  # req/s per type its sessions' next requests make
        self._abort_slopes: dict[str, AbortSlope] = {}   # source -> learned rise of aborts with latency
        self._p95: dict[str, tuple[int, float]] = {}     # source -> (minute, p95 upstream latency s) of its last busy minute
        self._next_minute: int | None = None
        # State of the loop thread: pools (specs, samples, the last outlook and plan), the
        # statsmodels process, and the last step's results for /admin/status.
        self._heavy: asyncio.Future[HeavyResult] | None = None
        self._heavy_started = 0.0
        self._heavy_proc: Any = None   # the worker process of the job in flight
        self.pools: dict[str, _PoolState] = {}
        self._pools_of_type: dict[str, list[str]] = {}
        self._models: tuple[dict[str, Any], ...] = ()
        self._next_types: Mapping[str, Mapping[str, float]] = {}
        self._stepping = asyncio.Lock()
        # Measured CPU-seconds per request type and the members' CPU budget of a pool
        # (balancer.control.resources.ResourceWatch.cpu_profile), read in the worker thread.
        self.cpu_profile: Callable[[str], tuple[Mapping[str, float], CpuBudget | None]] | None = None
        self.reconfigure(cfg)
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_S))

    def reconfigure(self, cfg: Config) -> None:
        """Follow a (re)loaded config: new pools and routes; fitted forecasts and plans are kept."""
        self.cfg = cfg
        self.forecaster.refit_every_s = cfg.routing.predictor.refit_every
        self.forecaster.heavy_every_s = cfg.routing.predictor.refit_every
        self.forecaster.statsmodels_top_n = cfg.routing.predictor.statsmodels_top_n
        for name in set(self.pools) - set(cfg.pools):
            del self.pools[name]
        for name, spec in cfg.pools.items():
            if name in self.pools:
                self.pools[name].spec = spec
            else:
                self.pools[name] = _PoolState(spec)
        # A request type feeds every pool a route sends it to. Built anew and swapped: a step in
        # its worker thread may be reading the old one.
        pools_of_type: dict[str, list[str]] = {}
        for route in cfg.routing.routes:
            pools = pools_of_type.setdefault(route.type, [])
            if route.pool not in pools:
                pools.append(route.pool)
        self._pools_of_type = pools_of_type

    # ------------------------------------------------------------------ running
    async def run(self) -> None:
        """Sample live load and step until cancelled; a failing step is logged and retried."""
        sampler = asyncio.create_task(self._sample_loop())
        try:
            while True:
                try:
                    await self.step()
                except Exception as e:  # the loop must outlive a bad bin or a refit error
                    log.error("control.step_failed", error=repr(e))
                await asyncio.sleep(self.plan_interval)
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            self.close()

    def _heavy_step(self) -> None:
        """Apply a finished statsmodels job; start the next one when due and none is running (what
        a step does with the tier, on the calling thread)."""
        done, running = self._collect_heavy()
        self._start_heavy(self._heavy_work(done, running))

    def _collect_heavy(self) -> tuple[HeavyResult | None, bool]:
        """Loop thread: the result of a finished job (None if none or it failed), and whether one
        is still running."""
        if self._heavy is None:
            return None, False
        if not self._heavy.done():
            if time.monotonic() - self._heavy_started > HEAVY_TIMEOUT_S:
                log.error("predictor.heavy_timeout", seconds=HEAVY_TIMEOUT_S)
                self.close()
            return None, True
        fut, self._heavy = self._heavy, None
        if fut.exception() is not None:
            log.error("predictor.heavy_failed", error=repr(fut.exception()))
            return None, False
        return fut.result(), False

    def _heavy_work(self, done: HeavyResult | None, running: bool) -> HeavyJob | None:
        """Worker thread: apply `done`, and return the next job when due (one that fits nothing is
        computed here at once: no process needed)."""
        if done is not None:
            self.forecaster.apply_heavy(done)
        if running:
            return None
        job = self.forecaster.heavy_job(max(HORIZONS_S))
        if job is not None and not job.fits_anything:
            self.forecaster.apply_heavy(compute_heavy(job))
            return None
        return job

    def _start_heavy(self, job: HeavyJob | None) -> None:
        """Loop thread: run `job` in a fresh worker process."""
        if job is not None:
            self._heavy_proc, self._heavy = start_process(job)
            self._heavy_started = time.monotonic()

    def close(self) -> None:
        """Stop the statsmodels worker process of a job in flight, if any (the job is dropped)."""
        proc = self._heavy_proc
        if proc is not None and proc.is_alive():
            proc.kill()
            # The job's waiter thread reaps the process too; whichever waitpid loses sees it
            # "alive" for a moment, so poll the exit briefly instead of trusting one join.
            deadline = time.monotonic() + 2.0
            proc.join(2)
            while proc.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
        self._heavy_proc = None
        if self._heavy is not None and not self._heavy.done():
            self._heavy.cancel()
        self._heavy = None

    async def step(self) -> None:
        async with self._stepping:   # one `compute` at a time: it owns the worker-thread state
            self.sample()
            result = await asyncio.to_thread(self.compute, self.inputs())
            self.apply(result)

    def inputs(self) -> StepInputs:
        """Loop thread: what the next `compute` reads, in O(1) after `History.seal` (which hands
        the pending counters over, O(rows pending))."""
        self.history.seal()
        done, running = self._collect_heavy()
        return StepInputs(self.clock(), self.history.take_requests(),
                          {name: st.spec for name, st in self.pools.items()}, self._pools_of_type, done, running)

    def compute(self, inputs: StepInputs) -> StepResult:
        """Worker thread: one step's heavy part — observe, refit, retire, forecast, demand per pool."""
        with _collector_paused():
            self._observe_sessions(inputs)
            self._observe_closed_minutes(inputs)
            if self.forecaster.refit_due():
                self.clusters.update(self.forecaster.ids, *self.forecaster.daily_profiles())
                self.forecaster.refit()
            for event in self.uplifts.step(self.forecaster, self._scope):
                log.info("event.uplift_learned", name=event.name, kind=event.kind,
                         uplift=round(self.events.uplift(event.kind), 3))
            self._retire_quiet(inputs.now)
            job = self._heavy_work(inputs.heavy, inputs.heavy_running)
            outlooks = self._forecast(inputs)
            return StepResult(outlooks, self._model_rows(), self._transitions(), job, len(self.forecaster.ids))

    def apply(self, result: StepResult) -> None:
        """Loop thread: publish a step's result and plan every managed pool, O(pools)."""
        for name, st in self.pools.items():
            st.outlook = result.pools.get(name, st.outlook)
        self._models, self._next_types = result.models, result.next_types
        self._start_heavy(result.heavy_job)
        for name, st in self.pools.items():
            if st.spec.backend != "static":
                self._plan(name, st)
        self.publish()

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sample_interval)
            self.sample()

    def sample(self) -> None:
        """Record each pool's in-flight requests now, and when its ready members became ready."""
        now = self.clock()
        members = self.members_fn()
        for name, st in self.pools.items():
            views = members.get(name, ())
            ready = {m.id for m in views if m.state is MemberState.READY}
            st.load.sample(now, ready, sum(self.in_flight(mid) for mid in ready))

    # ------------------------------------------------------------------ history → predictor
    def _observe_closed_minutes(self, inputs: StepInputs) -> None:
        # A minute is read once. In a shared history other replicas' last rows of a minute arrive up to
        # a flush interval (plus a worker report) after it closed, so the leader waits that out twice.
        settle = 2 * self.cfg.routing.history.flush_interval + 1.0 if self.history.shared else 0.0
        current = int((inputs.now - settle) // MINUTE) * MINUTE
        if self._next_minute is None:
            # First step: learn from what history already holds (as much as the predictor keeps).
            since = current - int(BUFFER_DAYS * 86400)
        else:
            since = self._next_minute
        if since >= current:
            return
        rows = self.history.minute_rows(since, current, live=False)
        by_minute: dict[int, list[MinuteRow]] = {}
        for row in rows:
            by_minute.setdefault(row.minute, []).append(row)
        fc = self.forecaster
        bin_s = int(fc.bin_s)
        busy: dict[str, tuple[int, list]] = {}   # source -> (minute, its latency histograms) of its last busy minute
        for minute in sorted(by_minute):
            counts: dict[str, float] = {}
            per_type: dict[str, list] = {}           # type -> [requests, latency sum, histograms]
            source_sums: dict[str, list] = {}        # source -> [requests, aborts, latency sum, histograms]
            for row in by_minute[minute]:
                acc = source_sums.get(row.source)
                if acc is None:
                    acc = source_sums[row.source] = [0, 0, 0.0, []]
                acc[0] += row.requests
                acc[1] += row.aborts
                acc[2] += row.latency_sum
                acc[3].append(row.latency_hist)
                sid = self._series_id(row.source, row.type, inputs.now)
                self._last_seen[sid] = minute
                counts[sid] = counts.get(sid, 0.0) + row.requests
                acc = per_type.get(row.type)
                if acc is None:
                    acc = per_type[row.type] = [0, 0.0, []]
                acc[0] += row.requests
                acc[1] += row.latency_sum
                acc[2].append(row.latency_hist)
            self._scores.close_before(minute // bin_s, inputs.specs)
            self._bursts.close_before(minute // bin_s, inputs.specs)
            b = minute // bin_s
            per_pool: dict[str, float] = {}
            for rtype, (n, _, _) in per_type.items():
                for pool in inputs.pools_of_type.get(rtype, ()):
                    self._scores.add(pool, b, n)
                    per_pool[pool] = per_pool.get(pool, 0.0) + n
            for pool, n in per_pool.items():
                self._bursts.add(pool, b, n)
            fc.observe(minute, counts)
            for rtype, (n, lat, hists) in per_type.items():
                profile = self.profiles.setdefault(rtype, ResourceProfile(latency_bounds=LATENCY_BOUNDS))
                profile.update(n, lat, latency_hist=np.sum(hists, axis=0))
            for source, (n, aborts, lat, hists) in source_sums.items():
                if n > 0:
                    self._abort_slopes.setdefault(source, AbortSlope()).update(lat / n, aborts, n)
                if n >= MIN_LATENCY_SAMPLE:   # a histogram holds one count per request
                    busy[source] = (minute, hists)
        # Only a source's last busy minute sets its p95: one quantile per source, not per minute.
        for source, (minute, hists) in busy.items():
            self._p95[source] = (minute, histogram_quantile(np.sum(hists, axis=0), LATENCY_BOUNDS, 0.95))
        last = by_minute.get(max(by_minute)) if by_minute else None
        if last is not None:
            rates: dict[str, float] = {}
            for row in last:
                if self.controls is None or self.controls.predictive(row.source):
                    rates[row.type] = rates.get(row.type, 0.0) + row.requests / MINUTE
            self._type_rates = rates
        # Advance to the current bin even through silent minutes, so forecasts start from now.
        self._scores.close_before(current // bin_s, inputs.specs)
        self._bursts.close_before(current // bin_s, inputs.specs)
        fc.observe(current, {})
        self._next_minute = current

    def _observe_sessions(self, inputs: StepInputs) -> None:
        """Feed the session model the requests since the last step, then turn the last closed
        minute's request mix into the rates its sessions' next requests will bring per type:
        in steady flow Σ_src rate(src) × P(src → dst), ahead of them by the time between a
        session's requests. A mix shifting toward a type that leads to another warms the
        other's pool before those requests come."""
        now = inputs.now
        for source, rtype in inputs.requests:
            self.sessions.observe(source, rtype, now)
        if now - self._sessions_decayed >= 3600:
            self.sessions.decay(SESSION_DECAY_PER_HOUR)
            self._sessions_decayed = now
        self._session_rates = self.sessions.expected_next(self._type_rates)

    def _series_id(self, source: str, rtype: str, now: float) -> str:
        sid = f"{source}\x1f{rtype}"   # unit separator: cannot clash with names people write
        if sid not in self._series:
            self._series[sid] = (source, rtype)
            self._first_seen[sid] = now
        return sid

    def _retire_quiet(self, now: float) -> None:
        """Series without a request for RETIRE_AFTER_S leave the forecaster and every per-series
        map: they forecast zero by any model, and a flood of names admitted once would otherwise
        grow the forecasting cost without end. "other" stays; History keeps every row on disk, and
        a retired source that comes back starts as a new series."""
        quiet = [sid for sid, seen in self._last_seen.items()
                 if now - seen >= RETIRE_AFTER_S and self._series[sid][0] != OTHER]
        if not quiet:
            return
        self.forecaster.retire(quiet)
        gone = {self._series[sid][0] for sid in quiet}
        for sid in quiet:
            del self._series[sid], self._first_seen[sid], self._last_seen[sid]
        gone -= {source for source, _ in self._series.values()}
        for source in gone:
            self._abort_slopes.pop(source, None)
            self._p95.pop(source, None)
        log.info("predictor.series_retired", count=len(quiet), series=len(self._series),
                 quiet_for_s=RETIRE_AFTER_S)

    def _prior_rates(self, ids: Sequence[str], now: float) -> np.ndarray | None:
        """[series, horizon] req/s: for a young series (under a day) of a source that declared a
        workload profile, the profile's rate at each horizon, shared over the source's request
        types (the prior until a day of history exists); None when no series has one."""
        if self.controls is None:
            return None
        young = [(i, sid) for i, sid in enumerate(ids) if now - self._first_seen.get(sid, 0.0) < 86400]
        if not young:
            return None
        out: np.ndarray | None = None
        profiles: dict[str, Any] = {}
        types: dict[str, int] = {}
        for source, _ in self._series.values():
            types[source] = types.get(source, 0) + 1
        at = np.array([now + h for h in HORIZONS_S])
        for i, sid in young:
            source = self._series[sid][0]
            if source not in profiles:
                profiles[source] = self.controls.profile(source)
            profile = profiles[source]
            if profile is None:
                continue
            if out is None:
                out = np.zeros((len(ids), len(HORIZONS_S)))
            out[i] = np.asarray(profile.rates(at), dtype=np.float64) / max(types[source], 1)
        return out

    def _long_history(self, sid: str, first_bin: int, end_bin: int) -> np.ndarray | None:
        """Requests per predictor bin of one series, read back from History: the statsmodels tier
        wants three days and the ring buffer (reloaded at start) holds two."""
        if sid not in self._series:
            return None
        source, rtype = self._series[sid]
        bin_s = int(self.forecaster.bin_s)
        rows = self.history.series(source, rtype, first_bin * bin_s, end_bin * bin_s, live=False)
        if not rows:
            return None
        # From the series' first recorded minute on: days before it existed are not history.
        start = rows[0][0] // bin_s
        out = np.zeros(end_bin - start)
        for minute, n in rows:
            out[minute // bin_s - start] += n
        return out

    def _scope(self, sid: str) -> dict[str, str]:
        """The event scope keys of a series: its source, its type and the pool that type goes to."""
        source, rtype = self._series.get(sid, ("", ""))
        scope = {"source": source, "type": rtype}
        pools = self._pools_of_type.get(rtype)
        if pools:
            scope["pool"] = pools[0]
        return scope

    def _multipliers(self, sid: str, bins: np.ndarray) -> np.ndarray:
        return self.events.multipliers(self._scope(sid), bins)

    def _sensitivity(self, source: str, now: float) -> tuple[str, dict[str, Any] | None]:
        """A source's latency sensitivity as planned: what it declared; `high` while its recent p95
        latency is beyond the `abandon_after` it declared (its users are giving up); and for a
        source that declared nothing but `normal`, `high` when its history shows its clients
        abort markedly more as latency rises (learned: `AbortSlope`)."""
        control = self.controls.source(source) if self.controls is not None else None
        declared = control.latency_sensitivity if control is not None else "normal"
        abandon_after = control.abandon_after if control is not None else None
        seen = self._p95.get(source)
        p95 = seen[1] if seen is not None and now - seen[0] <= LATENCY_RECENT_S else None
        breach = bool(p95 is not None and abandon_after and p95 > abandon_after)
        learned = self._abort_slopes.get(source)
        slope = learned.slope if learned is not None and learned.weight >= LEARNED_MIN_REQUESTS else 0.0
        sensitivity = "high" if breach or (declared == "normal" and slope >= LEARNED_HIGH_SLOPE) else declared
        if sensitivity == "normal":
            return sensitivity, None
        return sensitivity, {"source": source, "declared": declared, "planned": sensitivity,
                             "p95_ms": round(float(p95) * 1000, 1) if p95 is not None else None,
                             "abandon_after_ms": round(abandon_after * 1000, 1) if abandon_after else None,
                             "breach": breach, "abort_slope": round(slope, 4)}

    # ------------------------------------------------------------------ predictor → demand
    def _forecast(self, inputs: StepInputs) -> dict[str, PoolOutlook]:
        """Every pool's forecast, demand per (type, horizon) and status, from one vectorised
        forecast of all series: numpy over series, Python over pools, types and sources only.
        Demand is the shared step's (`pools.step.pool_demand`), as in simulate."""
        fc = self.forecaster
        # Nothing is forecast before a first bin has closed: a forecast from no history would be
        # judged against the first bin (interval [0, 0]: an anomaly) and scored by the feedback
        # loop. (It is also when simulate's forecaster first speaks.)
        fa = fc.forecast_arrays(HORIZONS_S) if fc.buffer.filled else None
        ids = fa.ids if fa is not None else ()
        k = len(HORIZONS_S)
        open_bin = int(inputs.now // fc.bin_s)
        sources = [self._series[sid][0] for sid in ids]
        types = tuple(self._series[sid][1] for sid in ids)
        # Per source, once a step: planned or not (an opted-out source is served by the baseline
        # and burst tiers only), and the latency sensitivity it is planned at.
        per_source: dict[str, tuple[bool, int, dict[str, Any] | None]] = {}
        for source in set(sources):
            sensitivity, why = self._sensitivity(source, inputs.now)
            per_source[source] = (self.controls is None or self.controls.predictive(source),
                                  SENSITIVITIES.index(sensitivity), why)
        if fa is not None:
            window = np.asarray(fa.window_s)
            rate, lower, upper = fa.point / window, fa.lower / window, fa.upper / window
            open_lower, open_upper = fa.lower[:, 0], fa.upper[:, 0]   # HORIZONS_S[0] is the open bin, in requests
        else:
            rate = lower = upper = np.zeros((0, k))
            open_lower = open_upper = np.zeros(0)
        series = SeriesForecasts(types, rate, upper, fc.quantiles[1],
                                 np.array([per_source[s][0] for s in sources], dtype=bool),
                                 np.array([per_source[s][1] for s in sources], dtype=np.int64),
                                 self._prior_rates(ids, inputs.now))
        service_times = {t: p.service_time_s for t, p in self.profiles.items() if p.service_time_s is not None}
        type_of = np.array(types, dtype=object)
        active = self.anomalies.active()
        out: dict[str, PoolOutlook] = {}
        for name, spec in inputs.specs.items():
            routed = frozenset(t for t, pools in inputs.pools_of_type.items() if name in pools)
            sessions = {t: r for t, r in self._session_rates.items() if t in routed}
            cpu_costs, cpu = self.cpu_profile(name) if self.cpu_profile is not None else ({}, None)
            obs = PoolObservation(spec, routed, sessions=sessions, service_times=service_times,
                                  burst_rate=self._bursts.rate(name, spec.shadow), cpu_costs=cpu_costs, cpu=cpu)
            demand = pool_demand(obs, series)
            in_pool = np.isin(type_of, list(routed)) if len(ids) else np.zeros(0, dtype=bool)
            point_sum, lower_sum, upper_sum = (a[in_pool].sum(axis=0) for a in (rate, lower, upper))
            latency = {s: why for s in {sources[i] for i in np.flatnonzero(in_pool)}
                       if (why := per_source[s][2]) is not None}
            pool_anomalies = [a for a in active if a.series_id == name]
            out[name] = PoolOutlook(
                forecast=tuple(PoolForecast(h, round(float(point_sum[c]), 4), round(float(lower_sum[c]), 4),
                                            round(float(upper_sum[c]), 4)) for c, h in enumerate(HORIZONS_S)),
                demand=demand,
                latency=tuple(latency[s] for s in sorted(latency)),
                anomalies=tuple({"start": a.start, "direction": a.direction, "size": round(a.size, 3), "peak": a.peak}
                                for a in pool_anomalies),
                anomaly_up=any(a.direction == "up" for a in pool_anomalies),
                sessions={t: round(r, 4) for t, r in sorted(sessions.items())},
                observation=obs,
            )
            if demand:
                self._scores.expect(name, open_bin, float(open_lower[in_pool].sum()), float(open_upper[in_pool].sum()))
                self._bursts.expect(name, open_bin, demand)
        return out

    # ------------------------------------------------------------------ demand → plan
    def _plan(self, name: str, st: _PoolState) -> None:
        # Only demand above the forecast's interval switches the pool to burst sizing: demand below
        # it means the forecast is high, and dropping warm shadows then (just before a ramp that
        # came early in the forecast) would trade a few member-minutes for cold requests.
        spec = st.spec
        now = self.clock()
        live = st.load.live(now, spec.scaling, st.outlook.anomaly_up)
        manager = self.managers.get(name)
        def measured(kind: str) -> float | None:
            lead = manager.measured_lead(kind) if manager is not None else None
            return None if lead is None else lead * self.time_scale
        base = st.outlook.observation or PoolObservation(spec, frozenset())
        obs = replace(base, spec=spec, live=live, ready_since=tuple(st.load.ready_since.values()),
                      cold_lead=measured("cold"), shadow_lead=measured(spec.shadow.state))
        result = plan_pool(now, obs, st.demand, st.planner)
        new = result.plan
        st.desired = result.desired
        old, st.plan = st.plan, new
        if old is not None and _same(old, new):
            return
        reason = "; ".join(new.reasons) or _summary(new)
        log.info("pool.planned", pool=name, mode=spec.scaling.mode, ready=new.ready, shadow=new.shadow,
                 baseline=new.baseline, predictive=new.predictive, burst=new.burst,
                 forecast_ready=new.forecast_ready, burst_shadow=new.burst_shadow, reasons=list(new.reasons))
        if new.capped and not (old and old.capped):
            log.warning("pool.capped", pool=name, wanted=new.wanted, max=spec.capacity.max)
        manager = self.managers.get(name)
        if manager is not None:
            manager.note("plan", None, f"ready {new.ready}, shadow {new.shadow}: {reason}")

    def publish(self) -> DesiredState:
        """Publish what every managed pool should reach: its latest plan (the spec's baseline before
        the first) within the operator's bounds, as one frozen value handed to every manager."""
        pools: dict[str, Desired] = {}
        for name, st in self.pools.items():
            if st.spec.backend == "static":
                continue
            desired = st.desired if st.desired is not None else baseline_desired(name, st.spec, ())
            pools[name] = self.bound(name, desired) if self.bound is not None else desired
        self.published = DesiredState.of(pools, self.clock())
        for manager in list(self.managers.values()):
            manager.set_desired(self.published)
        return self.published

    # ------------------------------------------------------------------ status
    def _model_rows(self) -> tuple[dict[str, Any], ...]:
        """Worker thread: the chosen model and live forecast error of the first MODEL_ROWS series
        (source, type), flagged first — the feedback loop made visible."""
        fc = self.forecaster
        flagged = fc.feedback.flagged
        order = sorted(range(len(fc.ids)), key=lambda i: (not flagged[i], *self._series.get(fc.ids[i], (fc.ids[i], ""))))
        rows = []
        for sid, snap in fc.status(order[:MODEL_ROWS]).items():
            source, rtype = self._series.get(sid, (sid, ""))
            rows.append({"source": source, "type": rtype, "model": snap["model"], "flagged": snap["flagged"],
                         "errors": {f"{int(h * fc.bin_s // 60)}m": e for h, e in snap["horizons"].items()}})
        return tuple(rows)

    def _transitions(self) -> dict[str, dict[str, float]]:
        return {src: {dst: round(p, 4) for dst, p in sorted(row.items())}
                for src, row in sorted(self.sessions.transitions().items())}

    def model_status(self, limit: int = MODEL_ROWS) -> list[dict[str, Any]]:
        """The chosen model and live forecast error of the series (source, type), flagged first,
        as of the last step (at most MODEL_ROWS)."""
        return list(self._models[:limit])

    def next_types(self) -> Mapping[str, Mapping[str, float]]:
        """P(next request type | this one) per session, as learned by the last step (for /admin/status)."""
        return self._next_types

    def pool_status(self, pool: str) -> dict[str, Any]:
        st = self.pools[pool]
        p = st.plan
        o = st.outlook
        out: dict[str, Any] = {
            "mode": "static" if st.spec.backend == "static" else st.spec.scaling.mode,
            "forecast": [{"horizon_s": f.horizon_s, "rate": f.rate, "lower": f.lower, "upper": f.upper}
                         for f in o.forecast],
            "anomalies": [dict(a) for a in o.anomalies],
            "latency": list(o.latency),
            "sessions": dict(o.sessions),
        }
        if p is not None:
            out["desired"] = {"ready": p.ready, "shadow": p.shadow, "baseline": p.baseline,
                              "predictive": p.predictive, "burst": p.burst, "forecast_ready": p.forecast_ready,
                              "burst_shadow": p.burst_shadow, "capped": p.capped, "panic": p.panic}
        return out

    def plan_of(self, pool: str) -> Plan | None:
        return self.pools[pool].plan


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a step computes. A step allocates many short-lived
    containers (a replay of two days: 100,000s of rows), which set off full collections over the
    whole heap in the worker thread, and a collection never lets go of the GIL: the probe saw the
    proxy stop for 60–150 ms at each. What a step allocates is freed by reference counting; the
    collector resumes afterwards, its young generations cleared here, off the loop."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.collect(1)
            gc.enable()


def _events_of(cfg: Config) -> list:
    if not cfg.directory:
        return []
    return load_events(Path(cfg.directory) / EVENTS_FILE)


def _same(a: Plan, b: Plan) -> bool:
    return (a.ready, a.shadow, a.predictive, a.burst, a.forecast_ready, a.burst_shadow, a.capped, a.panic) == \
        (b.ready, b.shadow, b.predictive, b.burst, b.forecast_ready, b.burst_shadow, b.capped, b.panic)


def _summary(p: Plan) -> str:
    return (f"baseline {p.baseline} + predictive {p.predictive} + burst {p.burst}"
            f" (forecast alone: {p.forecast_ready})")



