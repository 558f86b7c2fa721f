"""Shared by the pools tests: the tiny member server, pool specs using it, and waiting helpers."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.request
from pathlib import Path

from config.models import Pool

TINY = Path(__file__).parent / "servers" / "tiny_http.py"
TINY_CMD = f"{sys.executable} {TINY} --port {{port}}"


def pool_spec(**overrides) -> Pool:
    """A process pool of tiny members with timings short enough for tests."""
    base = {"backend": "process", "command": TINY_CMD, "startup_timeout": 5.0, "stop_timeout": 1.0,
            "health": {"interval": 0.2, "timeout": 0.3, "unhealthy_threshold": 2}}
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return Pool.model_validate(base)


def fetch(host: str, port: int, path: str = "/", timeout: float = 2.0) -> dict:
    """Blocking GET of a member's JSON self-description; call via asyncio.to_thread from async tests."""
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as r:
        return json.loads(r.read())


def answers(host: str, port: int, timeout: float = 0.3) -> bool:
    """True when the member's /healthz answers 200 right now."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


async def wait_until(predicate, timeout: float, step: float = 0.02):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if value := predicate():
            return value
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")


def alive(pid: int) -> bool:
    """True while the process exists, zombies included (a zombie means nobody reaped it)."""
    return os.path.exists(f"/proc/{pid}")


def proc_state(pid: int) -> str:
    """The one-letter state from /proc/<pid>/stat: R/S running or sleeping, T stopped, Z zombie."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]
