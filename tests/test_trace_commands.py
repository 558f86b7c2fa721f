"""`warmfront forecast` and `simulate` as a new user meets them: a bar while they work, a refusal
naming the minimum when a trace is too short, and the traces shipped in traces/ that the README's
commands use."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pools.simulate_cli import main as simulate
from pools.simulate_cli import setup
from predictor.forecast_cli import main as forecast

ROOT = Path(__file__).resolve().parent.parent
NASA_4D = ROOT / "tests" / "data" / "nasa_http_jul95_4d.csv"
SHIPPED = sorted(p for p in (ROOT / "traces").glob("*.csv") if not p.name.endswith("_sources.csv"))


def write_minutes(path: Path, minutes: int) -> Path:
    path.write_text("minute,source,count\n" + "".join(f"{m},a,{20 + m % 7}\n" for m in range(minutes)))
    return path


def without_timings(out: str) -> object:
    def strip(x: object) -> object:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k != "fit_seconds"}
        return [strip(v) for v in x] if isinstance(x, list) else x
    return strip(json.loads(out))


def test_forecast_progress_goes_to_stderr_and_leaves_the_results_unchanged(capsys):
    args = ["--trace", str(NASA_4D), "--top-n", "0", "--json"]
    assert forecast(args) == 0
    quiet = capsys.readouterr()
    assert forecast([*args, "--progress"]) == 0
    shown = capsys.readouterr()
    assert quiet.err == "" and "backtesting" in shown.err and "100.0%" in shown.err
    assert without_timings(shown.out) == without_timings(quiet.out)


@pytest.mark.parametrize("json_output, bar", [(False, True), (True, False)])
def test_forecast_shows_a_bar_on_a_terminal_unless_the_output_is_json(capsys, monkeypatch, json_output, bar):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert forecast(["--trace", str(NASA_4D), "--top-n", "0", *(["--json"] if json_output else [])]) == 0
    assert ("backtesting" in capsys.readouterr().err) is bar


def test_simulate_refuses_a_trace_too_short_to_train_and_score_naming_the_minimum(capsys, tmp_path):
    trace = write_minutes(tmp_path / "short.csv", 9)
    assert simulate(["--trace", str(trace)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"warmfront simulate: trace {trace} covers 9 minutes; simulate needs at least 10 "
                   "(training 5 + scoring 5)")


@pytest.mark.parametrize("train, message", [("2m", "--train 2m is 2 minutes; simulate needs at least 5"),
                                            ("10m", "--train 10m leaves 2 minutes to score; simulate needs at least 5")])
def test_simulate_refuses_a_train_span_that_leaves_too_little_on_either_side(capsys, tmp_path, train, message):
    assert simulate(["--trace", str(write_minutes(tmp_path / "t.csv", 12)), "--train", train]) == 2
    assert message in capsys.readouterr().err


def test_simulate_trains_at_least_one_forecast_bin_by_default(capsys, tmp_path):
    assert simulate(["--trace", str(write_minutes(tmp_path / "t.csv", 12)), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["simulation"]
    assert info["train_s"] == 300 and info["scored_s"] == 420


def test_the_readme_forecast_command_runs_on_the_shipped_nasa_trace(capsys):
    assert forecast(["--trace", str(ROOT / "traces" / "nasa_http_jul95_7d.csv"), "--horizon", "15m",
                     "--top-n", "0", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["origins"]["scored"] >= 24


@pytest.mark.parametrize("trace", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_trace_is_long_enough_to_simulate(trace):
    series, pools, cfg, _ = setup(str(trace))
    assert series.length * series.bin_s - cfg.train_s >= 300 and pools
