"""Per-source traffic history: per-minute counters per (source, request type), kept in SQLite.

The request path calls `History.record`, which only bumps in-memory counters. A background task
(`History.run`) hands the finished counters to a worker thread that upserts them into SQLite
(WAL). Queries (`summary`, `series`) merge what is on disk with what is still in memory.

Threading: `record`, `flush`, `summary`, `series` and `close` belong to the event-loop thread;
only the SQLite write runs in a worker thread. Taking the pending counters happens on the loop
thread, so a `record` can never increment a row that a writer has already read.

Bounded cardinality (top-K plus "other"): at most `max_sources` source names are tracked. A new
name is admitted while there is room; beyond that its requests count under the source "other".
So that a newcomer which becomes busy can get in, every `REBALANCE_INTERVAL` seconds, if any
requests overflowed into "other" since the last rebalance, the least active tracked sources of
that window (a tenth of the cap) are demoted, freeing slots that later newcomers take first come,
first served. A busy newcomer wins a freed slot quickly; a flood of one-off random keys only ever
occupies the freed slots and is demoted again at the next rebalance. Memory stays bounded by
minutes pending x (max_sources + 1) x request types.
"""
from __future__ import annotations

import asyncio
import math
import sqlite3
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

OTHER = "other"
REBALANCE_INTERVAL = 60.0
PRUNE_INTERVAL = 3600.0
REQUEST_TAP = 100_000   # requests kept for the session model between two control-loop steps

# Upper bounds (seconds) of the per-minute latency histogram; the last bucket is +Inf.
LATENCY_BOUNDS: tuple[float, ...] = (0.002, 0.008, 0.032, 0.128, 0.512, 2.048, 8.192)

# Layout of one counter row; a plain list so the hot path does index increments only.
_REQUESTS, _ERRORS, _ABORTS, _BYTES_IN, _BYTES_OUT, _LATENCY_SUM, _HIST = range(7)
_WIDTH = _HIST + len(LATENCY_BOUNDS) + 1
_HIST_COLUMNS = [f"h{i}" for i in range(len(LATENCY_BOUNDS) + 1)]
_COLUMNS = ["requests", "errors", "aborts", "bytes_in", "bytes_out", "latency_sum", *_HIST_COLUMNS]

