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


GONE = """
import io, logging, sys, structlog
from balancer.logs import configure_logging
configure_logging("info", json=True)
log = structlog.get_logger("t")
first, second = io.StringIO(), io.StringIO()
sys.stderr = first
log.warning("pool.backend_error", n=1)             # written to the stderr of the moment
sys.stderr = second
log.warning("pool.backend_error", n=2)
logging.getLogger("aiohttp").warning("foreign")
second.close()                                     # what pytest does to a finished test's capture
log.warning("pool.backend_error", n=3)             # must not raise: logging never becomes the failure
logging.getLogger("aiohttp").warning("foreign, after")
print(first.getvalue().count("pool.backend_error"), "survived", file=sys.stdout)
"""


def test_a_closed_or_replaced_stderr_never_makes_logging_raise():
    # A log call that raised on a closed stream ended a pool manager's loop from its own error handler
    # (its `log.warning("pool.backend_error")`), after an in-process CLI test had configured logging.
    out = subprocess.run([sys.executable, "-c", GONE], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "survived"]
