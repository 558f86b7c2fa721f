"""`warmfront simulate` on the shared traces (the README table) and its speed on a 30-day, 20-source trace.

    .venv/bin/python bench/simulate.py [--skip-speed] [--only nasa,huawei,azure]

Every row is one run of the real command, `warmfront simulate --trace FILE --json` with its defaults
(7 days or a third of the trace for training, 60 s cold launch, paused shadows costing 0.2, members
sized so the trace's peak needs 30). The speed trace is built from the shared ones: the 17 Huawei
functions (5-minute counts spread evenly over their minutes, each scaled to NASA's mean) plus NASA
itself and NASA shifted by one and by three days, all wrapped to 30 days of minutes. Prints markdown
and writes bench/results/simulate.json.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pools.simulate_cli import COLUMNS, format_cell  # noqa: E402
from predictor.series import load_trace  # noqa: E402

TRACES = Path(os.environ.get("WARMFRONT_TRACES", ROOT.parent / "shared" / "traces"))
SHARED = {"nasa": "nasa_http_jul95.csv", "huawei": "huawei_dc1_5min.csv", "azure": "azure_llm2023.csv"}
POLICIES = ("static", "reactive", "predictive", "oracle")


def simulate(trace: Path, *extra: str) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "balancer.wiring.cli", "simulate", "--trace", str(trace), "--json", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    out = done.stdout
    return json.loads(out), time.perf_counter() - start


def speed_trace(path: Path, days: int = 30) -> None:
    minutes = days * 1440
    nasa = load_trace(TRACES / SHARED["nasa"]).values[0]
    huawei = load_trace(TRACES / SHARED["huawei"])
    spread = np.repeat(huawei.values / 5.0, 5, axis=1)
    spread *= nasa.mean() / np.maximum(spread.mean(axis=1, keepdims=True), 1e-9)
    wrap = lambda v: np.resize(v, minutes)  # noqa: E731
    rows = [wrap(v) for v in spread] + [wrap(nasa), wrap(np.roll(nasa, -1440)), wrap(np.roll(nasa, -3 * 1440))]
    counts = np.rint(np.vstack(rows)).astype(np.int64)
    with path.open("w") as f:
        f.write("minute,source,count\n")
        for m in range(minutes):
            f.writelines(f"{m},s{i + 1},{c}\n" for i, c in enumerate(counts[:, m]))


def verdict(p: dict) -> str:
    r, w = p["reactive"], p["predictive"]
    cold_ok = w["cold_requests"] <= r["cold_requests"] / 4
    cost = w["container_minutes"] / r["container_minutes"]
    return (f"predictive cold = {w['cold_requests'] / max(r['cold_requests'], 1):.1%} of reactive's "
            f"({'met' if cold_ok else 'NOT met'}: <= 25 %), cost {cost:.2f}x reactive "
            f"({'met' if cost <= 1.1 else 'NOT met'}: <= 1.10x)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--only", default="nasa,huawei,azure")
    args = ap.parse_args()
    results: dict[str, dict] = {}
    lines = ["| trace | policy | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 2) + "|"]
    notes = []
    for name in args.only.split(","):
        trace = TRACES / SHARED[name]
        out, took = simulate(trace)
        results[name] = {**out, "seconds": round(took, 1)}
        for policy in POLICIES:
            row = out["policies"][policy]
            lines.append(f"| {trace.name} | {policy} | " + " | ".join(format_cell(c, row[c]) for c in COLUMNS) + " |")
        notes.append(f"- {trace.name}: {verdict(out['policies'])}; {took:.0f} s")
    print("Command per row: `warmfront simulate --trace ../shared/traces/FILE --json`\n")
    print("\n".join(lines))
    print("\n" + "\n".join(notes))
    if not args.skip_speed:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "speed_30d_20src.csv"
            speed_trace(path)
            out, took = simulate(path)
        results["speed_30d_20_sources"] = {"seconds": round(took, 1), **out}
        print(f"\nSpeed: 30 days per minute, 20 sources, all four policies: {took:.1f} s end to end "
              f"(limit 180 s); {verdict(out['policies'])}")
    dest = ROOT / "bench" / "results" / "simulate.json"
    dest.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
