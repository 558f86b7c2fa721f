"""`warmfront forecast --trace FILE`: backtest every candidate on a trace and report how each does.

This is how a user judges the predictor before trusting it: per model and horizon MASE, sMAPE,
90 % interval coverage and fit time, and the same figures for warmfront's own per-series choice,
made on earlier origins than the ones it is scored on. Each table is scored on one sample of
(series, origin) pairs, named with it: every series at every scored origin, and — when the
statsmodels models ran on the busiest `--top-n` series only — that subsample, with every model
and the choice scored on exactly it.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable

import numpy as np

from predictor.backtest import BacktestConfig, BacktestResult, origins_for, run
from predictor.models import STATSMODELS_MODELS, Model, Prediction, candidates
from predictor.series import TraceError, aggregate, load_trace
from predictor.svgplot import ACTUAL_COLOR, BAND_COLOR, EPOCH_FROM, FORECAST_COLOR, Band, Line, chart, time_ticks

MODEL_BIN_S = 300.0  # 5-minute bins with a 288-slot day, as measured
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if not m:
        raise ValueError(f"bad duration {text!r}: use e.g. 15m, 1h, 7d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="warmfront forecast", description="Backtest the forecasting models on a trace.")
    p.add_argument("--trace", required=True, help="minute,source,count (any bin) or timestamp,source[,type][,cost] CSV")
    p.add_argument("--horizon", action="append", help="horizon to score, e.g. 15m (repeatable; default 15m and 60m)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE.svg", help="write actual vs forecast with its band for the busiest series")
    p.add_argument("--train", default="0.5", help="share of origins (0.5) or span from the trace start (7d) used to choose models")
    p.add_argument("--origins", type=int, default=168, help="rolling origins, latest first (default 168)")
    p.add_argument("--step", default="2h", help="time between origins (default 2h)")
    p.add_argument("--top-n", type=int, default=2, help="series (by traffic) that also get statsmodels models; 0 for none")
    p.add_argument("--progress", action="store_true", help="show progress on stderr even when it is not a terminal "
                                                           "or with --json")
    return p


def show_progress(args: argparse.Namespace) -> bool:
    """A bar on stderr for a person watching: on a terminal unless the output is for a program (--json)."""
    return bool(args.progress or (sys.stderr.isatty() and not args.json))


def progress_bar(label: str, fraction: float) -> None:
    filled = int(fraction * 40)
    sys.stderr.write(f"\r{label:<28.28} [{'#' * filled}{'.' * (40 - filled)}] {fraction * 100:5.1f}%")
    sys.stderr.flush()


class CountedFits:
    """A candidate that reports each fit: the backtest's long loop is models × origins, and it takes
    models rather than a progress callback."""

    def __init__(self, model: Model, on_fit: Callable[[str], None]) -> None:
        self.model = model
        self.name = model.name
        self._on_fit = on_fit

    def min_length(self) -> int:
        return self.model.min_length()

    def fit(self, y: np.ndarray, start_slot: int = 0) -> CountedFits:
        self.model.fit(y, start_slot=start_slot)
        self._on_fit(self.name)
        return self

    def predict(self, h: int) -> Prediction:
        return self.model.predict(h)


def counted_candidates(cfg: BacktestConfig, length: int, period: int,
                       progress: Callable[[str, float], None]) -> list[Model]:
    """The backtest's candidates, each fit advancing `progress` by one of the fits planned: every
    origin for the numpy models, at most `statsmodels_max_origins` for the statsmodels ones."""
    models = candidates(period, length, cfg.quantiles, statsmodels=cfg.statsmodels_top_n > 0)
    k_n = len(origins_for(length, cfg, max(m.min_length() for m in models if m.name not in STATSMODELS_MODELS)))
    per = [min(k_n, cfg.statsmodels_max_origins) if m.name in STATSMODELS_MODELS else k_n for m in models]
    done = [0]

    def on_fit(name: str) -> None:
        done[0] += 1
        progress(f"backtesting {name}", min(1.0, done[0] / sum(per)))
    return [CountedFits(m, on_fit) for m in models]


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        series = load_trace(args.trace)
        if series.bin_s < MODEL_BIN_S and MODEL_BIN_S % series.bin_s == 0:
            series = aggregate(series, MODEL_BIN_S)
        horizons = tuple(max(1, int(round(parse_duration(h) / series.bin_s))) for h in (args.horizon or ["15m", "60m"]))
        step = max(1, int(round(parse_duration(args.step) / series.bin_s)))
        cfg = BacktestConfig(horizons=horizons, step=step, max_origins=args.origins, statsmodels_top_n=args.top_n)
        cfg = _with_train(cfg, args.train, series.length, series.bin_s)
        show = show_progress(args)
        models = counted_candidates(cfg, series.length, series.period(), progress_bar) if show else None
        result = run(series.values, series.ids, series.bin_s, cfg, models=models,
                     start_slot=int(series.start_s // series.bin_s) % series.period())
        if show:
            print(file=sys.stderr)
    except (TraceError, ValueError) as e:
        print(f"warmfront forecast: {e}", file=sys.stderr)
        return 2
    summary = result.summary()
    if args.plot:
        try:
            with open(args.plot, "w") as f:
                f.write(_plot(result, series.values, series.start_s))
        except OSError as e:
            print(f"warmfront forecast: cannot write plot: {e}", file=sys.stderr)
            return 2
    print(json.dumps(summary, indent=2) if args.json else _table(summary))
    return 0


def _with_train(cfg: BacktestConfig, train: str, length: int, bin_s: float) -> BacktestConfig:
    """`--train` as a share of origins, or as a span of the trace: origins before it choose."""
    from dataclasses import replace

    try:
        frac = float(train)
    except ValueError:
        cut = parse_duration(train) / bin_s
        last = length - max(cfg.horizons)
        first = max(0, last - (cfg.max_origins - 1) * cfg.step)
        frac = (cut - first) / max(1.0, last - first)
    if not 0.0 < frac < 1.0:
        raise ValueError(f"--train {train} leaves no origins to choose on or none to score")
    return replace(cfg, choice_fraction=frac)


SAMPLE_TITLES = {
    "all": "every series, every scored origin",
    "statsmodels_subsample": "the statsmodels subsample: every model on the same busiest series and spread of scored origins",
}


def _table(summary: dict) -> str:
    out = []
    for sample, t in summary["samples"].items():
        hs = list(t["chosen"]["horizons"])
        out.append(f"{SAMPLE_TITLES.get(sample, sample)} ({t['series']} series × {t['origins']} origins = "
                   f"{t['series'] * t['origins']} forecasts per horizon)")
        out.append("| model | " + " | ".join(f"MASE {h} | sMAPE {h} | cover {h}" for h in hs) + " | fit s/series | series | origins |")
        out.append("|" + "---|" * (4 + 3 * len(hs)))
        for name, m in list(t["models"].items()) + [("chosen", t["chosen"])]:
            cells = " | ".join(f"{m['horizons'][h]['mase']:.3f} | {m['horizons'][h]['smape']:.3f} | {m['horizons'][h]['coverage']:.3f}" for h in hs)
            out.append(f"| {name} | {cells} | {m['fit_seconds']:.5f} | {m['series']} | {m['origins']} |")
        out.append("")
    o = summary["origins"]
    out.append(f"origins: {o['choice']} choose, {o['scored']} score (later)")
    out.append("chosen per series: " + ", ".join(f"{s}={v['model']}({v['intervals']})" for s, v in summary["per_series"].items()))
    return "\n".join(out)


def _plot(result: BacktestResult, values: np.ndarray, start_s: float) -> str:
    i = int(np.argmax(values.sum(axis=1)))
    p, lo, hi = (a[i, result.n_choice :, 0] for a in result.chosen_forecast())
    targets = result.origins[result.n_choice :] + result.config.horizons[0] - 1
    t = start_s + targets * result.bin_s
    epoch = start_s >= EPOCH_FROM
    return chart(
        t,
        [Line("actual", values[i, targets], ACTUAL_COLOR),
         Line(f"forecast ({result.chosen[i]})", p, FORECAST_COLOR, dash="5 3")],
        [Band("90% interval", lo, hi, BAND_COLOR)],
        title=f"{result.ids[i]}: {result.config.horizons[0] * result.bin_s / 60:g}-minute-ahead forecast vs actual",
        x_ticks=time_ticks(float(t.min()), float(t.max()), epoch=epoch) if len(t) else (),
        x_label="time (UTC)" if epoch else "time since trace start",
        y_label=f"requests per {result.bin_s / 60:g} min",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
