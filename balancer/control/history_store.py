"""Where `History` keeps its per-minute rows: the store interface and the embedded SQLite store.

A store is additive: `upsert` adds a batch's counters to what a (minute, source, type) row holds,
so several writers (replicas sharing PostgreSQL, see `balancer.control.history_pg`) sum. It also
gives `History` the one guarantee its queries need: a row is counted either in the database or in
memory, never both. A store calls `committed()` — where `History` drops the written batches —
right after its commit and before any read can start a snapshot that includes it, and a read
calls `at_snapshot()` — where `History` copies what it has not written — at the point its
snapshot is taken.

Threading: `upsert` and `prune` run in the writer thread, one call at a time (`History`
serialises them). Reads with `live=False` may run in any thread and must not hold the lock that
`upsert` takes while their query runs; `live=True` reads are the loop thread's.
"""
from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from balancer.dataplane.counters import LATENCY_BOUNDS

_HIST_COLUMNS = [f"h{i}" for i in range(len(LATENCY_BOUNDS) + 1)]
COLUMNS = ["requests", "errors", "aborts", "bytes_in", "bytes_out", "latency_sum", *_HIST_COLUMNS]

# Per (minute, pool): what its members used, measured by `balancer.control.resources`. Additive like the
# request counters (CPU-seconds, member-seconds, memory x seconds, network bytes, samples), except the
# peak, which is the larger of the two.
USAGE_COLUMNS = ["cpu_s", "member_s", "mem_byte_s", "mem_peak", "net_rx", "net_tx", "samples"]
UsageRows = dict[tuple[int, str], list]   # (minute, pool) -> USAGE_COLUMNS

T = TypeVar("T")
M = TypeVar("M")
Key = tuple[int, str, str]  # (minute start in epoch seconds, source, request type)
Rows = dict[Key, list]
Totals = dict[tuple[str, str], tuple]  # counters per (source, type)


class StoreError(Exception):
    """A store could not read or write; the message names the database but never a password."""


class HistoryStore(Protocol):
    # True: reads are local and quick enough for the event-loop thread (SQLite). False: every read
    # is a network round trip (PostgreSQL), so `History.summary` serves its day window from totals
    # rebuilt in the writer thread instead of asking the database.
    embedded: bool

    def upsert(self, batches: Sequence[Rows], committed: Callable[[], None]) -> None:
        """Add every row of `batches` to the database in one transaction, then call `committed`
        before a read can see the commit. Raises StoreError (nothing written) on failure."""
        ...

    def prune(self, before: float) -> None:
        """Delete the rows of minutes before `before`."""
        ...

    def totals(self, since: int, until: int | None, live: bool, at_snapshot: Callable[[], M]) -> tuple[Totals, M]:
        """Counters per (source, type) summed over minutes in [since, until) (`until` None: no end)."""
        ...

    def series(self, source: str, rtype: str, since: float, until: float, live: bool,
               at_snapshot: Callable[[], M]) -> tuple[dict[int, int], M]:
        """{minute: requests} of one (source, type) in [since, until)."""
        ...

    def rows(self, since: float, until: float, live: bool, at_snapshot: Callable[[], M]) -> tuple[Rows, M]:
        """Every row in [since, until), in (minute, source, type) order as Python compares them
        (code points): `History.minute_rows` merges them with sorted memory without re-sorting."""
        ...

    def upsert_usage(self, rows: UsageRows) -> None:
        """Add per-(minute, pool) usage to what the database holds (writer thread). Raises StoreError."""
        ...

    def usage(self, pool: str | None, since: float, until: float) -> UsageRows:
        """Usage rows of `pool` (None: every pool) in [since, until), in (minute, pool) order."""
        ...

    def close(self) -> None:
        ...


def open_store(url: str | None, default_path: Path) -> HistoryStore:
    """The store `history.url` names: none is the SQLite file `default_path`; `postgresql://…`
    (or `postgres://…`) is a PostgreSQL database shared by replicas."""
    if url is None:
        return SqliteStore(default_path)
    from balancer.control.history_pg import PostgresStore   # psycopg only where it is used
    return PostgresStore(url)


# consumers of the three read shapes, shared by the stores (rows as cursors yield them)
def totals_of(cur: Iterable[tuple]) -> Totals:
    return {(src, t): tuple(row) for src, t, *row in cur}


def series_of(cur: Iterable[tuple]) -> dict[int, int]:
    return {m: n for m, n in cur}


def rows_of(cur: Iterable[tuple]) -> Rows:
    return {(m, src, t): row for m, src, t, *row in cur}


def merge_batches(batches: Iterable[Rows]) -> Rows:
    """One batch holding the sums per key of `batches` (new lists; the batches are not touched)."""
    merged: Rows = {}
    for rows in batches:
        for key, row in rows.items():
            old = merged.get(key)
            merged[key] = list(row) if old is None else [a + b for a, b in zip(old, row)]
    return merged


