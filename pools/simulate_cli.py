"""`warmfront simulate --trace FILE`: static, reactive, predictive and oracle capacity on the same trace.

Sources map to pools through the routes: with `--config DIR` a source goes to the route whose request
type is the trace's `type` column (or, without one, whose name or type is the source), else to the
first route; without a config every source feeds one default pool.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from balancer.logs import configure_logging
from config.loader import ConfigError, load_config
from config.models import Capacity, Config, Pool, Shadow
from pools.backends.simulated import Delays
from pools.simulate import POLICIES, SimConfig, SimPool, SimResult, prepare, run
from pools.sweep import Point, fold_summaries, frontier, spread, sweep, sweep_json
from predictor.forecast_cli import parse_duration, progress_bar, show_progress
from predictor.series import Series, TraceError, load_trace
from predictor.svgplot import EPOCH_FROM, Line, Scatter, chart, scatter, time_ticks

DEFAULT_PEAK_MEMBERS = 30       # without a member rate, members are sized so the peak needs this many
STEP_S = 15.0
FORECAST_BIN_S = 300.0
SIM_HEALTH_INTERVAL_S = 3600.0
COLUMNS = ("requests", "cold_requests", "cold_rate", "container_minutes", "cost_vs_oracle", "scale_events")
COLORS = {"static": "#7f7f7f", "reactive": "#d62728", "predictive": "#2ca02c", "oracle": "#9467bd"}


class UsageError(ValueError):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="warmfront simulate",
                                description="Replay a trace through static, reactive, predictive and oracle capacity.")
    p.add_argument("--trace", required=True, help="minute,source,count (any bin) or timestamp,source[,type][,cost] CSV")
    p.add_argument("--config", metavar="DIR", help="routing.yaml + pools.yaml: pools and routes to simulate")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE.svg", help="write demand and ready capacity per policy over time")
    p.add_argument("--train", help="learning-only start of the trace: a span (7d) or a share (0.33); "
                                   "default 7d, or a third of the trace if that is shorter (at least one "
                                   "5-minute forecast bin)")
    p.add_argument("--member-rate", type=float, help="requests per second one member serves at 100 %% utilisation "
                                                     "(default: the pool's concurrency / service_time with --config, "
                                                     f"else sized so the peak needs {DEFAULT_PEAK_MEMBERS} members)")
    p.add_argument("--cold-delay", default="60s", help="launch to ready of a new member (default 60s)")
    p.add_argument("--shadow-cost", type=float, default=0.2, help="cost of a shadow member relative to a running one "
                                                                   "(default 0.2)")
    p.add_argument("--folds", type=int, metavar="K", help="also score K consecutive equal windows of the scored part "
                                                         "(each by policies that learned only from what precedes it) "
                                                         "and report min / median / max over them")
    p.add_argument("--sweep", action="store_true", help="replay reactive over target utilisations and predictive over "
                                                        "quantiles and shadow sizes; report the cold/cost frontier "
                                                        "per fold (with --folds, else one fold)")
    p.add_argument("--sweep-plot", metavar="FILE.svg", help="with --sweep: cold requests against container-minutes")
    p.add_argument("--progress", action="store_true", help="show progress on stderr even when it is not a terminal "
                                                           "or with --json")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    configure_logging("warning")
    try:
        series, pools, cfg, notes = setup(args.trace, args.train, args.config, args.member_rate, args.cold_delay,
                                          args.shadow_cost)
        if args.folds is not None and args.folds < 1:
            raise UsageError("--folds must be >= 1")
        if args.sweep_plot and not args.sweep:
            raise UsageError("--sweep-plot needs --sweep")
    except (TraceError, ConfigError, ValueError) as e:
        print(f"warmfront simulate: {e}", file=sys.stderr)
        return 2
    step, train, cold = cfg.step_s, cfg.train_s, cfg.delays.cold
    show = show_progress(args)
    prepared = prepare(series, pools, cfg)
    result = run(series, pools, cfg, progress=_bar if show else None, prepared=prepared)
    if show:
        print(file=sys.stderr)
    summary = result.summary()
    folds = None
    try:
        if args.folds:
            folds = fold_summaries(result, args.folds)
    except ValueError as e:
        print(f"warmfront simulate: {e}", file=sys.stderr)
        return 2
    swept = None
    if args.sweep:
        points, oracles = sweep(prepared, args.folds or 1, progress=_bar if show else None)
        if show:
            print(file=sys.stderr)
        swept = sweep_json(points, oracles)
        if args.sweep_plot:
            try:
                Path(args.sweep_plot).write_text(frontier_plot(points, oracles, Path(args.trace).name))
            except OSError as e:
                print(f"warmfront simulate: cannot write plot: {e}", file=sys.stderr)
                return 2
    if args.plot:
        try:
            Path(args.plot).write_text(_plot(result, series.start_s))
        except OSError as e:
            print(f"warmfront simulate: cannot write plot: {e}", file=sys.stderr)
            return 2
    info = {"trace": args.trace, "bin_s": series.bin_s, "step_s": step, "train_s": train,
            "scored_s": (len(result.demand)) * step, "cold_delay_s": cold, "shadow_cost": args.shadow_cost,
            "pools": {p.name: {"member_rate": round(p.member_rate, 6), "sources": len(p.sources),
                               "min": p.spec.capacity.min, "max": p.spec.capacity.max,
                               "shadow": p.spec.shadow.state} for p in pools},
            "notes": notes}
    out: dict = {"policies": summary, "simulation": info}
    if folds is not None:
        out["folds"] = folds
        out["over_folds"] = spread(folds)
    if swept is not None:
        out["sweep"] = swept
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(_table(summary, info))
        if folds is not None:
            print("\n" + _fold_table(out["over_folds"], len(folds)))
        if swept is not None:
            print("\n" + _sweep_table(swept))
    return 0


def setup(trace: str, train_text: str | None = None, config_dir: str | None = None, member_rate: float | None = None,
          cold_delay: str = "60s", shadow_cost: float = 0.2) -> tuple[Series, list[SimPool], SimConfig, list[str]]:
    """The trace, its pools and the simulation settings as `warmfront simulate` builds them from its
    options (raises TraceError, ConfigError or ValueError with the message to show)."""
    series = load_trace(trace)
    step = STEP_S if series.bin_s % STEP_S == 0 else series.bin_s
    fc_bin = FORECAST_BIN_S if FORECAST_BIN_S % series.bin_s == 0 else series.bin_s
    span = series.length * series.bin_s
    # The predictor forecasts nothing before its first bin has closed, so training needs one forecast
    # bin; scoring needs one too, or no forecast is ever judged.
    if span < 2 * fc_bin:
        raise UsageError(f"trace {trace} covers {_minutes(span)} minutes; simulate needs at least "
                         f"{_minutes(2 * fc_bin)} (training {_minutes(fc_bin)} + scoring {_minutes(fc_bin)})")
    cold = parse_duration(cold_delay)
    if member_rate is not None and not member_rate > 0:
        raise UsageError("--member-rate must be > 0")
    if not 0 <= shadow_cost <= 1:
        raise UsageError("--shadow-cost must be between 0 and 1")
    train = _train_s(train_text, span, fc_bin)
    config = load_config(config_dir) if config_dir else None
    pools, notes = build_pools(series, config, member_rate, cold)
    cfg = SimConfig(train_s=train, step_s=step, delays=Delays(cold=cold), shadow_cost=shadow_cost,
                    forecast_bin_s=fc_bin)
    return series, pools, cfg, notes


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.4g}"


def _train_s(text: str | None, span: float, least: float) -> float:
    """Seconds of training for `--train`, at least `least`, leaving at least `least` to score."""
    if text is None:
        return min(7 * 86_400.0, max(span / 3, least))
    try:
        share = float(text)
    except ValueError:
        train = parse_duration(text)
    else:
        if not 0 <= share < 1:
            raise UsageError(f"--train share must be in [0, 1), got {text}")
        train = share * span
    if train >= span:
        raise UsageError(f"--train {text} leaves nothing to score: the trace spans {span / 86_400:.2f} days")
    if train < least:
        raise UsageError(f"--train {text} is {_minutes(train)} minutes; simulate needs at least {_minutes(least)} "
                         "of training (the predictor's first forecast bin)")
    if span - train < least:
        raise UsageError(f"--train {text} leaves {_minutes(span - train)} minutes to score; simulate needs at least "
                         f"{_minutes(least)} (one forecast bin)")
    return train


def build_pools(series: Series, config: Config | None, member_rate: float | None,
                cold: float) -> tuple[list[SimPool], list[str]]:
    """Pools with the sources their routes send them, each spec's service time matched to its member rate."""
    notes: list[str] = []
    if config is None:
        groups = {"default": [(i, _rtype(sid)) for i, sid in enumerate(series.ids)]}
        specs: dict[str, Pool | None] = {"default": None}
    else:
        groups = {}
        for i, sid in enumerate(series.ids):
            route = _route_for(config, sid)
            groups.setdefault(route.pool, []).append((i, route.type))
        specs = {name: config.pools[name] for name in groups}
    pools = []
    for name, sources in groups.items():
        peak = float(series.values[[i for i, _ in sources]].sum(axis=0).max()) / series.bin_s
        spec = specs[name]
        if member_rate is not None:
            rate = member_rate
        elif spec is not None:
            rate = spec.concurrency / spec.scaling.service_time
        else:
            rate = max(peak, 1e-9) / DEFAULT_PEAK_MEMBERS
            notes.append(f"pool {name}: member rate {rate:.4g} req/s, so the trace peak ({peak:.4g} req/s) "
                         f"needs {DEFAULT_PEAK_MEMBERS} members; set --member-rate to change it")
        if spec is None:
            at_target = math.ceil(peak / rate / Capacity().target_utilization)
            spec = Pool(command="simulated --port {port}", capacity=Capacity(min=1, max=max(4, 2 * at_target)),
                        shadow=Shadow(state="paused"))
        # The simulated member is the pool's member: Little's law sizing must see its rate, and the
        # shadow must cover the simulated cold start. It boots in `cold` by definition, so the
        # manager waits that long for it; and it never fails, so health probes would only cost time.
        scaling = spec.scaling.model_copy(update={"service_time": spec.concurrency / rate, "launch_lead": cold})
        health = spec.health.model_copy(update={"interval": SIM_HEALTH_INTERVAL_S})
        pools.append(SimPool(name, spec.model_copy(update={
            "scaling": scaling, "health": health, "startup_timeout": max(spec.startup_timeout, 2 * cold)}),
            rate, tuple(sources)))
    return pools, notes


