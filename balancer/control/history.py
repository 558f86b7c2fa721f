"""Per-source traffic history: per-minute counters per (source, request type), kept in a store.

The request path calls `History.record`, which only bumps in-memory counters. A background task
(`History.run`) hands the finished counters to a worker thread that upserts them into the store
(`balancer.control.history_store`: SQLite by default, or PostgreSQL shared by replicas, whose
counts add up there). Queries (`summary`, `series`, `minute_rows`) merge what the store holds with
what is still in memory.

Threading: `record`, `flush`, `seal`, `summary` and `close` belong to the event-loop thread; the
store write runs in a worker thread, and so may `minute_rows`/`series` with `live=False` (the
control loop's worker reads closed minutes that way after `seal`). Taking the pending counters
happens on the loop thread, so a `record` can never increment a row that a writer has already read.

Bounded cardinality (top-K plus "other"): at most `max_sources` source names are tracked. A new
name is admitted at once while there is room; beyond that its requests count under the source
"other", and it has to earn a slot by volume. Every request of a name not tracked bumps a
count-min sketch (4 rows x `SKETCH_WIDTH` counters, fixed memory, reset every
`REBALANCE_INTERVAL`). A name whose estimate beats the sketch's noise — λ = untracked requests in
the window / width, the Poisson share of every counter — by `ADMIT_MIN_REQUESTS` + 4√λ becomes a
candidate, ranked by its estimate less λ. At the end of the window the busiest candidates (at most
a tenth of the cap) take the slots of the tracked sources that were quieter than them in that
window, which are demoted to "other". A flood of one-off random keys never reaches the threshold
and stays in "other"; a newcomer sending `ADMIT_MIN_REQUESTS` a minute or more (beyond the noise)
gets in at the end of its first busy minute. Memory stays bounded by minutes pending x
(max_sources + 1) x request types, plus the sketch (16,384 counters, ≈ 130 KB) and the candidates.
"""
from __future__ import annotations

import asyncio
import heapq
import math
import threading
import time
from bisect import bisect_left
from collections import deque
from itertools import repeat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from math import sqrt
from pathlib import Path

import structlog

from balancer.control.history_store import (HistoryStore, Key, Rows, SqliteStore, StoreError, Totals, UsageRows,
                                            merge_batches)
from balancer.dataplane.counters import (ABORTS, BYTES_IN, BYTES_OUT, ERRORS, HIST, LATENCY_BOUNDS, LATENCY_SUM,
                               OTHER, REQUESTS, WIDTH)

log = structlog.get_logger(__name__)

REBALANCE_INTERVAL = 60.0
SKETCH_WIDTH = 4096           # counters in each of the 4 rows of the sketch over untracked names; row k
                              # is indexed by bits 12k..12k+11 of the name's (salted) hash
ADMIT_MIN_REQUESTS = 10       # requests in one window a newcomer needs, beyond the sketch's noise
PRUNE_INTERVAL = 3600.0
DAY_WINDOW = 86400.0     # the window /admin/status summarises; its database totals are kept off the loop
LATE_DAY_S = 180         # `summary` subtracts up to this many minutes' rows from totals built earlier
REQUEST_TAP = 100_000   # requests kept for the session model between two control-loop steps


@dataclass(frozen=True, slots=True)
class _DayTotals:
    """Counters per (source, type) of the database rows from minute `since` on: what `summary`
    over the last DAY_WINDOW reads instead of a GROUP BY on the loop thread. Built in the writer
    thread once a minute, folded forward by every write; replaced whole, never mutated."""
    since: int
    totals: Totals


@dataclass(frozen=True, slots=True)
class SourceSummary:
    source: str
    type: str
    requests: int
    errors: int
    aborts: int
    bytes_in: int
    bytes_out: int
    mean_latency_ms: float
    p95_latency_ms: float  # interpolated inside the histogram bucket holding the 95th percentile


