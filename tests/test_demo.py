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


def test_quick_demo_runs_warmfront_and_reactive_side_by_side_and_leaves_no_member_behind():
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
    wf, re = summary["warmfront"], summary["reactive"]
    # What the user is told before the day: both policies and the three events.
    assert any("scaling.mode forecast-and-scale" in line for line in lines)
    assert any("scaling.mode reactive" in line for line in lines)
    assert any("campaign" in line and "events.yaml" in line for line in lines)
    assert any("unannounced" in line and "paused shadows" in line for line in lines)
    # One line per tick with both pools on it, and the shadows shown before the ramp.
    ticks = [line for line in lines if line.startswith("sim ")]
    assert ticks and all("| warmfront " in t and "| reactive ready " in t for t in ticks)
    before_ramp = [t for t in ticks if t.startswith("sim 08:")]
    assert before_ramp and all(int(t.split(" shadow ")[1].split()[0]) > 0 for t in before_ramp), before_ramp
    # Both summaries, the spike's cold requests apart, and the comparison.
    rows = {line.split()[0]: line for line in lines if line.startswith(("  warmfront ", "  reactive "))}
    assert set(rows) == {"warmfront", "reactive"}
    assert any(line.startswith("unannounced spike at ") for line in lines)
    assert any(line.startswith("outside the unannounced spike warmfront served ") for line in lines)
    for s in (wf, re):
        assert s["requests"] > 500 and s["errors"] == 0
        assert s["member_minutes"] >= s["ready_member_minutes"] > 0
        assert s["cold_outside_spike"] == s["cold_requests"] - s["cold_in_spike"]
    assert wf["requests"] == re["requests"], "both pools meet the same traffic"
    assert wf["shadow_before_ramp"] > 0 and wf["prewarmed_before_ramp_s"] > 0
    assert re["max_shadow"] == 0
    # The point of it: outside the unannounced spike, fewer cold requests than reactive scaling.
    assert wf["cold_outside_spike"] < re["cold_outside_spike"], (wf, re)
    assert len(seen) >= 4, "the demo should have run several member processes"
    assert not [p for p in seen if alive(p)], "a member process outlived the demo"
