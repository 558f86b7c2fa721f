"""The README's list of log events is the contract operators alert on: it must name every event
the code emits, and nothing it no longer emits."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("balancer", "pools", "predictor", "config")
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
EVENT = re.compile(r"[a-z_]+(?:\.[a-z_]+)+")
LIST_START = "Event names are stable"


def emitted_events(source: str) -> set[str]:
    """Event names passed to a logger call in `source`: `log.info("pool.kept", ...)`, a bound
    logger's `self._log.warning(...)`, `structlog.get_logger(...).info(...)`, over any number of lines."""
    return {node.args[0].value for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LEVELS
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            and EVENT.fullmatch(node.args[0].value)}


def code_events() -> dict[str, str]:
    """Every emitted event with the first file that emits it."""
    found: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in emitted_events(path.read_text()):
                found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def readme_events() -> set[str]:
    """The backticked event names from the README line saying event names are stable to the next heading."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if LIST_START in line)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
    return {m for line in lines[start:end] for m in re.findall(r"`([^`]+)`", line) if EVENT.fullmatch(m)}


def test_emitted_events_are_found_in_every_call_form():
    source = '''
log.info("pool.kept", members=3)
self._log.warning(
    "member.check_failed", member=m.id)
structlog.get_logger("warmfront").info("demo.starting")
log.bind(pool="a").error("pool.health_error")
log.info(f"not.{an}.event")
parser.error("usage: no event here")
'''
    assert emitted_events(source) == {"pool.kept", "member.check_failed", "demo.starting", "pool.health_error"}


def test_readme_log_event_list_names_every_emitted_event():
    missing = {name: path for name, path in code_events().items() if name not in readme_events()}
    assert not missing, f"README.md's list of stable log events (after {LIST_START!r}) lacks: " + ", ".join(
        f"{name} ({path})" for name, path in sorted(missing.items()))


def test_readme_log_event_list_names_only_emitted_events():
    stale = readme_events() - set(code_events())
    assert not stale, f"README.md lists log events nothing emits any more: {', '.join(sorted(stale))}"
