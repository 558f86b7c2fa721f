"""/admin/dashboard: one server-rendered page, inline SVG only (no scripts, no CDN), refreshing itself.

Per pool: forecast vs actual (recent hours, and the next hour with its interval band), members
over time by state, the tier split now, recent scaling actions and anomalies. Then events and
the top sources with their rates. It shows what `/admin/status` says and tolerates keys that are
missing (a static pool has no forecast; the control loop may not have planned yet).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from typing import Any

import numpy as np

from balancer.dataplane.counters import LATENCY_BOUNDS
from balancer.operator.timeline import Sample
from predictor.events import Event
from predictor.svgplot import ACTUAL_COLOR, BAND_COLOR, FORECAST_COLOR, Band, Line, Marker, chart, time_ticks

PAST_S = 3 * 3600
FUTURE_S = 3600     # the forecast chart shows the next hour
TICK_S = 1800       # time ticks every 30 min
REFRESH_S = 10
DAY_S = 86400.0     # the window /admin/status counts sources over, unless its rows say otherwise
_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
.pool h2{margin-top:0}.pool{background:#fff;border:1px solid #ddd;border-radius:6px;padding:1em;margin-bottom:1.5em}
.charts{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}table{border-collapse:collapse;font-size:.9em}
td,th{padding:.2em .7em;text-align:left;border-bottom:1px solid #eee}.num{text-align:right}
.muted{color:#888}.tier{display:inline-block;padding:.1em .5em;margin-right:.4em;border-radius:3px;color:#fff}"""
_TIER_COLORS = {"baseline": "#1f77b4", "predictive": "#2ca02c", "burst": "#d62728", "shadow": "#9467bd"}


def render(status: Mapping[str, Any], timeline: Mapping[str, Sequence[Sample]],
           actual: Mapping[str, Mapping[int, int]], events: Sequence[Event], now: float,
           usage: Mapping[str, Mapping[int, tuple[float, float]]] | None = None) -> str:
    """The page. `actual`: requests per minute start, per pool; `timeline`: member samples per pool;
    `usage`: per pool, per minute start, the (cores, GiB) its members used on average."""
    pools = status.get("pools", {})
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8>"
             f'<meta http-equiv="refresh" content="{REFRESH_S}"><link rel="icon" href="data:,">'
             f"<title>warmfront dashboard</title><style>{_CSS}</style></head><body>",
             f"<h1>warmfront <span class=muted>{escape(str(status.get('instance', '')))} · "
             f"up {_duration(status.get('uptime_s', 0))} · {_time(now)} UTC</span></h1>"]
    for name, pool in pools.items():
        parts.append(_pool_section(name, pool, timeline.get(name, ()), actual.get(name, {}), now,
                                   (usage or {}).get(name, {})))
    parts.append(_events_section(events, now))
    parts.append(_sources_section(status.get("sources", []), status.get("uptime_s"), actual, now))
    parts.append(_next_types_section(status.get("next_types") or {}))
    parts.append("</body></html>")
    return "\n".join(parts)


def _pool_section(name: str, pool: Mapping[str, Any], samples: Sequence[Sample],
                  actual: Mapping[int, int], now: float, usage: Mapping[int, tuple[float, float]] | None = None) -> str:
    counts = pool.get("counts", {})
    desired = pool.get("desired") or {}
    head = (f'<div class=pool id="pool-{escape(name)}"><h2>pool {escape(name)} '
            f"<span class=muted>{escape(str(pool.get('backend', '')))} · {escape(str(pool.get('mode', '')))}</span></h2>"
            f"<p>members: {_kv(counts) or 'none'}"
            + (f" · desired ready {desired.get('ready')} shadow {desired.get('shadow')}" if desired else "")
            + (f" (set by {escape(str(desired['set_by']))})" if desired.get("set_by") else "")
            + "</p>")
    override = pool.get("override")
    if override:
        head += (f"<p><b>manual override</b>: ready in [{override.get('min')}, {override.get('max')}] "
                 f"until {escape(_time(override['until']) if override.get('until') else '')} — "
                 f"{escape(str(override.get('reason', '')))}"
                 + (f" <b>{escape(str(override['note']))}</b>" if override.get("note") else "") + "</p>")
    charts = (f'<div class=charts><figure class=plot data-pool="{escape(name)}">{_forecast_chart(name, pool, actual, now)}</figure>'
              f'<figure class=plot data-pool="{escape(name)}">{_members_chart(name, samples, now)}</figure>'
              + _resource_charts(name, pool, usage or {}, now) + "</div>")
    return head + charts + _resource_table(pool) + _tiers(samples, pool) + _demand_shapers(pool) + _actions(pool) + _anomalies(pool) + "</div>"


