"""Dependency-free SVG charts: lines with shaded bands over time (actual vs forecast; the dashboard
and the `forecast` / `simulate` plots share it), and a scatter of frontiers (`simulate --sweep-plot`)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape

import numpy as np

# One palette for every actual-vs-forecast plot: the band's colour is not the forecast line's.
ACTUAL_COLOR = "#1f77b4"
FORECAST_COLOR = "#e6550d"
BAND_COLOR = "#8c8c8c"
BAND_HEADROOM = 1.5      # a band may stretch the y range to this many times the lines' top, no further
_CHAR_W = 6.2            # average width of an 11 px sans-serif character, for laying out text
_TIME_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
               86400, 2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400)
EPOCH_FROM = 365 * 86400.0   # times before 1971 are offsets into a trace, not dates


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    y: np.ndarray
    color: str = ACTUAL_COLOR
    dash: str = ""            # SVG stroke-dasharray, e.g. "5 3"
    width: float = 1.6
    dot_last: bool = False    # mark the last point: the value now, visible even on a short line


@dataclass(frozen=True, slots=True)
class Band:
    label: str
    lower: np.ndarray
    upper: np.ndarray
    color: str = BAND_COLOR


@dataclass(frozen=True, slots=True)
class Marker:
    """A vertical line across the plot at `x`, labelled above it ("now")."""
    x: float
    label: str
    color: str = "#333333"


def nice_ticks(lo: float, hi: float, target: int = 5, integer: bool = False) -> list[float]:
    """Ticks at multiples of a step of 1, 2 or 5 × 10^k covering [lo, hi], about `target` of them;
    `integer` keeps the step a whole number (counts)."""
    if not hi > lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, target - 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    if integer:
        step = max(1.0, float(round(step)))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [k * step for k in range(first, last + 1)]


def time_ticks(lo: float, hi: float, step_s: float | None = None, max_ticks: int = 9,
               epoch: bool | None = None) -> list[tuple[float, str]]:
    """(position, label) ticks at round times in [lo, hi] seconds: HH:MM within a day, the date at
    midnight over longer spans. Epoch seconds are shown in UTC; small values (`epoch` None decides
    by `lo`) are offsets into a trace, shown as HH:MM of "day N"."""
    if epoch is None:
        epoch = lo >= EPOCH_FROM
    span = max(hi - lo, 1.0)
    step = step_s or next((s for s in _TIME_STEPS if span / s <= max_ticks - 1), _TIME_STEPS[-1])
    ticks = []
    t = math.ceil(lo / step) * step
    while t <= hi + 1e-6:
        ticks.append((float(t), _time_label(t, epoch, date=step >= 86400 or (span > 86400 and t % 86400 == 0))))
        t += step
    return ticks


def _time_label(t: float, epoch: bool, date: bool) -> str:
    if epoch:
        d = datetime.fromtimestamp(t, timezone.utc)
        return d.strftime("%b %d") if date else d.strftime("%H:%M")
    day, rest = divmod(int(round(t)), 86400)
    return f"day {day}" if date else f"{rest // 3600:02d}:{rest % 3600 // 60:02d}"


def chart(x: np.ndarray, lines: Sequence[Line], bands: Sequence[Band] = (), title: str = "", width: int = 900,
          height: int = 320, x_label: str = "", y_label: str = "", x_ticks: Sequence[tuple[float, str]] = (),
          x_range: tuple[float, float] | None = None, marker: Marker | None = None, integer: bool = False) -> str:
    """An SVG document: `lines` and `bands` over `x`, NaN points leaving gaps rather than drawing to zero.

    The y range comes from the lines (from 0 unless they go below), with room for the bands up to
    BAND_HEADROOM times the lines' top; a band beyond is clipped and says so in the legend.
    `x_ticks` are (position, label) pairs (see `time_ticks`), else numeric ticks are chosen;
    `integer` keeps y ticks whole (counts). The legend sits between the title and the plot."""
    x = np.asarray(x, dtype=float)
    outside = np.zeros(len(x), bool) if x_range is None else (x < x_range[0]) | (x > x_range[1])
    hide = lambda a: np.where(outside, np.nan, np.asarray(a, float))  # noqa: E731
    line_ys = [hide(ln.y) for ln in lines]
    band_ys = [(hide(b.lower), hide(b.upper)) for b in bands]
    y_lo, y_hi = _y_extent(line_ys, band_ys)
    yt = nice_ticks(y_lo, y_hi, integer=integer)
    y_lo, y_hi = yt[0], yt[-1]
    finite_x = x[np.isfinite(x)]
    x_lo, x_hi = x_range or ((float(finite_x.min()), float(finite_x.max())) if finite_x.size else (0.0, 1.0))
    x_hi = x_hi if x_hi > x_lo else x_lo + 1.0
    xt = list(x_ticks) or [(v, _number(v, _step(nice_ticks(x_lo, x_hi, 7)))) for v in nice_ticks(x_lo, x_hi, 7)]
    xt = [(p, s) for p, s in xt if x_lo - 1e-9 <= p <= x_hi + 1e-9]

    clipped = [bool(np.any(np.isfinite(lo) & (lo < y_lo)) or np.any(np.isfinite(hi) & (hi > y_hi))) for lo, hi in band_ys]
    legend = ([(ln.label, ln.color, "line", ln.dash) for ln in lines]
              + [(b.label + (" (band clipped)" if c else ""), b.color, "band", "") for b, c in zip(bands, clipped)])
    y_text = [_number(v, _step(yt)) for v in yt]
    pad_l = int(max(40.0, 30 + _CHAR_W * max(len(s) for s in y_text)))
    pad_r = 16
    legend_svg, legend_h = _legend(legend, pad_l, 34, width - pad_r)
    pad_t = 34 + legend_h + (16 if marker else 6)
    pad_b = 44 if x_label else 28
    left, right, top, bottom = pad_l, width - pad_r, pad_t, height - pad_b
    sx = lambda v: left + (v - x_lo) / (x_hi - x_lo) * (right - left)  # noqa: E731
    sy = lambda v: bottom - (v - y_lo) / (y_hi - y_lo) * (bottom - top)  # noqa: E731

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{pad_l}" y="17" font-size="13" font-weight="bold">{escape(title)}</text>', legend_svg]
    for v, s in zip(yt, y_text):
        out.append(f'<line x1="{left}" x2="{right}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#e6e6e6"/>'
                   f'<text class="ytick" x="{left - 6}" y="{sy(v) + 4:.1f}" text-anchor="end">{escape(s)}</text>')
    for p, s in xt:
        out.append(f'<line x1="{sx(p):.1f}" x2="{sx(p):.1f}" y1="{top}" y2="{bottom}" stroke="#f0f0f0"/>'
                   f'<line x1="{sx(p):.1f}" x2="{sx(p):.1f}" y1="{bottom}" y2="{bottom + 4}" stroke="#333"/>'
                   f'<text class="xtick" x="{sx(p):.1f}" y="{bottom + 16}" text-anchor="middle">{escape(s)}</text>')
    for b, (lo, hi) in zip(bands, band_ys):
        for xs, a, c in _segments(x, np.clip(lo, y_lo, y_hi), np.clip(hi, y_lo, y_hi)):
            pts = [f"{sx(p):.1f},{sy(v):.1f}" for p, v in zip(xs, c)] + [f"{sx(p):.1f},{sy(v):.1f}" for p, v in zip(xs[::-1], a[::-1])]
            out.append(f'<polygon class="band" points="{" ".join(pts)}" fill="{b.color}" fill-opacity="0.35" stroke="none"/>')
    for ln, y in zip(lines, line_ys):
        dash = f' stroke-dasharray="{ln.dash}"' if ln.dash else ""
        for xs, ys, _ in _segments(x, y, y):
            path = " ".join(f"{sx(p):.1f},{sy(v):.1f}" for p, v in zip(xs, ys))
            out.append(f'<polyline class="series" data-label="{escape(ln.label)}" points="{path}" fill="none" '
                       f'stroke="{ln.color}" stroke-width="{ln.width:g}" stroke-linejoin="round"{dash}/>')
        ok = np.flatnonzero(np.isfinite(y) & np.isfinite(x))
        if ln.dot_last and ok.size:
            out.append(f'<circle cx="{sx(x[ok[-1]]):.1f}" cy="{sy(y[ok[-1]]):.1f}" r="3" fill="{ln.color}"/>')
    out.append(f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#333"/>'
               f'<line x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" stroke="#333"/>')
    if marker is not None and x_lo <= marker.x <= x_hi:
        mx = sx(marker.x)
        out.append(f'<line class="marker" x1="{mx:.1f}" x2="{mx:.1f}" y1="{top - 4}" y2="{bottom}" stroke="{marker.color}" '
                   f'stroke-width="1.2" stroke-dasharray="4 3"/>'
                   f'<text class="marker" x="{mx:.1f}" y="{top - 6}" text-anchor="middle" fill="{marker.color}" '
                   f'font-weight="bold">{escape(marker.label)}</text>')
    if x_label:
        out.append(f'<text x="{(left + right) / 2:.1f}" y="{height - 8}" text-anchor="middle">{escape(x_label)}</text>')
    if y_label:
        mid = (top + bottom) / 2
        out.append(f'<text x="13" y="{mid:.1f}" text-anchor="middle" transform="rotate(-90 13 {mid:.1f})">{escape(y_label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _y_extent(lines: list[np.ndarray], bands: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """[lo, hi] the data asks for: the lines', from 0 unless they go below; the bands add up to
    BAND_HEADROOM times the lines' top (all of them when there are no lines)."""
    def finite(arrays: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([a[np.isfinite(a)] for a in arrays] or [np.zeros(0)])
    ly, by = finite(lines), finite([a for pair in bands for a in pair])
    lo = min(0.0, float(ly.min()) if ly.size else 0.0, float(by.min()) if by.size and not ly.size else 0.0)
    hi = float(ly.max()) if ly.size else lo
    if by.size:
        band_hi = float(by.max())
        hi = max(hi, band_hi if not ly.size or hi <= 0 else min(band_hi, hi * BAND_HEADROOM))
    return lo, hi


def _step(ticks: Sequence[float]) -> float:
    return ticks[1] - ticks[0] if len(ticks) > 1 else 1.0


def _number(v: float, step: float) -> str:
    """`v` with as many decimals as the tick step needs, so neighbouring labels always differ."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{v:,.{decimals}f}" if abs(v) >= 1e-12 else "0"


def _legend(items: Sequence[tuple[str, str, str, str]], x0: float, y0: float, x_max: float) -> tuple[str, int]:
    """The legend laid out in rows from (x0, y0), wrapping before x_max: its SVG and height."""
    out, x, y = [], x0, y0
    for label, color, kind, dash in items:
        w = 26 + _CHAR_W * len(label)
        if x > x0 and x + w > x_max:
            x, y = x0, y + 15
        if kind == "band":
            out.append(f'<rect x="{x:.1f}" y="{y - 9}" width="20" height="10" fill="{color}" fill-opacity="0.35"/>')
        else:
            d = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<line x1="{x:.1f}" x2="{x + 20:.1f}" y1="{y - 4}" y2="{y - 4}" stroke="{color}" stroke-width="2.5"{d}/>')
        out.append(f'<text class="legend" x="{x + 24:.1f}" y="{y}">{escape(label)}</text>')
        x += w + 14
    return "\n".join(out), int(y - y0 + 15) if items else 0


def _segments(x: np.ndarray, a: np.ndarray, b: np.ndarray):
    ok = np.isfinite(a) & np.isfinite(b)
    start = None
    for i in range(len(x) + 1):
        if i < len(x) and ok[i]:
            start = i if start is None else start
        elif start is not None:
            yield x[start:i], a[start:i], b[start:i]
            start = None


@dataclass(frozen=True, slots=True)
class Scatter:
    """Points joined along their frontier: `points` and `front` are (x, y) pairs."""
    label: str
    points: Sequence[tuple[float, float]]
    front: Sequence[tuple[float, float]]
    point_labels: Sequence[str] = ()
    color: str = "#1f77b4"
    dash: str = ""
    circled: Sequence[int] = ()


def scatter(series: Sequence[Scatter], title: str = "", x_label: str = "", y_label: str = "",
            width: int = 900, height: int = 420) -> str:
    """An SVG scatter with labelled axes and ticks, each series' frontier drawn as a line."""
    pad_l, pad_r, pad_t, pad_b = 70, 200, 30, 50
    xs = [x for s in series for x, _ in s.points] or [0.0, 1.0]
    ys = [y for s in series for _, y in s.points] or [0.0, 1.0]
    x_lo, x_hi = min(xs), max(xs)
    x_pad = (x_hi - x_lo) * 0.05 or 1.0
    x_lo, x_hi = x_lo - x_pad, x_hi + x_pad
    y_lo, y_hi = 0.0, max(ys) * 1.08 or 1.0
    sx = lambda v: pad_l + (v - x_lo) / (x_hi - x_lo) * (width - pad_l - pad_r)  # noqa: E731
    sy = lambda v: height - pad_b - (v - y_lo) / (y_hi - y_lo) * (height - pad_t - pad_b)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{pad_l}" y="18" font-size="13">{escape(title)}</text>',
           f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{sy(y_lo):.1f}" y2="{sy(y_lo):.1f}" stroke="#333"/>',
           f'<line x1="{pad_l}" x2="{pad_l}" y1="{sy(y_lo):.1f}" y2="{pad_t}" stroke="#333"/>']
    for v in np.linspace(y_lo, y_hi, 6):
        out.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#eee"/>'
                   f'<text x="{pad_l - 5}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    for v in np.linspace(x_lo + x_pad, x_hi - x_pad, 6):
        out.append(f'<line x1="{sx(v):.1f}" x2="{sx(v):.1f}" y1="{sy(y_lo):.1f}" y2="{sy(y_lo) + 4:.1f}" stroke="#333"/>'
                   f'<text x="{sx(v):.1f}" y="{sy(y_lo) + 16:.1f}" text-anchor="middle">{v:.3g}</text>')
    out.append(f'<text x="{(pad_l + width - pad_r) / 2}" y="{height - 10}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(f'<text x="16" y="{(pad_t + height - pad_b) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {(pad_t + height - pad_b) / 2})">{escape(y_label)}</text>')
    for s in series:
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.front)
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        out.append(f'<polyline points="{line}" fill="none" stroke="{s.color}" stroke-width="1.5"{dash}/>')
        for i, (x, y) in enumerate(s.points):
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{s.color}"/>')
            if i in s.circled:
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="7" fill="none" stroke="{s.color}"/>')
            if i < len(s.point_labels) and s.point_labels[i]:
                out.append(f'<text x="{sx(x) + 5:.1f}" y="{sy(y) - 5:.1f}" font-size="9" fill="{s.color}">'
                           f'{escape(s.point_labels[i])}</text>')
    for k, s in enumerate(series):
        lx, ly = width - pad_r + 15, pad_t + 16 * k
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        out.append(f'<line x1="{lx}" x2="{lx + 22}" y1="{ly + 5}" y2="{ly + 5}" stroke="{s.color}" stroke-width="2"{dash}/>'
                   f'<text x="{lx + 28}" y="{ly + 9}">{escape(s.label)}</text>')
    out.append("</svg>")
    return "\n".join(out)
