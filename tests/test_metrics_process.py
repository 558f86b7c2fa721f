"""/metrics of a real `warmfront run`: the process collector, build info, workers' memory, reload
outcomes, failed health checks by member state, horizons with units."""
from __future__ import annotations

import re
import sys

from tests.proxykit import refused_port
from tests.runkit import Warmfront, http, wait_until

TINY = f"{sys.executable} tests/servers/tiny_http.py --port {{port}}"


def write(directory, gone_port: int, routing_extra: str = "") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "routing.yaml").write_text(f"routes:\n  - name: all\n    pool: web\n    type: page\n{routing_extra}")
    (directory / "pools.yaml").write_text(
        "pools:\n"
        "  web:\n    backend: process\n"
        f"    command: {TINY}\n"
        "    capacity: {min: 1, max: 2}\n    shadow: {state: none, size: 0}\n"
        "    health: {path: /healthz, interval: 0.2s, timeout: 0.5s}\n"
        "  gone:\n    backend: static\n"
        f"    servers: ['127.0.0.1:{gone_port}']\n"   # bound, not listening: every check is refused
        "    health: {path: /healthz, interval: 0.2s, timeout: 0.3s}\n")


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_cover_the_process_the_workers_reloads_and_failed_checks(tmp_path):
    cfg = tmp_path / "config"
    write(cfg, refused_port())
    wf = Warmfront("--config", str(cfg), "--workers", "2", state_dir=tmp_path / "state")
    try:
        wf.wait_ready(1, seconds=30)
        assert http(wf.url + "/")[0] == 200
        text = lambda: http(wf.admin + "/metrics")[1].decode()   # noqa: E731
        assert wait_until(lambda: (metric(text(), "warmfront_health_check_failures_total", pool="gone") or 0) >= 2, 10)
        body = text()
        assert (metric(body, "process_resident_memory_bytes") or 0) > 10e6
        assert metric(body, "process_cpu_seconds_total") is not None
        assert re.search(r'warmfront_build_info\{python="3\.\d+\.\d+",version="\d+\.\d+[^"]*"\} 1\.0', body), body[:300]
        workers = [metric(body, "warmfront_worker_resident_memory_bytes", worker=str(w)) for w in (0, 1)]
        assert all(w is not None and w > 5e6 for w in workers), workers
        assert metric(body, "warmfront_reloads_total", outcome="applied") == 0.0

        assert http(wf.admin + "/admin/reload", method="POST", data=b"")[0] == 200
        (cfg / "routing.yaml").write_text("routes: [")   # broken YAML: rejected, the running config stays
        assert http(wf.admin + "/admin/reload", method="POST", data=b"")[0] == 400
        body = text()
        assert metric(body, "warmfront_reloads_total", outcome="applied") == 1.0
        assert metric(body, "warmfront_reloads_total", outcome="rejected") == 1.0
        # the static member never answered: its failures are counted in the state it was in
        states = {m.group(1) for m in re.finditer(r'warmfront_health_check_failures_total\{pool="gone",state="([^"]+)"\}',
                                                  body)}
        assert states and states <= {"launching", "ready", "failed"}, states
        for horizon in re.findall(r'warmfront_pool_forecast_requests_per_second\{bound="point",horizon="([^"]+)"', body):
            assert re.fullmatch(r"\d+[smh]", horizon), horizon
    finally:
        wf.cleanup()
