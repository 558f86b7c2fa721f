"""/admin/dashboard in a real headless chromium: it loads, shows a plot per pool, logs no console
error, and reads the way a person needs it to (time ticks, a "now" line, series told apart by colour).

With WARMFRONT_SCREENSHOT=docs/dashboard.png the screenshot is also saved there (the README's)."""
import math
import os
import re
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from balancer.control.history import History
from balancer.operator.state import SAMPLE_INTERVAL
from balancer.operator.timeline import MemberTimeline, Sample
from predictor.svgplot import ACTUAL_COLOR, FORECAST_COLOR
from tests.proxykit import ROOT
from tests.runkit import Warmfront, copy_config, http, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("WARMFRONT_REQUIRE_BROWSER") != "1",
    reason="chromium is not installed (apt-get install chromium); set WARMFRONT_REQUIRE_BROWSER=1 to fail instead")


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    assert CHROMIUM, "WARMFRONT_REQUIRE_BROWSER=1 but chromium is not installed"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def seed_state(state_dir: Path, hours: int = 26) -> None:
    """A day and more of one tenant's traffic with a daily shape, so there is a forecast to draw,
    and the last three hours of members (a burst member for 40 minutes), as a running warmfront
    leaves them in its state dir."""
    now = time.time()
    h = History(state_dir / "history.sqlite3", clock=lambda: now)
    current = int(now // 60) * 60
    for k in range(hours * 60 + 1):
        t = current - 60 * k
        rate = 30 + 20 * math.sin(2 * math.pi * (t % 86400) / 86400)   # req/s
        h.add_minute(t, "alpha", "page", int(rate * 60), latency_sum=rate * 60 * 0.012)
    h.close()
    timeline = MemberTimeline(path=state_dir / "timeline.sqlite3")
    for k in range(180, 0, -1):
        burst = 70 <= k < 110
        timeline.add("web", Sample(now - 60 * k, ready=2 + burst, baseline=2, burst=int(burst), shadow=1,
                                   launching=int(110 <= k < 113)))
    timeline.close()


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB/RGBA PNG (what chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, []
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", data[pos + 8:pos + 8 + n])
            assert depth == 8 and ctype in (2, 6) and interlace == 0
        elif kind == b"IDAT":
            idat.append(data[pos + 8:pos + 8 + n])
        pos += 12 + n
    bpp = 3 if ctype == 2 else 4
    raw, stride = zlib.decompress(b"".join(idat)), w * bpp
    prev, rows = bytearray(stride), []
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride) if f else ():
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line) if bpp == 3 else bytes(v for j, v in enumerate(line) if j % 4 != 3))
        prev = line
    return w, h, rows


def pixels_near(rows: list[bytes], color: str, tolerance: int = 30) -> int:
    want = bytes.fromhex(color.lstrip("#"))
    return sum(1 for row in rows for i in range(0, len(row), 3)
               if all(abs(row[i + k] - want[k]) <= tolerance for k in range(3)))


def test_dashboard_renders_readable_plots_per_pool_without_console_errors(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    seed_state(state)
    w = Warmfront("--config", str(copy_config(tmp_path)), state_dir=state)
    try:
        w.wait_ready(2)
        time.sleep(SAMPLE_INTERVAL + 1)                   # the members chart has sampled them
        assert wait_until(lambda: ((w.status() or {}).get("pools", {}).get("web", {}).get("forecast")), 30), \
            "no forecast from the seeded history"
        for _ in range(20):
            http(w.url + "/", {"X-Tenant": "alpha"})
        url = w.admin + "/admin/dashboard"
        dom = chromium(tmp_path, "--dump-dom", url)
        shot = tmp_path / "dashboard.png"
        chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1100", "--hide-scrollbars", url)
    finally:
        w.cleanup()
    html = dom.stdout
    assert 'id="pool-web"' in html, dom.stderr[-2000:]
    plots = re.findall(r'<figure class="plot" data-pool="web">(.*?)</figure>', html, re.S)
    assert len(plots) == 2                                # forecast vs actual, members over time
    assert "forecast vs actual" in html and "top sources" in html and "alpha" in html
    for plot in plots:                                    # a time axis a person can read
        assert len(set(re.findall(r'class="xtick"[^>]*>(\d\d:\d\d)</text>', plot))) >= 3
        assert re.search(r'<text class="marker"[^>]*>now</text>', plot)
    assert "requests/s" in plots[0] and "members" in plots[1]
    strokes = dict(re.findall(r'class="series" data-label="([^"]+)" points="[^"]*" fill="none" stroke="([^"]+)"', plots[0]))
    band = re.search(r'class="band" points="[^"]*" fill="([^"]+)"', plots[0])
    assert strokes.get("actual") == ACTUAL_COLOR and strokes.get("forecast") == FORECAST_COLOR
    assert band is not None and band.group(1) not in (ACTUAL_COLOR, FORECAST_COLOR)
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line
               or "Failed to load resource" in line]
    assert console == []
    data = shot.read_bytes()
    assert shot.stat().st_size > 10_000 and data[:4] == b"\x89PNG"
    # the forecast chart alone, as the browser paints it: both series are drawn, each in its own
    # colour, well beyond their legend swatches (≈ 35–60 pixels)
    alone = tmp_path / "forecast.html"
    alone.write_text(f"<!doctype html><body style=margin:0>{plots[0]}</body>")
    chart_shot = tmp_path / "forecast.png"
    chromium(tmp_path, f"--screenshot={chart_shot}", "--window-size=560,280", "--hide-scrollbars", alone.as_uri())
    _, _, rows = png_pixels(chart_shot.read_bytes())
    assert pixels_near(rows, ACTUAL_COLOR) > 200 and pixels_near(rows, FORECAST_COLOR) > 60
    target = os.environ.get("WARMFRONT_SCREENSHOT")
    if target:
        path = ROOT / target
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, path)
