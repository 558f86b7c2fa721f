"""Predictor benchmark: accuracy on the shared real traces, speed at 100,000 series, memory per series.

    .venv/bin/python bench/predictor.py [--series 100000] [--origins 168]

Prints markdown tables and writes bench/results/predictor.json. Accuracy: rolling origins every 2 h
over the last 14 days of 5-minute bins, each model fitted on the two days before the origin (what the
live ring buffer holds); every model, statsmodels ETS included, runs on every series at every origin
(≈ 3 min for Huawei), is scored on the later half of the origins, and warmfront's per-series blend is
weighed and calibrated on the earlier half. "chosen (numpy)" is the same blend without statsmodels:
what the live engine runs. MASE is the mean over series of per-series MASE (see predictor/backtest.py). Speed: series synthesised from the real traces' daily shapes (random
scale, phase and Poisson noise), two days of 5-minute bins, the same Holt-Winters grid refit the
engine runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from predictor.backtest import BacktestConfig, BacktestResult, choose, run  # noqa: E402
from predictor.holtwinters import HoltWinters  # noqa: E402
from predictor.models import Naive, SeasonalNaive, StatsETS  # noqa: E402
from predictor.series import aggregate, load_trace  # noqa: E402

TRACES = Path(os.environ.get("WARMFRONT_TRACES", Path(__file__).resolve().parents[2] / "shared" / "traces"))
RESULTS = Path(__file__).resolve().parent / "results" / "predictor.json"


def accuracy(name: str, origins: int) -> dict:
    s = load_trace(TRACES / name)
    if s.bin_s < 300:
        s = aggregate(s, 300)
    period = s.period()
    models = [Naive(), SeasonalNaive(period), HoltWinters(period), StatsETS(period)]
    if s.length >= 3 * 7 * period:
        models.append(SeasonalNaive(7 * period, name="seasonal_naive_weekly"))
    cfg = BacktestConfig(horizons=(3, 12), step=24, max_origins=origins, statsmodels_top_n=s.n, statsmodels_max_origins=origins)
    t0 = time.perf_counter()
    res = run(s.values, s.ids, s.bin_s, cfg, models=models, start_slot=int(s.start_s // s.bin_s) % period)
    out = res.summary()
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["chosen_numpy"] = numpy_only(res).summary()["chosen"]
    return out


def numpy_only(res: BacktestResult) -> BacktestResult:
    """The same backtest re-weighed without the statsmodels candidates."""
    keep = [m for m in res.models if not m.startswith("sm_")]
    sub = BacktestResult(res.ids, res.bin_s, res.config, res.origins, res.n_choice, res.actual, res.scale,
                         {m: res.point[m] for m in keep}, {m: res.lower[m] for m in keep}, {m: res.upper[m] for m in keep},
                         {m: res.fit_seconds[m] for m in keep})
    choose(sub)
    return sub


def synthetic(n: int, days: int = 2, seed: int = 0) -> np.ndarray:
    """Daily shapes from the real traces, rescaled, phase-shifted, Poisson-sampled."""
    shapes = []
    for name in ("nasa_http_jul95.csv", "huawei_dc1_5min.csv"):
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


def speed(n: int) -> dict:
    y = synthetic(n)
    hw = HoltWinters(288)
    load = os.getloadavg()[0]
    c0, t0 = time.process_time(), time.perf_counter()
    hw.fit(y)
    hw.predict(288)
    refit = time.perf_counter() - t0
    # CPU seconds too: on a shared box the wall time moves with other work, the CPU time less
    refit_cpu = time.process_time() - c0
    new = y[:, -1].copy()
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        hw.update(new)
        times.append(time.perf_counter() - t0)
    sample = y[:5].astype(np.float64)
    ets = StatsETS(288)
    ets.fit(sample[:1])  # the first fit pays statsmodels' import
    t0 = time.perf_counter()
    ets.fit(sample)
    ets.predict(288)
    sm_per_series = (time.perf_counter() - t0) / len(sample)
    hw_per_series = refit / n
    state = hw.nbytes_per_series
    buffer = 2 * 288 * 4
    return {
        "series": n,
        "grid": hw.grid_size,
        "refit_forecast_s": round(refit, 2),
        "refit_forecast_cpu_s": round(refit_cpu, 2),
        "load_average_1m": round(load, 2),
        "new_bin_ms": round(1000 * float(np.median(times)), 3),
        "hw_s_per_series": hw_per_series,
        "statsmodels_ets_s_per_series": round(sm_per_series, 4),
        "throughput_x_statsmodels": round(sm_per_series / hw_per_series, 1),
        "state_bytes_per_series": state,
        "buffer_bytes_per_series": buffer,
        "bytes_per_series": state + buffer,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description="Predictor accuracy on the shared traces, speed and memory at scale.")
    ap.add_argument("--series", type=int, default=100_000, help="series in the speed test")
    ap.add_argument("--origins", type=int, default=168, help="rolling origins per trace (2 h apart)")
    ap.add_argument("--skip", choices=("accuracy", "speed"), help="leave one part out (the JSON keeps the other's last result)")
    args = ap.parse_args()
    last = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    acc = last.get("accuracy", {}) if args.skip == "accuracy" else {
        name: accuracy(name, args.origins) for name in ("nasa_http_jul95.csv", "huawei_dc1_5min.csv")}
    spd = last.get("speed", {}) if args.skip == "speed" else speed(args.series)
    print("## Accuracy (MASE: mean of per-series MASE, median in brackets; sMAPE; 90 % coverage; scored on the later origins)\n")
    print("| trace | model | MASE 15m | MASE 1h | sMAPE 15m | sMAPE 1h | cover 15m | cover 1h | fit s/series |")
    print("|---|---|---|---|---|---|---|---|---|")
    for trace, out in acc.items():
        rows = list(out["models"].items()) + [("**chosen**", out["chosen"]), ("chosen (numpy)", out["chosen_numpy"])]
        for name, m in rows:
            h = m["horizons"]
            print(f"| {trace} | {name} | {h['15m']['mase']:.3f} ({h['15m']['mase_median']:.3f}) | {h['1h']['mase']:.3f} ({h['1h']['mase_median']:.3f}) "
                  f"| {h['15m']['smape']:.3f} | {h['1h']['smape']:.3f} | {h['15m']['coverage']:.3f} | {h['1h']['coverage']:.3f} | {m['fit_seconds']:.5f} |")
        print(f"| {trace} | interval widening | {out['interval_factor']} | | | | | | |")
    print("\n## Speed and memory\n")
    print("| series | grid | refit + forecast s (CPU s; 1-min load before) | new bin ms | statsmodels ETS s/series | throughput × statsmodels | bytes/series (state + buffer) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {spd['series']:,} | {spd['grid']} | {spd['refit_forecast_s']} ({spd['refit_forecast_cpu_s']}; {spd['load_average_1m']}) | {spd['new_bin_ms']} | {spd['statsmodels_ets_s_per_series']} "
          f"| {spd['throughput_x_statsmodels']} | {spd['bytes_per_series']} ({spd['state_bytes_per_series']} + {spd['buffer_bytes_per_series']}) |")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "accuracy": acc, "speed": spd}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
