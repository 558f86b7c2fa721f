"""`warmfront simulate --trace FILE`: static, reactive, predictive and oracle capacity on the same trace.

Sources map to pools through the routes: with `--config DIR` a source goes to the route whose request
type is the trace's `type` column (or, without one, whose name or type is the source), else to the
first route; without a config every source feeds one default pool.

`--resources` (a per-request trace with token counts) adds CPU: each request costs core-seconds by
its tokens (`pools.trace_costs`), members have `--member-cpus` cores (or the pool's docker/swarm
`cpus`), and every policy is scored on core-seconds reserved, used and starved as well.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from balancer.logs import configure_logging
from config.loader import ConfigError, load_config
from config.models import Capacity, Config, Pool, Shadow
from pools.backends.simulated import Delays
from pools.simulate import POLICIES, SimConfig, SimPool, SimResult, prepare, run
from pools.trace_costs import CostModel, TraceCosts, load_costs
from pools.sweep import Point, fold_summaries, frontier, spread, sweep, sweep_json
from predictor.forecast_cli import parse_duration, progress_bar, show_progress
from predictor.series import Series, TraceError, load_trace
from predictor.svgplot import EPOCH_FROM, Line, Scatter, chart, scatter, time_ticks

DEFAULT_PEAK_MEMBERS = 30       # without a member rate, members are sized so the peak needs this many
STEP_S = 15.0
FORECAST_BIN_S = 300.0
SIM_HEALTH_INTERVAL_S = 3600.0
COLUMNS = ("requests", "cold_requests", "cold_rate", "container_minutes", "cost_vs_oracle", "scale_events")
RESOURCE_COLUMNS = ("requests", "cold_requests", "cold_rate", "core_seconds_reserved", "core_seconds_used",
                    "cpu_starved_core_seconds", "core_seconds_vs_oracle", "scale_events")
CORE_SPLIT = ("at_need", "target_headroom", "excess_ready", "launch", "drain", "shadow")
# The cost model's defaults: an inference server of the Azure trace's kind. Prefill is batched and
# compute-bound, ~4,000 context tokens per second per core (2.5e-4 core-s each); decode makes a pass
# over the model per token, ~250 tokens per second per core (4e-3 core-s each). The Azure trace's
# median request (≈1,050 context, ≈90 generated tokens) then costs ≈0.6-0.9 core-seconds. A model
# of a server, not a measurement.
COST_PER_CONTEXT_TOKEN = 2.5e-4
COST_PER_GENERATED_TOKEN = 4e-3
DEFAULT_MEMBER_CPUS = 1.0
MAX_MEMBERS = 1000              # the bound of `capacity.max`
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
    r = p.add_argument_group("resource mode (a per-request trace with context_tokens,generated_tokens columns)")
    r.add_argument("--resources", action="store_true",
                   help="also model CPU: each request costs context_tokens x C_IN + generated_tokens x C_OUT "
                        "core-seconds, members have --member-cpus cores, and every policy is scored on core-seconds "
                        "reserved, used and CPU-starved (refused on a trace without token counts)")
    r.add_argument("--cost-per-context-token", type=float, default=COST_PER_CONTEXT_TOKEN, metavar="C_IN",
                   help=f"core-seconds per context token (default {COST_PER_CONTEXT_TOKEN:g}: prefill, batched and "
                        "compute-bound, at ~4,000 tokens/s per core)")
    r.add_argument("--cost-per-generated-token", type=float, default=COST_PER_GENERATED_TOKEN, metavar="C_OUT",
                   help=f"core-seconds per generated token (default {COST_PER_GENERATED_TOKEN:g}: decode, one pass over "
                        "the model per token, at ~250 tokens/s per core). With both defaults the Azure trace's median "
                        "request (~1,050 context, ~90 generated tokens) costs ~0.6-0.9 core-seconds; they model an "
                        "inference server, they are not a measurement")
    r.add_argument("--member-cpus", type=float, metavar="CORES",
                   help=f"cores per member (default: the pool's docker/swarm cpus with --config, else "
                        f"{DEFAULT_MEMBER_CPUS:g})")
    return p


@dataclass(frozen=True, slots=True)
class ResourceOptions:
    """What `--resources` asks for: the cost model and the members' cores (None: the pool's, else 1)."""
    model: CostModel
    member_cpus: float | None = None


@dataclass(frozen=True, slots=True)
class Setup:
    """Everything one `warmfront simulate` needs before it replays: trace, pools, settings, notes to
    show and, in resource mode, the trace's core-seconds per (series, bin)."""
    series: Series
    pools: list[SimPool]
    cfg: SimConfig
    notes: list[str]
    costs: TraceCosts | None = None


