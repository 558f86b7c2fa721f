"""The live forecaster's statsmodels tier: only the busiest series, fitted off the feeding thread,
blended in by backtest weight, and its paths served until they no longer reach."""
from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

from balancer.control.history import History
from balancer.control.loop import ControlLoop
from config.loader import load_config
from predictor.engine import Forecaster
from predictor.heavy import ALL_MODELS, HEAVY_MODELS, HeavyPath, compute, history_needed

PERIOD = 288
BIN = 300.0


def _feed(fcs: list[Forecaster], now: list[float], days: float, seed: int = 5) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(days * PERIOD))
    big = rng.poisson(400 * (1.0 + 0.7 * np.sin(2 * np.pi * t / PERIOD))).astype(float)
    small = rng.poisson(6 * (1.0 + 0.7 * np.sin(2 * np.pi * t / PERIOD + 1.0))).astype(float)
    for k in t:
        now[0] = k * BIN
        for fc in fcs:
            fc.observe(now[0], {"big": big[k], "small": small[k]})
            if fc.refit_due():
                fc.refit()


def test_path_slice_serves_only_while_it_reaches():
    p = HeavyPath(10, np.array([0]), *(np.arange(20.0)[None, :] for _ in range(3)))
    assert p.slice(10, 20)[0].tolist() == [list(np.arange(20.0))]
    assert p.slice(12, 5)[0].tolist() == [[2.0, 3.0, 4.0, 5.0, 6.0]]
    assert p.slice(12, 19) is None and p.slice(9, 1) is None


def test_no_job_without_the_tier_or_without_two_days():
    now = [0.0]
    off = Forecaster(clock=lambda: now[0])
    young = Forecaster(clock=lambda: now[0], statsmodels_top_n=1)
    _feed([off, young], now, days=1.5)
    assert off.heavy_job() is None and young.heavy_job() is None


def test_busiest_series_gets_statsmodels_in_its_blend_and_the_rest_do_not():
    now = [0.0]
    heavy = Forecaster(clock=lambda: now[0], statsmodels_top_n=1)
    plain = Forecaster(clock=lambda: now[0])
    days = (history_needed(PERIOD) + 2) / PERIOD + 1.0  # one day in the ring buffer before the long history starts
    _feed([heavy, plain], now, days=days)
    job = heavy.heavy_job()
    assert job is not None and job.ids == ("big",) and job.choose.tolist() == [True]
    # the first job only starts the long history (the ring buffer's two days); nothing to backtest yet
    assert len(job.history[0]) == 2 * PERIOD
    assert heavy.heavy_job() is None, "a second job before heavy_every_s"
    first = compute(job)
    assert not first.chosen.any()
    heavy.apply_heavy(first)
    # a day later the long history supports a six-model backtest
    _feed_more(heavy, plain, now, bins=history_needed(PERIOD) - 2 * PERIOD)
    job = heavy.heavy_job()
    assert job is not None and len(job.history[0]) >= history_needed(PERIOD)
    result = compute(job)
    assert result.chosen.tolist() == [True]
    w = result.weights[0]
    assert w.shape == (len(ALL_MODELS), 3) and np.allclose(w.sum(axis=0), 1.0)
    assert w[len(ALL_MODELS) - len(HEAVY_MODELS):].sum() > 0.01, "statsmodels earned no weight on a clean seasonal series"
    assert result.paths and all(p.point.shape == (1, job.steps) for p in result.paths.values())
    heavy.apply_heavy(result)

    out_h, out_p = heavy.forecast(), plain.forecast()
    for f in out_h["big"] + out_h["small"]:
        assert np.isfinite([f.lower, f.point, f.upper]).all() and f.lower <= f.point <= f.upper
    # the busy series' forecast now blends statsmodels paths in; the small one is untouched
    assert [f.point for f in out_h["big"]] != pytest.approx([f.point for f in out_p["big"]], rel=1e-9)
    assert [f.point for f in out_h["small"]] == pytest.approx([f.point for f in out_p["small"]], rel=1e-9)
    assert heavy.status()["big"]["model"] in ALL_MODELS

    # paths keep serving as bins close between jobs, then drop out once they no longer reach
    _feed_more(heavy, plain, now, bins=2)
    assert heavy.forecast()["big"][1].point != pytest.approx(plain.forecast()["big"][1].point, rel=1e-9)
    _feed_more(heavy, plain, now, bins=job.steps)
    late = heavy.forecast()["big"]
    assert all(np.isfinite([f.lower, f.point, f.upper]).all() for f in late)


