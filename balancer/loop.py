"""The live control loop of `warmfront run`: history → predictor → planner → pool managers.

Per step (every `plan_interval`, a few seconds):
1. feed the predictor every minute that closed since the last step, read from `History`
   (unflushed rows included), and the learned service time per request type;
2. refit the predictor when it says so, in a worker thread (the event loop keeps proxying), and
   start its statsmodels tier for the busiest series in a worker process when due (seconds of
   CPU and 250 MB of imports that are not the proxy's; its result is applied by a later step,
   never awaited);
3. forecast every series (source × type), sum the request types routed to each pool, and
   compare the last closed bin of each pool with the interval forecast for it (anomalies);
4. plan each managed pool from that demand and the live in-flight load (sampled every
   `sample_interval`), and wake its manager when the plan changed.

Nothing here is on the proxy's request path: the proxy writes counters, this loop reads them.
All times come from `clock`, so the demo can compress a day into minutes and tests can stop time.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any, Protocol

import numpy as np
import structlog

from balancer.controls import planning_quantile
from balancer.history import LATENCY_BOUNDS, History, MinuteRow
from config.events import EVENTS_FILE, load_events
from config.models import Config, Pool
from pools.manager import PoolManager
from pools.members import MemberState, MemberView
from pools.planner import LiveLoad, Plan, PlanInputs, PlannerState, TypeDemand, plan
from pools.reconciler import Desired, ObservedMember, baseline_desired
from predictor.anomaly import AnomalyDetector
from predictor.engine import Forecaster
from predictor.heavy import HeavyResult, compute as compute_heavy, start_process
from predictor.events import EventBook
from predictor.profiles import AbortSlope, ResourceProfile, SessionTransitions, histogram_quantile

log = structlog.get_logger("warmfront")

HORIZONS_S = (300.0, 900.0, 1800.0, 3600.0, 86400.0)
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
ACTIVATION_LEAD_S = {"running": 0.001, "paused": 0.0175}


@dataclass(frozen=True, slots=True)
class PoolForecast:
    """Forecast arrivals into one pool at one horizon, requests per second."""
    horizon_s: float
    rate: float
    lower: float
    upper: float


class SourcePolicy(Protocol):
    """The operator's per-source settings the loop honours (balancer.controls.Controls)."""

    def predictive(self, source: str) -> bool: ...

    def profile(self, source: str) -> Any: ...   # a WorkloadProfile with .rates(bin_starts), or None

    def source(self, source: str) -> Any: ...    # a SourceControl: .latency_sensitivity, .abandon_after


@dataclass(slots=True)
class _PoolState:
    spec: Pool
    planner: PlannerState = field(default_factory=PlannerState)
    plan: Plan | None = None
    forecast: tuple[PoolForecast, ...] = ()
    demand: tuple[TypeDemand, ...] = ()
    samples: deque = field(default_factory=lambda: deque(maxlen=600))   # (time, in-flight)
    ready_since: dict[str, float] = field(default_factory=dict)
    latency: tuple[dict[str, Any], ...] = ()   # sources planned at a non-default quantile, and why
    expected: dict[int, tuple[float, float]] = field(default_factory=dict)  # bin -> (lower, upper) requests
    actual: dict[int, float] = field(default_factory=dict)                 # bin -> requests