def resource_options(args: argparse.Namespace) -> ResourceOptions | None:
    """The resource-mode options, checked; None without `--resources` (whose own flags then refuse)."""
    if not args.resources:
        if args.member_cpus is not None or (args.cost_per_context_token, args.cost_per_generated_token) != (
                COST_PER_CONTEXT_TOKEN, COST_PER_GENERATED_TOKEN):
            raise UsageError("--member-cpus and --cost-per-*-token need --resources")
        return None
    if args.sweep:
        raise UsageError("--sweep does not model resources yet; drop --sweep or --resources")
    c_in, c_out = args.cost_per_context_token, args.cost_per_generated_token
    if c_in < 0 or c_out < 0 or c_in + c_out <= 0:
        raise UsageError("--cost-per-context-token and --cost-per-generated-token must be >= 0, not both 0")
    if args.member_cpus is not None and not args.member_cpus > 0:
        raise UsageError("--member-cpus must be > 0")
    return ResourceOptions(CostModel(c_in, c_out), args.member_cpus)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    configure_logging("warning")
    try:
        built = setup_run(args.trace, args.train, args.config, args.member_rate, args.cold_delay, args.shadow_cost,
                          resource_options(args))
        series, pools, cfg, notes = built.series, built.pools, built.cfg, built.notes
        if args.folds is not None and args.folds < 1:
            raise UsageError("--folds must be >= 1")
        if args.sweep_plot and not args.sweep:
            raise UsageError("--sweep-plot needs --sweep")
    except (TraceError, ConfigError, ValueError) as e:
        print(f"warmfront simulate: {e}", file=sys.stderr)
        return 2
    step, train, cold = cfg.step_s, cfg.train_s, cfg.delays.cold
    show = show_progress(args)
    prepared = prepare(series, pools, cfg, None if built.costs is None else built.costs.core_s)
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
    if built.costs is not None:
        info["resources"] = resources_info(built, result)
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
        if "resources" in info:
            print("\n" + _resource_tables(summary, info["resources"]))
        if folds is not None:
            print("\n" + _fold_table(out["over_folds"], len(folds)))
        if swept is not None:
            print("\n" + _sweep_table(swept))
    return 0


def setup(trace: str, train_text: str | None = None, config_dir: str | None = None, member_rate: float | None = None,
          cold_delay: str = "60s", shadow_cost: float = 0.2) -> tuple[Series, list[SimPool], SimConfig, list[str]]:
    """The trace, its pools and the simulation settings as `warmfront simulate` builds them from its
    options (raises TraceError, ConfigError or ValueError with the message to show)."""
    s = setup_run(trace, train_text, config_dir, member_rate, cold_delay, shadow_cost)
    return s.series, s.pools, s.cfg, s.notes


def setup_run(trace: str, train_text: str | None = None, config_dir: str | None = None,
              member_rate: float | None = None, cold_delay: str = "60s", shadow_cost: float = 0.2,
              resources: ResourceOptions | None = None) -> Setup:
    """`setup`, and with `resources` the trace's token costs and the members' cores (refused with a
    TraceError when the trace has no token counts)."""
    series = load_trace(trace)
    costs = None if resources is None else load_costs(trace, series, resources.model)
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
    cpu = None if costs is None or resources is None else PoolCpu(costs.core_s, resources.member_cpus)
    pools, notes = build_pools(series, config, member_rate, cold, cpu)
    cfg = SimConfig(train_s=train, step_s=step, delays=Delays(cold=cold), shadow_cost=shadow_cost,
                    forecast_bin_s=fc_bin)
    return Setup(series, pools, cfg, notes, costs)


@dataclass(frozen=True, slots=True)
class PoolCpu:
    """Resource mode, as `build_pools` reads it: the trace's core-seconds per (series, bin) and `--member-cpus`."""
    core_s: np.ndarray
    member_cpus: float | None