def _feed_more(heavy: Forecaster, plain: Forecaster, now: list[float], bins: int, seed: int = 9) -> None:
    rng = np.random.default_rng(seed + int(now[0]))
    start = int(now[0] // BIN) + 1
    for k in range(start, start + bins):
        now[0] = k * BIN
        counts = {"big": float(rng.poisson(400 * (1.0 + 0.7 * np.sin(2 * np.pi * k / PERIOD)))),
                  "small": float(rng.poisson(6 * (1.0 + 0.7 * np.sin(2 * np.pi * k / PERIOD + 1.0))))}
        for fc in (heavy, plain):
            fc.observe(now[0], counts)


async def test_control_loop_runs_the_job_in_a_worker_process_and_applies_it(tmp_path):
    now = [0.0]
    fc = Forecaster(clock=lambda: now[0], statsmodels_top_n=1, heavy_every_s=900.0)
    plain = Forecaster(clock=lambda: now[0])
    _feed([fc, plain], now, days=(history_needed(PERIOD) + 2) / PERIOD + 1.0)
    cfg = load_config("config")
    history = History(tmp_path / "history.sqlite3", clock=lambda: now[0])
    loop = ControlLoop(cfg, history, lambda: {}, lambda pool: 0, {}, clock=lambda: now[0], forecaster=fc)
    assert fc.statsmodels_top_n == cfg.routing.predictor.statsmodels_top_n == 2  # the config rules
    try:
        loop._heavy_step()   # only starts the long histories: done inline, no process
        assert loop._heavy is None and loop._heavy_proc is None and len(fc._long) == 2
        _feed_more(fc, plain, now, bins=history_needed(PERIOD) - 2 * PERIOD)
        loop._heavy_step()   # now there is something to fit: a worker process does it
        running = loop._heavy
        assert running is not None
        worker = loop._heavy_proc
        assert worker.pid != os.getpid() and worker.is_alive()
        loop._heavy_step()
        assert loop._heavy is running, "no second job while one runs"
        result = await asyncio.wait_for(asyncio.shield(running), 120)
        assert result.ids == ("big", "small") and result.chosen.all() and result.paths
        loop._heavy_step()  # applies the result; the next job is not due yet
        assert loop._heavy is None
        big = fc.ids.index("big")
        assert fc._weights[big, 3:].sum() > 0.01 and fc._heavy_paths
    finally:
        loop.close()
        history.close()
    worker.join(10)
    assert not worker.is_alive(), "the worker exits once it has answered"


async def test_close_kills_a_job_in_flight_and_a_dead_worker_fails_its_future(tmp_path):
    now = [0.0]
    fc = Forecaster(clock=lambda: now[0], statsmodels_top_n=1, heavy_every_s=900.0)
    _feed([fc], now, days=(history_needed(PERIOD) + 2) / PERIOD + 1.0)
    history = History(tmp_path / "history.sqlite3", clock=lambda: now[0])
    loop = ControlLoop(load_config("config"), history, lambda: {}, lambda pool: 0, {}, clock=lambda: now[0], forecaster=fc)
    loop.forecaster.statsmodels_top_n = 1
    try:
        loop._heavy_step()
        _feed_more(fc, fc, now, bins=history_needed(PERIOD) - 2 * PERIOD)
        loop._heavy_step()
        proc, fut = loop._heavy_proc, loop._heavy
        assert proc is not None and proc.is_alive()
        proc.kill()   # as the OOM killer would
        with pytest.raises(RuntimeError, match="before answering"):
            await asyncio.wait_for(asyncio.shield(fut), 30)
        loop._heavy_step()   # logs the failure, keeps going (the next job when due)
        assert loop._heavy is None
        now[0] += 900
        loop._heavy_step()
        assert loop._heavy_proc is not None and loop._heavy_proc.is_alive()
        proc = loop._heavy_proc
        loop.close()
        assert not proc.is_alive() and loop._heavy is None
    finally:
        loop.close()
        history.close()


@pytest.mark.timeout(300)   # ≈ 35 s alone; statsmodels fits slow down a lot on a loaded 2-core box
def test_warmfront_run_fits_statsmodels_for_its_busiest_series_and_exits_cleanly(tmp_path):
    """The real command: three days of history for one busy series in the state dir. The first
    control-loop step reloads two days, reads the third back from History for the statsmodels
    tier, fits it in a spawned process, and SIGTERM still ends everything at once."""
    import json
    import time

    from tests.runkit import Warmfront, wait_until

    now = time.time()
    history = History(tmp_path / "history.sqlite3", clock=lambda: now)
    rng = np.random.default_rng(1)
    first = int(now // 60 * 60) - int(3.3 * 86400)
    for minute in range(first, int(now // 60 * 60), 60):
        rate = 80 * (1.0 + 0.7 * np.sin(2 * np.pi * (minute % 86400) / 86400))
        history.add_minute(minute, "acme", "api", int(rng.poisson(rate)), 0.01 * rate)
    history.close()

    def heavy_refits() -> list[dict]:
        events = []
        for line in wf.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"predictor.heavy_refit"' in line:
                events.append(json.loads(line))
        return events

    wf = Warmfront("--config", "config", state_dir=tmp_path)
    try:
        done = wait_until(lambda: [e for e in heavy_refits() if e["fitted"]], 240)
        assert done, wf.tail(30)
        assert done[0]["backtested"] == 1 and set(done[0]["fitted"]) <= set(HEAVY_MODELS)
        models = {(m["source"], m["type"]): m["model"] for m in wf.status()["models"]}
        assert models[("acme", "api")] in ALL_MODELS
        assert wf.stop(timeout=20) == 0
        assert wait_until(lambda: not wf.group_pids(), 10), "a process outlived warmfront"
    finally:
        wf.cleanup()
