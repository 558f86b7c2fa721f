"""svgplot.chart draws what a reader needs: distinct nice ticks, time labels, a "now" line, units, clipped bands."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np

from predictor.svgplot import BAND_COLOR, FORECAST_COLOR, Band, Line, Marker, chart, nice_ticks, time_ticks

NS = "{http://www.w3.org/2000/svg}"
T0 = 1_700_000_000.0   # 2023-11-14 22:13:20 UTC


def texts(svg: str, cls: str) -> list[str]:
    return [e.text or "" for e in ET.fromstring(svg).iter(f"{NS}text") if e.get("class") == cls]


def test_members_from_0_to_2_get_the_integer_ticks_0_1_2():
    svg = chart(np.arange(5.0), [Line("ready", np.array([0, 1, 2, 2, 1.0]))], integer=True, y_label="members")
    assert texts(svg, "ytick") == ["0", "1", "2"]
    assert "members" in svg


def test_y_tick_labels_are_nice_and_never_repeat():
    for top in (0.03, 0.3, 2.0, 7.0, 60.0, 373.0, 12_345.0):
        labels = texts(chart(np.arange(3.0), [Line("a", np.array([0.0, top / 2, top]))]), "ytick")
        assert len(labels) == len(set(labels)) >= 3, (top, labels)
    assert nice_ticks(0, 60) == [0, 20, 40, 60]
    assert nice_ticks(0, 7, integer=True) == [0, 2, 4, 6, 8]
    assert nice_ticks(0, 0.3) == [0, 0.1, 0.2, 0.30000000000000004]


def test_time_ticks_are_hh_mm_in_utc_and_dates_over_days():
    assert [s for _, s in time_ticks(T0 - 3 * 3600, T0 + 3600, step_s=1800)] == [
        "19:30", "20:00", "20:30", "21:00", "21:30", "22:00", "22:30", "23:00"]
    days = [s for _, s in time_ticks(T0, T0 + 10 * 86400)]
    assert days[:2] == ["Nov 15", "Nov 17"] and all(re.fullmatch(r"[A-Z][a-z]{2} \d\d", s) for s in days)
    two = [s for _, s in time_ticks(T0, T0 + 1.5 * 86400)]
    assert "Nov 15" in two and "06:00" in two            # midnight by date, the rest by time
    assert [s for _, s in time_ticks(0, 2 * 86400)][:3] == ["day 0", "06:00", "12:00"]   # an offset trace, not 1970


def test_chart_draws_given_time_ticks_a_now_marker_axes_and_units():
    x = T0 + np.arange(-180, 61, 1.0) * 60
    svg = chart(x, [Line("actual", np.ones(len(x)))], x_ticks=time_ticks(x[0], x[-1], step_s=1800),
                marker=Marker(T0, "now"), y_label="requests/s", x_label="time (UTC)")
    assert len([s for s in texts(svg, "xtick") if re.fullmatch(r"\d\d:\d\d", s)]) == 8
    assert texts(svg, "marker") == ["now"] and 'class="marker"' in svg
    assert "requests/s" in svg and "time (UTC)" in svg


def test_a_band_far_beyond_the_lines_is_clipped_and_the_legend_says_so():
    x = np.arange(4.0)
    actual, point = np.array([60, 60, np.nan, np.nan]), np.array([np.nan, 60, 61, 62])
    svg = chart(x, [Line("actual", actual), Line("forecast", point, FORECAST_COLOR)],
                [Band("interval", np.array([np.nan, 60, 40, 20]), np.array([np.nan, 60, 200, 373]), BAND_COLOR)])
    ticks = [float(t) for t in texts(svg, "ytick")]
    assert ticks[-1] <= 100 < 373                          # the actual line keeps most of the height
    assert "interval (band clipped)" in texts(svg, "legend")
    band = ET.fromstring(svg).find(f"{NS}polygon")
    assert band is not None and band.get("fill") == BAND_COLOR != FORECAST_COLOR
    top = min(float(p.split(",")[1]) for p in band.get("points", "").split())
    assert top >= min(float(y) for y in re.findall(r'<line x1="[\d.]+" x2="[\d.]+" y1="([\d.]+)"', svg))
    narrow = chart(x, [Line("actual", actual)], [Band("interval", np.array([np.nan, 55, 50, 45]),
                                                     np.array([np.nan, 65, 70, 75]))])
    assert "interval" in texts(narrow, "legend") and "(band clipped)" not in narrow


def test_the_legend_sits_above_the_plot_area():
    svg = chart(np.arange(3.0), [Line("a long label for the first series", np.ones(3)), Line("b", np.zeros(3))],
                [Band("band", np.zeros(3), np.ones(3))], width=300)
    root = ET.fromstring(svg)
    legend_bottom = max(float(e.get("y", 0)) for e in root.iter(f"{NS}text") if e.get("class") == "legend")
    plot_top = min(float(e.get("y", 0)) for e in root.iter(f"{NS}text") if e.get("class") == "ytick") - 8
    assert legend_bottom < plot_top