class ControlLoop:
    def __init__(self, cfg: Config, history: History, members: Callable[[], Mapping[str, Sequence[MemberView]]],
                 in_flight: Callable[[str], int], managers: Mapping[str, PoolManager], *,
                 clock: Callable[[], float], plan_interval: float = 5.0, sample_interval: float = 1.0,
                 forecaster: Forecaster | None = None, events: EventBook | None = None,
                 controls: SourcePolicy | None = None) -> None:
        self.cfg, self.history, self.clock = cfg, history, clock
        self.members_fn, self.in_flight, self.managers = members, in_flight, managers
        self.plan_interval, self.sample_interval = plan_interval, sample_interval
        self.events = events if events is not None else EventBook(_events_of(cfg))
        self.controls = controls
        self._first_seen: dict[str, float] = {}   # series id -> clock time of its first request
        self.forecaster = forecaster or Forecaster(clock, multipliers=self._multipliers, long_history=self._long_history)
        self._heavy: asyncio.Future[HeavyResult] | None = None
        self._heavy_started = 0.0
        self._heavy_proc: Any = None   # the worker process of the job in flight
        self.anomalies = AnomalyDetector()
        self.profiles: dict[str, ResourceProfile] = {}
        self.pools: dict[str, _PoolState] = {}
        self._pools_of_type: dict[str, list[str]] = {}
        self.reconfigure(cfg)
        self._series: dict[str, tuple[str, str]] = {}   # series id -> (source, type)
        # Next request type per session (keyed by source): which pool a session will need next.
        self.sessions = SessionTransitions(max_sessions=100_000, session_gap=SESSION_GAP_S)
        self._sessions_decayed = clock()
        self._type_rates: dict[str, float] = {}     # req/s per type in the last closed minute (opted-in sources)
        self._session_rates: dict[str, float] = {}  # req/s per type its sessions' next requests make
        self._abort_slopes: dict[str, AbortSlope] = {}   # source -> learned rise of aborts with latency
        self._p95: dict[str, tuple[int, float]] = {}     # source -> (minute, p95 upstream latency s) of its last busy minute
        self._next_minute: int | None = None

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
        # A request type feeds every pool a route sends it to.
        self._pools_of_type.clear()
        for route in cfg.routing.routes:
            pools = self._pools_of_type.setdefault(route.type, [])
            if route.pool not in pools:
                pools.append(route.pool)

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
        """Apply a finished statsmodels job; start the next one when due and none is running."""
        if self._heavy is not None:
            if not self._heavy.done():
                if time.monotonic() - self._heavy_started > HEAVY_TIMEOUT_S:
                    log.error("predictor.heavy_timeout", seconds=HEAVY_TIMEOUT_S)
                    self.close()
                return
            fut, self._heavy = self._heavy, None
            if fut.exception() is not None:
                log.error("predictor.heavy_failed", error=repr(fut.exception()))
            else:
                self.forecaster.apply_heavy(fut.result())
        job = self.forecaster.heavy_job(max(HORIZONS_S))
        if job is not None and not job.fits_anything:
            self.forecaster.apply_heavy(compute_heavy(job))   # nothing to fit: no process needed
        elif job is not None:
            self._heavy_proc, self._heavy = start_process(job)
            self._heavy_started = time.monotonic()

    def close(self) -> None:
        """Stop the statsmodels worker process of a job in flight, if any (the job is dropped)."""
        if self._heavy_proc is not None and self._heavy_proc.is_alive():
            self._heavy_proc.kill()
            self._heavy_proc.join(2)
        self._heavy_proc = None
        if self._heavy is not None and not self._heavy.done():
            self._heavy.cancel()
        self._heavy = None

    async def step(self) -> None:
        self.sample()
        self._observe_sessions()
        self._observe_closed_minutes()
        if self.forecaster.refit_due():
            await asyncio.to_thread(self.forecaster.refit)
        self._heavy_step()
        self._forecast()
        for name, st in self.pools.items():
            if st.spec.backend != "static":
                self._plan(name, st)

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
            st.samples.append((now, sum(self.in_flight(mid) for mid in ready)))
            for mid in ready:
                st.ready_since.setdefault(mid, now)
            for mid in set(st.ready_since) - ready:
                del st.ready_since[mid]

    # ------------------------------------------------------------------ history → predictor
    def _observe_closed_minutes(self) -> None:
        current = int(self.clock() // MINUTE) * MINUTE
        if self._next_minute is None:
            # First step: learn from what history already holds (as much as the predictor keeps).
            since = current - int(BUFFER_DAYS * 86400)
        else:
            since = self._next_minute
        if since >= current:
            return
        rows = self.history.minute_rows(since, current)
        by_minute: dict[int, list[MinuteRow]] = {}
        for row in rows:
            by_minute.setdefault(row.minute, []).append(row)
        fc = self.forecaster
        bin_s = int(fc.bin_s)
        for minute in sorted(by_minute):
            counts: dict[str, float] = {}
            per_type: dict[str, list[float]] = {}
            per_source: dict[str, np.ndarray] = {}
            source_sums: dict[str, list[float]] = {}   # source -> [requests, aborts, latency sum]
            for row in by_minute[minute]:
                hist = per_source.setdefault(row.source, np.zeros(len(LATENCY_BOUNDS) + 1))
                hist += row.latency_hist
                acc = source_sums.setdefault(row.source, [0.0, 0.0, 0.0])
                acc[0], acc[1], acc[2] = acc[0] + row.requests, acc[1] + row.aborts, acc[2] + row.latency_sum
                sid = self._series_id(row.source, row.type)
                counts[sid] = counts.get(sid, 0.0) + row.requests
                acc = per_type.setdefault(row.type, [0.0, 0.0, np.zeros(len(LATENCY_BOUNDS) + 1)])
                acc[0] += row.requests
                acc[1] += row.latency_sum
                acc[2] += row.latency_hist
                for pool in self._pools_of_type.get(row.type, ()):
                    b = minute // bin_s
                    self.pools[pool].actual[b] = self.pools[pool].actual.get(b, 0.0) + row.requests
            self._close_bins_before(minute // bin_s)
            fc.observe(minute, counts)
            for rtype, (n, lat, hist) in per_type.items():
                profile = self.profiles.setdefault(rtype, ResourceProfile(latency_bounds=LATENCY_BOUNDS))
                profile.update(n, lat, latency_hist=hist)
            for source, (n, aborts, lat) in source_sums.items():
                if n > 0:
                    self._abort_slopes.setdefault(source, AbortSlope()).update(lat / n, aborts, n)
            for source, hist in per_source.items():
                if hist.sum() >= MIN_LATENCY_SAMPLE:
                    self._p95[source] = (minute, histogram_quantile(hist, LATENCY_BOUNDS, 0.95))
            rates: dict[str, float] = {}
            for row in by_minute[minute]:
                if self.controls is None or self.controls.predictive(row.source):
                    rates[row.type] = rates.get(row.type, 0.0) + row.requests / MINUTE
            self._type_rates = rates
        # Advance to the current bin even through silent minutes, so forecasts start from now.
        self._close_bins_before(current // bin_s)
        fc.observe(current, {})
        self._next_minute = current

    def _observe_sessions(self) -> None:
        """Feed the session model the requests since the last step, then turn the last closed
        minute's request mix into the rates its sessions' next requests will bring per type:
        in steady flow Σ_src rate(src) × P(src → dst), ahead of them by the time between a
        session's requests. A mix shifting toward a type that leads to another warms the
        other's pool before those requests come."""
        now = self.clock()
        for source, rtype in self.history.take_requests():
            self.sessions.observe(source, rtype, now)
        if now - self._sessions_decayed >= 3600:
            self.sessions.decay(SESSION_DECAY_PER_HOUR)
            self._sessions_decayed = now
        self._session_rates = self.sessions.expected_next(self._type_rates)

    def _close_bins_before(self, b: int) -> None:
        """Score every pool's bins before `b` against the interval forecast for them."""
        for name, st in self.pools.items():
            for done in sorted(k for k in st.expected if k < b):
                lower, upper = st.expected.pop(done)
                self.anomalies.update(name, done * self.forecaster.bin_s, st.actual.get(done, 0.0), lower, upper)
            for done in [k for k in st.actual if k < b]:
                del st.actual[done]

    def _series_id(self, source: str, rtype: str) -> str:
        sid = f"{source}\x1f{rtype}"   # unit separator: cannot clash with names people write
        if sid not in self._series:
            self._series[sid] = (source, rtype)
            self._first_seen[sid] = self.clock()
        return sid

    def _prior_rate(self, sid: str, source: str, horizon_s: float) -> float:
        """A young series of a source that declared a workload profile: the profile's rate for that
        time, shared over the source's request types (the prior until a day of history exists)."""
        if self.controls is None or self.clock() - self._first_seen.get(sid, 0.0) >= 86400:
            return 0.0
        profile = self.controls.profile(source)
        if profile is None:
            return 0.0
        types = sum(1 for s, _ in self._series.values() if s == source)
        return float(profile.rates(np.array([self.clock() + horizon_s]))[0]) / max(types, 1)

    def _long_history(self, sid: str, first_bin: int, end_bin: int) -> np.ndarray | None:
        """Requests per predictor bin of one series, read back from History: the statsmodels tier
        wants three days and the ring buffer (reloaded at start) holds two."""
        if sid not in self._series:
            return None
        source, rtype = self._series[sid]
        bin_s = int(self.forecaster.bin_s)
        rows = self.history.series(source, rtype, first_bin * bin_s, end_bin * bin_s)
        if not rows:
            return None
        # From the series' first recorded minute on: days before it existed are not history.
        start = rows[0][0] // bin_s
        out = np.zeros(end_bin - start)
        for minute, n in rows:
            out[minute // bin_s - start] += n
        return out

    def _multipliers(self, sid: str, bins: np.ndarray) -> np.ndarray:
        source, rtype = self._series.get(sid, ("", ""))
        scope = {"source": source, "type": rtype}
        pools = self._pools_of_type.get(rtype)
        if pools:
            scope["pool"] = pools[0]
        return self.events.multipliers(scope, bins)

    def _sensitivity(self, source: str) -> tuple[str, dict[str, Any] | None]:
        """A source's latency sensitivity as planned: what it declared; `high` while its recent p95
        latency is beyond the `abandon_after` it declared (its users are giving up); and for a
        source that declared nothing but `normal`, `high` when its history shows its clients
        abort markedly more as latency rises (learned: `AbortSlope`)."""
        control = self.controls.source(source) if self.controls is not None else None
        declared = control.latency_sensitivity if control is not None else "normal"
        abandon_after = control.abandon_after if control is not None else None
        seen = self._p95.get(source)
        recent = seen is not None and self.clock() - seen[0] <= LATENCY_RECENT_S
        breach = bool(recent and abandon_after and seen[1] > abandon_after)
        learned = self._abort_slopes.get(source)
        slope = learned.slope if learned is not None and learned.weight >= LEARNED_MIN_REQUESTS else 0.0
        sensitivity = "high" if breach or (declared == "normal" and slope >= LEARNED_HIGH_SLOPE) else declared
        if sensitivity == "normal":
            return sensitivity, None
        return sensitivity, {"source": source, "declared": declared, "planned": sensitivity,
                             "p95_ms": round(float(seen[1]) * 1000, 1) if recent else None,
                             "abandon_after_ms": round(abandon_after * 1000, 1) if abandon_after else None,
                             "breach": breach, "abort_slope": round(slope, 4)}

    # ------------------------------------------------------------------ predictor → demand
    def _forecast(self) -> None:
        forecasts = self.forecaster.forecast(HORIZONS_S)
        open_bin = int(self.clock() // self.forecaster.bin_s)
        z_hi = NormalDist().inv_cdf(self.forecaster.quantiles[1])
        for name, st in self.pools.items():
            z_of = {s: NormalDist().inv_cdf(planning_quantile(st.spec.scaling.quantile, s)) for s in ("low", "normal", "high")}
            latency: dict[str, dict[str, Any]] = {}
            by_type: dict[tuple[str, float], list[float]] = {}   # (type, horizon) -> [rate, rate_q]
            totals = {h: [0.0, 0.0, 0.0] for h in HORIZONS_S}     # horizon -> point, lower, upper (req/s)
            band = [0.0, 0.0]   # the open bin's interval in requests, summed over series: conservative
            for sid, per_horizon in forecasts.items():
                source, rtype = self._series[sid]
                if name not in self._pools_of_type.get(rtype, ()):
                    continue
                # An opted-out source is served by the baseline and burst tiers only.
                predictive = self.controls is None or self.controls.predictive(source)
                sensitivity, why = self._sensitivity(source)
                if why is not None:
                    latency[source] = why
                z_q = z_of[sensitivity]
                for f in per_horizon:
                    rate, lower, upper = (v / f.window_s for v in (f.point, f.lower, f.upper))
                    prior = self._prior_rate(sid, source, f.horizon_s)
                    if prior > rate:
                        rate, upper = prior, max(upper, prior)
                    # The predictor's band is at its own quantile; the pool plans at `scaling.quantile`,
                    # read off the same band assuming it is roughly normal.
                    rate_q = max(rate, rate + (upper - rate) * z_q / z_hi)
                    if predictive:
                        acc = by_type.setdefault((rtype, f.horizon_s), [0.0, 0.0])
                        acc[0] += rate
                        acc[1] += rate_q
                    t = totals[f.horizon_s]
                    t[0], t[1], t[2] = t[0] + rate, t[1] + lower, t[2] + upper
                    if f.horizon_s == self.forecaster.bin_s:   # the open bin: scored when it closes
                        band[0], band[1] = band[0] + f.lower, band[1] + f.upper
            # Sessions under way: their next requests are a floor for the nearest horizon.
            near = HORIZONS_S[0]
            for rtype, rate in self._session_rates.items():
                if name in self._pools_of_type.get(rtype, ()) and rate > 0:
                    acc = by_type.setdefault((rtype, near), [0.0, 0.0])
                    acc[0], acc[1] = max(acc[0], rate), max(acc[1], rate)
            st.latency = tuple(latency[s] for s in sorted(latency))
            st.demand = tuple(TypeDemand(rtype, h, r, rq, self._service_time(rtype))
                              for (rtype, h), (r, rq) in sorted(by_type.items()))
            st.forecast = tuple(PoolForecast(h, round(p, 4), round(lo, 4), round(hi, 4))
                                for h, (p, lo, hi) in totals.items())
            # The first forecast made for a bin is the one it is judged by, not one made halfway in.
            if by_type:
                st.expected.setdefault(open_bin, (band[0], band[1]))

    def _service_time(self, rtype: str) -> float | None:
        profile = self.profiles.get(rtype)
        return profile.service_time_s if profile is not None else None

    # ------------------------------------------------------------------ demand → plan
    def _plan(self, name: str, st: _PoolState) -> None:
        # Only demand above the forecast's interval switches the pool to burst sizing: demand below
        # it means the forecast is high, and dropping warm shadows then (just before a ramp that
        # came early in the forecast) would trade a few member-minutes for cold requests.
        spec = st.spec
        now = self.clock()
        live = LiveLoad(in_flight_stable=_mean_since(st.samples, now - spec.scaling.stable_window),
                        in_flight_panic=_mean_since(st.samples, now - spec.scaling.panic_window),
                        anomaly=any(a.series_id == name and a.direction == "up" for a in self.anomalies.active()))
        # Lead times as measured on this pool's members; the activation benchmark's medians until then.
        manager = self.managers.get(name)
        measured = manager.measured_lead if manager is not None else (lambda kind: None)
        cold = measured("cold")
        if cold is not None and cold > spec.scaling.launch_lead:
            spec = spec.model_copy(update={"scaling": spec.scaling.model_copy(update={"launch_lead": cold})})
        lead = measured(spec.shadow.state) or ACTIVATION_LEAD_S.get(spec.shadow.state, spec.scaling.launch_lead)
        new = plan(spec, PlanInputs(now, st.demand, live, tuple(st.ready_since.values()), lead), st.planner)
        old, st.plan = st.plan, new
        if old is not None and _same(old, new):
            return
        reason = "; ".join(new.reasons) or _summary(new)
        log.info("pool.planned", pool=name, mode=spec.scaling.mode, ready=new.ready, shadow=new.shadow,
                 baseline=new.baseline, predictive=new.predictive, burst=new.burst,
                 forecast_ready=new.forecast_ready, reasons=list(new.reasons))
        if new.capped and not (old and old.capped):
            log.warning("pool.capped", pool=name, wanted=new.wanted, max=spec.capacity.max)
        manager = self.managers.get(name)
        if manager is not None:
            manager.note("plan", None, f"ready {new.ready}, shadow {new.shadow}: {reason}")
            manager.wake()

    def desired(self, pool: str, spec: Pool, observed: Sequence[ObservedMember]) -> Desired:
        """The PoolManager's `desired_fn`: the latest plan, or the spec's baseline before the first."""
        st = self.pools.get(pool)
        p = st.plan if st is not None else None
        if p is None:
            return baseline_desired(pool, spec, observed)
        return Desired(ready=p.ready, shadow=p.shadow, shadow_state=spec.shadow.state,
                       max_members=spec.capacity.max, drain_timeout=spec.drain_timeout)

    # ------------------------------------------------------------------ status
    def model_status(self, limit: int = 50) -> list[dict[str, Any]]:
        """The chosen model and live forecast error of the series (source, type), flagged first —
        the feedback loop made visible."""
        rows = []
        for sid, snap in self.forecaster.status().items():
            source, rtype = self._series.get(sid, (sid, ""))
            rows.append({"source": source, "type": rtype, "model": snap["model"], "flagged": snap["flagged"],
                         "errors": {f"{int(h * self.forecaster.bin_s // 60)}m": e
                                                                for h, e in snap["horizons"].items()}})
        rows.sort(key=lambda r: (not r["flagged"], r["source"], r["type"]))
        return rows[:limit]

    def next_types(self) -> dict[str, dict[str, float]]:
        """P(next request type | this one) per session, as learned (for /admin/status)."""
        return {src: {dst: round(p, 4) for dst, p in sorted(row.items())}
                for src, row in sorted(self.sessions.transitions().items())}

    def pool_status(self, pool: str) -> dict[str, Any]:
        st = self.pools[pool]
        p = st.plan
        out: dict[str, Any] = {
            "mode": "static" if st.spec.backend == "static" else st.spec.scaling.mode,
            "forecast": [{"horizon_s": f.horizon_s, "rate": f.rate, "lower": f.lower, "upper": f.upper}
                         for f in st.forecast],
            "anomalies": [{"start": a.start, "direction": a.direction, "size": round(a.size, 3), "peak": a.peak}
                          for a in self.anomalies.active() if a.series_id == pool],
            "latency": list(st.latency),
            "sessions": {t: round(r, 4) for t, r in sorted(self._session_rates.items())
                         if pool in self._pools_of_type.get(t, ())},
        }
        if p is not None:
            out["desired"] = {"ready": p.ready, "shadow": p.shadow, "baseline": p.baseline,
                              "predictive": p.predictive, "burst": p.burst, "forecast_ready": p.forecast_ready,
                              "capped": p.capped, "panic": p.panic}
        return out

    def plan_of(self, pool: str) -> Plan | None:
        return self.pools[pool].plan


def _events_of(cfg: Config) -> list:
    if not cfg.directory:
        return []
    return load_events(Path(cfg.directory) / EVENTS_FILE)


def _mean_since(samples: deque, since: float) -> float:
    """Mean of the samples taken at or after `since`; the latest one when the window holds none."""
    window = [v for t, v in samples if t >= since]
    if window:
        return sum(window) / len(window)
    return float(samples[-1][1]) if samples else 0.0


def _same(a: Plan, b: Plan) -> bool:
    return (a.ready, a.shadow, a.predictive, a.burst, a.forecast_ready, a.capped, a.panic) == \
        (b.ready, b.shadow, b.predictive, b.burst, b.forecast_ready, b.capped, b.panic)


def _summary(p: Plan) -> str:
    return (f"baseline {p.baseline} + predictive {p.predictive} + burst {p.burst}"
            f" (forecast alone: {p.forecast_ready})")



