"""`warmfront` end to end: the shipped config, check/schema, --to, history across restarts, shutdown."""
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.proxykit import ROOT, DemoBackend, alive, proc_rss_peak_kib
from tests.runkit import WARMFRONT, Warmfront, copy_config, http, wait_until


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*WARMFRONT, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_check_accepts_the_shipped_config():
    r = cli("check", "--config", "config")
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_check_names_file_line_and_key_of_a_bad_value(tmp_path):
    cfg = copy_config(tmp_path)
    text = (cfg / "pools.yaml").read_text()
    lines = text.splitlines()
    idx = next(i for i, l in enumerate(lines) if l.strip().startswith("max:"))
    lines[idx] = lines[idx].split("max:")[0] + "max: 1   # below min"
    (cfg / "pools.yaml").write_text("\n".join(lines) + "\n")
    r = cli("check", "--config", str(cfg))
    assert r.returncode == 2
    assert f"pools.yaml:{idx + 1}: pools.web.capacity.max:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_check_reports_unparseable_yaml_without_traceback(tmp_path):
    cfg = copy_config(tmp_path)
    with open(cfg / "routing.yaml", "a") as f:
        f.write("\nroutes: [unclosed\n")
    r = cli("check", "--config", str(cfg))
    assert r.returncode == 2
    assert "routing.yaml:" in r.stderr and "Traceback" not in r.stderr


def test_schema_is_json_schema_of_both_files():
    r = cli("schema")
    assert r.returncode == 0
    schema = json.loads(r.stdout)
    assert "capacity" in json.dumps(schema) and "routes" in json.dumps(schema)


def test_admin_beyond_loopback_requires_a_token(tmp_path):
    r = subprocess.run([*WARMFRONT, "run", "--config", "config", "--admin", "0.0.0.0:19999",
                        "--state-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=30,
                       env={k: v for k, v in os.environ.items() if k != "WARMFRONT_ADMIN_TOKEN"})
    assert r.returncode == 2
    assert "WARMFRONT_ADMIN_TOKEN" in r.stderr


@pytest.fixture
def shipped():
    wf = Warmfront("--config", "config")
    yield wf
    wf.cleanup()


def test_shipped_config_proxies_profiles_and_shuts_down_cleanly(shipped):
    wf = shipped
    members = wf.wait_ready(2)
    assert len(members) == 2 and all(m["address"].startswith("127.0.0.1:") for m in members)
    assert wait_until(lambda: wf.status()["pools"]["web"]["counts"].get("shadow") == 1, 10), wf.status()

    with ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(lambda i: http(wf.url + ("/api/x" if i % 2 else "/"),
                                           {"X-Tenant": "alpha" if i < 60 else "beta"})[0], range(90)))
    assert codes == [200] * 90
    code, _, _ = http(wf.url + "/static/logo.txt")   # no X-Tenant: the client IP is the source
    assert code == 200

    # workers report about once a second: the 91 requests reach the history within a couple
    st = wait_until(lambda: (st := wf.status()) and sum(s["requests"] for s in st["sources"]) == 91 and st, 10)
    assert st, wf.status()["sources"]
    by = {(s["source"], s["type"]): s["requests"] for s in st["sources"]}
    assert by[("alpha", "page")] == 30 and by[("alpha", "api")] == 30
    assert by[("beta", "page")] == 15 and by[("beta", "api")] == 15
    assert by[("127.0.0.1", "static")] == 1
    lat = {(s["source"], s["type"]): s["mean_latency_ms"] for s in st["sources"]}
    # The demo backend works 5 ms per page and 20 ms per api request: the profile must see that.
    assert 4 <= lat[("alpha", "page")] < lat[("alpha", "api")] and lat[("alpha", "api")] >= 19, lat

    code, body, _ = http(wf.admin + "/metrics")
    text = body.decode()
    assert code == 200
    assert 'warmfront_requests_total{code="200",pool="web",type="api"} 45.0' in text
    assert 'warmfront_pool_members{pool="web",state="ready"} 2.0' in text
    assert "alpha" not in text   # no per-source labels

    pids = wf.group_pids()
    assert len(pids) >= 4, "the three members run in warmfront's process group"
    # A request in flight when SIGTERM arrives still gets its answer.
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", http(wf.url + "/sleep/800")))
    t.start()
    time.sleep(0.3)
    rc = wf.stop(signal.SIGTERM)
    t.join()
    assert rc == 0
    assert result["r"][0] == 200
    time.sleep(0.3)
    assert [p for p in pids if alive(p)] == []


