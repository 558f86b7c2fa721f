"""The data plane alone: CPU per request of one `Proxy` process under wrk, against nginx as a proxy.

    .venv/bin/python bench/hotpath.py                      # 3 rounds of 10 s, 64 connections, 300 sources
    .venv/bin/python bench/hotpath.py --tree /tmp/old      # the same harness on another source tree
    .venv/bin/python bench/hotpath.py --profile out.txt    # also a py-spy profile of one round

What runs (loopback only; every process is ours and stopped at exit):

- backend: nginx, 1 worker, a fixed 100-byte 200, keep-alive; on core 1 with wrk.
- warmfront: this script with `--serve`, a `balancer.dataplane.proxy.Proxy` with a static routing table
  (sources: header X-Tenant, then client IP) on uvloop, counting into the worker's `Tally` as a
  data-plane worker does; no control loop, admin or history in the process. On core 0.
- nginx: 1 worker as a reverse proxy doing the same work (upstream keep-alive, Host kept,
  X-Forwarded-For / -Proto / -Host); on core 0. The reference.

Each round: `wrk -t1 -cN -dDs --latency` with a Lua script rotating X-Tenant over `--sources`
names, after a 2 s warm-up. The proxy's CPU is utime and stime from /proc/PID/stat read around
the loaded run, so a busy client core does not flatter or punish it. Printed per round and as
medians: requests/s, p99, user and kernel µs per request.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BODY = b"warmfront-bench " + b"0" * 83 + b"\n"     # exactly 100 bytes
HZ = os.sysconf("SC_CLK_TCK")
PROXY_CORE = "0"
CLIENT_CORE = "1" if (os.cpu_count() or 1) > 1 else "0"


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------- serve
def serve(port: int, backend: int) -> None:
    """The proxy process: what a data-plane worker runs, minus its channel to the control side."""
    import asyncio
    import gc

    import uvloop

    from balancer.dataplane.proxy import Proxy
    from balancer.dataplane.routing import CompiledRoute, PoolTargets, RoutingTable, SourceExtractor, Target
    from balancer.dataplane.worker import Tally
    from config.models import Limits, Route, SourceRule, Timeouts

    table = RoutingTable([CompiledRoute(Route(name="all", pool="web", type="page"))],
                         SourceExtractor([SourceRule(header="X-Tenant"), SourceRule(client_ip=True)]),
                         {"web": PoolTargets("web", (Target("m1", "127.0.0.1", backend, prewarmed=True),))})

    async def main() -> None:
        tally = Tally()
        proxy = Proxy(table, Timeouts(), Limits(), tally)
        await proxy.start("127.0.0.1", port)
        gc.freeze()    # as the worker does after start-up
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        # The worker takes its tally about once a second; so does this, or its dicts would only grow.
        while not stop.is_set():
            try:
                async with asyncio.timeout(1.0):
                    await stop.wait()
            except TimeoutError:
                tally.take()
        await proxy.stop(1.0)

    uvloop.run(main())


# ---------------------------------------------------------------------------------------- harness
class Bench:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []
        self.nginx = shutil.which("nginx") or "/usr/sbin/nginx"

    def spawn(self, argv: list[str], core: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen(["taskset", "-c", core, *argv], **kw)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def start_nginx(self, name: str, core: str, server: str) -> subprocess.Popen:
        conf = self.tmp / f"{name}.conf"
        t = self.tmp
        conf.write_text(f"""daemon off;
worker_processes 1;
pid {t}/{name}.pid;
error_log {t}/{name}.err warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_timeout 65;
    keepalive_requests 100000000;
    client_body_temp_path {t}/{name}-body;
    proxy_temp_path {t}/{name}-proxy;
    fastcgi_temp_path {t}/{name}-fastcgi;
    uwsgi_temp_path {t}/{name}-uwsgi;
    scgi_temp_path {t}/{name}-scgi;
{server}
}}
""")
        # With `daemon off` and one worker the master forks the worker: CPU is read for both.
        return self.spawn([self.nginx, "-e", f"{t}/{name}.err", "-p", str(t), "-c", str(conf)], core)


def wait_body(url: str, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Until `url` returns the backend's exact 100 bytes (the proxy forwards them unchanged)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"hotpath: process {proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                body = r.read()
            if body != BODY:
                sys.exit(f"hotpath: {url} returned {body!r}")
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"hotpath: {url} did not answer in {timeout} s")


def cpu_ticks(pid: int) -> tuple[int, int]:
    """utime, stime of a process and its children (nginx's worker), in clock ticks."""
    pids = [pid]
    kids = Path(f"/proc/{pid}/task/{pid}/children")
    if kids.exists():
        pids += [int(k) for k in kids.read_text().split()]
    u = s = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        u += int(fields[11])
        s += int(fields[12])
    return u, s


LUA = """
local n = 0
local sources = %d
request = function()
  n = n + 1
  return wrk.format(nil, nil, {["X-Tenant"] = "tenant-" .. (n %% sources)})
end
"""


def to_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(url: str, connections: int, seconds: float, script: Path) -> dict:
    out = subprocess.run(["taskset", "-c", CLIENT_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s",
                          "--latency", "--timeout", "5s", "-s", str(script), url],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    if "Non-2xx" in out or re.search(r"Socket errors: connect [1-9]|read [1-9]|write [1-9]|timeout [1-9]", out):
        sys.exit(f"hotpath: errors against {url}:\n{out}")
    return {"requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p99": to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))}


