"""`warmfront run --to` and static pools in front of ordinary servers: routed from the first request,
checked for what such a server can answer, and a 503 that says why when none is ready."""
from __future__ import annotations

import json
import time

import pytest

from balancer.wiring.app import static_config
from config import ConfigError
from tests.proxykit import PlainHTTPServer, refused_port, wait_port
from tests.runkit import Warmfront, http, wait_until


def events(wf: Warmfront, name: str) -> list[dict]:
    out = []
    for line in wf.log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            out.append(event)
    return out


def test_static_config_checks_connections_or_a_path_answered_below_500():
    tcp = static_config([("127.0.0.1", 8000)]).pools["default"]
    assert (tcp.backend, tcp.servers, tcp.health.type, tcp.health.enabled) == ("static", ["127.0.0.1:8000"], "tcp", True)
    path = static_config([("127.0.0.1", 8000)], health_path="/status").pools["default"].health
    assert (path.type, path.path, path.healthy_statuses) == ("http", "/status", (200, 499))
    assert not static_config([("127.0.0.1", 8000)], active=False).pools["default"].health.enabled
    with pytest.raises(ConfigError, match=r"^--health-path: must start with / \(got 'status'\)$"):
        static_config([("127.0.0.1", 8000)], health_path="status")


def test_run_to_a_plain_http_server_answers_the_very_first_request(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "hello.txt").write_text("hello\n")
    server = PlainHTTPServer(tmp_path / "site")   # /healthz is a 404 here
    wf = Warmfront("--to", f"127.0.0.1:{server.port}", state_dir=tmp_path / "state")
    try:
        wait_port(wf.port)   # listening; the workers and the pool's manager may still be starting
        first = http(wf.url + "/hello.txt")
        assert (first[0], first[1]) == (200, b"hello\n"), wf.tail()
        assert [e["checked"] for e in events(wf, "member.ready")] == [False], "routed before any check"
        for _ in range(5):   # checks come and go (every 2 s); nothing takes the server out
            assert http(wf.url + "/hello.txt")[0] == 200
            time.sleep(0.5)
        assert events(wf, "member.failed") == [] and events(wf, "member.check_failed") == []
    finally:
        wf.cleanup()
        server.stop()


def test_run_to_a_server_that_is_down_answers_503_at_once_saying_why(tmp_path):
    port = refused_port()   # nobody listens
    wf = Warmfront("--to", f"127.0.0.1:{port}", state_dir=tmp_path)
    try:
        wait_port(wf.port)
        # Routed until its checks fail (three, 2 s apart): meanwhile a refused connection is a 502.
        got = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(http(wf.url + "/")), 15)
        assert got, wf.tail()
        assert got[1] == (b'503 no ready member in pool "default" '
                          b'(1 member: failed health checks: TCP connect -> connection refused)\n')
        t0 = time.monotonic()
        assert http(wf.url + "/")[0] == 503
        assert time.monotonic() - t0 < 3, "no member is coming: the request must not wait the 5 s queue timeout"
        failed = events(wf, "member.check_failed")
        assert failed and all(e["check"] == "tcp" and e["error"] == "connection refused" and e["status"] is None
                              and e["latency_ms"] >= 0 for e in failed), failed
        assert [e["reason"] for e in events(wf, "member.failed")] == [
            "failed health checks: TCP connect -> connection refused"]
    finally:
        wf.cleanup()


def test_static_pools_from_pools_yaml_are_checked_as_configured(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    for name in ("plain", "strict", "lenient", "unchecked"):
        (site / f"{name}.txt").write_text(name)
    # One server each: a static member is named by its address, so pools cannot share one.
    servers = {name: PlainHTTPServer(site) for name in ("plain", "strict", "lenient")}
    at = {name: f"['127.0.0.1:{server.port}']" for name, server in servers.items()}
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "pools.yaml").write_text(
        "pools:\n"
        f"  plain:\n    backend: static\n    servers: {at['plain']}\n"            # no health: a TCP check
        f"  strict:\n    backend: static\n    servers: {at['strict']}\n"
        "    health: {path: /healthz, interval: 0.2s}\n"                           # wants 2xx-3xx: a 404 fails
        f"  lenient:\n    backend: static\n    servers: {at['lenient']}\n"
        "    health: {path: /healthz, expect_status: 200-499, interval: 0.2s}\n"
        f"  unchecked:\n    backend: static\n    servers: ['127.0.0.1:{refused_port()}']\n"
        "    health: {enabled: false}\n")
    (cfg / "routing.yaml").write_text("routes:\n" + "".join(
        f"  - name: {name}\n    pool: {name}\n    match: {{path_prefix: /{name}}}\n"
        for name in ("plain", "strict", "lenient", "unchecked")))
    wf = Warmfront("--config", str(cfg), state_dir=tmp_path / "state")
    try:
        wait_port(wf.port)
        got = wait_until(lambda: (lambda r: r if r[0] == 503 else None)(http(wf.url + "/strict.txt")), 10)
        assert got and got[1] == (b'503 no ready member in pool "strict" '
                                  b'(1 member: failed health checks: GET /healthz -> 404)\n'), wf.tail()
        for name in ("plain", "lenient"):
            assert http(wf.url + f"/{name}.txt")[:2] == (200, name.encode())
        assert http(wf.url + "/unchecked.txt")[0] == 502, "unchecked and down: routed, refused, a 502"
        failed = [e for e in events(wf, "member.check_failed") if e["pool"] == "strict"]
        assert failed and all(e["path"] == "/healthz" and e["status"] == 404 and e["error"] is None
                              and e["latency_ms"] > 0 for e in failed), failed
        assert {e["pool"] for e in events(wf, "member.failed")} == {"strict"}
        pools = (wf.status() or {})["pools"]
        assert [(m["state"], m["reason"]) for m in pools["strict"]["members"]] == [
            ("failed", "failed health checks: GET /healthz -> 404")]
        assert [(m["state"], m["reason"]) for m in pools["plain"]["members"]] == [("ready", None)]
    finally:
        wf.cleanup()
        for server in servers.values():
            server.stop()


def test_run_to_with_a_health_path_fails_a_server_whose_path_is_a_server_error_and_keeps_one_answering_404(tmp_path):
    # --health-path: healthy is any answer below 500, so the 404 of a plain server keeps it routed,
    # and --no-health-check leaves the server routed whatever it answers.
    (tmp_path / "site").mkdir()
    server = PlainHTTPServer(tmp_path / "site")
    checked = Warmfront("--to", f"127.0.0.1:{server.port}", "--health-path", "/nothing-here",
                        state_dir=tmp_path / "a")
    unchecked = Warmfront("--to", f"127.0.0.1:{refused_port()}", "--no-health-check", state_dir=tmp_path / "b")
    try:
        wait_port(checked.port)
        wait_port(unchecked.port)
        time.sleep(2.5)   # a check or two has run
        assert http(checked.url + "/")[0] == 200
        assert events(checked, "member.check_failed") == [], "a 404 on the health path is healthy"
        time.sleep(4.5)   # past three 2 s checks: an active check would have failed it by now
        assert http(unchecked.url + "/")[0] == 502, "routed (refused: a 502), not taken out (a 503)"
        assert events(unchecked, "member.check_failed") == []
    finally:
        checked.cleanup()
        unchecked.cleanup()
        server.stop()
