"""The access log: one JSON line per request from every worker of a real `warmfront run`, over
loopback; and its formatting and pipe pieces without processes."""
from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from balancer.dataplane.access_log import _pipe_pieces, format_lines
from tests.proxykit import DemoBackend, refused_port
from tests.runkit import Warmfront, http, wait_until

KEYS = {"time", "method", "path", "status", "duration_ms", "upstream_ms", "source", "pool", "type", "member",
        "bytes_in", "bytes_out", "client"}


@pytest.fixture
def backend():
    b = DemoBackend("--work", "page=0,api=0,static=0")
    yield b
    b.stop()


def write_config(tmp: Path, backend_port: int, access_log: str | None) -> Path:
    cfg = tmp / "config"
    cfg.mkdir()
    log_line = f"access_log: {json.dumps(access_log)}\n" if access_log is not None else ""
    (cfg / "routing.yaml").write_text(
        "sources: [{header: X-Tenant}, {client_ip: true}]\n" + log_line +
        "timeouts: {queue: 1s, connect: 1s}\n"
        "routes:\n"
        "  - {name: echo, match: {path_prefix: /echo}, pool: web, type: echo}\n"
        "  - {name: bytes, match: {path_prefix: /bytes}, pool: web, type: bytes}\n"
        "  - {name: gone, match: {path_prefix: /gone}, pool: gone, type: gone}\n")
    # `gone` points at a port nobody listens on: the proxy answers its requests itself (502 or 503).
    (cfg / "pools.yaml").write_text(
        "pools:\n"
        f"  web: {{backend: static, servers: ['127.0.0.1:{backend_port}']}}\n"
        f"  gone: {{backend: static, servers: ['127.0.0.1:{refused_port()}']}}\n")
    return cfg


def start(cfg: Path, *args: str) -> Warmfront:
    wf = Warmfront("--config", str(cfg), "--workers", "2", *args)
    if not wait_until(lambda: http(wf.url + "/echo")[0] == 200, 30):
        wf.cleanup()
        raise AssertionError(wf.tail())
    return wf


def lines_of(text: str) -> list[dict]:
    """Access-log lines among whatever else the text holds (the process's own log on stdout/stderr)."""
    out = []
    for line in text.splitlines():
        if line.startswith('{"time":'):
            out.append(json.loads(line))
    return out


def read_log(path: Path, n: int, seconds: float = 10) -> list[dict]:
    got = wait_until(lambda: (lambda rows: rows if len(rows) >= n else None)(
        lines_of(path.read_text()) if path.exists() else []), seconds)
    return got or (lines_of(path.read_text()) if path.exists() else [])


