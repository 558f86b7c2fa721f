"""`warmfront simulate --resources`: per-request CPU costs from the Azure trace's token counts.

The replay is the 20-minute Azure LLM trace (5 minutes of training, 15 scored), so every test runs
in seconds. What is pinned: CPU is accounted for every policy (reserved ≥ used, the oracle never
starved), the predictive policy learns each request type's cost from the bins it has seen and from
nothing later, a pool whose requests are expensive is sized by CPU, and a trace without token counts
is refused.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pools.simulate import CpuLearner, SimPool
from pools.simulate_cli import COST_PER_CONTEXT_TOKEN, COST_PER_GENERATED_TOKEN, main
from pools.simulate_cli import build_pools

ROOT = Path(__file__).resolve().parent.parent
AZURE = ROOT / "traces" / "azure_llm2023_requests_20min.csv"
NASA = ROOT / "traces" / "nasa_http_jul95_7d.csv"
BASE = ["--trace", str(AZURE), "--train", "5m"]


def simulate(capsys, *args: str) -> dict:
    assert main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def true_costs(upto_s: float, c_in: float = COST_PER_CONTEXT_TOKEN,
               c_out: float = COST_PER_GENERATED_TOKEN) -> dict[str, float]:
    """Mean core-seconds per request per source over the requests before `upto_s` (seconds from the
    start of the trace's first minute), read straight from the CSV."""
    with AZURE.open(newline="") as f:
        rows = list(csv.DictReader(f))
    stamps = np.asarray([r["timestamp"].replace(" ", "T") for r in rows], dtype="datetime64[ns]")
    secs = stamps.astype(np.int64) / 1e9
    start = np.floor(secs.min() / 60.0) * 60.0
    sums: dict[str, list[float]] = {}
    for r, t in zip(rows, secs):
        if t - start < upto_s:
            acc = sums.setdefault(r["source"], [0.0, 0.0])
            acc[0] += 1
            acc[1] += int(r["context_tokens"]) * c_in + int(r["generated_tokens"]) * c_out
    return {source: c / n for source, (n, c) in sums.items()}


@pytest.fixture(scope="module")
def resources_run() -> dict:
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([*BASE, "--resources", "--json"]) == 0
    return json.loads(out.getvalue())


def test_every_policy_reports_cpu_and_the_oracle_is_never_starved(resources_run):
    policies = resources_run["policies"]
    assert set(policies) == {"static", "reactive", "predictive", "oracle"}
    demand = {round(p["core_seconds_used"] + p["cpu_starved_core_seconds"], 1) for p in policies.values()}
    assert len(demand) == 1 and demand.pop() > 1000   # every policy meets the same CPU demand
    for name, row in policies.items():
        assert row["core_seconds_reserved"] >= row["core_seconds_used"] > 0, name
        assert sum(row["core_seconds"].values()) == pytest.approx(row["core_seconds_reserved"], rel=1e-6), name
        assert row["cold_requests"] >= 0 and "cold_rate" in row, name
    oracle = policies["oracle"]
    assert oracle["cpu_starved_core_seconds"] == 0 and oracle["cold_requests"] == 0
    assert oracle["core_seconds_vs_oracle"] == 1.0
    res = resources_run["simulation"]["resources"]
    assert 0.5 <= res["median_request_core_seconds"] <= 1.0   # the defaults' documented scale
    assert res["pools"]["default"]["member_cpus"] == 1.0


def test_the_text_output_has_the_cpu_table(capsys):
    assert main([*BASE, "--resources"]) == 0
    out = capsys.readouterr().out
    assert "core_seconds_reserved" in out and "cpu_starved_core_seconds" in out and "learned core-seconds" in out


def test_predictive_learns_each_types_cost_per_request_from_the_bins_it_has_seen(capsys, tmp_path):
    # One route per source, so each source is a request type of its own; the pool's docker `cpus`
    # gives the members' cores.
    cfg = tmp_path / "config"
    cfg.mkdir()
    (cfg / "routing.yaml").write_text("routes:\n  - {name: code, pool: llm, type: code}\n"
                                      "  - {name: conv, pool: llm, type: conv}\n")
    (cfg / "pools.yaml").write_text("pools:\n  llm:\n    backend: docker\n    docker: {image: 'llm:1', cpus: 0.5}\n"
                                    "    capacity: {min: 1, max: 200}\n")
    out = simulate(capsys, *BASE, "--resources", "--config", str(cfg), "--member-rate", "1")
    pool = out["simulation"]["resources"]["pools"]["llm"]
    assert pool["member_cpus"] == 0.5
    # 20 minute bins (the first partial); the last decision, 15 s before the end, has seen all but
    # the last one: what it knew had ended before it decided.
    assert pool["bins_seen"] == 19
    truth = true_costs(pool["bins_seen"] * 60.0)
    for rtype in ("code", "conv"):
        learned = pool["cpu_per_request"][rtype]["learned"]
        assert learned == pytest.approx(truth[rtype], rel=0.10), rtype
    assert truth["conv"] > 1.5 * truth["code"]   # the types differ: conv generates more tokens


def test_learned_costs_never_see_a_bin_before_it_ends():
    counts = np.array([[10.0, 10.0, 10.0]])
    cheap, dear = np.array([[5.0, 5.0, 5.0]]), np.array([[5.0, 50.0, 500.0]])
    pool = SimPool("p", None, 1.0, ((0, "t"),), cpus=1.0)  # type: ignore[arg-type]  # the spec is not read
    learners = [CpuLearner({"t": counts[0]}, costs, pool, 60.0) for costs in (cheap, dear)]
    for now, want in ((59.9, {}), (60.0, {"t": 0.5})):
        assert [lr.learn(now) for lr in learners] == [want, want]
    assert learners[1].learn(120.0) == {"t": 55.0 / 20}
    assert CpuLearner({"t": counts[0]}, None, pool, 60.0).learn(1e9) == {}   # off outside resource mode


DEAR = ["--cost-per-context-token", str(4 * COST_PER_CONTEXT_TOKEN),
        "--cost-per-generated-token", str(4 * COST_PER_GENERATED_TOKEN)]


def test_expensive_requests_size_the_pool_by_cpu(capsys):
    # Four times the default prices: the trace's peak needs ~60 cores, twice the 30 members the
    # default member rate sizes for; with 1-core members CPU is the binding resource.
    plain = simulate(capsys, *BASE)["policies"]
    dear = simulate(capsys, *BASE, "--resources", *DEAR)["policies"]
    assert dear["oracle"]["container_minutes"] > 1.5 * plain["oracle"]["container_minutes"]
    assert dear["predictive"]["container_minutes"] > 1.1 * plain["predictive"]["container_minutes"]
    # sizing for the forecast CPU starves less than HPA on CPU utilisation does (deterministic replay)
    assert dear["predictive"]["cpu_starved_core_seconds"] < dear["reactive"]["cpu_starved_core_seconds"]


def test_the_planner_itself_sizes_for_cpu_when_it_binds():
    from pools.simulate import Predictive, prepare, replay_policy
    from pools.simulate_cli import ResourceOptions, setup_run
    from pools.trace_costs import CostModel

    def plans(resources: ResourceOptions | None) -> list:
        s = setup_run(str(AZURE), "5m", resources=resources)
        prepared = prepare(s.series, s.pools, s.cfg, None if s.costs is None else s.costs.core_s)
        policy = Predictive(s.pools[0], prepared.path, s.series, record=True, costs=prepared.core_s)
        replay_policy(s.pools[0], policy, prepared.demands[0], s.cfg, prepared.scored_from, cpu=prepared.cpu_of(0))
        assert policy.plans is not None
        return policy.plans

    dear = plans(ResourceOptions(CostModel(4 * COST_PER_CONTEXT_TOKEN, 4 * COST_PER_GENERATED_TOKEN)))
    plain = plans(None)
    assert any(r.startswith("cpu-bound") for p in dear for r in p.reasons)
    assert not any(r.startswith("cpu-bound") for p in plain for r in p.reasons)
    assert max(p.forecast_ready for p in dear) > 1.5 * max(p.forecast_ready for p in plain)


def test_build_pools_gives_members_cores_only_in_resource_mode():
    from pools.simulate_cli import PoolCpu
    from predictor.series import load_trace
    series = load_trace(str(AZURE))
    [plain], _ = build_pools(series, None, None, 60.0)
    [sized], _ = build_pools(series, None, None, 60.0, PoolCpu(series.values * 10.0, 0.25))
    assert plain.cpus is None and sized.cpus == 0.25
    # the default pool's max holds the CPU peak at the target: 10 core-s per request on 0.25 cores
    assert sized.spec.capacity.max > plain.spec.capacity.max


@pytest.mark.parametrize("args, message", [
    (["--trace", str(NASA), "--resources"], "token counts"),
    ([*BASE, "--member-cpus", "2"], "need --resources"),
    ([*BASE, "--resources", "--member-cpus", "0"], "--member-cpus must be > 0"),
    ([*BASE, "--resources", "--sweep"], "--sweep"),
])
def test_bad_resource_options_are_one_line_and_exit_2(capsys, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("warmfront simulate:")
