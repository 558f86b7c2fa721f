"""Members per pool over time: sampled every few seconds, the last day in memory, all of it (up to
the history retention) in SQLite in the state dir, so cost accounting survives a restart.

The dashboard plots it and cost accounting integrates it. Ready members are split into tiers
at sampling time: the baseline is `capacity.min`; above it, as many as the planner's predictive
tier asks for count as predictive, the rest as burst.
"""
from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from pools.members import MemberState, MemberView


@dataclass(frozen=True, slots=True)
class Sample:
    t: float
    ready: int = 0
    baseline: int = 0          # ready members of the baseline tier
    predictive: int = 0        # ready members the forecast asked for above baseline (pre-warmed capacity)
    burst: int = 0             # ready members live load asked for beyond that
    shadow: int = 0            # shadow members holding resources (running or paused)
    shadow_stopped: int = 0    # stopped shadows hold disk only
    launching: int = 0         # launching or warming
    draining: int = 0


def sample(t: float, members: Iterable[MemberView], baseline_min: int, predictive_wanted: int) -> Sample:
    counts = {s: 0 for s in MemberState}
    stopped = 0
    for m in members:
        counts[m.state] += 1
        stopped += m.state is MemberState.SHADOW and m.shadow_state == "stopped"
    ready = counts[MemberState.READY]
    baseline = min(ready, baseline_min)
    predictive = min(ready - baseline, max(0, predictive_wanted))
    return Sample(t, ready, baseline, predictive, ready - baseline - predictive,
                  counts[MemberState.SHADOW] - stopped, stopped,
                  counts[MemberState.LAUNCHING] + counts[MemberState.WARMING], counts[MemberState.DRAINING])


_COLUMNS = [f.name for f in fields(Sample)]
FLUSH_EVERY = 12   # samples (a minute of one pool at one sample per 5 s) between SQLite commits


class MemberTimeline:
    """Per pool, samples in time order; the oldest fall off past `keep` samples in memory.

    With a `path`, every sample is also written to SQLite (in batches; `close()` writes the rest)
    and read back at start, and `series` reaches back past memory to `retention`."""

    def __init__(self, keep: int = 17280, path: Path | None = None, retention: float = 30 * 86400.0) -> None:
        self.keep = keep                                   # a day at one sample per 5 s
        self.retention = retention
        self._pools: dict[str, deque[Sample]] = {}
        self._pending: list[tuple] = []
        self._db: sqlite3.Connection | None = None
        if path is not None:
            self._db = sqlite3.connect(path)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"CREATE TABLE IF NOT EXISTS samples (pool TEXT, {', '.join(f'{c} REAL' for c in _COLUMNS)})")
            self._db.execute("CREATE INDEX IF NOT EXISTS samples_pool_t ON samples (pool, t)")
            for pool, in self._db.execute("SELECT DISTINCT pool FROM samples").fetchall():
                rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM samples WHERE pool = ? "
                                        "ORDER BY t DESC LIMIT ?", (pool, keep)).fetchall()
                self._pools[pool] = deque((_sample(r) for r in reversed(rows)), maxlen=keep)

    def add(self, pool: str, s: Sample) -> None:
        series = self._pools.get(pool)
        if series is None:
            series = self._pools[pool] = deque(maxlen=self.keep)
        series.append(s)
        if self._db is not None:
            self._pending.append((pool, *astuple(s)))
            if len(self._pending) >= FLUSH_EVERY:
                self.flush()

    def flush(self) -> None:
        if self._db is None or not self._pending:
            return
        with self._db:
            self._db.executemany(f"INSERT INTO samples VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})",
                                 self._pending)
            self._db.execute("DELETE FROM samples WHERE t < ?", (self._pending[-1][1] - self.retention,))
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None

    def pools(self) -> list[str]:
        return list(self._pools)

    def series(self, pool: str, since: float = float("-inf")) -> list[Sample]:
        """Samples from the last one at or before `since` on: it tells what held at `since`."""
        memory = self._pools.get(pool)
        if self._db is not None and (not memory or since < memory[0].t):
            self.flush()
            start = self._db.execute("SELECT MAX(t) FROM samples WHERE pool = ? AND t <= ?",
                                     (pool, since)).fetchone()[0]
            rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM samples WHERE pool = ? AND t >= ? "
                                    "ORDER BY t", (pool, since if start is None else start)).fetchall()
            return [_sample(r) for r in rows]
        samples = list(memory or ())
        first = 0
        for i, s in enumerate(samples):
            if s.t <= since:
                first = i
            else:
                break
        return samples[first:]


def _sample(row: tuple) -> Sample:
    t, *counts = row
    return Sample(t, *(int(c) for c in counts))