class SqliteStore:
    """One SQLite file (WAL) or, with `path` None, a private in-memory database."""

    embedded = True

    def __init__(self, path: Path | None) -> None:
        self._db: sqlite3.Connection | None = _open(path)
        self._lock = threading.Lock()      # guards `_db`: the writer and the live readers
        # `live=False` reads (the control loop's worker replaying two days) run on a connection of
        # their own, so they do not hold `_lock` while their query runs.
        self._reader = _open_reader(path) if path is not None else None
        self._read_lock = threading.Lock()

    def upsert(self, batches: Sequence[Rows], committed: Callable[[], None]) -> None:
        with self._lock:
            db = self._live()
            try:
                with db:
                    for rows in batches:
                        db.executemany(_UPSERT, [(*key, *row) for key, row in rows.items()])
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc
            committed()

    def prune(self, before: float) -> None:
        with self._lock:
            db = self._live()
            try:
                with db:
                    db.execute("DELETE FROM minutes WHERE minute < ?", (before,))
                    db.execute("DELETE FROM usage_minutes WHERE minute < ?", (before,))
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc

    def totals(self, since: int, until: int | None, live: bool, at_snapshot: Callable[[], M]) -> tuple[Totals, M]:
        sums = ", ".join(f"SUM({c})" for c in COLUMNS)
        if until is None:
            return self._read(f"SELECT source, type, {sums} FROM minutes WHERE minute >= ? GROUP BY source, type",
                              (since,), live, totals_of, at_snapshot)
        return self._read(f"SELECT source, type, {sums} FROM minutes WHERE minute >= ? AND minute < ?"
                          " GROUP BY source, type", (since, until), live, totals_of, at_snapshot)

    def series(self, source: str, rtype: str, since: float, until: float, live: bool,
               at_snapshot: Callable[[], M]) -> tuple[dict[int, int], M]:
        return self._read("SELECT minute, requests FROM minutes WHERE source = ? AND type = ? AND minute >= ?"
                          " AND minute < ?", (source, rtype, since, until), live, series_of, at_snapshot)

    def rows(self, since: float, until: float, live: bool, at_snapshot: Callable[[], M]) -> tuple[Rows, M]:
        # sorted by SQLite (without the GIL; TEXT compares as bytes, which for UTF-8 is code point order)
        return self._read(f"SELECT minute, source, type, {', '.join(COLUMNS)} FROM minutes"
                          " WHERE minute >= ? AND minute < ? ORDER BY minute, source, type",
                          (since, until), live, rows_of, at_snapshot)

    def upsert_usage(self, rows: UsageRows) -> None:
        with self._lock:
            db = self._live()
            try:
                with db:
                    db.executemany(_UPSERT_USAGE, [(*key, *row) for key, row in sorted(rows.items())])
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc

    def usage(self, pool: str | None, since: float, until: float) -> UsageRows:
        where, params = ("minute >= ? AND minute < ?", (since, until)) if pool is None else \
            ("pool = ? AND minute >= ? AND minute < ?", (pool, since, until))
        with self._lock:
            try:
                cur = self._live().execute(f"SELECT minute, pool, {', '.join(USAGE_COLUMNS)} FROM usage_minutes"
                                           f" WHERE {where} ORDER BY minute, pool", params)
                return {(m, p): list(row) for m, p, *row in cur}
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc

    def close(self) -> None:
        with self._read_lock, self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def _read(self, sql: str, params: tuple, live: bool, consume: Callable[[Iterable[tuple]], T],
              at_snapshot: Callable[[], M]) -> tuple[T, M]:
        """`consume` of the rows of `sql`, and `at_snapshot()` consistent with them. `live=False`
        on a file database reads a WAL snapshot on the reader connection: only the snapshot's start
        waits for `_lock`, not the query. `consume` iterates in Python, so a worker thread reading
        a long replay lets the loop thread have the GIL."""
        if live or self._reader is None:
            with self._lock:
                return consume(self._live().execute(sql, params)), at_snapshot()
        with self._read_lock:
            reader = self._reader
            with self._lock:
                self._live()
                reader.execute("BEGIN")
                reader.execute("SELECT 1 FROM minutes LIMIT 1").fetchall()   # WAL: the snapshot starts at the first read
                memory = at_snapshot()
            try:
                return consume(reader.execute(sql, params)), memory
            finally:
                reader.execute("COMMIT")

    def _live(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("history is closed")
        return self._db


_UPSERT = (
    f"INSERT INTO minutes (minute, source, type, {', '.join(COLUMNS)})"
    f" VALUES (?, ?, ?, {', '.join('?' * len(COLUMNS))})"
    " ON CONFLICT (minute, source, type) DO UPDATE SET "
    + ", ".join(f"{c} = {c} + excluded.{c}" for c in COLUMNS)
)


_UPSERT_USAGE = (
    f"INSERT INTO usage_minutes (minute, pool, {', '.join(USAGE_COLUMNS)})"
    f" VALUES (?, ?, {', '.join('?' * len(USAGE_COLUMNS))})"
    " ON CONFLICT (minute, pool) DO UPDATE SET "
    + ", ".join(f"{c} = MAX({c}, excluded.{c})" if c == "mem_peak" else f"{c} = {c} + excluded.{c}"
                for c in USAGE_COLUMNS)
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
        f"{c} {'REAL' if c == 'latency_sum' else 'INTEGER'} NOT NULL DEFAULT 0" for c in COLUMNS
    )
    with db:
        db.execute(
            f"CREATE TABLE IF NOT EXISTS minutes (minute INTEGER NOT NULL, source TEXT NOT NULL,"
            f" type TEXT NOT NULL, {counters}, PRIMARY KEY (minute, source, type)) WITHOUT ROWID"
        )
        usage = ", ".join(f"{c} REAL NOT NULL DEFAULT 0" for c in USAGE_COLUMNS)
        db.execute(f"CREATE TABLE IF NOT EXISTS usage_minutes (minute INTEGER NOT NULL, pool TEXT NOT NULL,"
                   f" {usage}, PRIMARY KEY (minute, pool)) WITHOUT ROWID")
    return db


def _open_reader(path: Path) -> sqlite3.Connection:
    # autocommit: `_read` opens and ends its read transactions itself
    return sqlite3.connect(path, check_same_thread=False, isolation_level=None)