def member_cpus(spec: Pool | None, flag: float | None) -> float:
    """Cores per member: `--member-cpus`, else the pool's docker or swarm `cpus` limit, else 1."""
    if flag is not None:
        return flag
    if spec is not None:
        section = spec.docker if spec.backend == "docker" else spec.swarm if spec.backend == "swarm" else None
        if section is not None and section.cpus is not None:
            return float(section.cpus)
    return DEFAULT_MEMBER_CPUS


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
                cold: float, cpu: PoolCpu | None = None) -> tuple[list[SimPool], list[str]]:
    """Pools with the sources their routes send them, each spec's service time matched to its member rate;
    with `cpu` (resource mode) each member's cores, and a default pool's `max` sized for the binding resource."""
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
        cpus = None if cpu is None else member_cpus(spec, cpu.member_cpus)
        if spec is None:
            at_target = math.ceil(peak / rate / Capacity().target_utilization)
            if cpu is not None and cpus is not None:
                cpu_peak = float(cpu.core_s[[i for i, _ in sources]].sum(axis=0).max()) / series.bin_s
                # at most capacity.max's bound: a pool that needs more is capped, and its cold requests say so
                at_target = min(MAX_MEMBERS // 2, max(at_target, math.ceil(cpu_peak / cpus / Capacity().target_utilization)))
            spec = Pool(command="simulated --port {port}", capacity=Capacity(min=1, max=max(4, 2 * at_target)),
                        shadow=Shadow(state="paused"))
        # The simulated member is the pool's member: Little's law sizing must see its rate, and the
        # shadow must cover the simulated cold start. It boots in `cold` by definition, so the
        # manager waits that long for it; and it never fails, so health probes would only cost time.
        scaling = spec.scaling.model_copy(update={"service_time": spec.concurrency / rate, "launch_lead": cold})
        health = spec.health.model_copy(update={"interval": SIM_HEALTH_INTERVAL_S})
        pools.append(SimPool(name, spec.model_copy(update={
            "scaling": scaling, "health": health, "startup_timeout": max(spec.startup_timeout, 2 * cold)}),
            rate, tuple(sources), cpus))
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


def resources_info(built: Setup, result: SimResult) -> dict:
    """Resource mode's part of `simulation`: the cost model, the members' cores, and per pool the CPU
    per request the predictive policy learned against the trace's own mean over the same bins, and
    per source (series) the trace's requests and core-seconds over the whole trace."""
    assert built.costs is not None
    series, core_s = built.series, built.costs.core_s
    pools = {}
    for p in built.pools:
        learned = result.learned_cpu.get(p.name)
        seen = slice(0, learned.bins_seen if learned is not None else 0)
        per_type = {}
        for rtype in sorted({t for _, t in p.sources}):
            rows = [i for i, t in p.sources if t == rtype]
            n, c = float(series.values[rows, seen].sum()), float(core_s[rows, seen].sum())
            per_type[rtype] = {"learned": None if learned is None else _round(learned.costs.get(rtype)),
                               "trace_mean": _round(c / n) if n else None}
        pools[p.name] = {"member_cpus": p.cpus, "bins_seen": seen.stop, "cpu_per_request": per_type}
    sources = {sid: {"requests": int(series.values[i].sum()), "core_seconds": round(float(core_s[i].sum()), 3),
                     "mean": _round(float(core_s[i].sum() / series.values[i].sum()) if series.values[i].sum() else None)}
               for i, sid in enumerate(series.ids)}
    m = built.costs.model
    return {"cost_per_context_token": m.per_context_token, "cost_per_generated_token": m.per_generated_token,
            "median_request_core_seconds": round(built.costs.median_request_s, 4), "pools": pools,
            "sources": sources}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


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


def _resource_tables(summary: dict[str, dict], res: dict) -> str:
    """Resource mode: per policy the CPU columns, where its reserved core-seconds go, and the learned costs."""
    lines = [f"resources: {res['cost_per_context_token']:g} core-s per context token, "
             f"{res['cost_per_generated_token']:g} per generated token (median request "
             f"{res['median_request_core_seconds']:.3g} core-s); "
             + ", ".join(f"pool {name}: {p['member_cpus']:g} cpus per member" for name, p in res["pools"].items()),
             "", "| policy | " + " | ".join(RESOURCE_COLUMNS) + " |", "|---" * (len(RESOURCE_COLUMNS) + 1) + "|"]
    for name in POLICIES:
        row = summary[name]
        lines.append(f"| {name} | " + " | ".join(format_cell(c, row[c]) for c in RESOURCE_COLUMNS) + " |")
    lines += ["", "core-seconds reserved by cause:", "",
              "| policy | " + " | ".join(CORE_SPLIT) + " |", "|---" * (len(CORE_SPLIT) + 1) + "|"]
    for name in POLICIES:
        split = summary[name]["core_seconds"]
        lines.append(f"| {name} | " + " | ".join(f"{split[k]:,.0f}" for k in CORE_SPLIT) + " |")
    for name, p in res["pools"].items():
        learned = ", ".join(f"{t} {v['learned']:.4g} (trace {v['trace_mean']:.4g})"
                            for t, v in p["cpu_per_request"].items() if v["learned"] is not None)
        lines.append(f"\npool {name}: learned core-seconds per request over {p['bins_seen']} bins: {learned or '-'}")
    return "\n".join(lines)


def format_cell(column: str, value) -> str:
    if value is None:
        return "-"
    if column == "cold_rate":
        return f"{value:.3%}"
    if column in ("cost_vs_oracle", "core_seconds_vs_oracle"):
        return f"{value:.2f}x"
    if column == "cpu_starved_core_seconds":
        return f"{value:,.1f}"
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
