"""A PostgreSQL history store that replicas share: `history.url: postgresql://…`.

Every replica upserts its own counters into one table, `warmfront_minutes`; the upsert adds to
what a row holds, so the database has the sum over replicas and every read sees all of them.
Rows of one flush are merged per key and written in key order, so two replicas flushing the
same minutes lock rows in the same order and never deadlock.

Connections come from a small `psycopg_pool.ConnectionPool` (checked on checkout, so a
connection the server dropped is replaced instead of failing a flush). All of it runs in
threads other than the event loop's in steady state: `History` writes and rebuilds its day
totals in the writer thread, the control loop reads in its worker, and `embedded = False`
makes `History.summary` serve /admin/status from those totals.

A commit whose acknowledgement is lost (the connection drops between COMMIT and its answer)
is retried, so its rows would count twice; every other failure writes nothing and is retried.
"""
from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from balancer.control.history_store import (COLUMNS, USAGE_COLUMNS, Rows, StoreError, Totals, UsageRows,
                                            merge_batches, rows_of, series_of, totals_of)

T = TypeVar("T")
M = TypeVar("M")

TABLE = "warmfront_minutes"
CONNECT_TIMEOUT_S = 5     # connecting, and waiting for a pooled connection, before a flush or start-up fails
POOL_SIZE = 4             # the writer, the control loop's reads, the occasional admin read
# The pool retries a lost connection with a back-off doubling from 1 s; giving up after this
# long lets the next flush start afresh, so a database back from a long outage is used within it.
RECONNECT_S = 20.0
FETCH_ROWS = 10_000       # rows per round trip of a long read (a server-side cursor)

_COUNTER_TYPES = {c: "DOUBLE PRECISION" if c == "latency_sum" else "BIGINT" for c in COLUMNS}
# COLLATE "C" orders names by code point, as Python does: `rows` is merged with sorted memory
_CREATE = (f"CREATE TABLE IF NOT EXISTS {TABLE} (minute BIGINT NOT NULL, source TEXT COLLATE \"C\" NOT NULL,"
           f" type TEXT COLLATE \"C\" NOT NULL, "
           + ", ".join(f"{c} {t} NOT NULL DEFAULT 0" for c, t in _COUNTER_TYPES.items())
           + ", PRIMARY KEY (minute, source, type))")
_UPSERT = (f"INSERT INTO {TABLE} (minute, source, type, {', '.join(COLUMNS)})"
           f" VALUES (%s, %s, %s, {', '.join(['%s'] * len(COLUMNS))})"
           " ON CONFLICT (minute, source, type) DO UPDATE SET "
           + ", ".join(f"{c} = {TABLE}.{c} + EXCLUDED.{c}" for c in COLUMNS))
USAGE_TABLE = "warmfront_usage_minutes"
_CREATE_USAGE = (f"CREATE TABLE IF NOT EXISTS {USAGE_TABLE} (minute BIGINT NOT NULL, pool TEXT COLLATE \"C\" NOT NULL, "
                 + ", ".join(f"{c} DOUBLE PRECISION NOT NULL DEFAULT 0" for c in USAGE_COLUMNS)
                 + ", PRIMARY KEY (minute, pool))")
_UPSERT_USAGE = (f"INSERT INTO {USAGE_TABLE} (minute, pool, {', '.join(USAGE_COLUMNS)})"
                 f" VALUES (%s, %s, {', '.join(['%s'] * len(USAGE_COLUMNS))})"
                 " ON CONFLICT (minute, pool) DO UPDATE SET "
                 + ", ".join(f"{c} = GREATEST({USAGE_TABLE}.{c}, EXCLUDED.{c})" if c == "mem_peak"
                             else f"{c} = {USAGE_TABLE}.{c} + EXCLUDED.{c}" for c in USAGE_COLUMNS))
# SUM of BIGINT is NUMERIC (a Decimal in Python): cast back to the column's type
_SUMS = ", ".join(f"SUM({c})::{t}" for c, t in _COUNTER_TYPES.items())


def _minutes(since: float, until: float) -> tuple[int, int]:
    """The bounds as BIGINTs (the same rows: minutes are whole): a float parameter would make
    PostgreSQL compare `minute` as float8 and scan the table instead of the primary key."""
    return math.ceil(since), math.ceil(until)


