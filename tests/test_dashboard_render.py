"""The dashboard page shows what shapes each pool's plan besides the forecast, escaped."""
from __future__ import annotations

from balancer.operator.dashboard import render
from balancer.operator.timeline import Sample


def test_sessions_latency_and_next_types_are_shown_and_escaped():
    status = {
        "instance": "i1", "uptime_s": 5,
        "pools": {"pay": {"backend": "process", "mode": "forecast-and-scale", "counts": {"ready": 1},
                          "sessions": {"checkout": 1.25, "idle": 0.0},
                          "latency": [{"source": "<acme>", "declared": "normal", "planned": "high", "p95_ms": 492.8,
                                       "abandon_after_ms": 100.0, "breach": True, "abort_slope": 0.2}]}},
        "next_types": {"browse": {"checkout": 0.75, "browse": 0.2}},
    }
    page = render(status, {}, {}, [], now=1_700_000_000.0)
    assert "next from sessions under way: checkout 1.25 req/s</p>" in page and "idle" not in page
    assert "<td>&lt;acme&gt;</td><td>normal</td><td>high</td><td class=num>492.8</td><td class=num>100.0</td>" in page
    assert "<acme>" not in page
    assert "<tr><td>browse</td><td>checkout 75%, browse 20%</td></tr>" in page


def test_a_pool_with_nothing_but_the_forecast_shows_no_empty_sections():
    page = render({"pools": {"web": {"counts": {}}}}, {}, {}, [], now=1_700_000_000.0)
    assert "sessions under way" not in page and "latency-sensitive" not in page and "what sessions do next" not in page


NOW = 1_700_000_000.0   # 2023-11-14 22:13:20 UTC


def test_source_rates_are_over_the_time_history_covers_and_the_heading_says_so():
    status = {"uptime_s": 660, "pools": {},
              "sources": [{"source": "alpha", "type": "page", "requests": 2027, "window_s": 86400}]}
    page = render(status, {}, {}, [], now=NOW)
    assert "<th>requests (24h)</th><th>req/s (last 11m)</th>" in page
    assert "<td class=num>2027</td><td class=num>3.071</td>" in page      # 2,027 / 660 s, not / 86,400 s
    # a restart keeps the store: minutes from before start-up widen the window again
    before = {"web": {int(NOW // 60) * 60 - 3600: 5}}
    assert "req/s (last 1h" in render(status, {}, before, [], now=NOW)
    day = render({**status, "uptime_s": 2 * 86400}, {}, {}, [], now=NOW)
    assert "<th>req/s (24h)</th>" in day and "<td class=num>0.023</td>" in day


def test_p95_is_interpolated_within_its_bucket_and_a_floor_in_the_last():
    from balancer.control.history import _quantile_ms
    from balancer.dataplane.counters import LATENCY_BOUNDS

    n = len(LATENCY_BOUNDS) + 1
    in_bucket = [0] * n
    in_bucket[4] = 4                                          # (128, 512] ms
    assert _quantile_ms(in_bucket, 0.95) == 492.8          # 128 + 384 × 0.95, not the bound 512
    spread = [0] * n
    spread[2], spread[3] = 90, 10                             # 90 in (8, 32], 10 in (32, 128]
    assert _quantile_ms(spread, 0.95) == 32 + 96 * 0.5
    beyond = [0] * n
    beyond[-1] = 3
    assert _quantile_ms(beyond, 0.95) == LATENCY_BOUNDS[-1] * 1000
    status = {"pools": {}, "sources": [{"source": "a", "type": "t", "requests": 3, "p95_latency_ms": 8192.0},
                                       {"source": "b", "type": "t", "requests": 2, "p95_latency_ms": 492.8}]}
    page = render(status, {}, {}, [], now=NOW)
    assert "<td class=num>≥ 8,192</td>" in page and "<td class=num>492.8</td>" in page


def test_pool_charts_share_a_wall_clock_axis_with_now_marked_and_units():
    import re

    status = {"pools": {"web": {"counts": {"ready": 2},
                                "forecast": [{"horizon_s": 900, "rate": 1.0, "lower": 0.5, "upper": 1.5}]}}}
    actual = {"web": {int(NOW // 60) * 60 - 60 * k: 60 for k in range(180)}}
    timeline = {"web": [Sample(NOW - 60 * k, ready=k % 3) for k in range(180, -1, -1)]}
    page = render(status, timeline, actual, [], now=NOW)
    figures = re.findall(r"<figure.*?</figure>", page, re.S)
    assert len(figures) == 2
    for fig in figures:
        ticks = re.findall(r'class="xtick"[^>]*>(\d\d:\d\d)<', fig)
        assert ticks == ["19:30", "20:00", "20:30", "21:00", "21:30", "22:00", "22:30", "23:00"]
        assert re.search(r'<text class="marker"[^>]*>now</text>', fig)
    assert "requests/s" in figures[0] and "members" in figures[1]
    strokes = dict(re.findall(r'class="series" data-label="([^"]+)" points="[^"]*" fill="none" stroke="([^"]+)"', figures[0]))
    band = re.search(r'class="band" points="[^"]*" fill="([^"]+)"', figures[0])
    assert band and len({strokes["actual"], strokes["forecast"], band.group(1)}) == 3
    assert re.findall(r'class="ytick"[^>]*>([^<]+)<', figures[1]) == ["0", "1", "2"]
