"""statsforecast AutoETS worker for bench/forecast.py; runs only with bench/.venv-statsforecast's python.

    bench/.venv-statsforecast/bin/python bench/sf_autoets.py DIR --season 288 --horizon 12 --level 90 [--model ZZZ]

Reads DIR/windows.npy (`[m, T]`, already on the scale to fit: bench/forecast.py passes √counts,
as every other candidate fits), fits `AutoETS(season_length=season, model=model)` on each row
(the default "ZZZ" is its automatic choice: error, trend and season each chosen by AICc), forecasts `horizon`
steps with a `level` % interval, and writes DIR/mean.npy, lower.npy, upper.npy (`[m, horizon]`,
NaN where a fit failed), seconds.npy (fit + forecast per row) and methods.json (the ETS form
chosen per row, or the error). Imports nothing from warmfront: this venv has only statsforecast.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from statsforecast.models import AutoETS


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--season", type=int, required=True)
    ap.add_argument("--horizon", type=int, required=True)
    ap.add_argument("--level", type=int, default=90)
    ap.add_argument("--model", default="ZZZ")
    args = ap.parse_args()
    windows = np.load(args.dir / "windows.npy")
    m, h = len(windows), args.horizon
    mean, lower, upper = (np.full((m, h), np.nan) for _ in range(3))
    seconds = np.zeros(m)
    methods: list[str] = []
    for i, y in enumerate(windows):
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = AutoETS(season_length=args.season, model=args.model).fit(np.asarray(y, dtype=np.float64))
                f = model.predict(h, level=[args.level])
            mean[i], lower[i], upper[i] = f["mean"], f[f"lo-{args.level}"], f[f"hi-{args.level}"]
            methods.append(str(model.model_["method"]))
        except Exception as e:  # noqa: BLE001 - one failed fit is reported, not fatal
            methods.append(f"failed: {type(e).__name__}: {str(e)[:100]}")
        seconds[i] = time.perf_counter() - t0
    for name, arr in (("mean", mean), ("lower", lower), ("upper", upper), ("seconds", seconds)):
        np.save(args.dir / f"{name}.npy", arr)
    (args.dir / "methods.json").write_text(json.dumps(methods))
    return 0


if __name__ == "__main__":
    sys.exit(main())
