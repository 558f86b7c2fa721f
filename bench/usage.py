"""Usage benchmark: what measuring members costs (`Backend.usage`, DESIGN "Resources").

(a) One read of one container's usage three ways: the engine's stats API as the SDK does it
    (`containers.get(id).stats(stream=False)`: it waits for a second sample to fill `precpu`),
    the same with `one_shot=True` (the fallback `DockerBackend.usage` uses), and the container's
    cgroup files through its cached main pid (`pools.usage.container_usage`, what it uses normally).
(b) The CPU of the sampling process per 100 members per sample round (`time.process_time()` around
    `usage()`, every thread included), for process members (/proc) and containers (cgroup files),
    and for containers through the stats API, scaled from the members started; for the stats API
    also the engine's own CPU (dockerd's utime+stime from /proc), which the files do not cost.

    python bench/usage.py [--containers 5] [--rounds 5] [--processes 50] [--sampled 10] [--json]

Needs a Docker engine and the test image (scripts/build-test-images). Everything it starts (test-app
processes, containers labelled with a fresh `warmfront.instance`) is removed before it exits.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import docker
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config.models import Pool  # noqa: E402
from pools.backends.base import Instance  # noqa: E402
from pools.backends.docker import DockerBackend  # noqa: E402
from pools.backends.process import ProcessBackend, _read_usage  # noqa: E402
from pools.health import HealthChecker  # noqa: E402
from pools.usage import container_usage  # noqa: E402

IMAGE = "warmfront-testapp:latest"
APP = Path(__file__).resolve().parent.parent / "images" / "testapp" / "app.py"
CONTAINER_POOL = Pool(backend="docker", docker={"image": IMAGE, "network": "host", "cpus": 0.5, "memory": "128m"})
PROCESS_POOL = Pool(backend="process", command=f"{sys.executable} {APP} --port {{port}}")


def ms_summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"median_ms": round(statistics.median(ordered) * 1000, 3),
            "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 3), "n": len(ordered)}


async def launch_healthy(backend, pool: Pool, n: int) -> list[Instance]:
    checker = HealthChecker()
    try:
        members = [await backend.launch("bench", pool) for _ in range(n)]
        deadline = time.monotonic() + 60
        ok = await asyncio.gather(*(checker.wait_healthy(m.host, m.port, pool.health, deadline) for m in members))
        if not all(ok):
            raise SystemExit("bench/usage.py: some members never answered their health check")
        return members
    finally:
        await checker.close()


def timed(rounds: int, fn: Callable[..., object], *args: Any, **kwargs: Any) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn(*args, **kwargs)
        out.append(time.perf_counter() - t)
    return out


def sdk_stats(client: docker.DockerClient, container_id: str) -> object:
    """As the SDK's documentation reads: look the container up, then one non-streamed stats call."""
    return client.containers.get(container_id).stats(stream=False)


def read_costs(client: docker.DockerClient, members: list[Instance], rounds: int) -> dict[str, dict]:
    """(a): per-container read times, each way."""
    ids = [client.containers.get(m.id).id for m in members]
    pids = {cid: client.api.inspect_container(cid)["State"]["Pid"] for cid in ids}
    classic: list[float] = []
    one_shot: list[float] = []
    inspect: list[float] = []
    files: list[float] = []
    for cid in ids:
        classic += timed(rounds, sdk_stats, client, cid)
        one_shot += timed(rounds, client.api.stats, cid, stream=False, one_shot=True)
        inspect += timed(rounds, client.api.inspect_container, cid)
        files += timed(rounds * 100, container_usage, cid, cid, pids[cid], True)
    return {"stats_api": ms_summary(classic), "stats_api_one_shot": ms_summary(one_shot),
            "inspect": ms_summary(inspect), "cgroup_files": ms_summary(files)}


