import json
import subprocess
import sys

SCRIPT = """
import logging, structlog
from balancer.logs import configure_logging
configure_logging("info", json=JSON)
log = structlog.get_logger("t")
log.debug("hidden.event")
log.info("proxy.started", port=8080)
logging.getLogger("aiohttp.server").warning("foreign %s", "message")
"""


def run(json_mode: bool) -> str:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.replace("JSON", str(json_mode))],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return out.stderr


def test_json_mode_writes_one_json_object_per_event_with_iso_time():
    lines = [json.loads(line) for line in run(True).splitlines()]
    assert [(e["event"], e["level"]) for e in lines] == [("proxy.started", "info"), ("foreign message", "warning")]
    assert lines[0]["port"] == 8080
    assert lines[0]["timestamp"].endswith("Z") and "T" in lines[0]["timestamp"]


def test_console_mode_is_human_readable():
    text = run(False)
    assert "proxy.started" in text and "port" in text and "hidden.event" not in text
    assert not text.lstrip().startswith("{")
