"""`warmfront demo --quick`: the whole idea in 30 seconds, and nothing left running afterwards."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests.pools_support import alive
from tests.proxykit import ROOT


def member_pids(parent: int) -> set[int]:
    """Demo backend processes whose parent is `parent`."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"balancer.demo.backend" in cmdline:
            found.add(int(entry))
    return found


def test_quick_demo_prewarms_before_the_ramp_and_leaves_no_member_behind():
    proc = subprocess.Popen([sys.executable, "-m", "balancer.wiring.cli", "demo", "--quick", "--backend", "process", "--json"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    seen: set[int] = set()
    try:
        while proc.poll() is None:
            seen |= member_pids(proc.pid)
            time.sleep(0.2)
        out = proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    lines = out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert any(line.startswith("sim 08:") for line in lines), "one live line per tick"
    assert any(line.startswith("summary: ") for line in lines)
    assert summary["requests"] > 1000 and summary["errors"] == 0
    assert 0 <= summary["cold_requests"] < summary["requests"]
    assert summary["member_minutes"] >= summary["ready_member_minutes"] > 0
    # Shadows came up before the 09:00 ramp, and the pool grew past its baseline of 1.
    assert summary["prewarmed_before_ramp_s"] > 0
    assert summary["max_ready"] >= 3
    assert len(seen) >= 3, "the demo should have run several member processes"
    assert not [p for p in seen if alive(p)], "a member process outlived the demo"