@dataclass(frozen=True, slots=True)
class MinuteRow:
    minute: int
    source: str
    type: str
    requests: int
    latency_sum: float
    latency_hist: tuple[int, ...]  # counts per LATENCY_BOUNDS bucket, the last one +Inf
    aborts: int = 0                # requests the client gave up on before the answer


class History:
    def __init__(
        self,
        store: HistoryStore | Path | None,
        max_sources: int = 1000,
        retention: float = 30 * 86400.0,
        clock: Callable[[], float] = time.time,
        time_scale: float = 1.0,
    ) -> None:
        self.clock = clock
        # `clock` seconds per real second (the demo runs a day in minutes): latencies measured in
        # real seconds by the workers are scaled by it in `merge`
        self.time_scale = time_scale
        self.max_sources = max_sources
        self.retention = retention
        self._pending: Rows = {}
        self._unwritten: list[Rows] = []   # taken from _pending, not yet committed
        self._tracked: set[str] = set()
        self._overflow = 0                 # requests counted as "other" since the last rebalance
        self._activity: dict[str, int] = {}
        self._sketch = _new_sketch()       # counts of untracked names in this window
        self._candidates: dict[str, float] = {}   # untracked name -> estimate beyond the noise
        self._max_candidates = max(1, max_sources // 10)
        self._last_rebalance = clock()
        self._last_prune = -math.inf
        self._write_lock = threading.Lock()   # one write (and prune) at a time: the run task's, flush's, close's
        self._lock = threading.Lock()      # guards _day, _written and dropping written batches from _unwritten
        self._day: _DayTotals | None = None
        self._written = 0                  # batches committed so far
        self._closed = False
        # (source, type) of every request in order, for the session model of the control loop;
        # bounded, so a loop that stops reading costs nothing but the oldest entries
        self._requests: deque[tuple[str, str]] = deque(maxlen=REQUEST_TAP)
        # Requests per type since start, as the workers' batches arrive: the resource sampler reads
        # the difference between two of its samples (finer than a minute, for the per-type cost fit).
        self.type_requests: dict[str, int] = {}
        self._store: HistoryStore = SqliteStore(store) if store is None or isinstance(store, Path) else store
        # Before serving (nothing else runs yet): the day's totals /admin/status reads, and from
        # them the busiest sources of the day, tracked again after a restart. A store that cannot
        # answer fails start-up here (StoreError).
        try:
            self._rebuild_day(int((self.clock() - DAY_WINDOW) // 60) * 60)
        except BaseException:
            self._store.close()
            raise
        self._tracked.update(self._busiest_sources(max_sources))

    @property
    def shared(self) -> bool:
        """Whether other replicas write into the same store (their newest rows arrive late)."""
        return not self._store.embedded

    # ------------------------------------------------------------------ hot path
    def record(
        self,
        source: str,
        rtype: str,
        status: int,
        bytes_in: int,
        bytes_out: int,
        latency: float,
        aborted: bool,
    ) -> None:
        self._requests.append((source, rtype))
        if source not in self._tracked:
            source = self._admit(source)
        key = (int(self.clock() // 60) * 60, source, rtype)
        row = self._pending.get(key)
        if row is None:
            row = self._pending[key] = [0] * WIDTH
        row[REQUESTS] += 1
        if status >= 500:
            row[ERRORS] += 1
        if aborted:
            row[ABORTS] += 1
        row[BYTES_IN] += bytes_in
        row[BYTES_OUT] += bytes_out
        row[LATENCY_SUM] += latency
        row[HIST + bisect_left(LATENCY_BOUNDS, latency)] += 1

    def merge(self, rows: Iterable[tuple], sessions: dict[str, list]) -> None:
        """A worker's batch (`balancer.dataplane.worker.Tally`): counter rows `(source, type, *row)` counted
        since its last batch, and per source its request types in order as flat `[type, n, ...]`
        runs. The batch lands in the current minute of this history's clock (a worker ships about
        once a second, so a minute's edge blurs by at most that), and sources are admitted here, in
        the one place that sees every worker's traffic."""
        minute = int(self.clock() // 60) * 60
        tracked, pending, per_type = self._tracked, self._pending, self.type_requests
        for source, rtype, *counts in rows:
            per_type[rtype] = per_type.get(rtype, 0) + counts[REQUESTS]
            if self.time_scale != 1.0:
                _scale_latency(counts, self.time_scale)
            if source not in tracked:
                source = self._admit(source, counts[REQUESTS])
            key = (minute, source, rtype)
            row = pending.get(key)
            if row is None:
                pending[key] = counts
            else:
                for i, v in enumerate(counts):
                    row[i] += v
        tap = self._requests
        for source, runs in sessions.items():
            for i in range(0, len(runs), 2):
                tap.extend(repeat((source, runs[i]), runs[i + 1]))

    def take_requests(self) -> deque[tuple[str, str]]:
        """(source, type) of the requests recorded since the last call, oldest first (at most the
        last `REQUEST_TAP`); the caller owns what it gets (it may read it on another thread)."""
        # swapped, not copied: O(1) on the loop thread however many requests there were
        taken, self._requests = self._requests, deque(maxlen=REQUEST_TAP)
        return taken

    def _admit(self, source: str, n: int = 1) -> str:
        """The name `source` is counted under: itself once admitted, else "other" (and the sketch
        counts it towards admission)."""
        if source == OTHER:
            return OTHER
        if len(self._tracked) < self.max_sources:
            self._tracked.add(source)
            return source
        self._overflow = overflow = self._overflow + n
        h = hash(source)
        r0, r1, r2, r3 = self._sketch
        c0 = r0[h & _MASK] = r0[h & _MASK] + n
        c1 = r1[h >> 12 & _MASK] = r1[h >> 12 & _MASK] + n
        c2 = r2[h >> 24 & _MASK] = r2[h >> 24 & _MASK] + n
        c3 = r3[h >> 36 & _MASK] = r3[h >> 36 & _MASK] + n
        # every counter also holds other names' requests, λ = overflow / width of them on average
        # (Poisson): a name must beat λ by 4 standard deviations plus ADMIT_MIN_REQUESTS
        noise = overflow * _PER_COUNTER
        floor = ADMIT_MIN_REQUESTS + noise + 4.0 * sqrt(noise)
        if c0 >= floor and c1 >= floor and c2 >= floor and c3 >= floor:
            self._candidate(source, min(c0, c1, c2, c3) - noise)
        return OTHER

    def _candidate(self, source: str, estimate: float) -> None:
        if source in self._candidates or len(self._candidates) < self._max_candidates:
            self._candidates[source] = estimate

    # ------------------------------------------------------------------ flushing
    async def run(self, interval: float) -> None:
        """Flush every `interval` seconds until cancelled; call `close()` afterwards."""
        while True:
            await asyncio.sleep(interval)
            self._take()
            await asyncio.to_thread(self._write_all)
            since = int((self.clock() - DAY_WINDOW) // 60) * 60
            if self._day is None or self._day.since != since:
                try:
                    await asyncio.to_thread(self._rebuild_day, since)
                except StoreError as exc:   # the old totals serve until a rebuild succeeds
                    log.error("history.rebuild_failed", error=str(exc))

    def flush(self) -> None:
        self._take()
        self._write_all()

    def seal(self) -> None:
        """Hand every counter recorded so far to the writer (loop thread, O(rows pending)): from
        then on `minute_rows(..., live=False)` and `series(..., live=False)` see them from any
        thread. The control loop seals before reading closed minutes in its worker thread."""
        self._take()

    def close(self) -> None:
        """Flush what is pending and close the store; safe to call twice."""
        if self._closed:
            return
        self.flush()
        with self._write_lock:
            self._closed = True
            self._store.close()

    def _take(self) -> None:
        if not self._pending:
            self._maybe_rebalance()
            return
        rows, self._pending = self._pending, {}
        self._unwritten.append(rows)
        activity = self._activity
        for (_, source, _), row in rows.items():
            activity[source] = activity.get(source, 0) + row[REQUESTS]
        self._maybe_rebalance()

    def _maybe_rebalance(self) -> None:
        now = self.clock()
        if now - self._last_rebalance < REBALANCE_INTERVAL:
            return
        if self._candidates:
            self._promote()
        self._overflow = 0
        self._activity = {}
        self._sketch = _new_sketch()
        self._candidates = {}
        self._last_rebalance = now

    def _promote(self) -> None:
        """Candidates, busiest first, take the slots of tracked sources quieter than them in this
        window (O(max_sources log max_sources), once a window)."""
        activity = self._activity
        quietest = iter(sorted(self._tracked, key=lambda s: activity.get(s, 0)))
        admitted: list[str] = []
        demoted: list[str] = []
        for name, est in sorted(self._candidates.items(), key=lambda kv: (-kv[1], kv[0])):
            if len(self._tracked) >= self.max_sources:
                victim = next(quietest, None)
                if victim is None or activity.get(victim, 0) >= est:
                    break
                self._tracked.discard(victim)
                demoted.append(victim)
            self._tracked.add(name)
            admitted.append(name)
        if admitted:
            log.info("history.sources_admitted", count=len(admitted), demoted=len(demoted),
                     overflow=self._overflow, sources=admitted[:20])

    def _write_all(self) -> None:
        with self._write_lock:
            # close() may have written and closed while this call waited for the lock
            if self._closed or not self._unwritten:
                return
            # the loop thread may append a batch meanwhile (it takes without the lock): write and
            # drop only the batches there were when this started
            batches = list(self._unwritten)

            def committed() -> None:   # the store calls this before a read can see the commit
                with self._lock:
                    del self._unwritten[:len(batches)]
                    self._written += 1
                    if self._day is not None:
                        self._day = _fold(self._day, batches)
            try:
                self._store.upsert(batches, committed)
            except StoreError as exc:
                # kept in _unwritten and retried on the next flush (with what is taken meanwhile),
                # merged into one batch so an outage costs memory per row, not per flush
                merged = merge_batches(batches)
                with self._lock:
                    self._unwritten[:len(batches)] = [merged]
                log.error("history.flush_failed", error=str(exc), rows=len(merged))
                return
            now = self.clock()
            if now - self._last_prune >= PRUNE_INTERVAL:
                try:
                    self._store.prune(now - self.retention)
                except StoreError as exc:
                    log.error("history.prune_failed", error=str(exc))
                    return
                self._last_prune = now

    def write_usage(self, rows: UsageRows) -> None:
        """Writer side (a thread, not the loop): add per-(minute, pool) resource usage to the store.
        Raises StoreError; the caller keeps the rows for the next try."""
        with self._write_lock:
            if not self._closed and rows:
                self._store.upsert_usage(rows)

    def usage(self, pool: str | None, since: float, until: float) -> UsageRows:
        """Stored usage rows (a thread, not the loop: a PostgreSQL store is a round trip)."""
        with self._write_lock:
            if self._closed:
                return {}
            return self._store.usage(pool, since, until)

    def _rebuild_day(self, since: int) -> None:
        """Writer thread: the database totals from minute `since` on, for `summary`."""
        totals, written = self._store.totals(since, None, False, lambda: self._written)
        with self._lock:
            if self._written == written:   # else a write slipped in between: the next flush rebuilds
                self._day = _DayTotals(since, totals)

    def _memory(self, live: bool) -> list[Rows]:
        """What the store does not hold yet; `live=False` leaves out `_pending` (the loop thread's)."""
        return [*self._unwritten, self._pending] if live else [*self._unwritten]

    # ------------------------------------------------------------------ queries
    def summary(self, since: float, limit: int | None = None) -> list[SourceSummary]:
        """Totals per (source, type) from `since` on, busiest first. For the last DAY_WINDOW (what
        /admin/status asks) the database part comes from `_day`: O(sources) of cheap Python on the
        loop thread instead of a GROUP BY over a day of minutes (0.2–0.6 s for 300–1,000 sources)."""
        start = int(since // 60) * 60
        base, totals, memory = self._summary_parts(start)
        for rows in memory:
            for (minute, source, rtype), row in rows.items():
                if minute >= start:
                    _add(totals.setdefault((source, rtype), [0] * WIDTH), row)
        # rank first, summarise only what is returned: /admin/status asks for 100 of thousands
        def requests(key: tuple[str, str]) -> int:
            return (base[key][REQUESTS] if key in base else 0) + (totals[key][REQUESTS] if key in totals else 0)
        ranked = sorted((k for k in base.keys() | totals.keys() if requests(k) > 0), key=lambda k: (-requests(k), k))
        if limit is not None:
            ranked = ranked[:limit]
        out = []
        for key in ranked:
            row = list(base.get(key, _ZERO))
            if key in totals:
                _add(row, totals[key])
            out.append(_summarise(*key, row))
        return out

    def _summary_parts(self, start: int) -> tuple[Totals, dict[tuple[str, str], list], list[Rows]]:
        """What `summary` from minute `start` adds up: totals built earlier, corrections to them
        (or, without usable totals, the store's sums), and the memory consistent with both."""
        store = self._store
        if not store.embedded:
            # A shared store is a network round trip away, which the loop thread never waits for:
            # from `_day` on, the window is `_day` as the writer thread last rebuilt it (once a
            # minute while the database answers) plus this replica's writes folded in since. Other
            # replicas' rows since that rebuild, and the few minutes the window has moved past it,
            # are the staleness accepted for that. Other windows (not asked for in steady state)
            # query the store.
            with self._lock:
                day, memory = self._day, self._memory(True)
            if day is not None and day.since <= start:
                return day.totals, {}, memory
            sums, memory = store.totals(start, None, True, lambda: self._memory(True))
            return {}, {key: list(row) for key, row in sums.items()}, memory
        while True:
            day = self._day
            if day is None or not day.since <= start <= day.since + LATE_DAY_S:
                sums, memory = store.totals(start, None, True, lambda: self._memory(True))
                return {}, {key: list(row) for key, row in sums.items()}, memory
            # minutes the window has moved past since `_day` was built: a short primary-key range
            late, (now, memory) = store.totals(day.since, start, True, lambda: (self._day, self._memory(True)))
            if now is not None and now.since == day.since:   # else rebuilt meanwhile: ask again
                return now.totals, {key: [-v for v in row] for key, row in late.items()}, memory

    def series(self, source: str, rtype: str, since: float, until: float, live: bool = True) -> list[tuple[int, int]]:
        """(minute start, requests) for minutes in [since, until) that saw requests, in order.
        `live=False`: only what was sealed (flushed or `seal`ed), safe off the loop thread."""
        counts, memory = self._store.series(source, rtype, since, until, live, lambda: self._memory(live))
        for rows in memory:
            for (minute, s, t), row in rows.items():
                if s == source and t == rtype and since <= minute < until:
                    counts[minute] = counts.get(minute, 0) + row[REQUESTS]
        return sorted(counts.items())

    def minute_rows(self, since: float, until: float, live: bool = True) -> list[MinuteRow]:
        """Every (minute, source, type) row with minute in [since, until), flushed or not, in
        minute order: what the control loop feeds the predictor and the service-time profiles.
        `live=False`: only what was sealed (flushed or `seal`ed), safe off the loop thread."""
        # in key order from the store (sorted there, without the GIL), so only the few keys that are
        # in memory alone need sorting: one C-level sort of 100,000s of rows held the GIL 0.3 s
        totals, memory = self._store.rows(since, until, live, lambda: self._memory(live))
        extra: dict[Key, list] = {}
        for rows in memory:
            for key, row in rows.items():
                if since <= key[0] < until:
                    _add(totals[key] if key in totals else extra.setdefault(key, [0] * WIDTH), row)
        merged = heapq.merge(totals.items(), sorted(extra.items())) if extra else totals.items()
        return [MinuteRow(minute, source, rtype, row[REQUESTS], row[LATENCY_SUM], tuple(row[HIST:]), row[ABORTS])
                for (minute, source, rtype), row in merged]

    def add_minute(self, minute: float, source: str, rtype: str, requests: int, latency_sum: float = 0.0,
                   aborts: int = 0) -> None:
        """Count `requests` (with their summed latency, `aborts` of them aborted by the client) in a
        past minute at once: for importing or seeding history; the next flush writes them. Latency
        lands in the bucket of the mean."""
        if requests <= 0:
            return
        key = (int(minute // 60) * 60, source if source in self._tracked else self._admit(source, requests), rtype)
        row = self._pending.get(key)
        if row is None:
            row = self._pending[key] = [0] * WIDTH
        row[REQUESTS] += requests
        row[ABORTS] += min(aborts, requests)
        row[LATENCY_SUM] += latency_sum
        row[HIST + bisect_left(LATENCY_BOUNDS, latency_sum / requests)] += requests

    def _busiest_sources(self, limit: int) -> list[str]:
        per_source: dict[str, int] = {}
        for (source, _), row in (self._day.totals if self._day is not None else {}).items():
            if source != OTHER:
                per_source[source] = per_source.get(source, 0) + row[REQUESTS]
        return sorted(per_source, key=lambda src: (-per_source[src], src))[:limit]


_MASK = SKETCH_WIDTH - 1          # 12 bits
_PER_COUNTER = 1.0 / SKETCH_WIDTH  # expected share of a counter in each untracked request


def _new_sketch() -> tuple[list[int], ...]:
    return tuple([0] * SKETCH_WIDTH for _ in range(4))


_ZERO = (0,) * WIDTH


def _fold(day: _DayTotals, batches: list[Rows]) -> _DayTotals:
    """`day` with the rows of `batches` from its first minute on added: a new value."""
    totals = dict(day.totals)
    for rows in batches:
        for (minute, source, rtype), row in rows.items():
            if minute >= day.since:
                key = (source, rtype)
                old = totals.get(key)
                totals[key] = tuple(row) if old is None else tuple(a + b for a, b in zip(old, row))
    return _DayTotals(day.since, totals)


def _add(into: list, row: list) -> None:
    for i, v in enumerate(row):
        into[i] += v


def _summarise(source: str, rtype: str, row: list) -> SourceSummary:
    requests = row[REQUESTS]
    return SourceSummary(
        source=source,
        type=rtype,
        requests=requests,
        errors=row[ERRORS],
        aborts=row[ABORTS],
        bytes_in=row[BYTES_IN],
        bytes_out=row[BYTES_OUT],
        mean_latency_ms=round(1000 * row[LATENCY_SUM] / requests, 3) if requests else 0.0,
        p95_latency_ms=_quantile_ms(row[HIST:], 0.95),
    )


def _scale_latency(row: list, scale: float) -> None:
    """A row's latency in `scale` times slower time: the sum scaled, the histogram re-bucketed at
    the scaled mean (the shape within one row is lost)."""
    row[LATENCY_SUM] *= scale
    n = row[REQUESTS]
    row[HIST:] = [0] * (len(LATENCY_BOUNDS) + 1)
    if n:
        row[HIST + bisect_left(LATENCY_BOUNDS, row[LATENCY_SUM] / n)] = n


def _quantile_ms(hist: list, q: float) -> float:
    """Quantile `q` in ms, linear within its histogram bucket; in the +Inf bucket it is the largest
    finite bound: a floor, not an estimate."""
    from predictor.profiles import histogram_quantile   # the one interpolation, shared with the profiles

    return round(float(histogram_quantile(hist, LATENCY_BOUNDS, q)) * 1000, 3)
