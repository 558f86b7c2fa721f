"""A dependency-free SVG line chart with shaded bands: actual vs forecast (the dashboard reuses it)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np


@dataclass(frozen=True, slots=True)
class Line:
    label: str
    y: np.ndarray
    color: str = "#1f77b4"


@dataclass(frozen=True, slots=True)
class Band:
    label: str
    lower: np.ndarray
    upper: np.ndarray
    color: str = "#ff7f0e"


def chart(x: np.ndarray, lines: list[Line], bands: Sequence[Band] = (), title: str = "", width: int = 900, height: int = 320, x_label: str = "") -> str:
    """An SVG document; NaN points leave gaps rather than drawing to zero."""
    pad_l, pad_r, pad_t, pad_b = 60, 20, 30, 40
    x = np.asarray(x, dtype=float)
    ys = [ln.y for ln in lines] + [b.lower for b in bands] + [b.upper for b in bands]
    finite = np.concatenate([np.asarray(v, float)[np.isfinite(v)] for v in ys] or [np.zeros(1)])
    y_lo, y_hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    y_hi = y_hi if y_hi > y_lo else y_lo + 1.0
    x_lo, x_hi = float(x.min()), float(x.max()) if x.max() > x.min() else float(x.min()) + 1.0
    sx = lambda v: pad_l + (v - x_lo) / (x_hi - x_lo) * (width - pad_l - pad_r)  # noqa: E731
    sy = lambda v: height - pad_b - (v - y_lo) / (y_hi - y_lo) * (height - pad_t - pad_b)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{pad_l}" y="18" font-size="13">{escape(title)}</text>']
    for v in np.linspace(y_lo, y_hi, 5):
        out.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#eee"/>'
                   f'<text x="{pad_l - 5}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:,.0f}</text>')
    out.append(f'<text x="{(pad_l + width) / 2}" y="{height - 8}" text-anchor="middle">{escape(x_label)}</text>')
    for b in bands:
        for seg in _segments(x, np.asarray(b.lower, float), np.asarray(b.upper, float)):
            xs, lo, hi = seg
            pts = [f"{sx(a):.1f},{sy(c):.1f}" for a, c in zip(xs, hi)] + [f"{sx(a):.1f},{sy(c):.1f}" for a, c in zip(xs[::-1], lo[::-1])]
            out.append(f'<polygon points="{" ".join(pts)}" fill="{b.color}" fill-opacity="0.25" stroke="none"/>')
    for ln in lines:
        y = np.asarray(ln.y, float)
        for xs, ys_, _ in _segments(x, y, y):
            line = " ".join(f"{sx(a):.1f},{sy(c):.1f}" for a, c in zip(xs, ys_))
            out.append(f'<polyline points="{line}" fill="none" stroke="{ln.color}" stroke-width="1.2"/>')
    legend = [(ln.label, ln.color) for ln in lines] + [(b.label, b.color) for b in bands]
    for k, (label, color) in enumerate(legend):
        lx = width - pad_r - 180
        out.append(f'<rect x="{lx}" y="{8 + 14 * k}" width="10" height="10" fill="{color}"/><text x="{lx + 14}" y="{17 + 14 * k}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


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
