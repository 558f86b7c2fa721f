"""Two `warmfront run` replicas sharing one PostgreSQL database in front of one swarm pool: one
leads, the other follows its routing; the leader is SIGKILLed under load and the follower takes
over — no failed request on the survivor, one leader afterwards, no duplicate or orphaned service."""
from __future__ import annotations

import secrets
import signal
import threading
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from tests.dockerkit import IMAGE, SESSION, require_engine  # noqa: F401 (fixtures)
from tests.pgkit import postgres  # noqa: F401 (fixture)
from tests.runkit import Warmfront, http, wait_until
from tests.swarmkit import owned_services, remove_owned_services, require_swarm  # noqa: F401 (fixture)

POOLS = f"""pools:
  web:
    backend: swarm
    swarm:
      image: {IMAGE}
      network: host
      command: /usr/bin/python3.11 /app/app.py --port {{port}}
      env:
        WORK_MS: "5"
      on_exit: remove     # applies when the last live replica stops (a replica with live peers keeps them)
    concurrency: 8
    health:
      path: /healthz
      interval: 0.3s
      timeout: 1s
      unhealthy_threshold: 2
    capacity:
      min: 2
      max: 4
    shadow:
      state: running
      size: 1
    drain_timeout: 5s
    stop_timeout: 3s
"""


def write_config(directory: Path, url: str, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "routing.yaml").write_text(
        f"history:\n  url: {url}\n  flush_interval: 1s\n"
        f"replicas:\n  name: {name}\n  heartbeat: 0.3s\n"
        "timeouts:\n  queue: 10s\nroutes:\n  - name: all\n    pool: web\n    type: page\n")
    (directory / "pools.yaml").write_text(POOLS)
    return directory


def replica(status: dict | None) -> dict:
    return (status or {}).get("replica") or {}


def members(wf: Warmfront) -> dict[str, str]:
    st = wf.status() or {}
    return {m["id"]: m["state"] + (f":{m['shadow_state']}" if m.get("shadow_state") else "")
            for m in st.get("pools", {}).get("web", {}).get("members", [])}


class Load:
    """Clients hammering one replica's listener until stopped; every status (None: no response)."""

    def __init__(self, url: str, clients: int = 3) -> None:
        self.url, self.codes, self.stop = url, [], threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _client(self) -> None:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.url + "/", timeout=15) as r:
                    r.read()
                    self.codes.append(r.status)
            except urllib.error.HTTPError as e:
                self.codes.append(e.code)
            except OSError:
                self.codes.append(None)
                time.sleep(0.05)   # a dead listener refuses at once: do not spin

    def end(self) -> list:
        self.stop.set()
        for t in self.threads:
            t.join(20)
        return self.codes


@pytest.mark.usefixtures("require_swarm")
def test_two_replicas_one_leader_and_a_takeover_under_load_without_duplicates_or_orphans(
        tmp_path, postgres, require_swarm):
    url = postgres.create_database("replicas_swarm")
    name = f"test-{SESSION}-{secrets.token_hex(3)}"   # the set's owner label starts with the test prefix
    owner = f"wf-{name}"
    cfg = write_config(tmp_path / "config", url, name)
    a = Warmfront("--config", str(cfg), "--workers", "1", state_dir=tmp_path / "a")
    b: Warmfront | None = None
    try:
        assert wait_until(lambda: replica(a.status()).get("role") == "leader", 30), a.tail()
        a.wait_ready(2, seconds=60)
        b = Warmfront("--config", str(cfg), "--workers", "1", state_dir=tmp_path / "b")
        assert wait_until(lambda: replica(b.status()).get("role") == "follower"
                          and len(b.ready_members()) == 2, 30), b.tail()
        assert replica(b.status())["leader"] == replica(a.status())["replica"]
        assert wait_until(lambda: {m for m, s in members(a).items() if s == "ready"}
                          == {m for m, s in members(b).items() if s == "ready"}, 10), "the follower routes elsewhere"
        assert wait_until(lambda: members(a) and "shadow:running" in members(a).values(), 60), a.tail()
        assert http(b.url + "/")[0] == 200

        on_a, on_b = Load(a.url), Load(b.url)
        time.sleep(2)
        a.proc.send_signal(signal.SIGKILL)   # the leader dies mid-traffic; its members stay up
        a.proc.wait(10)
        t0 = time.monotonic()
        assert wait_until(lambda: replica(b.status()).get("role") == "leader", 15), b.tail(40)
        took = time.monotonic() - t0
        time.sleep(3)   # the new leader adopts, plans and serves on
        codes_a, codes_b = on_a.end(), on_b.end()
        assert len(codes_b) > 50 and codes_b.count(200) == len(codes_b), \
            f"the surviving replica failed {len(codes_b) - codes_b.count(200)} of {len(codes_b)} requests"
        served_by_a = [c for c in codes_a if c is not None]
        assert served_by_a and all(c == 200 for c in served_by_a), "the leader failed requests before it died"
        assert took < 10, f"takeover took {took:.1f}s"
        print(f"takeover: the follower led {took:.2f}s after the leader's SIGKILL; the survivor served "
              f"{len(codes_b)} requests meanwhile, all 200")   # README "Many hosts" (pytest -s)

        # One leader, and exactly the members it manages on the engine: nothing launched twice, nothing lost.
        assert wait_until(lambda: len(b.ready_members()) == 2 and "shadow:running" in members(b).values(), 30), \
            members(b)
        time.sleep(2)   # give a wrong reconciler time to launch or remove something
        services = {s.name for s in owned_services(require_swarm, owner)}
        assert services == set(members(b)), f"engine {sorted(services)} against members {members(b)}"
        with psycopg.connect(url) as conn:
            roles = conn.execute("SELECT replica, role FROM warmfront_replicas WHERE replica_set = %s"
                                 " AND renewed > now() - interval '2 seconds'", (name,)).fetchall()
        assert roles == [(replica(b.status())["replica"], "leader")], roles   # the dead one's row is stale
        st = b.status()
        assert st is not None and st["instance"] == owner and replica(st)["role"] == "leader"
        # Every replica recorded its own traffic into the shared history.
        with psycopg.connect(url) as conn:
            assert wait_until(lambda: conn.execute("SELECT coalesce(sum(requests), 0) FROM warmfront_minutes")
                              .fetchone()[0] >= len(codes_b), 10)
        assert b.stop() == 0
        # b was the last live replica: its pool's on_exit (remove) applied at shutdown.
        assert wait_until(lambda: not owned_services(require_swarm, owner), 20), "the last replica left services"
    finally:
        for wf in (a, b):
            if wf is not None:
                wf.cleanup()
        remove_owned_services(require_swarm, owner)
