import asyncio
import random
import sqlite3

import pytest

from balancer.control.history import ADMIT_MIN_REQUESTS, OTHER, REBALANCE_INTERVAL, History

T0 = 1_700_000_040.0  # a minute boundary


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
    return {(s.source, s.type): s for s in h.summary(since)}


def test_flushed_rows_survive_a_restart(tmp_path):
    clock = Clock()
    h = History(tmp_path / "history.db", clock=clock)
    hit(h, "alice", "page", 3)
    clock.t += 60
    hit(h, "alice", "page", 2)
    hit(h, "bob", "api", 4, status=503, aborted=True, latency=0.2)
    h.close()

    again = History(tmp_path / "history.db", clock=clock)
    rows = by_key(again)
    assert rows["alice", "page"].requests == 5
    assert rows["alice", "page"].bytes_out == 500
    bob = rows["bob", "api"]
    assert (bob.requests, bob.errors, bob.aborts, bob.bytes_in) == (4, 4, 4, 40)
    assert bob.mean_latency_ms == pytest.approx(200.0)
    # 0.2 s falls in the (0.128, 0.512] bucket; the 95th percentile is interpolated inside it
    assert bob.p95_latency_ms == pytest.approx(128 + 384 * 0.95)
    assert again.series("alice", "page", T0, T0 + 3600) == [(int(T0), 3), (int(T0) + 60, 2)]
    assert [s.source for s in again.summary(0)] == ["alice", "bob"]
    again.close()