def redact(url: str) -> str:
    """host:port/db of `url`, never its password: what messages and logs name."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


class PostgresStore:
    embedded = False

    def __init__(self, url: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
        self.where = f"PostgreSQL at {redact(url)}"
        try:
            self._password = str(psycopg.conninfo.conninfo_to_dict(url).get("password") or "")
        except psycopg.ProgrammingError:
            raise StoreError(f"cannot open the history database: {self.where}") from None
        # held from a write's commit to its `committed()`, and by a read while its snapshot starts
        self._lock = threading.Lock()
        # One direct connection first: a precise error (refused, no such database, bad password)
        # instead of the pool's timeout, and the table made before any replica writes.
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=math.ceil(timeout)) as conn, conn.transaction():
                # replicas starting together: CREATE TABLE IF NOT EXISTS races on the catalog
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (TABLE,))
                conn.execute(_CREATE)
                conn.execute(_CREATE_USAGE)
        except psycopg.Error as exc:
            raise self._error("cannot open the history database", exc) from None
        self._pool = ConnectionPool(url, min_size=1, max_size=POOL_SIZE, timeout=timeout, open=True,
                                    reconnect_timeout=RECONNECT_S,
                                    kwargs={"autocommit": True, "connect_timeout": math.ceil(timeout)},
                                    check=ConnectionPool.check_connection, name="warmfront-history")

    def upsert(self, batches: Sequence[Rows], committed: Callable[[], None]) -> None:
        params = [(*key, *row) for key, row in sorted(merge_batches(batches).items())]
        try:
            with self._pool.connection() as conn:
                with self._lock:
                    with conn.transaction(), conn.cursor() as cur:
                        cur.executemany(_UPSERT, params)   # pipelined: one round trip per batch, not per row
                    committed()
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._error("cannot write history", exc) from None

    def prune(self, before: float) -> None:
        try:
            with self._pool.connection() as conn:
                conn.execute(f"DELETE FROM {TABLE} WHERE minute < %s", (math.ceil(before),))
                conn.execute(f"DELETE FROM {USAGE_TABLE} WHERE minute < %s", (math.ceil(before),))
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._error("cannot prune history", exc) from None

    def totals(self, since: int, until: int | None, live: bool, at_snapshot: Callable[[], M]) -> tuple[Totals, M]:
        if until is None:
            return self._read(f"SELECT source, type, {_SUMS} FROM {TABLE} WHERE minute >= %s GROUP BY source, type",
                              (since,), totals_of, at_snapshot)
        return self._read(f"SELECT source, type, {_SUMS} FROM {TABLE} WHERE minute >= %s AND minute < %s"
                          " GROUP BY source, type", (since, until), totals_of, at_snapshot)

    def series(self, source: str, rtype: str, since: float, until: float, live: bool,
               at_snapshot: Callable[[], M]) -> tuple[dict[int, int], M]:
        return self._read(f"SELECT minute, requests FROM {TABLE} WHERE source = %s AND type = %s AND minute >= %s"
                          " AND minute < %s", (source, rtype, *_minutes(since, until)), series_of, at_snapshot)

    def rows(self, since: float, until: float, live: bool, at_snapshot: Callable[[], M]) -> tuple[Rows, M]:
        return self._read(f"SELECT minute, source, type, {', '.join(COLUMNS)} FROM {TABLE}"
                          " WHERE minute >= %s AND minute < %s ORDER BY minute, source, type",
                          _minutes(since, until), rows_of, at_snapshot)

    def upsert_usage(self, rows: UsageRows) -> None:
        params = [(*key, *row) for key, row in sorted(rows.items())]
        try:
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.executemany(_UPSERT_USAGE, params)
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._error("cannot write usage", exc) from None

    def usage(self, pool: str | None, since: float, until: float) -> UsageRows:
        where, params = ("minute >= %s AND minute < %s", _minutes(since, until)) if pool is None else \
            ("pool = %s AND minute >= %s AND minute < %s", (pool, *_minutes(since, until)))
        try:
            with self._pool.connection() as conn:
                cur = conn.execute(f"SELECT minute, pool, {', '.join(USAGE_COLUMNS)} FROM {USAGE_TABLE}"
                                   f" WHERE {where} ORDER BY minute, pool", params)
                return {(int(m), p): [float(v) for v in row] for m, p, *row in cur}
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._error("cannot read usage", exc) from None

    def close(self) -> None:
        self._pool.close()

    def _read(self, query: str, params: tuple, consume: Callable[[Iterable[tuple]], T],
              at_snapshot: Callable[[], M]) -> tuple[T, M]:
        """`consume` of the rows of `query` and `at_snapshot()`, consistent with each other: a
        REPEATABLE READ transaction whose snapshot starts (with its first statement) under `_lock`,
        so no write of this replica commits between it and `at_snapshot`; the query itself runs
        after, without the lock. Live or not, reads are the same here: the writer never holds the
        lock across anything but its own commit."""
        try:
            with self._pool.connection() as conn:
                try:
                    with self._lock:
                        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                        conn.execute("SELECT 1")   # the snapshot is taken here
                        memory = at_snapshot()
                    with conn.cursor(name="warmfront_history_read") as cur:
                        cur.itersize = FETCH_ROWS
                        cur.execute(query, params)
                        out = consume(cur)
                    conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(psycopg.Error):   # a broken connection: the pool drops it
                        conn.execute("ROLLBACK")
                    raise
        except (psycopg.Error, PoolTimeout) as exc:
            raise self._error("cannot read history", exc) from None
        return out, memory

    def _error(self, what: str, exc: Exception) -> StoreError:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if self._password:
            first = first.replace(self._password, "***")
        return StoreError(f"{what} ({self.where}): {first}")