def measure(pid: int, url: str, args, script: Path) -> dict:
    wrk(url, args.connections, 2, script)
    u0, s0 = cpu_ticks(pid)
    r = wrk(url, args.connections, args.duration, script)
    u1, s1 = cpu_ticks(pid)
    n = r["requests"]
    r["user_us"] = (u1 - u0) / HZ / n * 1e6
    r["sys_us"] = (s1 - s0) / HZ / n * 1e6
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10, help="seconds per measured round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--sources", type=int, default=300, help="X-Tenant names wrk rotates through")
    ap.add_argument("--tree", type=Path, default=REPO, help="source tree the proxy is imported from")
    ap.add_argument("--no-nginx", action="store_true", help="skip the nginx reference")
    ap.add_argument("--profile", type=Path, help="py-spy profile of one more round, written here")
    ap.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    ap.add_argument("--serve", nargs=2, type=int, metavar=("PORT", "BACKEND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(*args.serve)
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="warmfront-hotpath."))
    tmp.chmod(0o755)   # nginx workers run as nobody
    bench = Bench(tmp)
    script = tmp / "sources.lua"
    script.write_text(LUA % args.sources)
    try:
        backend, wf_port, ng_port = free_port(), free_port(), free_port()
        be = bench.start_nginx("backend", CLIENT_CORE, f"""    server {{
        listen 127.0.0.1:{backend} reuseport backlog=4096;
        location / {{ default_type text/plain; return 200 "{BODY[:-1].decode()}\\n"; }}
    }}""")
        wait_body(f"http://127.0.0.1:{backend}/", be)
        env = dict(os.environ, PYTHONPATH=str(args.tree.resolve()))
        wf = bench.spawn([sys.executable, str(Path(__file__).resolve()), "--serve", str(wf_port), str(backend)],
                         PROXY_CORE, cwd=args.tree, env=env)
        wait_body(f"http://127.0.0.1:{wf_port}/", wf)
        targets = [("warmfront", wf.pid, f"http://127.0.0.1:{wf_port}/")]
        if not args.no_nginx:
            ng = bench.start_nginx("proxy", PROXY_CORE, f"""    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 64;
        keepalive_requests 100000000;
    }}
    server {{
        listen 127.0.0.1:{ng_port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}""")
            wait_body(f"http://127.0.0.1:{ng_port}/", ng)
            targets.append(("nginx", ng.pid, f"http://127.0.0.1:{ng_port}/"))

        print(f"tree {args.tree}; wrk -t1 -c{args.connections} -d{args.duration:g}s, {args.sources} rotating "
              f"X-Tenant sources; proxy on core {PROXY_CORE}, wrk + backend on core {CLIENT_CORE}; "
              f"load {os.getloadavg()[0]:.2f}")
        print("| round | proxy | req/s | p99 ms | user µs/req | kernel µs/req | user+kernel |")
        print("|---|---|---|---|---|---|---|")
        results: dict[str, list[dict]] = {name: [] for name, _, _ in targets}
        for i in range(args.rounds):
            for name, pid, url in targets:   # interleaved, so both see the same minute of the machine
                r = measure(pid, url, args, script)
                results[name].append(r)
                print(f"| {i + 1} | {name} | {r['rps']:.0f} | {r['p99']:.2f} | {r['user_us']:.1f} | "
                      f"{r['sys_us']:.1f} | {r['user_us'] + r['sys_us']:.1f} |", flush=True)
        for name, rs in results.items():
            med = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p99", "user_us", "sys_us")}
            print(f"| median | {name} | {med['rps']:.0f} | {med['p99']:.2f} | {med['user_us']:.1f} | "
                  f"{med['sys_us']:.1f} | {med['user_us'] + med['sys_us']:.1f} |")
        print(f"load {os.getloadavg()[0]:.2f} at the end")
        if args.profile:
            spy = subprocess.Popen([args.py_spy, "record", "--pid", str(wf.pid), "--duration", str(int(args.duration)),
                                    "--format", "raw", "--rate", "250", "--nonblocking", "-o", str(args.profile)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            wrk(targets[0][2], args.connections, args.duration, script)
            spy.wait(30)
            print(f"py-spy profile (collapsed stacks) written to {args.profile}")
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