def test_every_request_is_one_json_line_with_its_member_source_and_bytes(tmp_path, backend):
    log_path = tmp_path / "logs" / "access.log"
    log_path.parent.mkdir()
    wf = start(write_config(tmp_path, backend.port, str(log_path)))
    try:
        members = wf.wait_ready(1, pool="web")
        web_member = members[0]["id"]
        # the probe requests of `start` are logged too: count from what is there now
        time.sleep(0.6)
        before = len(read_log(log_path, 0, 0))
        sent = []
        for i in range(12):
            tenant = f"tenant-{i % 4}"
            status, body, _ = http(wf.url + f"/echo/{i}?q={i}", headers={"X-Tenant": tenant})
            sent.append(("GET", f"/echo/{i}?q={i}", 200, tenant, 0, len(body)))
        for i in range(8):
            data = b"x" * (100 + i)
            status, body, _ = http(wf.url + f"/echo/post{i}", data=data, method="POST",
                                   headers={"X-Tenant": "poster"})
            assert status == 200
            sent.append(("POST", f"/echo/post{i}", 200, "poster", len(data), len(body)))
        for method in ("PUT", "DELETE", "PATCH"):
            status, body, _ = http(wf.url + "/echo/m", data=b"abc" if method != "DELETE" else None,
                                   method=method, headers={"X-Tenant": "methods"})
            assert status == 200
            sent.append((method, "/echo/m", 200, "methods", 3 if method != "DELETE" else 0, len(body)))
        for n in (0, 10, 1000, 65536):
            status, body, _ = http(wf.url + f"/bytes/{n}")   # no X-Tenant: the source is the client's address
            assert status == 200 and len(body) == n
            sent.append(("GET", f"/bytes/{n}", 200, "127.0.0.1", 0, n))
        for i in range(4):
            status, body, _ = http(wf.url + f"/nothing/here/{i}", headers={"X-Tenant": "lost"})
            assert status == 404
            sent.append(("GET", f"/nothing/here/{i}", 404, None, 0, 0))
        status, _, _ = http(wf.url + "/gone/x", headers={"X-Tenant": "unlucky"})
        assert status in (502, 503)
        sent.append(("GET", "/gone/x", status, "unlucky", 0, 0))
        assert len(sent) >= 30

        rows = read_log(log_path, before + len(sent))[before:]
        assert len(rows) == len(sent), rows
        # Two workers write the file: lines are whole, their order across workers is not the send order.
        by_request = {(r["method"], r["path"]): r for r in rows}
        assert len(by_request) == len(sent)
        for method, path, status, source, bytes_in, bytes_out in sent:
            r = by_request[(method, path)]
            assert set(r) == KEYS
            assert r["status"] == status, r
            assert r["client"] == "127.0.0.1"
            assert r["bytes_in"] == bytes_in, r
            datetime.strptime(r["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
            assert len(r["time"]) == len("2025-01-01T00:00:00.000Z")
            stamp = datetime.strptime(r["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
            assert abs(stamp.timestamp() - time.time()) < 60
            assert isinstance(r["duration_ms"], (int, float)) and 0 <= r["duration_ms"] < 5000
            if status == 200:
                assert r["member"] == web_member and r["pool"] == "web"
                assert r["source"] == source and r["type"] == path.split("/")[1]
                assert r["bytes_out"] == bytes_out, r
                assert 0 < r["upstream_ms"] <= r["duration_ms"] + 1, r
            elif status == 404:
                assert r["member"] is None and r["upstream_ms"] is None
                assert r["pool"] is None and r["type"] is None and r["source"] is None
            else:
                assert r["member"] is None and r["upstream_ms"] is None
                assert r["pool"] == "gone" and r["source"] == "unlucky"
    finally:
        wf.cleanup()


def test_requests_the_proxy_refuses_are_logged_with_their_status(tmp_path, backend):
    log_path = tmp_path / "access.log"
    wf = start(write_config(tmp_path, backend.port, str(log_path)))
    try:
        with socket.create_connection(("127.0.0.1", wf.port), timeout=5) as s:
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Big: " + b"y" * 70_000 + b"\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 431")
        with socket.create_connection(("127.0.0.1", wf.port), timeout=5) as s:
            s.sendall(b"GET /echo HTTP/1.1\r\n\r\n")   # no Host
            assert s.recv(100).startswith(b"HTTP/1.1 400")
        rows = read_log(log_path, 3)   # the probe of `start` first
        refused = sorted((r["status"], r["member"], r["upstream_ms"], r["pool"]) for r in rows if r["status"] >= 400)
        assert refused == [(400, None, None, None), (431, None, None, None)], rows
    finally:
        wf.cleanup()


def test_off_by_default_no_file_and_no_lines(tmp_path, backend):
    wf = start(write_config(tmp_path, backend.port, None))
    try:
        for i in range(5):
            assert http(wf.url + f"/echo/{i}")[0] == 200
        time.sleep(0.6)
        assert lines_of(wf.log_path.read_text()) == []
        assert not any("access" in p.name for p in tmp_path.rglob("*")), list(tmp_path.rglob("*"))
    finally:
        wf.cleanup()


def test_dash_writes_to_standard_output(tmp_path, backend):
    wf = start(write_config(tmp_path, backend.port, "-"))   # the fixture sends stdout to wf.log_path
    try:
        for i in range(10):
            assert http(wf.url + f"/echo/dash{i}", headers={"X-Tenant": "dash"})[0] == 200
        rows = [r for r in read_log(wf.log_path, 11) if r["path"].startswith("/echo/dash")]
        assert sorted(r["path"] for r in rows) == sorted(f"/echo/dash{i}" for i in range(10))
        assert all(set(r) == KEYS and r["source"] == "dash" and r["status"] == 200 for r in rows)
    finally:
        wf.cleanup()


def test_a_rotated_file_is_reopened(tmp_path, backend):
    log_path = tmp_path / "access.log"
    wf = start(write_config(tmp_path, backend.port, str(log_path)))
    try:
        assert read_log(log_path, 1)
        os.rename(log_path, tmp_path / "access.log.1")   # logrotate's default: move, and expect a new file
        for i in range(3):
            assert http(wf.url + f"/echo/after{i}")[0] == 200
        rows = [r for r in read_log(log_path, 3) if r["path"].startswith("/echo/after")]
        assert len(rows) == 3
    finally:
        wf.cleanup()


def test_lines_of_a_stopping_worker_are_written(tmp_path, backend):
    log_path = tmp_path / "access.log"
    wf = start(write_config(tmp_path, backend.port, str(log_path)))
    try:
        for i in range(20):
            assert http(wf.url + f"/echo/last{i}")[0] == 200
        assert wf.stop() == 0   # within the flush interval of the last request
        rows = [r for r in lines_of(log_path.read_text()) if r["path"].startswith("/echo/last")]
        assert len(rows) == 20
    finally:
        wf.cleanup()


def test_format_escapes_what_clients_send():
    t = 1000.0
    entries = [(t + 0.0015, t, b"GET", b'/a"b\\c\xff\n', 200, 0.0005, 'ten"ant', "web", "page", "web-1",
                0, 5, "::1"),
               (t, 0.0, b"", b"", 400, 0.0, "", "-", "-", None, 0, 0, "10.0.0.1")]
    offset = 1_700_000_000.0 - 1000.0
    first, second = (json.loads(x) for x in format_lines(entries, offset).splitlines())
    assert first["path"] == '/a"b\\c\\xff\n' and first["source"] == 'ten"ant'
    assert first["time"] == "2023-11-14T22:13:20.001Z"
    assert first["duration_ms"] == pytest.approx(1.5, abs=0.002) and first["upstream_ms"] == 0.5
    assert second == {"time": "2023-11-14T22:13:20.000Z", "method": None, "path": "", "status": 400,
                      "duration_ms": 0.0, "upstream_ms": None, "source": None, "pool": None, "type": None,
                      "member": None, "bytes_in": 0, "bytes_out": 0, "client": "10.0.0.1"}


def test_pipe_pieces_are_whole_lines_within_pipe_buf():
    import select
    lines = [(b"x" * (i * 37 % 900) + b"\n") for i in range(200)] + [b"y" * 9000 + b"\n", b"z\n"]
    data = b"".join(lines)
    pieces = _pipe_pieces(data)
    assert b"".join(pieces) == data
    for p in pieces:
        assert p.endswith(b"\n")
        assert len(p) <= select.PIPE_BUF or p.count(b"\n") == 1
