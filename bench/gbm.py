"""Would a lag-feature gradient-boosting model win? LightGBM against warmfront's candidates and its
per-series blend, on the same traces, origins, fit windows and scoring as bench/forecast.py.

    bench/gbm_env.sh                          # once, ≈ 20 s: LightGBM only in bench/.venv-gbm
    .venv/bin/python bench/gbm.py [--origins 168] [--workers 2] [--target last] [--point-objective l1] [--lookback 0] [--out bench/results/gbm.json]

Per trace: warmfront's backtest exactly as bench/forecast.py runs it (same models, same
BacktestConfig), then LightGBM in worker subprocesses of its own venv (bench/gbm_worker.py) at every
origin of that backtest, fitted on the same two-day window; then the blend is chosen again with
LightGBM as one more candidate (predictor.backtest.choose on a BacktestResult holding its
point/lower/upper), with and without the statsmodels candidates. Every row is scored by
BacktestResult.scores on the later half of the origins. Prints markdown tables (bench/GBM.md) and
writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from forecast import HEAD, LABELS, RESULTS as FORECAST_JSON, TRACE_FILES, TRACES, numpy_only, only, progress, row, run_workers, trace_label  # noqa: E402

from predictor.backtest import BacktestConfig, BacktestResult, choose, run, series_mase  # noqa: E402
from predictor.holtwinters import HoltWinters  # noqa: E402
from predictor.models import Naive, SeasonalNaive, StatsETS  # noqa: E402
from predictor.series import aggregate, load_trace  # noqa: E402

GBM_PYTHON = HERE / ".venv-gbm" / "bin" / "python"
GBM_WORKER = HERE / "gbm_worker.py"
RESULTS = HERE / "results" / "gbm.json"
TIMEOUT_S = 900  # all workers of one trace; the default run needs ≈ 1–3 min a trace
GBM = "lightgbm"
LABELS = LABELS | {GBM: "LightGBM lags (direct, quantile band)"}


def backtest(name: str, origins: int) -> tuple[np.ndarray, BacktestResult, int]:
    """bench/forecast.py's accuracy backtest, without its statsforecast and equivalence parts."""
    s = load_trace(TRACES / name)
    if s.bin_s < 300:
        s = aggregate(s, 300)
    period = s.period()
    models = [Naive(), SeasonalNaive(period), HoltWinters(period), StatsETS(period)]
    if s.length >= 3 * 7 * period:
        models.append(SeasonalNaive(7 * period, name="seasonal_naive_weekly"))
    cfg = BacktestConfig(horizons=(3, 12), step=24, max_origins=origins, statsmodels_top_n=s.n, statsmodels_max_origins=origins)
    start_slot = int(s.start_s // s.bin_s) % period
    progress(f"{name}: warmfront backtest of {len(models)} models on {s.n} series × {origins} origins")
    return s.values, run(s.values, s.ids, s.bin_s, cfg, models=models, start_slot=start_slot), start_slot


def lightgbm_version() -> str | None:
    if not GBM_PYTHON.exists():
        return None
    r = subprocess.run([str(GBM_PYTHON), "-c", "import lightgbm; print(lightgbm.__version__)"],
                       capture_output=True, text=True, timeout=300, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def lightgbm_rows(values: np.ndarray, res: BacktestResult, start_slot: int, workers: int, worker_args: list[str], lookback: int = 0) -> dict:
    """LightGBM at every origin of `res` on √counts of the same fit windows, squared back like every
    other candidate: `[n, K, H]` arrays. `lookback` > 0 hands the worker that many bins more before
    each window (a sensitivity run: more history than any other candidate but weekly seasonal naive)."""
    cfg = res.config
    period = int(round(86_400 / res.bin_s))
    win = cfg.window + lookback
    windows = np.stack([np.sqrt(np.maximum(values[:, o - win : o], 0.0)) for o in res.origins])  # [K, n, W]
    slots = np.array([(start_slot + o - win) % period for o in res.origins])
    env = os.environ | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    parts = [idx for idx in (np.arange(w, len(windows), workers) for w in range(workers)) if len(idx)]
    progress(f"LightGBM: {len(windows)} origins × {len(cfg.horizons)} horizons × 3 models, global over {len(res.ids)} series, {workers} worker(s)")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="warmfront-gbm-") as tmp:
        jobs = []
        for w, idx in enumerate(parts):
            d = Path(tmp) / f"w{w}"
            d.mkdir()
            np.save(d / "windows.npy", windows[idx])
            np.save(d / "slots.npy", slots[idx])
            cmd = [str(GBM_PYTHON), str(GBM_WORKER), str(d), "--period", str(period),
                   "--horizons", ",".join(map(str, cfg.horizons)), "--quantiles", ",".join(map(str, cfg.quantiles)), *worker_args]
            jobs.append((cmd, d))
        run_workers(jobs, env, TIMEOUT_S, "LightGBM")
        k_n, n, h_n = len(windows), len(res.ids), len(cfg.horizons)
        out = {name: np.full((k_n, n, h_n), np.nan) for name in ("point", "lower", "upper")} | {"seconds": np.zeros(k_n)}
        for (_, d), idx in zip(jobs, parts):
            for name, arr in out.items():
                arr[idx] = np.load(d / f"{name}.npy")
    wall = time.perf_counter() - t0
    p, lo, hi = (np.maximum(np.transpose(out[k], (1, 0, 2)), 0.0) ** 2 for k in ("point", "lower", "upper"))
    return {"point": p, "lower": lo, "upper": hi,
            # one global fit per origin serves every series: its cost shared over them
            "fit_seconds": float(np.mean(out["seconds"])) / n, "fit_seconds_per_origin": round(float(np.mean(out["seconds"])), 4),
            "wall_seconds": round(wall, 1)}


def with_candidate(res: BacktestResult, name: str, f: dict) -> BacktestResult:
    """`res` with one more candidate, its blend chosen again by predictor.backtest.choose."""
    out = BacktestResult(res.ids, res.bin_s, res.config, res.origins, res.n_choice, res.actual, res.scale,
                         res.point | {name: f["point"]}, res.lower | {name: f["lower"]}, res.upper | {name: f["upper"]},
                         res.fit_seconds | {name: f["fit_seconds"]})
    choose(out)
    return out


def series_better(res: BacktestResult, before: np.ndarray, after: np.ndarray, labels: list[str]) -> dict[str, int]:
    c = res.n_choice
    a, b = (series_mase(res.actual[:, c:], p[:, c:], res.scale[:, c:]) for p in (before, after))
    return {lab: int(np.sum(b[:, j] < a[:, j])) for j, lab in enumerate(labels)}


def blend_facts(res: BacktestResult, labels: list[str]) -> dict:
    return {
        "mean_weight": {lab: {m: round(float(np.mean(w[:, j])), 3) for m, w in res.weights.items()} for j, lab in enumerate(labels)},
        "heaviest_at_1h": dict(sorted({m: res.chosen.count(m) for m in set(res.chosen)}.items(), key=lambda kv: -kv[1])),
        "interval_factor": {lab: round(float(f), 3) for lab, f in zip(labels, res.interval_factor)},
    }


def evaluate(name: str, origins: int, workers: int, worker_args: list[str], autoets: dict | None, lookback: int = 0) -> dict:
    values, res, start_slot = backtest(name, origins)
    f = lightgbm_rows(values, res, start_slot, workers, worker_args, lookback)
    labels = list(res.scores(*res.chosen_forecast()))
    numpy_res = numpy_only(res)
    plus = with_candidate(res, GBM, f)
    numpy_plus = numpy_only(plus)  # keeps every candidate but statsmodels: numpy + LightGBM

    def fit_sum(r: BacktestResult) -> float:
        return round(sum(r.fit_seconds[m] for m, w in r.weights.items() if w.any()), 6)

    forecasts = {m: (res.point[m], res.lower[m], res.upper[m]) for m in res.models}
    forecasts[GBM] = (f["point"], f["lower"], f["upper"])
    fits = res.fit_seconds | {GBM: f["fit_seconds"]}
    blends = {"**chosen**": res, "chosen (numpy)": numpy_res, "**chosen + LightGBM**": plus, "chosen (numpy) + LightGBM": numpy_plus}
    rows = {m: {"horizons": res.scores(*fc), "fit_seconds": round(fits[m], 6)} for m, fc in forecasts.items()}
    rows |= {b: {"horizons": r.scores(*r.chosen_forecast()), "fit_seconds": fit_sum(r)} for b, r in blends.items()}
    # the single models on the earlier origins, which the blend learns from: where the worker's
    # variant (--target, --point-objective) was picked, so the scored half stays unseen
    choice = {m: res.scores(*fc, window=slice(0, res.n_choice)) for m, fc in forecasts.items()}
    out = {
        "series": len(res.ids), "origins": {"choice": res.n_choice, "scored": len(res.origins) - res.n_choice},
        "rows": rows,
        "choice_origins_mase": {m: {lab: v["mase"] for lab, v in sc.items()} for m, sc in choice.items()},
        "lightgbm": {k: v for k, v in f.items() if k not in ("point", "lower", "upper")},
        "blend_with_lightgbm": blend_facts(plus, labels),
        "blend_numpy_with_lightgbm": blend_facts(numpy_plus, labels),
        "blend_without": blend_facts(res, labels),
        "chosen_changed_series": sum(a != b for a, b in zip(res.chosen, plus.chosen)),
        # how broad a change is: series (of n) whose own MASE the new blend lowers, per horizon
        "series_better": {"blend_with_lightgbm": series_better(res, res.chosen_forecast()[0], plus.chosen_forecast()[0], labels),
                          "blend_numpy_with_lightgbm": series_better(res, numpy_res.chosen_forecast()[0], numpy_plus.chosen_forecast()[0], labels),
                          "lightgbm_vs_chosen": series_better(res, res.chosen_forecast()[0], f["point"], labels)},
    }
    # the AutoETS row of bench/forecast.py's last run, on its own origins: LightGBM scored there too
    if autoets and autoets.get("subset", {}).get("origins"):
        sub = np.asarray(autoets["subset"]["origin_index"], dtype=np.int64)
        if sub.max() < len(res.origins):
            out["autoets_subset"] = {
                "origins": len(sub), "forecast_json_date": autoets["date"],
                "rows": {m: res.scores(*(only(a, sub) for a in fc)) for m, fc in
                         (("**chosen**", res.chosen_forecast()), (GBM, forecasts[GBM]), ("**chosen + LightGBM**", plus.chosen_forecast()))}
                | {"sf_autoets": autoets["subset"]["models"]["sf_autoets"]},
            }
    return out


def report(acc: dict, meta: dict) -> str:
    lines = [f"LightGBM {meta['lightgbm']}, worker args: `{' '.join(meta['worker_args'])}`, history before each two-day window: "
             f"{meta.get('lookback_bins', 0)} bins", "",
             "## Accuracy (later half of the origins; MASE: mean of per-series MASE, median in brackets)", "", HEAD]
    for trace, out in acc.items():
        t = trace_label(trace, out)
        for m, r in out["rows"].items():
            lines.append(row(t, LABELS.get(m, m), r["horizons"], f"{r['fit_seconds']:.5f}"))
    lines += ["", "## The blend with LightGBM as one more candidate", "",
              "| trace | blend | mean LightGBM weight 15m | 1h | heaviest model at 1h (series) | band widening 15m / 1h | MASE 15m Δ | MASE 1h Δ "
              "| series better 15m / 1h |",
              "|---|---|---|---|---|---|---|---|---|"]
    for trace, out in acc.items():
        t = trace_label(trace, out)
        better = out["series_better"]
        for key, base, new, lab in (("blend_with_lightgbm", "**chosen**", "**chosen + LightGBM**", "chosen"),
                                    ("blend_numpy_with_lightgbm", "chosen (numpy)", "chosen (numpy) + LightGBM", "chosen (numpy)")):
            b = out[key]
            w = b["mean_weight"]
            d = [out["rows"][new]["horizons"][h]["mase"] - out["rows"][base]["horizons"][h]["mase"] for h in ("15m", "1h")]
            heavy = ", ".join(f"{LABELS.get(m, m)} × {c}" for m, c in b["heaviest_at_1h"].items())
            lines.append(f"| {t} | {lab} + LightGBM | {w['15m'].get(GBM, 0):.3f} | {w['1h'].get(GBM, 0):.3f} | {heavy} "
                         f"| {b['interval_factor']['15m']} / {b['interval_factor']['1h']} | {d[0]:+.3f} | {d[1]:+.3f} "
                         f"| {better[key]['15m']} / {better[key]['1h']} of {out['series']} |")
    lines += [""] + [f"{trace_label(t, o)}: LightGBM alone has a lower MASE than **chosen** on {o['series_better']['lightgbm_vs_chosen']['15m']} "
                     f"(15m) / {o['series_better']['lightgbm_vs_chosen']['1h']} (1h) of {o['series']} series." for t, o in acc.items()]
    subs = {t: o["autoets_subset"] for t, o in acc.items() if "autoets_subset" in o}
    if subs:
        lines += ["", "## On statsforecast AutoETS's origins (its figures from bench/results/forecast.json)", "", HEAD]
        for trace, sub in subs.items():
            t = f"{trace_label(trace, acc[trace])}, {sub['origins']} origins"
            for m, h in sub["rows"].items():
                lines.append(row(t, LABELS.get(m, m), h, ""))
    lines += ["", "## Single models on the earlier (choice) origins, where the LightGBM variant was picked", "",
              "| trace | " + " | ".join(LABELS.get(m, m) for m in next(iter(acc.values()))["choice_origins_mase"]) + " |",
              "|---|" + "---|" * len(next(iter(acc.values()))["choice_origins_mase"])]
    for trace, out in acc.items():
        cells = [f"{v['15m']:.3f} / {v['1h']:.3f}" for v in out["choice_origins_mase"].values()]
        lines.append(f"| {trace_label(trace, out)} MASE 15m / 1h | " + " | ".join(cells) + " |")
    lines += ["", "| trace | backtest s | LightGBM wall s (workers) | LightGBM s per origin (6 fits, all series) |", "|---|---|---|---|"]
    for trace, out in acc.items():
        g = out["lightgbm"]
        lines.append(f"| {trace_label(trace, out)} | {out['backtest_seconds']} | {g['wall_seconds']} ({meta['workers']}) | {g['fit_seconds_per_origin']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description="LightGBM lag-feature model against warmfront's candidates and blend on the shared traces.")
    ap.add_argument("--origins", type=int, default=168, help="rolling origins per trace, 2 h apart (the later half is scored)")
    ap.add_argument("--workers", type=int, default=2, help="LightGBM worker processes (origins split between them)")
    ap.add_argument("--target", choices=("level", "last", "seasonal"), default="last",
                    help="worker's target: the level, or relative to the last value, or to the last value plus yesterday's change")
    ap.add_argument("--point-objective", default="l1", help="LightGBM objective of the point model (l2, l1, ...)")
    ap.add_argument("--rounds", type=int, default=200, help="boosting rounds per model")
    ap.add_argument("--lookback", type=int, default=0,
                    help="bins of history before each two-day window the LightGBM worker may also read (0: the same window as every candidate)")
    ap.add_argument("--reprint", action="store_true", help="print the last results from --out and exit")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.reprint:
        last = json.loads(args.out.read_text())
        print(report(last["accuracy"], last["meta"]))
        return 0
    version = lightgbm_version()
    if version is None:
        print("LightGBM not installed: run bench/gbm_env.sh", file=sys.stderr)
        return 2
    worker_args = ["--target", args.target, "--point-objective", args.point_objective, "--rounds", str(args.rounds)]
    autoets = json.loads(FORECAST_JSON.read_text()) if FORECAST_JSON.exists() else {}
    started = time.perf_counter()
    acc = {}
    for name in TRACE_FILES:
        t0 = time.perf_counter()
        sf = autoets.get("accuracy", {}).get(name)
        acc[name] = evaluate(name, args.origins, args.workers, worker_args, sf and sf | {"date": autoets.get("date")}, args.lookback)
        acc[name]["backtest_seconds"] = round(time.perf_counter() - t0 - acc[name]["lightgbm"]["wall_seconds"], 1)
    meta = {"lightgbm": version, "worker_args": worker_args, "lookback_bins": args.lookback, "workers": args.workers, "load_average_1m_end": round(os.getloadavg()[0], 2)}
    print(report(acc, meta))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "seconds": round(time.perf_counter() - started, 1), "meta": meta, "accuracy": acc}, indent=1))
    progress(f"done in {time.perf_counter() - started:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