def test_database_uses_write_ahead_log(tmp_path):
    h = History(tmp_path / "h.db")
    h.close()
    mode = sqlite3.connect(tmp_path / "h.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_summary_merges_flushed_and_pending_counters(tmp_path):
    h = History(tmp_path / "h.db", clock=Clock())
    hit(h, n=3)
    h.flush()
    hit(h, n=2, status=500)
    s = by_key(h)["alice", "page"]
    assert (s.requests, s.errors) == (5, 2)
    # the same numbers once everything is on disk: nothing counted twice
    h.flush()
    assert by_key(h)["alice", "page"].requests == 5
    h.close()


def test_summary_respects_since():
    clock = Clock()
    h = History(None, clock=clock)
    hit(h, n=2)
    clock.t += 600
    hit(h, n=3)
    assert by_key(h, since=clock.t)["alice", "page"].requests == 3
    assert by_key(h, since=0)["alice", "page"].requests == 5


def test_random_source_flood_is_capped_at_max_sources_plus_other():
    h = History(None, max_sources=50, clock=Clock())
    rng = random.Random(7)
    for _ in range(10_000):
        hit(h, f"key-{rng.getrandbits(64):x}")
    names = {s.source for s in h.summary(0)}
    assert len(names) <= 51
    assert OTHER in names
    assert sum(s.requests for s in h.summary(0)) == 10_000
    h.flush()
    assert len({s.source for s in h.summary(0)}) <= 51


def test_busy_newcomer_gets_a_slot_after_rebalance():
    clock = Clock()
    h = History(None, max_sources=20, clock=clock)
    for i in range(20):
        hit(h, f"steady-{i}", n=5)
    hit(h, "newcomer", n=50)           # no room: counted as "other"
    assert "newcomer" not in {s.source for s in h.summary(0)}
    clock.t += REBALANCE_INTERVAL
    h.flush()                          # the newcomer takes the slot of a quieter tracked source
    hit(h, "newcomer", n=10)
    rows = by_key(h)
    assert rows["newcomer", "page"].requests == 10
    assert rows[OTHER, "page"].requests == 50


def minute_of_traffic(h: History, clock: Clock, steady: int, flood: int, rng: random.Random,
                      newcomer: int = 0) -> None:
    """One simulated minute: `steady` known sources send 5 requests each, `flood` random one-off
    names one each, "newcomer" `newcomer` requests, interleaved; then the window closes."""
    calls = [f"steady-{i}" for i in range(steady) for _ in range(5)]
    calls += [f"key-{rng.getrandbits(64):x}" for _ in range(flood)] + ["newcomer"] * newcomer
    rng.shuffle(calls)
    for source in calls:
        hit(h, source)
    clock.t += REBALANCE_INTERVAL
    h.flush()


def test_a_flood_of_one_off_names_never_displaces_tracked_sources():
    clock, rng = Clock(), random.Random(11)
    h = History(None, max_sources=100, clock=clock)
    minute_of_traffic(h, clock, steady=100, flood=0, rng=rng)
    for _ in range(5):   # 10,000 random one-off names over five minutes
        minute_of_traffic(h, clock, steady=100, flood=2000, rng=rng)
        names = {s.source for s in h.summary(clock.t - REBALANCE_INTERVAL)}
        assert names <= {f"steady-{i}" for i in range(100)} | {OTHER}
    assert len(h._tracked) == 100 and len(h._candidates) == 0   # each window starts empty
    assert by_key(h)[OTHER, "page"].requests == 10_000


def test_a_busy_newcomer_gets_in_during_a_flood_within_a_minute_or_two():
    clock, rng = Clock(), random.Random(12)
    h = History(None, max_sources=100, clock=clock)
    minute_of_traffic(h, clock, steady=100, flood=0, rng=rng)
    minute_of_traffic(h, clock, steady=100, flood=5000, rng=rng, newcomer=30)
    hit(h, "newcomer", n=3)
    assert by_key(h, clock.t)["newcomer", "page"].requests == 3
    assert len(h._tracked) == 100, "it took the slot of the quietest steady source"


def test_a_newcomer_below_the_admission_threshold_stays_in_other():
    clock, rng = Clock(), random.Random(13)
    h = History(None, max_sources=100, clock=clock)
    minute_of_traffic(h, clock, steady=100, flood=0, rng=rng)
    for _ in range(3):
        minute_of_traffic(h, clock, steady=100, flood=1000, rng=rng, newcomer=ADMIT_MIN_REQUESTS // 2)
    assert "newcomer" not in {s.source for s in h.summary(0)}


def test_retention_deletes_old_rows(tmp_path):
    clock = Clock()
    h = History(tmp_path / "h.db", retention=86400, clock=clock)
    hit(h, "old", n=2)
    h.flush()
    clock.t += 2 * 86400
    hit(h, "new", n=1)
    h.flush()
    assert set(by_key(h)) == {("new", "page")}
    assert h.series("old", "page", 0, clock.t) == []
    h.close()


async def test_run_flushes_in_the_background(tmp_path):
    h = History(tmp_path / "h.db", clock=Clock())
    task = asyncio.create_task(h.run(0.01))
    hit(h, n=4)
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            with sqlite3.connect(tmp_path / "h.db") as db:
                stored = db.execute("SELECT SUM(requests) FROM minutes").fetchone()[0]
            if stored == 4:
                break
        assert stored == 4
        assert by_key(h)["alice", "page"].requests == 4
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        h.close()


def worker_batch(records: list[tuple]) -> tuple[list[tuple], dict]:
    from balancer.dataplane.worker import Tally
    tally = Tally()
    for r in records:
        tally.record(*r)
    return tally.take()


def test_a_worker_batch_lands_in_the_current_minute_with_admission_and_sessions():
    clock = Clock(1_000_020.0)
    h = History(None, max_sources=2, clock=clock)
    rows, sessions = worker_batch([("a", "page", 200, 10, 100, 0.004, False), ("a", "api", 503, 1, 2, 0.5, False),
                                   ("a", "page", 200, 10, 100, 0.004, True), ("b", "page", 200, 0, 0, 0.001, False),
                                   ("c", "page", 200, 0, 0, 0.001, False)])
    h.merge(rows, sessions)
    got = {(r.source, r.type): r for r in h.minute_rows(0, clock() + 60)}
    assert got[("a", "page")].requests == 2 and got[("a", "page")].aborts == 1
    assert got[("a", "page")].minute == 1_000_020 // 60 * 60
    assert got[("a", "api")].latency_sum == pytest.approx(0.5)
    assert (OTHER, "page") in got and ("c", "page") not in got   # beyond max_sources: counted as other
    assert list(h.take_requests()) == [("a", "page"), ("a", "api"), ("a", "page"), ("b", "page"), ("c", "page")]
    summary = {(s.source, s.type): s for s in h.summary(0)}
    assert summary[("a", "api")].errors == 1 and summary[("a", "page")].bytes_out == 200


def test_a_fast_clock_scales_the_latency_workers_measure():
    clock = Clock(1_000_020.0)
    h = History(None, clock=clock, time_scale=300.0)
    h.merge(*worker_batch([("a", "api", 200, 0, 0, 0.02, False)] * 4))
    (row,) = h.minute_rows(0, clock() + 60)
    assert row.latency_sum == pytest.approx(4 * 0.02 * 300)
    assert sum(row.latency_hist) == 4 and row.latency_hist[-1] == 0 and row.latency_hist[-2] == 4   # 6 s: the 8.192 s bucket