def _demand_shapers(pool: Mapping[str, Any]) -> str:
    """What besides the forecast shapes this pool's plan: sessions under way, latency-sensitive sources."""
    out = ""
    sessions = {t: r for t, r in (pool.get("sessions") or {}).items() if r}
    if sessions:
        out += ("<p>next from sessions under way: "
                + ", ".join(f"{escape(str(t))} {float(r):.2f} req/s" for t, r in sessions.items()) + "</p>")
    latency = pool.get("latency") or []
    if latency:
        rows = "".join(
            f"<tr><td>{escape(str(r.get('source', '')))}</td><td>{escape(str(r.get('declared', '')))}</td>"
            f"<td>{escape(str(r.get('planned', '')))}</td><td class=num>{r.get('p95_ms') if r.get('p95_ms') is not None else ''}</td>"
            f"<td class=num>{r.get('abandon_after_ms') if r.get('abandon_after_ms') is not None else ''}</td>"
            f"<td class=num>{r.get('abort_slope', '')}</td><td>{'yes' if r.get('breach') else ''}</td></tr>"
            for r in latency)
        out += ("<h3>latency-sensitive sources</h3><table><tr><th>source</th><th>declared</th><th>planned</th>"
                "<th>p95 ms</th><th>abandon after ms</th><th>abort slope /s</th><th>breach</th></tr>" + rows + "</table>")
    return out


