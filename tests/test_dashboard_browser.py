"""/admin/dashboard in a real headless chromium: it loads, shows a plot per pool, logs no console error."""
import os
import re
import shutil
import subprocess

import pytest

from tests.runkit import Warmfront, copy_config, http

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


def test_dashboard_renders_a_plot_per_pool_without_console_errors(tmp_path):
    w = Warmfront("--config", str(copy_config(tmp_path)))
    try:
        w.wait_ready(2)
        for _ in range(20):
            http(w.url + "/", {"X-Tenant": "alpha"})
        url = w.admin + "/admin/dashboard"
        dom = chromium(tmp_path, "--dump-dom", url)
        shot = tmp_path / "dashboard.png"
        chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", "--hide-scrollbars", url)
    finally:
        w.cleanup()
    html = dom.stdout
    assert 'id="pool-web"' in html, dom.stderr[-2000:]
    plots = re.findall(r'<figure class="plot" data-pool="web">\s*<svg', html)
    assert len(plots) == 2                                # forecast vs actual, members over time
    assert "forecast vs actual" in html and "top sources" in html and "alpha" in html
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line
               or "Failed to load resource" in line]
    assert console == []
    assert shot.exists() and shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"