def engine_cpu_seconds() -> float:
    """dockerd's cumulative CPU (0 when it is not visible here): the stats API's cost to the engine."""
    tick = os.sysconf("SC_CLK_TCK")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd":
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                return (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return 0.0


async def sampling_cpu(measure: Callable[[], Awaitable[object]], members: int, rounds: int) -> dict[str, float]:
    """(b): process CPU and wall time of one sample round, scaled to 100 members (wall scales so only
    for sequential reads; `wall_ms_round` is the round as it ran), and the engine's CPU."""
    await measure()   # first round: pid lookups (containers), not steady state
    cpu, wall, engine = [], [], []
    for _ in range(rounds):
        c, w, e = time.process_time(), time.perf_counter(), engine_cpu_seconds()
        await measure()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
        engine.append(engine_cpu_seconds() - e)
    scale = 100 / members
    return {"cpu_ms_per_100": round(statistics.median(cpu) * scale * 1000, 2),
            "engine_cpu_ms_per_100": round(statistics.median(engine) * scale * 1000, 2),
            "wall_ms_per_100": round(statistics.median(wall) * scale * 1000, 2),
            "wall_ms_round": round(statistics.median(wall) * 1000, 2), "members": members, "rounds": rounds}


async def bench_processes(n: int, rounds: int) -> dict[str, dict]:
    backend = ProcessBackend(owner=f"bench-usage-{secrets.token_hex(3)}")
    try:
        members = await launch_healthy(backend, PROCESS_POOL, n)
        ids = [m.id for m in members]
        pids = {i: p for i in ids if (p := backend.pid(i)) is not None}
        inline = timed(rounds, _read_usage, pids)
        found = await backend.usage(ids)
        if len(found) != n:
            raise SystemExit(f"bench/usage.py: {n - len(found)} process members were not measured")
        return {"process_proc_files": await sampling_cpu(lambda: backend.usage(ids), n, rounds),
                "process_inline_per_member": {"us": round(statistics.median(inline) / n * 1e6, 1)}}
    finally:
        await backend.close()


async def bench_containers(client: docker.DockerClient, containers: int, sampled: int,
                           rounds: int) -> dict[str, dict]:
    backend = DockerBackend(f"bench-usage-{secrets.token_hex(3)}")
    members: list[Instance] = []
    try:
        members = await launch_healthy(backend, CONTAINER_POOL, max(containers, sampled))
        ids = [m.id for m in members[:sampled]]
        out: dict[str, dict] = {"read": await asyncio.to_thread(read_costs, client, members[:containers], rounds)}
        found = await backend.usage(ids)
        if len(found) != sampled:
            raise SystemExit(f"bench/usage.py: {sampled - len(found)} containers were not measured")
        out["docker_cgroup_files"] = await sampling_cpu(lambda: backend.usage(ids), sampled, rounds)
        cids = [client.containers.get(i).id for i in ids]

        async def via_stats_api() -> object:
            return await asyncio.gather(*(asyncio.to_thread(client.api.stats, c, stream=False, one_shot=True)
                                          for c in cids))
        out["docker_stats_api_one_shot"] = await sampling_cpu(via_stats_api, sampled, rounds)
        return out
    finally:
        for m in members:
            await backend.remove(m.id)
        await backend.close()


async def main_async(args: argparse.Namespace) -> dict:
    client = docker.from_env(timeout=30)
    try:
        results: dict[str, Any] = {"cpus": os.cpu_count(), "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
        results.update(await bench_containers(client, args.containers, args.sampled, args.rounds))
        results.update(await bench_processes(args.processes, args.rounds))
        results["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
        return results
    finally:
        client.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--containers", type=int, default=5, help="containers whose single reads are timed (a)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of each measurement")
    p.add_argument("--processes", type=int, default=50, help="test-app processes sampled (b)")
    p.add_argument("--sampled", type=int, default=10, help="containers sampled (b)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    res = uvloop.run(main_async(args))
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"usage measurement, {res['cpus']} CPUs, load {' '.join(res['loadavg_before'])} before, "
          f"{' '.join(res['loadavg_after'])} after\n")
    print("(a) one read of one container | median | p95 | n")
    print("|---|---|---|---|")
    for way, r in res["read"].items():
        print(f"| {way} | {r['median_ms']:.3f} ms | {r['p95_ms']:.3f} ms | {r['n']} |")
    print("\n(b) one sample round | sampler CPU per 100 | dockerd CPU per 100 | wall per 100 | wall of the round "
          "| members × rounds")
    print("|---|---|---|---|---|---|")
    for way in ("process_proc_files", "docker_cgroup_files", "docker_stats_api_one_shot"):
        r = res[way]
        print(f"| {way} | {r['cpu_ms_per_100']:.1f} ms | {r['engine_cpu_ms_per_100']:.0f} ms | "
              f"{r['wall_ms_per_100']:.1f} ms | {r['wall_ms_round']:.1f} ms | {r['members']} × {r['rounds']} |")
    print(f"\nprocess members read inline: {res['process_inline_per_member']['us']} µs each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