def test_history_survives_a_restart(tmp_path):
    wf = Warmfront("--config", "config", state_dir=tmp_path)
    try:
        wf.wait_ready(2)
        for _ in range(25):
            assert http(wf.url + "/", {"X-Tenant": "keeper"})[0] == 200
        assert wf.stop() == 0
    finally:
        wf.kill()
    wf2 = Warmfront("--config", "config", state_dir=tmp_path)
    try:
        st = wait_until(wf2.status, 20)
        rows = [s for s in st["sources"] if s["source"] == "keeper"]
        assert rows and rows[0]["requests"] == 25
    finally:
        wf2.cleanup()


def test_crashed_member_is_replaced(shipped):
    wf = shipped
    wf.wait_ready(2)
    code, body, _ = http(wf.url + "/pid")
    victim = int(body)
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    wf.wait_ready(2, seconds=10)
    got = wait_until(lambda: (lambda r: r if len(r) == 2 and victim not in
                              [int(http(wf.url + "/pid")[1] or 0) for _ in range(6)] else None)(wf.ready_members()), 10)
    assert got, wf.tail()
    assert time.monotonic() - t0 < 10
    codes = [http(wf.url + "/")[0] for _ in range(20)]
    assert codes == [200] * 20


def test_members_die_with_warmfront_even_on_sigkill(shipped):
    wf = shipped
    wf.wait_ready(2)
    kids = [p for p in wf.group_pids() if p != wf.proc.pid]
    assert kids
    wf.proc.send_signal(signal.SIGKILL)
    wf.proc.wait()
    assert wait_until(lambda: not any(alive(p) for p in kids), 5), "members outlived warmfront"


def test_run_to_static_server_streams_a_200mb_upload_in_bounded_memory(tmp_path):
    be = DemoBackend()
    wf = Warmfront("--to", f"127.0.0.1:{be.port}", state_dir=tmp_path)
    try:
        assert wait_until(lambda: http(wf.url + "/bytes/10")[0] == 200, 20), wf.tail()
        size, block = 200 * 1024 * 1024, b"w" * (1024 * 1024)

        def body():
            for _ in range(size // len(block)):
                yield block
        code, out, _ = http(wf.url + "/upload", data=body(), method="POST",
                            headers={"Content-Length": str(size)}, timeout=120)
        assert code == 200, out
        got = json.loads(out)
        assert got["bytes"] == size
        h = hashlib.sha256()
        for _ in range(size // len(block)):
            h.update(block)
        assert got["sha256"] == h.hexdigest()
        peak_mib = proc_rss_peak_kib(wf.proc.pid) / 1024
        assert peak_mib < 120, f"proxy peak RSS {peak_mib:.0f} MiB for a 200 MB upload"
        code, out, _ = http(wf.url + "/bytes/20000000", timeout=60)
        assert code == 200 and len(out) == 20_000_000
    finally:
        wf.cleanup()
        be.stop()


def test_tls_termination(tmp_path):
    be = DemoBackend()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "routing.yaml").write_text(f"tls:\n  cert: {cert}\n  key: {key}\nroutes:\n  - name: all\n    pool: app\n")
    (cfg / "pools.yaml").write_text(f"pools:\n  app:\n    backend: static\n    servers: ['127.0.0.1:{be.port}']\n")
    wf = Warmfront("--config", str(cfg), state_dir=tmp_path / "state")
    try:
        import ssl
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False

        def get():
            import urllib.request
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{wf.port}/echo", context=ctx, timeout=5) as r:
                    return json.loads(r.read())
            except OSError:
                return None
        echo = wait_until(get, 20)
        assert echo, wf.tail()
        headers = {k.lower(): v for k, v in echo["headers"]}
        assert headers["x-forwarded-proto"] == "https"
    finally:
        wf.cleanup()
        be.stop()