def _forecast_chart(name: str, pool: Mapping[str, Any], actual: Mapping[int, int], now: float) -> str:
    # closed minutes only: the one under way would read as a drop
    start, current = int((now - PAST_S) // 60) * 60, int(now // 60) * 60
    minutes = np.arange(start, current, 60, dtype=float)
    past = np.array([actual.get(int(m), 0) / 60.0 for m in minutes])
    forecast = sorted((f for f in pool.get("forecast") or [] if f.get("horizon_s", 0) <= FUTURE_S),
                      key=lambda f: f.get("horizon_s", 0))
    x_future = np.array([now + f.get("horizon_s", 0) for f in forecast], dtype=float)
    x = np.concatenate([minutes, x_future])
    nan_past, nan_future = np.full(len(minutes), np.nan), np.full(len(forecast), np.nan)
    lines = [Line("actual", np.concatenate([past, nan_future]), ACTUAL_COLOR)]
    bands = []
    if forecast:
        # The forecast line starts from the last actual point so the eye follows it on.
        last = np.concatenate([nan_past[:-1], past[-1:]])
        lines.append(Line("forecast", np.concatenate([last, [f.get("rate", np.nan) for f in forecast]]),
                          FORECAST_COLOR, dash="5 3", width=2))
        bands.append(Band("forecast interval", np.concatenate([last, [f.get("lower", np.nan) for f in forecast]]),
                          np.concatenate([last, [f.get("upper", np.nan) for f in forecast]]), BAND_COLOR))
    return chart(x, lines, bands, title=f"{name}: forecast vs actual", y_label="requests/s", **_time_axis(now))


def _members_chart(name: str, samples: Sequence[Sample], now: float) -> str:
    recent = [s for s in samples if s.t >= now - PAST_S] or [Sample(now)]
    if len(recent) == 1:
        recent = [recent[0], Sample(now, **{k: getattr(recent[0], k) for k in Sample.__slots__ if k != "t"})]
    x = np.array([s.t for s in recent])
    series = [("ready", "#1f77b4", 2.2), ("shadow", "#9467bd", 1.6), ("launching", "#ff7f0e", 1.6), ("draining", "#7f7f7f", 1.6)]
    lines = [Line(label, np.array([getattr(s, label) for s in recent], dtype=float), color, width=w, dot_last=True)
             for label, color, w in series]
    return chart(x, lines, title=f"{name}: members", y_label="members", integer=True, **_time_axis(now))


def _resource_charts(name: str, pool: Mapping[str, Any], usage: Mapping[int, tuple[float, float]], now: float) -> str:
    """CPU cores and memory the pool's members used per minute, and the forecast demand with its band."""
    res = pool.get("resources") or {}
    if not usage and not res.get("forecast"):
        return ""
    start, current = int((now - PAST_S) // 60) * 60, int(now // 60) * 60
    minutes = np.arange(start, current, 60, dtype=float)
    forecast = sorted((f for f in res.get("forecast") or [] if f.get("horizon_s", 0) <= FUTURE_S),
                      key=lambda f: f.get("horizon_s", 0))
    x = np.concatenate([minutes, [now + f["horizon_s"] for f in forecast]])
    out = ""
    for k, (what, key, unit, scale) in enumerate((("CPU", "cores", "cores", 1.0),
                                                  ("memory", "memory_bytes", "GiB", float(1 << 30)))):
        past = np.array([usage[int(m)][k] if int(m) in usage else np.nan for m in minutes])
        tail = np.full(len(forecast), np.nan)
        lines = [Line(f"{what} used", np.concatenate([past, tail]), ACTUAL_COLOR)]
        bands = []
        if forecast:
            last = np.concatenate([np.full(len(minutes) - 1, np.nan), past[-1:]]) if len(minutes) else np.zeros(0)
            point = [f[key]["point"] / scale for f in forecast]
            lines.append(Line(f"{what} forecast", np.concatenate([last, point]), FORECAST_COLOR, dash="5 3", width=2))
            bands.append(Band("forecast interval", np.concatenate([last, [f[key]["lower"] / scale for f in forecast]]),
                              np.concatenate([last, [f[key]["upper"] / scale for f in forecast]]), BAND_COLOR))
        out += (f'<figure class=plot data-pool="{escape(name)}">'
                + chart(x, lines, bands, title=f"{name}: {what} used vs forecast", y_label=unit, **_time_axis(now))
                + "</figure>")
    return out


def _resource_table(pool: Mapping[str, Any]) -> str:
    """Per-type cost estimates and the right-sizing recommendation."""
    res = pool.get("resources") or {}
    costs, rec = res.get("costs"), res.get("recommendation")
    out = ""
    if costs:
        rows = "".join(f"<tr><td>{escape(str(t))}</td><td class=num>{c * 1000:.2f} ms</td>"
                       f"<td class=num>± {e * 1000:.2f}</td></tr>"
                       for t, c, e in zip(costs.get("types", []), costs.get("cpu_per_request", []),
                                          costs.get("cpu_stderr", [])))
        note = f" <span class=muted>{escape(str(costs['note']))}</span>" if costs.get("note") else ""
        out += (f"<p>CPU per request, measured{note}</p><table><tr><th>type</th><th>CPU</th><th>std. error</th></tr>"
                f"{rows}</table>")
    if rec:
        applied = res.get("applied")
        out += (f"<p>recommended per member: cpus {rec.get('cpus')}, memory "
                f"{(rec.get('memory_bytes') or 0) / (1 << 20):.0f} MiB"
                + (" <b>(applied to new members)</b>" if applied else f" ({escape(str(res.get('rightsize')))})")
                + "".join(f" · {escape(str(r))}" for r in rec.get("reasons", [])) + "</p>")
    return out


def _time_axis(now: float) -> dict[str, Any]:
    """The wall-clock axis both pool charts share: the past PAST_S and the next FUTURE_S, "now" marked."""
    lo, hi = now - PAST_S, now + FUTURE_S
    return {"x_range": (lo, hi), "x_ticks": time_ticks(lo, hi, step_s=TICK_S), "marker": Marker(now, "now"),
            "x_label": "time (UTC)", "width": 560, "height": 280}


def _tiers(samples: Sequence[Sample], pool: Mapping[str, Any]) -> str:
    last = samples[-1] if samples else None
    desired = pool.get("planned") or {}
    now_counts = {"baseline": last.baseline if last else 0, "predictive": last.predictive if last else 0,
                  "burst": last.burst if last else 0, "shadow": last.shadow if last else 0}
    spans = "".join(f'<span class=tier style="background:{_TIER_COLORS[t]}">{t} {n}</span>' for t, n in now_counts.items())
    wanted = "" if not desired else (f" <span class=muted>planner: baseline {desired.get('baseline')}, predictive "
                                     f"{desired.get('predictive')}, burst {desired.get('burst')}</span>")
    return f"<p>tiers now: {spans}{wanted}</p>"


def _actions(pool: Mapping[str, Any]) -> str:
    actions = list(pool.get("recent_actions") or [])[-10:]
    if not actions:
        return "<p class=muted>no recent scaling actions</p>"
    rows = "".join(f"<tr><td>{_time(a.get('time', 0))}</td><td>{escape(str(a.get('action', '')))}</td>"
                   f"<td>{escape(str(a.get('member') or ''))}</td><td>{escape(str(a.get('reason', '')))}</td></tr>"
                   for a in reversed(actions))
    return f"<h3>recent actions</h3><table><tr><th>time</th><th>action</th><th>member</th><th>reason</th></tr>{rows}</table>"


def _anomalies(pool: Mapping[str, Any]) -> str:
    anomalies = pool.get("anomalies") or []
    if not anomalies:
        return "<p class=muted>no active anomalies</p>"
    rows = "".join(f"<tr><td>{_time(a.get('start', 0))}</td><td>{escape(str(a.get('direction', '')))}</td>"
                   f"<td class=num>{a.get('size', '')}</td></tr>" for a in anomalies)
    return f"<h3>anomalies</h3><table><tr><th>since</th><th>direction</th><th>size</th></tr>{rows}</table>"


def _events_section(events: Sequence[Event], now: float) -> str:
    shown = [e for e in events if e.end > now - 86400]
    if not shown:
        return "<h2>events</h2><p class=muted>no events</p>"
    rows = "".join(
        f"<tr><td>{escape(e.name)}</td><td>{e.kind}</td><td>{_time(e.start)}</td><td>{_time(e.end)}</td>"
        f"<td>{e.scope_key}={escape(e.scope_value)}</td><td class=num>{e.multiplier if e.multiplier else 'learned'}</td>"
        f"<td>{'active' if e.start <= now < e.end else ('upcoming' if e.start > now else 'past')}</td></tr>"
        for e in shown)
    return ("<h2>events</h2><table><tr><th>name</th><th>kind</th><th>start</th><th>end</th><th>scope</th>"
            f"<th>multiplier</th><th></th></tr>{rows}</table>")


def _sources_section(sources: Sequence[Mapping[str, Any]], uptime_s: float | None,
                     actual: Mapping[str, Mapping[int, int]], now: float) -> str:
    if not sources:
        return "<h2>top sources</h2><p class=muted>no traffic yet</p>"
    window_s = float(sources[0].get("window_s", DAY_S))
    covered_s = _covered_s(window_s, uptime_s, actual, now)
    rate_head = f"req/s ({_span(window_s)})" if covered_s >= window_s else f"req/s (last {_span(covered_s)})"
    rows = "".join(
        f"<tr><td>{escape(str(s.get('source', '')))}</td><td>{escape(str(s.get('type', '')))}</td>"
        f"<td class=num>{s.get('requests', 0)}</td><td class=num>{_rate_text(s.get('requests', 0) / covered_s)}</td>"
        f"<td class=num>{_error_text(s.get('forecast_error'))}</td><td class=num>{_p95_text(s.get('p95_latency_ms'))}</td>"
        f"<td>{'' if s.get('predictive', True) else 'opted out'}</td></tr>"
        for s in list(sources)[:20])
    return (f"<h2>top sources</h2><table><tr><th>source</th><th>type</th><th>requests ({_span(window_s)})</th>"
            f"<th>{rate_head}</th><th>forecast error</th><th>p95 ms</th><th>predictive</th></tr>{rows}</table>")


def _covered_s(window_s: float, uptime_s: float | None, actual: Mapping[str, Mapping[int, int]], now: float) -> float:
    """How much of the sources' window history covers, to divide their request counts by: since
    start-up, unless minutes recorded before it (a restart keeps the store) show it reaches further.
    Only the plotted PAST_S are at hand, so history reaching their start counts as the whole window."""
    if uptime_s is None:
        return window_s
    start = now - float(uptime_s)
    oldest = min((m for per in actual.values() for m, n in per.items() if n), default=None)
    if oldest is not None and oldest < start:
        start = oldest if oldest >= now - PAST_S + 120 else now - window_s
    return max(60.0, min(window_s, now - start))


def _rate_text(rate: float) -> str:
    if rate >= 10:
        return f"{rate:,.1f}"
    return f"{rate:.3f}" if rate >= 0.001 or rate == 0 else "< 0.001"


def _p95_text(value: Any) -> str:
    """A p95 beyond the largest finite histogram bound is only known to be at least that."""
    if not isinstance(value, (int, float)):
        return ""
    return f"≥ {value:,.0f}" if value >= LATENCY_BOUNDS[-1] * 1000 else f"{value:,.1f}"


def _next_types_section(next_types: Mapping[str, Mapping[str, float]]) -> str:
    if not next_types:
        return ""
    rows = "".join(f"<tr><td>{escape(str(src))}</td><td>"
                   + ", ".join(f"{escape(str(dst))} {float(p):.0%}" for dst, p in sorted(row.items(), key=lambda kv: -kv[1]))
                   + "</td></tr>" for src, row in next_types.items())
    return ("<h2>what sessions do next</h2><table><tr><th>after</th><th>next request type (the rest end the session)</th>"
            f"</tr>{rows}</table>")


def _error_text(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) else "–"


def _kv(counts: Mapping[str, Any]) -> str:
    return ", ".join(f"{escape(str(k))} {v}" for k, v in counts.items())


def _time(t: float | str) -> str:
    """An epoch time, or an ISO 8601 one as /admin/status gives them, as the page shows times (UTC)."""
    moment = (datetime.fromisoformat(t) if isinstance(t, str) else datetime.fromtimestamp(t, timezone.utc))
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _span(seconds: float) -> str:
    """A window's length as a column heading says it: 11m, 2h05m, 24h, 3d."""
    minutes = int(round(seconds / 60))
    if minutes < 60:
        return f"{minutes}m"
    if minutes <= 24 * 60:
        return f"{minutes // 60}h" + (f"{minutes % 60:02d}m" if minutes % 60 else "")
    return f"{minutes / 1440:g}d"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
