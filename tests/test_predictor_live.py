"""The predictor's cluster shapes and learned event uplift, live: a real ControlLoop reading a real
History on a stopped clock, stepped as `warmfront run` steps it.

- A source with a few hours of history borrows the daily shape of the cluster its first hours
  match (k-means over the daily profiles of the sources with a whole day), scaled to its level.
- A campaign that declared no multiplier and doubled traffic teaches the next campaign its uplift.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from balancer.control.history import History
from balancer.control.loop import ControlLoop
from config.models import Config, Pool, Route, RoutingConfig
from predictor.events import Event, EventBook

DAY = 86400
HOUR = 3600
T0 = 19_700 * DAY   # a midnight


def config() -> Config:
    routing = RoutingConfig(routes=[Route(name="api", pool="web", type="api")])
    return Config(routing=routing, pools={"web": Pool(backend="static", servers=["127.0.0.1:1"])})


def office(t: float) -> float:
    """Mean 1, peak at 13:00, almost nothing at night."""
    return 1 + 0.9 * math.sin(2 * math.pi * ((t % DAY) / HOUR - 7) / 24)


def evening(t: float) -> float:
    """Mean 1, peak at 21:00, trough at 09:00."""
    return 1 + 0.9 * math.sin(2 * math.pi * ((t % DAY) / HOUR - 15) / 24)


def hour_mean(shape, end: float) -> float:
    return float(np.mean([shape(end - HOUR + m * 60) for m in range(60)]))


def loop_on(history: History, now: list[float], events: EventBook | None = None) -> ControlLoop:
    return ControlLoop(config(), history, lambda: {}, lambda member: 0, {}, clock=lambda: now[0], events=events)


async def test_a_young_source_borrows_the_daily_shape_of_the_cluster_its_first_hours_match(tmp_path):
    now = [float(T0 + 10 * HOUR)]
    history = History(tmp_path / "history.sqlite3", clock=lambda: now[0])
    rng = np.random.default_rng(4)
    volumes = {f"office-{i}": 10.0 * (i + 1) for i in range(4)} | {f"evening-{i}": 15.0 * (i + 1) for i in range(4)}
    for minute in range(int(now[0] - 2 * DAY), int(now[0]), 60):
        for source, per_minute in volumes.items():
            shape = office if source.startswith("office") else evening
            history.add_minute(minute, source, "api", int(rng.poisson(per_minute * shape(minute))))
    # Four hours of a new source with the office shape, at a volume none of the others has.
    for minute in range(int(now[0] - 4 * HOUR), int(now[0]), 60):
        history.add_minute(minute, "fresh", "api", int(rng.poisson(30 * office(minute))))
    loop = loop_on(history, now)
    try:
        await loop.step()
        fc = loop.forecaster
        sid = "fresh\x1fapi"
        assert fc.models[fc.ids.index(sid)] == "shape", "the young source should forecast with a borrowed shape"
        # Hours ending 16:00 (office busy, evening quiet) and 01:00 (office asleep, evening busy).
        busy_h, night_h = 6 * HOUR, 15 * HOUR
        busy, night = (f.point for f in fc.forecast((busy_h, night_h))[sid])
        expected = hour_mean(office, now[0] + busy_h) / hour_mean(office, now[0] + night_h)
        assert busy / night == pytest.approx(expected, rel=0.3), (busy, night)   # ≈ 16; flat would be 1
        assert hour_mean(evening, now[0] + busy_h) / hour_mean(evening, now[0] + night_h) < 1   # not the other shape
        # scaled to its own level: 30 requests a minute times the shape
        assert busy == pytest.approx(30 * 60 * hour_mean(office, now[0] + busy_h), rel=0.2)
        # an established source keeps its own models
        assert fc.models[fc.ids.index("office-0\x1fapi")] not in ("shape", "last_value")
    finally:
        loop.close()
        history.close()


async def test_a_campaign_that_doubled_traffic_teaches_the_next_campaign_its_uplift(tmp_path):
    spring = Event("spring", "campaign", T0 + 2 * HOUR, T0 + 4 * HOUR, "source", "shop")
    summer = Event("summer", "campaign", T0 + 26 * HOUR, T0 + 29 * HOUR, "source", "shop")   # declares no multiplier either
    book = EventBook([spring, summer])
    now = [float(T0 + HOUR)]
    history = History(tmp_path / "history.sqlite3", clock=lambda: now[0])
    rng = np.random.default_rng(11)

    def traffic(since: float, until: float) -> None:
        for minute in range(int(since), int(until), 60):
            rate = 40 * (1 + 0.5 * math.sin(2 * math.pi * (minute % DAY) / DAY))
            if spring.start <= minute < spring.end:
                rate *= 2
            history.add_minute(minute, "shop", "api", int(rng.poisson(rate)))

    traffic(now[0] - 2 * DAY, now[0])
    loop = loop_on(history, now, book)
    sid = "shop\x1fapi"
    summer_bins = np.arange(summer.start, summer.end, 300.0)
    try:
        await loop.step()
        assert loop.forecaster.multipliers(sid, summer_bins).max() == 1.0   # nothing learned yet
        while now[0] < spring.end:   # a step per 5-minute bin through the campaign
            traffic(now[0], now[0] + 300)
            now[0] += 300
            await loop.step()
        uplift = book.uplift("campaign")
        # 2x actual over the forecast made without it, shrunk towards 1 after one window: √2
        assert 1.3 < uplift < 1.55, uplift
        assert loop.forecaster.multipliers(sid, summer_bins) == pytest.approx(np.full(len(summer_bins), uplift))
        # The pool's 24-hour forecast (the hour ending 28:00) lies in summer's window: uplifted.
        fc = loop.forecaster
        baseline = fc.point_path(288)[fc.ids.index(sid), -12:].sum() / HOUR
        day_ahead = next(f for f in loop.pools["web"].outlook.forecast if f.horizon_s == DAY)
        assert day_ahead.rate == pytest.approx(uplift * baseline, rel=1e-3)
    finally:
        loop.close()
        history.close()
