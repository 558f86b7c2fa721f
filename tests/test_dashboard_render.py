"""The dashboard page shows what shapes each pool's plan besides the forecast, escaped."""
from __future__ import annotations

from balancer.operator.dashboard import render


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
