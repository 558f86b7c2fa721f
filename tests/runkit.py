"""`warmfront` as a real child process, the way users run it."""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.proxykit import ROOT, free_port

WARMFRONT = [sys.executable, "-m", "balancer.wiring.cli"]


def http(url: str, headers: dict | None = None, data: bytes | None = None, method: str | None = None,
         timeout: float = 10.0) -> tuple[int | None, bytes, dict]:
    req = urllib.request.Request(url, headers=headers or {}, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)
    except OSError as e:
        return None, str(e).encode(), {}


def wait_until(fn, seconds: float, step: float = 0.1):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        time.sleep(step)
    return None


def copy_config(tmp: Path, src: Path = ROOT / "config") -> Path:
    dst = tmp / "config"
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("routing.yaml", "pools.yaml"):
        shutil.copy(src / name, dst / name)
    return dst


class Warmfront:
    def __init__(self, *args: str, state_dir: Path | None = None, env: dict | None = None,
                 nofile: int | None = None):
        self.port, self.admin_port = free_port(), free_port()
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="wf-test-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.state_dir / "warmfront.log"
        self._log = open(self.log_path, "ab")
        self.cmd = [*WARMFRONT, "run", *args, "--listen", f"127.0.0.1:{self.port}",
                    "--admin", f"127.0.0.1:{self.admin_port}", "--state-dir", str(self.state_dir)]
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                     start_new_session=True,
                                     preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
                                     if nofile else None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def status(self) -> dict | None:
        code, body, _ = http(self.admin + "/admin/status")
        return json.loads(body) if code == 200 else None

    def ready_members(self, pool: str = "web") -> list[dict]:
        st = self.status() or {}
        return [m for m in st.get("pools", {}).get(pool, {}).get("members", []) if m["state"] == "ready"]

    def wait_ready(self, n: int = 2, pool: str = "web", seconds: float = 30) -> list[dict]:
        got = wait_until(lambda: (lambda r: r if len(r) >= n else None)(self.ready_members(pool)), seconds)
        assert got, f"never {n} ready members in {pool}: {self.tail()}"
        return got

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def group_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-g", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return self.proc.returncode

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def cleanup(self) -> None:
        self.kill()
        self._log.close()
        shutil.rmtree(self.state_dir, ignore_errors=True)
