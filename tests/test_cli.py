"""`warmfront` end to end: the shipped config, the command line, check/schema, --to, history across
restarts, shutdown."""
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata

import pytest

from balancer.wiring import app as wiring_app
from balancer.wiring.cli import PASSTHROUGH, version
from balancer.wiring.cli import main as warmfront_main
from tests.proxykit import ROOT, DemoBackend, alive, children, proc_rss_peak_kib
from tests.runkit import WARMFRONT, Warmfront, copy_config, http, wait_until


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*WARMFRONT, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- the command line itself
def test_version_prints_the_installed_version():
    r = cli("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"warmfront {metadata.version('warmfront')}\n", "")


def test_version_falls_back_to_pyproject_when_not_installed(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "version", not_installed)
    with open(ROOT / "pyproject.toml", "rb") as f:
        assert version() == tomllib.load(f)["project"]["version"]


def test_no_command_prints_usage_and_exits_2():
    r = cli()
    assert r.returncode == 2
    assert r.stderr.startswith("usage: warmfront ") and "Traceback" not in r.stderr


def test_subcommands_keep_their_own_help():
    r = cli("forecast", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: warmfront forecast ") and "--trace" in r.stdout


@pytest.mark.parametrize("command", sorted(PASSTHROUGH))
def test_subcommands_get_every_argument_after_their_name_untouched(command, monkeypatch):
    module = __import__(PASSTHROUGH[command][0], fromlist=["main"])
    seen = []
    monkeypatch.setattr(module, "main", lambda argv: seen.append(argv) or 3)
    args = ["--trace", "t.csv", "-h", "--", "--json", "pos"]
    assert warmfront_main([command, *args]) == 3
    assert seen == [args]


def test_log_level_outside_the_choices_is_a_usage_error():
    r = cli("run", "--log-level", "bogus")
    assert r.returncode == 2
    assert "invalid choice: 'bogus' (choose from 'debug', 'info', 'warning', 'error')" in r.stderr
    assert "Traceback" not in r.stderr


def fake_run_forever(calls):
    def run_forever(cfg, listen=None, admin=None, state_dir=None, log_level="info", workers=None, access_log=None,
                    log_format=None):
        calls.append({"log_level": log_level, "log_format": log_format, "access_log": access_log})
        return 0
    return run_forever


@pytest.mark.parametrize("args, expected", [
    ([], {"log_level": "info", "log_format": None, "access_log": None}),   # None: json unless stderr is a terminal
    (["--log-level", "WARNING", "--log-format", "text"], {"log_level": "warning", "log_format": "text",
                                                          "access_log": None}),
    (["--log-format", "json", "--access-log", "-"], {"log_level": "info", "log_format": "json", "access_log": "-"}),
])
def test_log_options_reach_run_forever(args, expected, monkeypatch):
    calls = []
    monkeypatch.setattr(wiring_app, "run_forever", fake_run_forever(calls))
    assert warmfront_main(["run", "--to", "127.0.0.1:1", *args]) == 0
    assert calls == [expected]


def test_log_format_is_a_choice_of_json_or_text():
    r = cli("run", "--log-format", "yaml")
    assert r.returncode == 2 and "invalid choice: 'yaml' (choose from 'json', 'text')" in r.stderr


@pytest.mark.parametrize("args", [["schema"], ["schema", "--file", "pools"]])
def test_a_reader_that_leaves_early_ends_the_command_quietly(args):
    # `warmfront schema | head -1`, made certain: a one-page pipe the schema overflows, read a
    # little of, then closed while warmfront still has lines to write.
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    proc = subprocess.Popen([*WARMFRONT, *args], cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE)
    os.close(write_end)
    assert os.read(read_end, 100).startswith(b"{")
    os.close(read_end)
    _, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr) == (0, b"")


@pytest.mark.parametrize("file, title, key", [("routing", "RoutingConfig", "routes"),
                                              ("pools", "PoolsConfig", "pools"),
                                              ("events", "EventsConfig", "events")])
def test_schema_of_one_file_is_a_json_schema_document_of_its_own(file, title, key, capsys):
    assert warmfront_main(["schema", "--file", file]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert (schema["title"], schema["type"]) == (title, "object")
    assert key in schema["properties"]


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


def edit(path, old: str, new: str) -> int:
    """Replace the first line of `path` containing `old`; its 1-based line number."""
    lines = path.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if old in line)
    lines[index] = lines[index].replace(old, new)
    path.write_text("\n".join(lines) + "\n")
    return index + 1


@pytest.mark.parametrize("command", ["check", "run"])
def test_check_and_run_report_every_mistake_in_both_files(command, tmp_path):
    cfg = copy_config(tmp_path)
    connect = edit(cfg / "routing.yaml", "connect: 2s", "connect: 2x")
    concurrency = edit(cfg / "pools.yaml", "concurrency: 32", "concurency: 4")
    edit(cfg / "pools.yaml", "min: 2 ", "min: 3 ")
    maximum = edit(cfg / "pools.yaml", "max: 4 ", "max: 2 ")
    r = cli(command, "--config", str(cfg), *(["--state-dir", str(tmp_path / "state")] if command == "run" else []))
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"{cfg}/routing.yaml:{connect}: timeouts.connect: must be a duration like 30s, 250ms, 5m, 1h or 2d "
        "(got '2x')",
        f"{cfg}/pools.yaml:{concurrency}: pools.web.concurency: unknown key (did you mean 'concurrency'?)",
        f"{cfg}/pools.yaml:{maximum}: pools.web.capacity.max: must be >= min (2 < 3)",
    ]


def test_check_names_a_missing_directory(tmp_path, capsys):
    assert warmfront_main(["check", "--config", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"{tmp_path / 'nope'}: directory not found\n"


def test_check_names_each_missing_file(tmp_path, capsys):
    assert warmfront_main(["check", "--config", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"{tmp_path / 'routing.yaml'}: file not found",
                                                    f"{tmp_path / 'pools.yaml'}: file not found"]
    copy_config(tmp_path)
    (tmp_path / "config" / "pools.yaml").unlink()
    assert warmfront_main(["check", "--config", str(tmp_path / "config")]) == 2
    assert capsys.readouterr().err == f"{tmp_path / 'config' / 'pools.yaml'}: file not found\n"


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
    assert 'warmfront_requests_total{code="200",method="GET",pool="web",type="api"} 45.0' in text
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
        # the bytes pass through a data-plane worker (a child of the control process): neither holds them
        peaks = {pid: proc_rss_peak_kib(pid) / 1024 for pid in [wf.proc.pid, *children(wf.proc.pid)]}
        assert len(peaks) >= 2, peaks
        assert max(peaks.values()) < 120, f"peak RSS per process {peaks} MiB for a 200 MB upload"
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
