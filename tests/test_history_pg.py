"""History in a PostgreSQL database that replicas share (`history.url`), against a real server.

Every test gets a database of its own on the session's throwaway cluster (tests/pgkit.py). Two
`History` objects on one database stand for two replicas: each counts its own traffic, the
database holds the sum.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import psycopg
import pytest
from structlog.testing import capture_logs

from balancer.control.history import DAY_WINDOW, History
from balancer.control.history_pg import PostgresStore
from balancer.control.history_store import StoreError
from balancer.wiring.app import App, StartupError
from config import ConfigError, load_config_text
from config.models import Config, HistoryConfig, Pool, Route, RoutingConfig
from pools.ports import free_port
from tests.pgkit import Postgres, postgres  # noqa: F401
from tests.pools_support import wait_until
from tests.proxykit import DemoBackend

T0 = 1_700_000_040.0  # a minute boundary
M0 = int(T0)


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def hit(h: History, source: str = "alice", rtype: str = "page", n: int = 1, **kw) -> None:
    args = {"status": 200, "bytes_in": 10, "bytes_out": 100, "latency": 0.01, "aborted": False} | kw
    for _ in range(n):
        h.record(source, rtype, **args)


def by_key(h: History, since: float = 0) -> dict:
    return {(s.source, s.type): s.requests for s in h.summary(since)}


def stored(url: str) -> dict:
    """{(minute, source, type): requests} as the database holds them."""
    with psycopg.connect(url) as conn:
        return {(m, s, t): n for m, s, t, n in conn.execute("SELECT minute, source, type, requests FROM warmfront_minutes")}


def admin(pg: Postgres, statement: str) -> None:
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(statement)


def test_two_replicas_read_the_sum_of_their_counts(postgres):
    url = postgres.create_database("wf_two_replicas")
    clock = Clock()
    a, b = History(PostgresStore(url), clock=clock), History(PostgresStore(url), clock=clock)
    try:
        hit(a, "alice", n=3)
        hit(b, "alice", n=2)
        hit(b, "bob", "api", n=4, status=503)
        clock.t += 60
        hit(a, "alice", n=1)
        hit(b, "carol", n=5)
        a.flush()
        b.flush()
        for h in (a, b):
            assert h.series("alice", "page", T0, T0 + 3600) == [(M0, 5), (M0 + 60, 1)]
            assert h.series("alice", "page", T0, T0 + 3600, live=False) == [(M0, 5), (M0 + 60, 1)]
            rows = [(r.minute, r.source, r.type, r.requests) for r in h.minute_rows(T0, T0 + 3600, live=False)]
            assert rows == [(M0, "alice", "page", 5), (M0, "bob", "api", 4), (M0 + 60, "alice", "page", 1),
                            (M0 + 60, "carol", "page", 5)]
            assert by_key(h) == {("alice", "page"): 6, ("bob", "api"): 4, ("carol", "page"): 5}
            assert next(s for s in h.summary(0) if s.source == "bob").errors == 4
        # what memory adds is counted once, next to what both replicas stored
        hit(a, "alice", n=2)
        assert a.series("alice", "page", T0, T0 + 3600)[-1] == (M0 + 60, 3)
        assert [r.requests for r in a.minute_rows(T0, T0 + 3600) if r.source == "alice"] == [5, 3]
        a.flush()
        assert stored(url)[M0 + 60, "alice", "page"] == 3
    finally:
        a.close()
        b.close()


def test_replicas_flushing_the_same_rows_at_once_sum_them(postgres):
    """Both write the same keys, one in the reverse order of the other, at the same moment: rows are
    written in key order, so neither waits on the other's locks in a deadlock."""
    url = postgres.create_database("wf_concurrent")
    clock = Clock()
    a, b = History(PostgresStore(url), clock=clock), History(PostgresStore(url), clock=clock)
    names = [f"s{i:03d}" for i in range(300)]
    try:
        for _ in range(5):
            for name in names:
                hit(a, name)
            for name in reversed(names):
                hit(b, name, n=2)
            with capture_logs() as logs, ThreadPoolExecutor(2) as pool:
                list(pool.map(History.flush, (a, b)))
            assert not logs
        assert set(stored(url).values()) == {15} and len(stored(url)) == 300
    finally:
        a.close()
        b.close()


