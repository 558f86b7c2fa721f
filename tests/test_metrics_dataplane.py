"""/metrics of a real `warmfront run` with two workers: the data plane's counters summed over them —
requests by method, retries and ejections after a refused connect, waits for a member and their
timeouts."""
from __future__ import annotations

import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor

from tests.proxykit import PlainHTTPServer, free_port
from tests.runkit import Warmfront, http, wait_until

TINY = f"{sys.executable} tests/servers/tiny_http.py --port {{port}}"
CHECKS = "    health: {path: /healthz, interval: 0.2s, timeout: 0.5s}\n"
ONE = "    capacity: {min: 1, max: 1}\n    shadow: {state: none, size: 0}\n"


def write(directory, live_port: int, dead_port: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "routing.yaml").write_text(
        "timeouts: {queue: 4s}\n"
        "routes:\n"
        "  - {name: flaky, match: {path_prefix: /flaky}, pool: flaky, type: page}\n"
        "  - {name: late, match: {path_prefix: /late}, pool: late, type: page}\n"
        "  - {name: never, match: {path_prefix: /never}, pool: never, type: page}\n"
        "  - {name: all, pool: web, type: page}\n")
    (directory / "pools.yaml").write_text(
        "pools:\n"
        f"  web:\n    backend: process\n    command: {TINY}\n{ONE}{CHECKS}"
        # Checks off: the refusing server stays routed, and only passive ejection takes it out.
        "  flaky:\n    backend: static\n"
        f"    servers: ['127.0.0.1:{dead_port}', '127.0.0.1:{live_port}']\n"
        "    health: {enabled: false}\n"
        "    ejection: {consecutive_failures: 1, base_time: 60s, max_time: 60s}\n"
        # A member that takes two seconds to listen: requests meanwhile wait for it.
        f"  late:\n    backend: process\n    command: sh -c 'sleep 2; exec {TINY}'\n{ONE}{CHECKS}"
        # A member whose check never passes (200 is not the 500 it wants): requests wait
        # `timeouts.queue` for a member, then get a 503.
        f"  never:\n    backend: process\n    command: {TINY}\n{ONE}"
        "    health: {path: /healthz, interval: 0.2s, timeout: 0.5s, expect_status: '500'}\n")


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of `name` over the samples carrying `labels` (0 when none does)."""
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_dataplane_metrics_count_methods_retries_ejections_and_queue_waits(tmp_path):
    live = PlainHTTPServer(tmp_path)
    (tmp_path / "flaky").write_text("ok")
    cfg = tmp_path / "config"
    write(cfg, live.port, free_port())
    wf = Warmfront("--config", str(cfg), "--workers", "2", state_dir=tmp_path / "state")
    try:
        wf.wait_ready(1, seconds=30)
        with ThreadPoolExecutor(2) as pool:
            # Sent while `late`'s member is still starting, and to `never`, which has none.
            late = pool.submit(http, wf.url + "/late")
            never = pool.submit(http, wf.url + "/never")
            for _ in range(3):
                assert http(wf.url + "/")[0] == 200
                http(wf.url + "/", data=b"x")                 # POST: tiny_http answers 501, counted all the same
            assert http(wf.url + "/", method="BREW")[0] == 400
            # Half the choices fall on the refusing server: each is retried on the live one.
            assert [http(wf.url + "/flaky")[0] for _ in range(20)] == [200] * 20
            assert late.result()[0] == 200
            assert never.result()[0] == 503

        def scrape() -> str:
            return http(wf.admin + "/metrics")[1].decode()

        def counted(body: str) -> bool:
            return (metric(body, "warmfront_requests_total", pool="web", method="POST") >= 3
                    and metric(body, "warmfront_requests_total", pool="late") >= 1
                    and metric(body, "warmfront_queue_timeouts_total", pool="never") >= 1)
        body = wait_until(lambda: (lambda b: b if counted(b) else None)(scrape()), 10)
        assert body, scrape()
        assert metric(body, "warmfront_requests_total", pool="web", method="GET", code="200") == 3
        assert metric(body, "warmfront_requests_total", pool="web", method="POST") == 3
        # llhttp knows no BREW: refused unrouted (pool "-") with a 400, its method counted as `other`
        assert metric(body, "warmfront_requests_total", pool="-", method="other", code="400") == 1, \
            [line for line in body.splitlines() if line.startswith("warmfront_requests_total")]
        assert 'method="BREW"' not in body

        retries = metric(body, "warmfront_upstream_retries_total", pool="flaky", reason="refused")
        ejections = metric(body, "warmfront_member_ejections_total", pool="flaky")
        # one refusal per worker at most: the first ejects the server for longer than the test runs
        assert 1 <= retries <= 2 and 1 <= ejections <= 2, (retries, ejections)
        assert ejections == retries
        assert metric(body, "warmfront_upstream_retries_total", pool="web") == 0

        # sent at once: every `web` request is in the first bucket
        assert metric(body, "warmfront_queue_wait_seconds_bucket", pool="web", le="0.001") == 6
        assert metric(body, "warmfront_queue_wait_seconds_sum", pool="web") == 0
        # `late` waited for its member: not in the first bucket, and well over 100 ms
        assert metric(body, "warmfront_queue_wait_seconds_count", pool="late") == 1
        assert metric(body, "warmfront_queue_wait_seconds_bucket", pool="late", le="0.001") == 0
        assert metric(body, "warmfront_queue_wait_seconds_sum", pool="late") > 0.1
        # `never` was never sent: a timeout, not an observed wait
        assert metric(body, "warmfront_queue_wait_seconds_count", pool="never") == 0
        assert metric(body, "warmfront_queue_timeouts_total", pool="never") == 1
        assert metric(body, "warmfront_requests_total", pool="never", code="503") == 1
        assert metric(body, "warmfront_queue_wait_seconds_bucket", pool="web", le="+Inf") == 6

        # counters survive a worker's death: folded into the retired total, never lower
        before = {name: metric(body, name) for name in ("warmfront_upstream_retries_total",
                                                         "warmfront_member_ejections_total",
                                                         "warmfront_queue_wait_seconds_count")}
        pids = [w["pid"] for w in (wf.status() or {}).get("workers", [])]
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: {w["pid"] for w in (wf.status() or {}).get("workers", [])}.isdisjoint(pids)
                          and len((wf.status() or {}).get("workers", [])) == 2, 15)
        after = scrape()
        for name, value in before.items():
            assert metric(after, name) >= value, (name, value, metric(after, name))
    finally:
        wf.cleanup()
        live.stop()