def _rtype(sid: str) -> str:
    # load_trace names per-request series `source/type` when the trace has a type column
    return sid.rsplit("/", 1)[1] if "/" in sid else "default"


def _route_for(config: Config, sid: str):
    routes = config.routing.routes
    if "/" in sid:
        rtype = _rtype(sid)
        return next((r for r in routes if r.type == rtype), routes[0])
    return next((r for r in routes if sid in (r.name, r.type)), routes[0])


def _bar(fraction: float) -> None:
    progress_bar("simulating", fraction)


def _table(summary: dict[str, dict], info: dict) -> str:
    lines = [f"trace {info['trace']}: {info['bin_s']:g}s bins, {info['train_s'] / 86_400:.2f} days training, "
             f"{info['scored_s'] / 86_400:.2f} days scored, cold delay {info['cold_delay_s']:g}s",
             *info["notes"], "",
             "| policy | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name in POLICIES:
        row = summary[name]
        lines.append(f"| {name} | " + " | ".join(format_cell(c, row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def format_cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column == "cold_rate":
        return f"{value:.3%}"
    if column == "cost_vs_oracle":
        return f"{value:.2f}x"
    return f"{value:,.0f}"


def _plot(result: SimResult, start_s: float, points: int = 1500) -> str:
    k = max(1, len(result.demand) // points)
    block = lambda a: np.asarray(a[: len(a) // k * k], float).reshape(-1, k).mean(axis=1)  # noqa: E731
    t = start_s + (result.scored_from + np.arange(len(result.demand) // k) * k) * result.step_s
    lines = [Line("demand", block(result.demand), "#1f77b4")]
    for name in POLICIES:
        capacity = sum(r.capacity for r in result.runs[name]) / result.step_s
        lines.append(Line(f"{name} ready capacity", block(capacity), COLORS[name]))
    epoch = start_s >= EPOCH_FROM
    return chart(t, lines, title="warmfront simulate: demand and ready capacity (scored part)",
                 x_ticks=time_ticks(float(t.min()), float(t.max()), epoch=epoch) if len(t) else (),
                 x_label="time (UTC)" if epoch else "time since trace start", y_label="requests/s")


def _fold_table(over: dict, k: int) -> str:
    lines = [f"over {k} folds (min / median / max):", "",
             "| policy | cold_rate | cold vs reactive | cost vs reactive | cost vs oracle |", "|---|---|---|---|---|"]
    for name in POLICIES:
        row = over[name]
        cells = []
        for metric, fmt in (("cold_rate", "{:.3%}"), ("cold_vs_reactive", "{:.2f}x"), ("cost_vs_reactive", "{:.2f}x"),
                            ("cost_vs_oracle", "{:.2f}x")):
            m = row[metric]
            cells.append("-" if m["median"] is None else " / ".join(fmt.format(m[key]) for key in ("min", "median", "max")))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _sweep_table(swept: dict) -> str:
    lines = ["| fold | reactive cold | predictive cold at reactive's cost | share | goal (<= 25 %) | default on frontier "
             "| cost vs oracle at reactive's cold |", "|---|---|---|---|---|---|---|"]
    for f, v in enumerate(swept["verdict"]):
        share = v["cold_share_at_reactive_cost"]
        lines.append(f"| {f + 1} | {v['reactive_cold_requests']:,} | "
                     f"{'-' if v['predictive_cold_at_reactive_cost'] is None else format(v['predictive_cold_at_reactive_cost'], ',.0f')} | "
                     f"{'-' if share is None else format(share, '.1%')} | {'met' if v['goal_met'] else 'NOT met'} | "
                     f"{'yes' if v['default_on_frontier'] else 'no'} | "
                     f"{'-' if v['cost_vs_oracle_at_reactive_cold'] is None else format(v['cost_vs_oracle_at_reactive_cold'], '.2f') + 'x'} |")
    return "\n".join(lines)


def frontier_plot(points: list[Point], oracles: list[dict], trace: str) -> str:
    """Cold requests (% of requests) against container-minutes (× the fold's oracle), per fold, both
    policies' sweep points with their frontiers (frontier points labelled); the defaults circled."""
    folds = len(points[0].folds)
    series = []
    dash = ["", "6 3", "2 2", "8 2 2 2"]
    for f in range(folds):
        for policy in ("reactive", "predictive"):
            pts = [p for p in points if p.policy == policy]
            floor = max(oracles[f]["container_minutes"], 1e-9)
            xy = [(p.folds[f]["container_minutes"] / floor, 100.0 * p.folds[f]["cold_rate"]) for p in pts]
            front = frontier(xy)
            labels = [_knob_label(p) if pt in front else "" for p, pt in zip(pts, xy)]
            series.append(Scatter(f"{policy}, fold {f + 1}" if folds > 1 else policy, xy, front, labels,
                                  COLORS[policy], dash[f % len(dash)],
                                  [i for i, p in enumerate(pts) if p.default]))
    return scatter(series, title=f"{trace}: cold requests against cost, per fold (defaults circled)",
                   x_label="container-minutes (x the oracle's for the same fold)", y_label="cold requests (% of requests)")


def _knob_label(p: Point) -> str:
    if p.policy == "reactive":
        return f"t{p.knobs['target']:g}"
    return (f"q{p.knobs['quantile']:g}" + (f"/t{p.knobs['target']:g}" if p.knobs["target"] != 0.7 else "")
            + (f"+s{int(p.knobs['shadow'])}" if p.knobs["shadow"] else ""))