async def test_the_day_summary_holds_the_other_replicas_rows_after_its_rebuild(postgres):
    """/admin/status reads totals rebuilt in the writer thread (no round trip on the loop): its own
    writes show at once, the other replica's once the minute turns and the totals are rebuilt."""
    url = postgres.create_database("wf_day_summary")
    clock = Clock()
    a, b = History(PostgresStore(url), clock=clock), History(PostgresStore(url), clock=clock)
    task = asyncio.create_task(a.run(0.01))
    try:
        hit(a, "alice", n=3)
        hit(b, "alice", n=2)
        b.flush()
        await wait_until(lambda: stored(url).get((M0, "alice", "page")) == 5, timeout=10)
        assert by_key(a, clock() - DAY_WINDOW) == {("alice", "page"): 3}   # a's own, folded in
        clock.t += 60
        await wait_until(lambda: by_key(a, clock() - DAY_WINDOW) == {("alice", "page"): 5}, timeout=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        a.close()
        b.close()


def test_a_restarted_history_reads_what_was_written_before(postgres):
    url = postgres.create_database("wf_restart")
    clock = Clock()
    h = History(PostgresStore(url), max_sources=2, clock=clock)
    hit(h, "alice", n=3)
    hit(h, "bob", "api", n=4, latency=0.2)
    h.close()
    h.close()   # twice is fine

    again = History(PostgresStore(url), max_sources=2, clock=clock)
    try:
        assert by_key(again, clock() - DAY_WINDOW) == {("alice", "page"): 3, ("bob", "api"): 4}
        bob = next(s for s in again.summary(0) if s.source == "bob")
        assert bob.mean_latency_ms == pytest.approx(200.0) and bob.p95_latency_ms == pytest.approx(128 + 384 * 0.95)
        assert again.series("alice", "page", T0, T0 + 60) == [(M0, 3)]
        assert again._tracked == {"alice", "bob"}   # the day's busiest sources are tracked again
    finally:
        again.close()


def test_retention_prunes_old_rows(postgres):
    url = postgres.create_database("wf_retention")
    clock = Clock()
    h = History(PostgresStore(url), retention=86400, clock=clock)
    try:
        hit(h, "old", n=2)
        h.flush()
        clock.t += 2 * 86400
        hit(h, "new", n=1)
        h.flush()
        assert stored(url) == {(M0 + 2 * 86400, "new", "page"): 1}
        assert h.series("old", "page", 0, clock.t) == []
    finally:
        h.close()


def test_a_database_that_goes_away_keeps_rows_in_memory_and_writes_them_once_back(postgres):
    name = "wf_outage"
    url = postgres.create_database(name).replace("postgres@", "postgres:hunter2@")   # trust auth ignores it
    clock = Clock()
    h = History(PostgresStore(url, timeout=1), clock=clock)
    try:
        hit(h, n=3)
        h.flush()
        admin(postgres, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin(postgres, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        with capture_logs() as logs:
            hit(h, n=4)
            h.flush()
            clock.t += 60
            hit(h, n=2)
            h.flush()
        failed = [e for e in logs if e["event"] == "history.flush_failed"]
        assert len(failed) == 2, logs
        assert all(f"127.0.0.1:{postgres.port}/{name}" in e["error"] and "hunter2" not in e["error"] for e in failed)
        assert len(h._unwritten) == 1, "what failed is kept as one merged batch"
        # /admin/status's summary needs no round trip: it still answers, from totals and memory
        assert by_key(h, clock() - DAY_WINDOW) == {("alice", "page"): 9}

        admin(postgres, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        end = time.monotonic() + 30
        while True:   # the pool reconnects with a back-off
            with capture_logs() as logs:
                h.flush()
            if not logs:
                break
            assert time.monotonic() < end, logs
            time.sleep(0.2)
        assert stored(url) == {(M0, "alice", "page"): 7, (M0 + 60, "alice", "page"): 2}
        h.flush()
        assert stored(url) == {(M0, "alice", "page"): 7, (M0 + 60, "alice", "page"): 2}, "nothing written twice"
        assert by_key(h) == {("alice", "page"): 9}
    finally:
        admin(postgres, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        h.close()


def test_history_url_must_name_postgresql():
    assert HistoryConfig(url="postgres://wf@db:5432/history").url == "postgres://wf@db:5432/history"
    assert HistoryConfig().url is None
    routing = "routes:\n  - {name: a, pool: web}\nhistory:\n  url: %s\n"
    pools = "pools:\n  web:\n    command: app --port {port}\n"
    for url, shown in [("mysql://wf:hunter2@db/history", "scheme 'mysql'"), ("wf:hunter2@db", "no scheme")]:
        with pytest.raises(ConfigError) as info:
            load_config_text(routing % url, pools)
        message = str(info.value)
        assert message.startswith("routing.yaml:4: history.url: must be a postgresql:// or postgres:// URL")
        assert shown in message and "hunter2" not in message


def app_with_history(url: str, state_dir: str, servers: list[str]) -> App:
    routing = RoutingConfig(routes=[Route(name="default", pool="default", type="page")],
                            history=HistoryConfig(url=url, flush_interval=0.1))
    cfg = Config(routing=routing, pools={"default": Pool(backend="static", servers=servers)})
    return App(cfg, listen=("127.0.0.1", free_port()), admin=("127.0.0.1", free_port()), state_dir=state_dir,
               workers=1)


async def test_start_up_against_an_unreachable_database_fails_naming_it_without_the_password(postgres, tmp_path):
    port = free_port()
    cases = [(f"postgresql://wf:hunter2@127.0.0.1:{port}/history", f"127.0.0.1:{port}/history"),
             (postgres.url("no_such_db").replace("postgres@", "postgres:hunter2@"),
              f"127.0.0.1:{postgres.port}/no_such_db")]
    for url, where in cases:
        app = app_with_history(url, str(tmp_path), ["127.0.0.1:9"])
        with pytest.raises(StartupError) as info:
            await app.start()
        message = str(info.value)
        assert message.startswith("cannot open the history database") and where in message, message
        assert "hunter2" not in message
    with pytest.raises(StoreError):
        PostgresStore(cases[0][0], timeout=1)


async def test_requests_through_the_proxy_land_in_the_shared_table(postgres, tmp_path):
    url = postgres.create_database("wf_app")
    backend = DemoBackend()
    app = app_with_history(url, str(tmp_path), [f"127.0.0.1:{backend.port}"])
    try:
        await app.start()
        async with aiohttp.ClientSession() as session:
            for i in range(6):
                async with session.get(f"http://127.0.0.1:{app.listen[1]}/", headers={"X-Tenant": "acme"}) as r:
                    assert r.status == 200

        def total() -> int:
            return sum(stored(url).values())
        await wait_until(lambda: total() == 6, timeout=20)
        assert sum(s.requests for s in app.history.summary(app.clock() - DAY_WINDOW)) == 6
    finally:
        await app.stop()
        backend.stop()
    assert total() == 6, "stopping flushed nothing twice"
    assert app.history._store._pool.closed, "closing the history closes its pool"