Key = tuple[int, str, str]  # (minute start in epoch seconds, source, request type)
Rows = dict[Key, list]


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
    p95_latency_ms: float  # upper bound of the histogram bucket holding the 95th percentile


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
        path: Path | None,
        max_sources: int = 1000,
        retention: float = 30 * 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self.max_sources = max_sources
        self.retention = retention
        self._pending: Rows = {}
        self._unwritten: list[Rows] = []   # taken from _pending, not yet committed
        self._tracked: set[str] = set()
        self._overflow = 0                 # requests counted as "other" since the last rebalance
        self._activity: dict[str, int] = {}
        self._last_rebalance = clock()
        self._last_prune = -math.inf
        self._lock = threading.Lock()      # guards the connection and _unwritten
        # (source, type) of every request in order, for the session model of the control loop;
        # bounded, so a loop that stops reading costs nothing but the oldest entries
        self._requests: deque[tuple[str, str]] = deque(maxlen=REQUEST_TAP)
        self._db = _open(path)
        self._tracked.update(self._busiest_sources(self.clock() - 86400, max_sources))

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
            row = self._pending[key] = [0] * _WIDTH
        row[_REQUESTS] += 1
        if status >= 500:
            row[_ERRORS] += 1
        if aborted:
            row[_ABORTS] += 1
        row[_BYTES_IN] += bytes_in
        row[_BYTES_OUT] += bytes_out
        row[_LATENCY_SUM] += latency
        row[_HIST + bisect_left(LATENCY_BOUNDS, latency)] += 1

    def take_requests(self) -> list[tuple[str, str]]:
        """(source, type) of the requests recorded since the last call, oldest first (at most the
        last `REQUEST_TAP`)."""
        taken = list(self._requests)
        self._requests.clear()
        return taken

    def _admit(self, source: str) -> str:
        if source == OTHER:
            return OTHER
        if len(self._tracked) < self.max_sources:
            self._tracked.add(source)
            return source
        self._overflow += 1
        return OTHER

    # ------------------------------------------------------------------ flushing
    async def run(self, interval: float) -> None:
        """Flush every `interval` seconds until cancelled; call `close()` afterwards."""
        while True:
            await asyncio.sleep(interval)
            self._take()
            await asyncio.to_thread(self._write_all)

    def flush(self) -> None:
        self._take()
        self._write_all()

    def close(self) -> None:
        """Flush what is pending and close the database; safe to call twice."""
        if self._db is None:
            return
        self.flush()
        with self._lock:
            self._db.close()
            self._db = None

    def _take(self) -> None:
        if not self._pending:
            self._maybe_rebalance()
            return
        rows, self._pending = self._pending, {}
        self._unwritten.append(rows)
        activity = self._activity
        for (_, source, _), row in rows.items():
            activity[source] = activity.get(source, 0) + row[_REQUESTS]
        self._maybe_rebalance()

    def _maybe_rebalance(self) -> None:
        now = self.clock()
        if now - self._last_rebalance < REBALANCE_INTERVAL:
            return
        if self._overflow and len(self._tracked) >= self.max_sources:
            quietest = sorted(self._tracked, key=lambda s: self._activity.get(s, 0))
            demoted = quietest[: max(1, self.max_sources // 10)]
            self._tracked.difference_update(demoted)
            log.info("history.sources_demoted", count=len(demoted), overflow=self._overflow)
        self._overflow = 0
        self._activity = {}
        self._last_rebalance = now

    def _write_all(self) -> None:
        with self._lock:
            # close() may have written and closed while this call waited for the lock
            if self._db is None or not self._unwritten:
                return
            try:
                with self._db:
                    for rows in self._unwritten:
                        self._db.executemany(_UPSERT, [(*key, *row) for key, row in rows.items()])
                self._unwritten.clear()
            except sqlite3.Error as exc:
                # kept in _unwritten and retried on the next flush
                log.error("history.flush_failed", error=str(exc))
                return
            now = self.clock()
            if now - self._last_prune >= PRUNE_INTERVAL:
                with self._db:
                    self._db.execute("DELETE FROM minutes WHERE minute < ?", (now - self.retention,))
                self._last_prune = now

    # ------------------------------------------------------------------ queries
    def summary(self, since: float, limit: int | None = None) -> list[SourceSummary]:
        """Totals per (source, type) from `since` on, busiest first."""
        start = int(since // 60) * 60
        totals: dict[tuple[str, str], list] = {}
        sums = ", ".join(f"SUM({c})" for c in _COLUMNS)
        with self._lock:
            cur = self._db.execute(
                f"SELECT source, type, {sums} FROM minutes WHERE minute >= ? GROUP BY source, type",
                (start,),
            )
            for source, rtype, *row in cur:
                totals[(source, rtype)] = row
            memory = [*self._unwritten, self._pending]
        for rows in memory:
            for (minute, source, rtype), row in rows.items():
                if minute >= start:
                    _add(totals.setdefault((source, rtype), [0] * _WIDTH), row)
        out = [_summarise(source, rtype, row) for (source, rtype), row in totals.items()]
        out.sort(key=lambda s: (-s.requests, s.source, s.type))
        return out[:limit] if limit is not None else out

    def series(self, source: str, rtype: str, since: float, until: float) -> list[tuple[int, int]]:
        """(minute start, requests) for minutes in [since, until) that saw requests, in order."""
        counts: dict[int, int] = {}
        with self._lock:
            cur = self._db.execute(
                "SELECT minute, requests FROM minutes"
                " WHERE source = ? AND type = ? AND minute >= ? AND minute < ?",
                (source, rtype, since, until),
            )
            counts.update(cur)
            memory = [*self._unwritten, self._pending]
        for rows in memory:
            for (minute, s, t), row in rows.items():
                if s == source and t == rtype and since <= minute < until:
                    counts[minute] = counts.get(minute, 0) + row[_REQUESTS]
        return sorted(counts.items())

    def minute_rows(self, since: float, until: float) -> list[MinuteRow]:
        """Every (minute, source, type) row with minute in [since, until), flushed or not, in
        minute order: what the control loop feeds the predictor and the service-time profiles."""
        totals: dict[Key, list] = {}
        with self._lock:
            cur = self._db.execute(
                f"SELECT minute, source, type, {', '.join(_COLUMNS)} FROM minutes WHERE minute >= ? AND minute < ?",
                (since, until),
            )
            for minute, source, rtype, *row in cur:
                totals[(minute, source, rtype)] = row
            memory = [*self._unwritten, self._pending]
        for rows in memory:
            for key, row in rows.items():
                if since <= key[0] < until:
                    _add(totals.setdefault(key, [0] * _WIDTH), row)
        return [MinuteRow(minute, source, rtype, row[_REQUESTS], row[_LATENCY_SUM], tuple(row[_HIST:]), row[_ABORTS])
                for (minute, source, rtype), row in sorted(totals.items())]

    def add_minute(self, minute: float, source: str, rtype: str, requests: int, latency_sum: float = 0.0,
                   aborts: int = 0) -> None:
        """Count `requests` (with their summed latency, `aborts` of them aborted by the client) in a
        past minute at once: for importing or seeding history; the next flush writes them. Latency
        lands in the bucket of the mean."""
        if requests <= 0:
            return
        key = (int(minute // 60) * 60, source if source in self._tracked else self._admit(source), rtype)
        row = self._pending.get(key)
        if row is None:
            row = self._pending[key] = [0] * _WIDTH
        row[_REQUESTS] += requests
        row[_ABORTS] += min(aborts, requests)
        row[_LATENCY_SUM] += latency_sum
        row[_HIST + bisect_left(LATENCY_BOUNDS, latency_sum / requests)] += requests

    def _busiest_sources(self, since: float, limit: int) -> list[str]:
        with self._lock:
            cur = self._db.execute(
                "SELECT source FROM minutes WHERE minute >= ? AND source != ?"
                " GROUP BY source ORDER BY SUM(requests) DESC LIMIT ?",
                (since, OTHER, limit),
            )
            return [source for (source,) in cur]


_UPSERT = (
    f"INSERT INTO minutes (minute, source, type, {', '.join(_COLUMNS)})"
    f" VALUES (?, ?, ?, {', '.join('?' * len(_COLUMNS))})"
    " ON CONFLICT (minute, source, type) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in _COLUMNS)
)


def _open(path: Path | None) -> sqlite3.Connection:
    if path is None:
        db = sqlite3.connect(":memory:", check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across app crashes
    counters = ", ".join(
        f"{c} {'REAL' if c == 'latency_sum' else 'INTEGER'} NOT NULL DEFAULT 0" for c in _COLUMNS
    )
    with db:
        db.execute(
            f"CREATE TABLE IF NOT EXISTS minutes (minute INTEGER NOT NULL, source TEXT NOT NULL,"
            f" type TEXT NOT NULL, {counters}, PRIMARY KEY (minute, source, type)) WITHOUT ROWID"
        )
    return db


def _add(into: list, row: list) -> None:
    for i, v in enumerate(row):
        into[i] += v


def _summarise(source: str, rtype: str, row: list) -> SourceSummary:
    requests = row[_REQUESTS]
    return SourceSummary(
        source=source,
        type=rtype,
        requests=requests,
        errors=row[_ERRORS],
        aborts=row[_ABORTS],
        bytes_in=row[_BYTES_IN],
        bytes_out=row[_BYTES_OUT],
        mean_latency_ms=round(1000 * row[_LATENCY_SUM] / requests, 3) if requests else 0.0,
        p95_latency_ms=_quantile_ms(row[_HIST:], 0.95),
    )


def _quantile_ms(hist: list, q: float) -> float:
    total = sum(hist)
    if not total:
        return 0.0
    # the +Inf bucket reports the largest finite bound: a floor, not an estimate
    bounds = (*LATENCY_BOUNDS, LATENCY_BOUNDS[-1])
    seen = 0
    i = 0
    while seen + hist[i] < q * total:
        seen += hist[i]
        i += 1
    return bounds[i] * 1000
