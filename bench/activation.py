"""Activation benchmark: from the decision to add capacity to the first 200 through the proxy.

For each way a member can be brought in — a cold launch, a stopped shadow, a paused shadow, a
running shadow — a request is already waiting at the proxy (its pool has no ready member); at the
decision the member is launched / started / unpaused / routed with the same backend, health
check and routing-table code `warmfront run` uses, and the time until that request's 200 is
taken. Also the memory a paused and a running member hold (docker).

    python bench/activation.py [--runs 20] [--boot-delay 0] [--backend docker|swarm] [--json]

Needs a Docker engine and the test image (scripts/build-test-images); `--backend swarm` runs the same
with one Swarm service per member and needs the engine to be a swarm manager (a single-node swarm:
`docker swarm init --advertise-addr 127.0.0.1`). Traffic: 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from balancer.dataplane.proxy import Proxy  # noqa: E402
from balancer.dataplane.routing import CompiledRoute, PoolTargets, RoutingTable, SourceExtractor, Target  # noqa: E402
from config.models import DockerSpec, Limits, Pool, Route, SourceRule, SwarmSpec, Timeouts  # noqa: E402
from pools.backends.docker import DockerBackend  # noqa: E402
from pools.backends.swarm import SwarmBackend  # noqa: E402
from pools.health import HealthChecker  # noqa: E402
from pools.ports import free_port  # noqa: E402

MODES = ("cold", "stopped", "paused", "running")


def spec(boot_delay: float, kind: str = "docker") -> Pool:
    member = dict(image="warmfront-testapp:latest", command="/usr/bin/python3.11 /app/app.py --port {port}",
                  network="host", env={"BOOT_DELAY": str(boot_delay)}, memory=128 * 1024 * 1024)
    # A swarm pool with paused shadows places its members on the node whose engine can pause them.
    section = {"docker": DockerSpec(**member)} if kind == "docker" else {"swarm": SwarmSpec(**member)}
    return Pool(backend=kind, **section, shadow={"state": "paused" if kind == "swarm" else "none"},
                health={"path": "/healthz", "interval": 1.0, "timeout": 1.0}, warmup={"path": "/", "requests": 3})


def table(targets: tuple[Target, ...]) -> RoutingTable:
    return RoutingTable([CompiledRoute(Route(name="all", pool="web", type="page"))],
                        SourceExtractor([SourceRule(client_ip=True)]), {"web": PoolTargets("web", targets)})


async def prepare(mode: str, backend: DockerBackend, pool: Pool, checker: HealthChecker):
    if mode == "cold":
        return None
    inst = await backend.launch("web", pool)
    assert await checker.wait_healthy(inst.host, inst.port, pool.health, time.monotonic() + 60)
    await checker.warm(inst.host, inst.port, pool.warmup, 10)
    if mode == "stopped":
        await backend.stop(inst.id, 5)
    elif mode == "paused":
        await backend.pause(inst.id)
    return inst


async def activate(mode: str, inst, backend: DockerBackend, pool: Pool, checker: HealthChecker, proxy: Proxy):
    """What the control loop does for each mode, up to the member being routable."""
    if mode == "cold":
        inst = await backend.launch("web", pool)
    if mode in ("cold", "stopped"):
        if mode == "stopped":
            await backend.start(inst.id)
        await checker.wait_healthy(inst.host, inst.port, pool.health, time.monotonic() + 60)
        proxy.set_table(table((Target(inst.id, inst.host, inst.port, prewarmed=mode == "stopped"),)))
    elif mode == "paused":
        # Route at once: the kernel holds the request until unpause completes.
        proxy.set_table(table((Target(inst.id, inst.host, inst.port, prewarmed=True),)))
        await backend.resume(inst.id)
    else:
        proxy.set_table(table((Target(inst.id, inst.host, inst.port, prewarmed=True),)))
    return inst


async def one_run(mode, backend, pool, checker, proxy, session, url) -> float:
    inst = await prepare(mode, backend, pool, checker)
    proxy.set_table(table(()))
    waiting = asyncio.create_task(session.get(url))
    while not proxy.pools["web"].waiters:
        await asyncio.sleep(0.001)
    t0 = time.perf_counter()
    inst = await activate(mode, inst, backend, pool, checker, proxy)
    async with await waiting as r:
        assert r.status == 200, r.status
        elapsed = time.perf_counter() - t0
        await r.read()
    proxy.set_table(table(()))
    await backend.remove(inst.id)
    return elapsed


async def memory(backend: DockerBackend, pool: Pool, checker: HealthChecker, n: int = 3) -> dict[str, float]:
    """MiB held per member, running and then paused (cgroup memory usage minus page cache)."""
    import docker
    client = docker.from_env()
    insts = [await prepare("running", backend, pool, checker) for _ in range(n)]

    def used() -> float:
        total = 0.0
        for i in insts:
            st = client.containers.get(i.id).stats(stream=False)["memory_stats"]
            total += st.get("usage", 0) - st.get("stats", {}).get("cache", 0)
        return total / n / 2 ** 20
    running = used()
    for i in insts:
        await backend.pause(i.id)
    await asyncio.sleep(1)
    paused = used()
    for i in insts:
        await backend.remove(i.id)
    client.close()
    return {"running_mib": round(running, 1), "paused_mib": round(paused, 1)}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def main_async(args) -> dict:
    owner = "bench-" + secrets.token_hex(4)
    backend = DockerBackend(owner=owner) if args.backend == "docker" else SwarmBackend(owner=owner)
    checker = HealthChecker()
    pool = spec(args.boot_delay, args.backend)
    proxy = Proxy(table(()), Timeouts(queue=120), Limits())
    port = free_port()
    await proxy.start("127.0.0.1", port)
    results: dict = {"backend": args.backend, "boot_delay_s": args.boot_delay, "runs": args.runs, "modes": {}}
    try:
        async with aiohttp.ClientSession() as session:
            for mode in MODES:
                times = []
                for i in range(args.runs):
                    times.append(await one_run(mode, backend, pool, checker, proxy, session,
                                               f"http://127.0.0.1:{port}/"))
                    print(f"\r{mode}: {i + 1}/{args.runs}", end="", file=sys.stderr, flush=True)
                print(file=sys.stderr)
                results["modes"][mode] = {"median_ms": round(statistics.median(times) * 1000, 2),
                                          "p95_ms": round(pct(times, 0.95) * 1000, 2)}
        if args.backend == "docker":   # the same containers under swarm: measured once
            results["memory"] = await memory(backend, pool, checker)
    finally:
        for inst in await backend.list():
            await backend.remove(inst.id)
        await checker.close()
        await proxy.stop(1)
        await backend.close()
    cold = results["modes"]["cold"]["median_ms"]
    for m in MODES:
        results["modes"][m]["vs_cold"] = round(results["modes"][m]["median_ms"] / cold, 3)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--boot-delay", type=float, default=0.0, help="seconds the test app sleeps before listening")
    p.add_argument("--backend", choices=("docker", "swarm"), default="docker",
                   help="members as containers, or as one Swarm service each")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    res = uvloop.run(main_async(args))
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"activation ({args.backend}), {args.runs} runs each, test app boot delay {args.boot_delay} s\n")
    print("| member was | median to first 200 | p95 | × cold |")
    print("|---|---|---|---|")
    for m, r in res["modes"].items():
        print(f"| {m} | {r['median_ms']:.1f} ms | {r['p95_ms']:.1f} ms | {r['vs_cold']:.3f} |")
    if "memory" in res:
        mem = res["memory"]
        print(f"\nmemory per member: running {mem['running_mib']} MiB, paused {mem['paused_mib']} MiB")
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    kind = "" if args.backend == "docker" else f"{args.backend}-"
    (out / f"activation-{kind}boot{args.boot_delay:g}.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
