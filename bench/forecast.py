"""Forecast benchmark: accuracy on the shared real traces against seasonal naive, statsmodels and
statsforecast; refit + forecast time at 1,000 to 100,000 series against statsmodels; memory per series.

    bench/statsforecast_env.sh                    # once: statsforecast in bench/.venv-statsforecast only
    .venv/bin/python bench/forecast.py [--series 1000 10000 100000] [--origins 168] [--sf-fits 136]

Prints markdown tables and writes bench/results/forecast.json (see bench/FORECAST.md).

Accuracy: rolling origins every 2 h over the last 14 days of 5-minute bins, each model fitted on the
two days before the origin (what the live ring buffer holds); every numpy model and statsmodels
ETS(A,N,A) runs on every series at every origin, is scored on the later half of the origins, and
warmfront's per-series blend is weighed and calibrated on the earlier half. statsforecast's AutoETS
runs in its own venv (a subprocess per worker, arrays exchanged as .npy in a temp dir) on the same
series and fit windows at an evenly spaced subset of the scored origins (a fit costs seconds, not
milliseconds), is scored by the same code, and every other model is scored on that subset too.

Speed: series synthesised from the real traces' daily shapes (random scale, phase and Poisson
noise), two days of 5-minute bins, the Holt-Winters grid refit the engine runs; statsmodels is
timed per series on a small sample and extrapolated to each row's series count.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from predictor.backtest import BacktestConfig, BacktestResult, choose, run  # noqa: E402
from predictor.engine import RIDGE_TOP_N  # noqa: E402
from predictor.holtwinters import HoltWinters  # noqa: E402
from predictor.models import Model, Naive, SeasonalNaive, StatsETS  # noqa: E402
from predictor.ridge import LagRidge  # noqa: E402
from predictor.series import aggregate, load_trace  # noqa: E402

HERE = Path(__file__).resolve().parent
TRACES = Path(os.environ.get("WARMFRONT_TRACES", HERE.parents[1] / "shared" / "traces"))
RESULTS = HERE / "results" / "forecast.json"
SF_PYTHON = HERE / ".venv-statsforecast" / "bin" / "python"
SF_WORKER = HERE / "sf_autoets.py"
SF_TIMEOUT_S = 1800  # all workers of one trace; the default budget needs ≈ 3–6 min a trace
NOT_INSTALLED = "not installed (run bench/statsforecast_env.sh)"
TRACE_FILES = ("nasa_http_jul95.csv", "huawei_dc1_5min.csv", "huawei_dc2_5min.csv")
SM_SAMPLE = 100  # series statsmodels is timed on in the speed part (≈ 2 s)

LABELS = {
    "naive": "naive",
    "seasonal_naive": "seasonal naive",
    "seasonal_naive_weekly": "seasonal naive weekly",
    "holt_winters": "Holt-Winters (numpy)",
    "lag_ridge": "lag ridge (numpy)",
    "lag_ridge_weekly": "lag ridge weekly (numpy)",
    "sm_ets": "statsmodels ETS(A,N,A)",
    "sf_autoets": "statsforecast AutoETS",
}


# ---------------------------------------------------------------- accuracy


def accuracy(name: str, origins: int, sf_fits: int, sf_workers: int, sf_model: str) -> dict:
    s = load_trace(TRACES / name)
    if s.bin_s < 300:
        s = aggregate(s, 300)
    period = s.period()
    models: list[Model] = [Naive(), SeasonalNaive(period), HoltWinters(period), LagRidge(period), StatsETS(period)]
    if s.length >= 3 * 7 * period:
        models += [SeasonalNaive(7 * period, name="seasonal_naive_weekly"), LagRidge(period, weekly=True)]
    cfg = BacktestConfig(horizons=(3, 12), step=24, max_origins=origins, statsmodels_top_n=s.n, statsmodels_max_origins=origins)
    load = os.getloadavg()[0]
    progress(f"{name}: backtest of {len(models)} models on {s.n} series × {origins} origins")
    t0 = time.perf_counter()
    res = run(s.values, s.ids, s.bin_s, cfg, models=models, start_slot=int(s.start_s // s.bin_s) % period)
    out = res.summary()
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["load_average_1m"] = round(load, 2)
    out["series"] = s.n
    numpy_res = numpy_only(res)
    out["chosen_numpy"] = numpy_res.summary()["chosen"]
    out["sm_ets_vs_exponential_smoothing"] = ets_equivalence(s.values, res, period)

    subset = scored_subset(res, sf_fits)
    sf = statsforecast_rows(s.values, res, subset, period, sf_workers, sf_model)
    out["statsforecast"] = {k: v for k, v in sf.items() if k not in ("point", "lower", "upper")}
    forecasts = {m: (res.point[m], res.lower[m], res.upper[m]) for m in res.models}
    forecasts["**chosen**"] = res.chosen_forecast()
    forecasts["chosen (numpy)"] = numpy_res.chosen_forecast()
    if "point" in sf:
        forecasts["sf_autoets"] = (sf["point"], sf["lower"], sf["upper"])
        out["models"]["sf_autoets"] = {"horizons": res.scores(*forecasts["sf_autoets"], origins=subset), "fit_seconds": sf["fit_seconds"],
                                       "series": s.n, "origins": len(subset)}
    else:
        subset = subset[:0]
    # every row on the statsforecast subset: same series, same origins, same scoring
    out["subset"] = {
        "series": s.n,
        "origins": len(subset),
        "origin_index": [int(k) for k in subset],
        "models": {m: res.scores(*(only(a, subset) for a in f)) for m, f in forecasts.items()},
    }
    return out


def numpy_only(res: BacktestResult) -> BacktestResult:
    """The same backtest re-weighed without the statsmodels candidates: what the live engine runs."""
    keep = [m for m in res.models if not m.startswith("sm_")]
    sub = BacktestResult(res.ids, res.bin_s, res.config, res.origins, res.n_choice, res.actual, res.scale,
                         {m: res.point[m] for m in keep}, {m: res.lower[m] for m in keep}, {m: res.upper[m] for m in keep},
                         {m: res.fit_seconds[m] for m in keep})
    choose(sub)
    return sub


def only(a: np.ndarray, origin_index: np.ndarray) -> np.ndarray:
    """`a` `[n, K, H]` with every origin outside `origin_index` blanked: the scoring skips NaN, so
    the same `scores` then covers just those origins."""
    out = np.full(a.shape, np.nan)
    out[:, origin_index] = a[:, origin_index]
    return out


def scored_subset(res: BacktestResult, fits: int) -> np.ndarray:
    """Evenly spaced scored origins, as many as `fits` allows for all series (all of them if it can)."""
    scored = len(res.origins) - res.n_choice
    k = min(scored, fits // len(res.ids))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    return res.n_choice + np.unique(np.round(np.linspace(0, scored - 1, k)).astype(np.int64))


def ets_equivalence(values: np.ndarray, res: BacktestResult, period: int, windows: int = 8) -> dict:
    """StatsETS fits statsmodels' ETSModel(error='add', trend=None, seasonal='add', heuristic start);
    statsmodels' ExponentialSmoothing(seasonal='add', heuristic start) is the same model fitted by
    the other API. Refit a few of the backtest's windows with the latter and compare point forecasts,
    so the row's name is checked rather than asserted."""
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    cfg = res.config
    hs = np.asarray(cfg.horizons) - 1
    scored = np.arange(res.n_choice, len(res.origins))
    picks = [(i % len(res.ids), int(k)) for i, k in enumerate(scored[np.linspace(0, len(scored) - 1, windows).astype(int)])]
    rel = []
    for i, k in picks:
        o = res.origins[k]
        x = np.sqrt(np.maximum(values[i, o - cfg.window : o], 0.0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = ExponentialSmoothing(x, trend=None, seasonal="add", seasonal_periods=period, initialization_method="heuristic").fit()
        es = np.maximum(fit.forecast(max(cfg.horizons))[hs], 0.0) ** 2
        ets = res.point["sm_ets"][i, k]
        rel.append(float(np.max(np.abs(es - ets) / np.maximum(np.abs(ets), 1.0))))
    return {"windows": len(picks), "max_relative_point_difference": round(max(rel), 5),
            "median_relative_point_difference": round(float(np.median(rel)), 5)}


# ---------------------------------------------------------------- statsforecast (own venv)


def statsforecast_version() -> str | None:
    if not SF_PYTHON.exists():
        return None
    r = subprocess.run([str(SF_PYTHON), "-c", "import statsforecast; print(statsforecast.__version__)"],
                       capture_output=True, text=True, timeout=300, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def statsforecast_rows(values: np.ndarray, res: BacktestResult, subset: np.ndarray, period: int, workers: int, model: str) -> dict:
    """AutoETS on √counts of the same fit windows at the `subset` origins, squared back like every
    other candidate; `[n, K, H]` arrays NaN outside the subset."""
    version = statsforecast_version()
    if version is None:
        return {"status": NOT_INSTALLED}
    if len(subset) == 0:
        return {"status": "skipped (--sf-fits 0)", "version": version}
    cfg = res.config
    n = len(res.ids)
    hs = np.asarray(cfg.horizons) - 1
    pairs = [(i, int(k)) for k in subset for i in range(n)]
    windows = np.stack([np.sqrt(np.maximum(values[i, res.origins[k] - cfg.window : res.origins[k]], 0.0)) for i, k in pairs])
    progress(f"statsforecast AutoETS: {len(pairs)} fits ({len(subset)} origins × {n} series) in {workers} worker(s)")
    t0 = time.perf_counter()
    mean, lower, upper, seconds, methods = autoets(windows, period, max(cfg.horizons), round(100 * cfg.nominal), workers, model)
    wall = time.perf_counter() - t0
    shape = (n, len(res.origins), len(hs))
    point, lo, hi = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for j, (i, k) in enumerate(pairs):
        point[i, k], lo[i, k], hi[i, k] = (np.maximum(a[j, hs], 0.0) ** 2 for a in (mean, lower, upper))
    failed = sum(m.startswith("failed") for m in methods)
    return {
        "status": "ok", "version": version, "model": f"AutoETS(season_length={period}, model={model!r})",
        "fits": len(pairs), "failed": failed, "fit_seconds": round(float(np.mean(seconds)), 4),
        "wall_seconds": round(wall, 1), "workers": workers, "chosen_forms": dict(Counter(methods).most_common()),
        "point": point, "lower": lo, "upper": hi,
    }


def run_workers(jobs: list[tuple[list[str], Path]], env: dict, timeout_s: float, label: str) -> None:
    """Run each (command, work dir) at once, its output in `dir/stderr.txt`; raise when one fails
    or all are not done within `timeout_s`; never leave one running."""
    procs = []
    for cmd, d in jobs:
        err = open(d / "stderr.txt", "w")  # noqa: SIM115 - closed below, after the worker ends
        procs.append((subprocess.Popen(cmd, env=env, stdout=err, stderr=subprocess.STDOUT), err, d))
    deadline = time.monotonic() + timeout_s
    try:
        for p, err, d in procs:
            rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
            err.close()
            if rc != 0:
                raise RuntimeError(f"{label} worker exited {rc}: {(d / 'stderr.txt').read_text()[-600:]}")
    finally:
        for p, err, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
            err.close()


def autoets(windows: np.ndarray, period: int, h: int, level: int, workers: int, model: str) -> tuple[np.ndarray, ...]:
    """Fit AutoETS on every row of `windows` with `workers` subprocesses of the statsforecast venv."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    parts = [idx for idx in (np.arange(w, len(windows), workers) for w in range(workers)) if len(idx)]
    with tempfile.TemporaryDirectory(prefix="warmfront-sf-") as tmp:
        jobs = []
        for w, idx in enumerate(parts):
            d = Path(tmp) / f"w{w}"
            d.mkdir()
            np.save(d / "windows.npy", windows[idx])
            cmd = [str(SF_PYTHON), str(SF_WORKER), str(d), "--season", str(period), "--horizon", str(h), "--level", str(level), "--model", model]
            jobs.append((cmd, d))
        run_workers(jobs, env, SF_TIMEOUT_S, "statsforecast")
        out = [np.full((len(windows), h), np.nan) for _ in range(3)] + [np.zeros(len(windows))]
        methods = [""] * len(windows)
        for (_, d), idx in zip(jobs, parts):
            for arr, name in zip(out, ("mean", "lower", "upper", "seconds")):
                arr[idx] = np.load(d / f"{name}.npy")
            for j, m in zip(idx, json.loads((d / "methods.json").read_text())):
                methods[j] = m
    return (*out, methods)


# ---------------------------------------------------------------- speed


def synthetic(n: int, days: int = 2, seed: int = 0) -> np.ndarray:
    """Daily shapes from the real traces, rescaled, phase-shifted, Poisson-sampled."""
    shapes = []
    for name in TRACE_FILES:
        s = load_trace(TRACES / name)
        s = aggregate(s, 300) if s.bin_s < 300 else s
        v = s.values[:, : 2 * 288]
        shapes.append(v / np.maximum(v.mean(axis=1, keepdims=True), 1e-9))
    shapes = np.concatenate(shapes)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(shapes), n)
    shift = rng.integers(0, 288, n)
    idx = (np.arange(days * 288)[None, :] + shift[:, None]) % (2 * 288)
    rate = shapes[pick[:, None], idx] * rng.lognormal(3.0, 1.5, n)[:, None]
    return rng.poisson(rate).astype(np.float32)


def statsmodels_per_series(n: int = SM_SAMPLE) -> tuple[float, float]:
    """Wall and CPU seconds per series for statsmodels ETS(A,N,A) fit + 288-step forecast, one
    series at a time (its BLAS may use both cores, so CPU can exceed wall)."""
    sample = synthetic(n, seed=1).astype(np.float64)
    ets = StatsETS(288)
    ets.fit(sample[:1])  # the first fit pays statsmodels' import
    c0, t0 = time.process_time(), time.perf_counter()
    ets.fit(sample)
    ets.predict(288)
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def speed(n: int, sm: tuple[float, float]) -> dict:
    y = synthetic(n)
    hw = HoltWinters(288)
    load = os.getloadavg()[0]
    c0, t0 = time.process_time(), time.perf_counter()
    hw.fit(y)
    hw.predict(288)
    hw_s = time.perf_counter() - t0
    # what the engine refits besides: lag ridge on its busiest RIDGE_TOP_N series, and their path
    top = np.argsort(-y.sum(axis=1))[:RIDGE_TOP_N]
    t1 = time.perf_counter()
    ridge = LagRidge(288).fit(y[top])
    ridge.forecast(y[top], 288)
    ridge_s = time.perf_counter() - t1
    refit = time.perf_counter() - t0
    # CPU seconds too: on a shared box the wall time moves with other work, the CPU time less
    refit_cpu = time.process_time() - c0
    new = y[:, -1].copy()
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        hw.update(new)
        times.append(time.perf_counter() - t0)
    state = hw.nbytes_per_series
    buffer = 2 * 288 * 4
    return {
        "series": n,
        "grid": hw.grid_size,
        "refit_forecast_s": round(refit, 3),
        "holt_winters_s": round(hw_s, 3),
        "ridge_series": len(top),
        "ridge_s": round(ridge_s, 3),
        "refit_forecast_cpu_s": round(refit_cpu, 3),
        "load_average_1m": round(load, 2),
        "new_bin_ms": round(1000 * float(np.median(times)), 3),
        "state_bytes_per_series": state,
        "buffer_bytes_per_series": buffer,
        "bytes_per_series": state + buffer,
        "statsmodels_sample": SM_SAMPLE,
        "statsmodels_s_per_series": round(sm[0], 5),
        "statsmodels_cpu_s_per_series": round(sm[1], 5),
        "statsmodels_extrapolated_s": round(sm[0] * n, 1),
        "statsmodels_extrapolated_cpu_s": round(sm[1] * n, 1),
        # wall: what one statsmodels process would take; CPU: fair to the two threads the refit uses
        "throughput_x_statsmodels": round(sm[0] * n / refit, 1),
        "throughput_x_statsmodels_cpu": round(sm[1] * n / refit_cpu, 1),
    }


# ---------------------------------------------------------------- report


def trace_label(name: str, out: dict) -> str:
    if name.startswith("nasa"):
        return "NASA"
    region = "dc2" if "dc2" in name else "dc1"
    return f"Huawei {region} ({out['series']})"


def row(trace: str, name: str, h: dict, fit: str, sample: str) -> str:
    def mase(lab: str) -> str:
        m, med = h[lab]["mase"], h[lab]["mase_median"]
        return f"{m:.3f}" if m == med else f"{m:.3f} ({med:.3f})"
    return (f"| {trace} | {name} | {mase('15m')} | {mase('1h')} | {h['15m']['smape']:.3f} | {h['1h']['smape']:.3f} "
            f"| {h['15m']['coverage']:.3f} | {h['1h']['coverage']:.3f} | {fit} | {sample} |")


def sample(sc: dict) -> str:
    """series × scored origins a row was scored on."""
    return f"{sc.get('series', '?')} × {sc.get('origins', '?')}"


HEAD = ("| trace | model | MASE 15m | MASE 1h | sMAPE 15m | sMAPE 1h | cover 15m | cover 1h | fit s/series | series × origins |\n"
        "|---|---|---|---|---|---|---|---|---|---|")


def report(acc: dict, spd: list[dict]) -> str:
    lines = []
    if acc:
        lines += ["## Accuracy (MASE: mean of per-series MASE, median in brackets; sMAPE; 90 % coverage; later half of the origins)", "", HEAD]
        for trace, out in acc.items():
            t = trace_label(trace, out)
            for m, sc in out["models"].items():
                if m == "sf_autoets":
                    continue
                lines.append(row(t, LABELS.get(m, m), sc["horizons"], f"{sc['fit_seconds']:.5f}", sample(sc)))
            lines.append(row(t, "**chosen**", out["chosen"]["horizons"], f"{out['chosen']['fit_seconds']:.5f}", sample(out["chosen"])))
            lines.append(row(t, "chosen (numpy)", out["chosen_numpy"]["horizons"], f"{out['chosen_numpy']['fit_seconds']:.5f}",
                             sample(out["chosen_numpy"])))
            sf = out["statsforecast"]
            if "sf_autoets" in out["models"]:
                sc = out["models"]["sf_autoets"]
                part = sc["origins"] < out["origins"]["scored"]
                label = f"statsforecast AutoETS ‡ ({sc['origins']} of {out['origins']['scored']} origins)" if part else "statsforecast AutoETS"
                lines.append(row(t, label, sc["horizons"], f"{sc['fit_seconds']:.3f}", sample(sc)))
            else:
                lines.append(f"| {t} | statsforecast AutoETS | {sf['status']} | | | | | | | |")
        partial = [t for t, out in acc.items() if 0 < out["subset"]["origins"] < out["origins"]["scored"]]
        if partial:
            lines += ["", "‡ on an evenly spaced subset of the scored origins: compare it in the next table, where every row is scored on that subset."]
        for trace in partial:
            out = acc[trace]
            sub = out["subset"]
            t = trace_label(trace, out)
            lines += ["", (f"### {t}: every model on the statsforecast subset ({sub['origins']} of {out['origins']['scored']} scored origins, "
                           f"{sub['origins'] * out['series']} forecasts per horizon)"), "", HEAD]
            fits = {m: sc["fit_seconds"] for m, sc in out["models"].items()} | {
                "**chosen**": out["chosen"]["fit_seconds"], "chosen (numpy)": out["chosen_numpy"]["fit_seconds"]}
            for m, h in sub["models"].items():
                fit = fits.get(m)
                lines.append(row(t, LABELS.get(m, m), h, "" if fit is None else f"{fit:.5f}", sample(sub)))
        lines += ["", "| trace | backtest s (1-min load before) | statsforecast | AutoETS forms chosen | ETS(A,N,A) vs ExponentialSmoothing |", "|---|---|---|---|---|"]
        for trace, out in acc.items():
            sf, eq = out["statsforecast"], out["sm_ets_vs_exponential_smoothing"]
            sfs = (f"{sf['version']}: {sf['fits']} fits, {sf['failed']} failed, {sf['wall_seconds']} s wall in {sf['workers']} workers"
                   if sf["status"] == "ok" else sf["status"])
            forms = ", ".join(f"{k} × {v}" for k, v in sf.get("chosen_forms", {}).items())
            lines.append(f"| {trace_label(trace, out)} | {out['seconds']} ({out['load_average_1m']}) | {sfs} | {forms} "
                         f"| max {100 * eq['max_relative_point_difference']:.3f} % point difference on {eq['windows']} windows |")
    if spd:
        sm = spd[0]
        lines += ["", "## Speed and memory (synthetic series, two days of 5-minute bins, refit + 288-step forecast)", "",
                  (f"| series | refit + forecast s (Holt-Winters + lag ridge on the busiest ≤ {RIDGE_TOP_N:,}) | CPU s | 1-min load before | new bin ms | bytes/series (state + buffer) "
                   f"| statsmodels ETS(A,N,A) s (CPU s), extrapolated from {sm['statsmodels_sample']} series "
                   f"| throughput × statsmodels, wall (CPU) |"),
                  "|---|---|---|---|---|---|---|---|"]
        for r in spd:
            parts = f" ({r['holt_winters_s']} + {r['ridge_s']})" if "ridge_s" in r else ""
            lines.append(f"| {r['series']:,} | {r['refit_forecast_s']}{parts} | {r['refit_forecast_cpu_s']} | {r['load_average_1m']} | {r['new_bin_ms']} "
                         f"| {r['bytes_per_series']} ({r['state_bytes_per_series']} + {r['buffer_bytes_per_series']}) "
                         f"| {r['statsmodels_extrapolated_s']:,} ({r['statsmodels_extrapolated_cpu_s']:,}) "
                         f"| {r['throughput_x_statsmodels']:,} ({r['throughput_x_statsmodels_cpu']:,}) |")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in targets(acc, spd)]
    return "\n".join(lines)


def targets(acc: dict, spd: list[dict]) -> list[tuple[str, str, bool]]:
    out = []
    for trace, a in acc.items():
        t = trace_label(trace, a)
        singles = {m: sc["horizons"] for m, sc in a["models"].items() if m != "sf_autoets"}
        for lab in ("15m", "1h"):
            ch = a["chosen"]["horizons"][lab]
            sn = singles["seasonal_naive"][lab]["mase"]
            best, best_m = min((h[lab]["mase"], m) for m, h in singles.items())
            out.append((f"{t} {lab}: chosen MASE < seasonal naive", f"{ch['mase']:.3f} vs {sn:.3f}", ch["mase"] < sn))
            out.append((f"{t} {lab}: chosen within 5 % of the best single model", f"{ch['mase']:.3f} vs {best:.3f} ({LABELS.get(best_m, best_m)})",
                        ch["mase"] <= 1.05 * best))
            out.append((f"{t} {lab}: chosen 90 % coverage in 0.87–0.93", f"{ch['coverage']:.3f}", 0.87 <= ch["coverage"] <= 0.93))
            sub = a["subset"]["models"]
            if "sf_autoets" in sub:
                c, s = sub["**chosen**"][lab]["mase"], sub["sf_autoets"][lab]["mase"]
                out.append((f"{t} {lab}: chosen MASE < AutoETS on its origins (comparison, not a target)", f"{c:.3f} vs {s:.3f}", c < s))
    if spd:
        r = max(spd, key=lambda r: r["series"])
        n = f"{r['series']:,} series"
        out += [
            (f"{n}: refit + forecast < 10 s", f"{r['refit_forecast_s']} s ({r['refit_forecast_cpu_s']} CPU s)", r["refit_forecast_s"] < 10),
            (f"{n}: new bin < 1 ms", f"{r['new_bin_ms']} ms", r["new_bin_ms"] < 1),
            (f"{n}: ≥ 100× statsmodels throughput (wall and CPU)", f"{r['throughput_x_statsmodels']:,}× ({r['throughput_x_statsmodels_cpu']:,}×)",
             min(r["throughput_x_statsmodels"], r["throughput_x_statsmodels_cpu"]) >= 100),
            (f"{n}: ≤ 4 KiB per series", f"{r['bytes_per_series']} bytes", r["bytes_per_series"] <= 4096),
        ]
    return out


def progress(msg: str) -> None:
    print(f"[forecast {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description="Predictor accuracy on the shared traces against seasonal naive, statsmodels and "
                                             "statsforecast; speed and memory at 1,000 to 100,000 series.")
    ap.add_argument("--series", nargs="+", default=["1000", "10000", "100000"], help="series counts in the speed part (space or comma separated)")
    ap.add_argument("--origins", type=int, default=168, help="rolling origins per trace, 2 h apart (the later half is scored)")
    ap.add_argument("--sf-fits", type=int, default=136,
                    help="statsforecast AutoETS fits per trace: that many ÷ series scored origins, evenly spaced (0: skip)")
    ap.add_argument("--sf-workers", type=int, default=2, help="statsforecast worker processes")
    ap.add_argument("--sf-model", default="ZZZ", help="AutoETS model string (default ZZZ: its automatic choice; ZZA forces a daily season)")
    ap.add_argument("--skip", choices=("accuracy", "speed"), action="append", default=[],
                    help="leave a part out, keeping its last result from the JSON (both: reprint the last results)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    counts = [int(x.replace("_", "")) for a in args.series for x in a.split(",") if x]
    last = json.loads(args.out.read_text()) if args.out.exists() else {}
    started = time.perf_counter()
    acc = last.get("accuracy", {}) if "accuracy" in args.skip else {
        name: accuracy(name, args.origins, args.sf_fits, args.sf_workers, args.sf_model) for name in TRACE_FILES}
    spd = last.get("speed", [])
    if "speed" not in args.skip:
        progress(f"speed: statsmodels on {SM_SAMPLE} series, then Holt-Winters on {counts}")
        sm = statsmodels_per_series()
        spd = [speed(n, sm) for n in counts]
    print(report(acc, spd))
    if len(set(args.skip)) == 2:
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "seconds": round(time.perf_counter() - started, 1), "accuracy": acc, "speed": spd}, indent=1))
    progress(f"done in {time.perf_counter() - started:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
