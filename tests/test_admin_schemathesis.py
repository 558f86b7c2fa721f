"""Schemathesis against a real `warmfront run`: the admin API and /admin/openapi.json agree.

The CLI runs in a subprocess the way an outside checker runs it: no hooks, every check (server
errors, undocumented statuses and content types, schema-valid requests rejected, schema-violating
requests accepted, auth ignored, ...) over all four phases, seeded and bounded by examples per
operation. The admin token is set, so the document declares auth and `ignored_auth` holds the
server to it; the pool is static, in front of a real backend.

No hooks: every rule the server enforces is in the document (openapi.py says how: a scale path
per pool with its capacity.max, max >= min and a window's end after its start as listed pairs,
durations in forms a pattern bounds, events as start + duration), so whatever schemathesis
generates from it is accepted, and whatever breaks it is refused. The window rule alone is 1440
branches, which is most of this test's time (the coverage phase walks every branch).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import schemathesis
except ImportError:  # pragma: no cover - the test extra installs it
    schemathesis = None

TOKEN = "schemathesis-t0ken"
CAPACITY_MAX = 3
POOLS = """pools:
  web:
    backend: static
    servers: ['127.0.0.1:{port}']
    capacity: {{min: 1, max: %d}}
""" % CAPACITY_MAX
ROUTING = "routes:\n  - name: all\n    pool: web\n"
MAX_EXAMPLES = 10     # per operation in fuzzing and stateful; coverage walks every branch regardless
SEED = 1


# ---------------------------------------------------------------- the test
@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    from tests.proxykit import DemoBackend
    from tests.runkit import Warmfront, http, wait_until
    backend = DemoBackend()
    cfg = tmp_path_factory.mktemp("st")
    (cfg / "pools.yaml").write_text(POOLS.format(port=backend.port))
    (cfg / "routing.yaml").write_text(ROUTING)
    w = Warmfront("--config", str(cfg), env={"WARMFRONT_ADMIN_TOKEN": TOKEN})
    try:
        assert wait_until(lambda: http(w.admin + "/healthz")[0] == 200, 20), w.tail()
        yield w
    finally:
        w.cleanup()
        backend.stop()


@pytest.mark.skipif(schemathesis is None, reason="schemathesis is not installed (pip install -e '.[test]')")
@pytest.mark.timeout(180)
def test_schemathesis_finds_no_disagreement_between_document_and_server(wf, tmp_path):
    cli = Path(sys.executable).with_name("schemathesis")
    cmd = [str(cli), "run", f"{wf.admin}/admin/openapi.json", "--header", f"Authorization: Bearer {TOKEN}",
           "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful", "--seed", str(SEED),
           "--max-examples", str(MAX_EXAMPLES), "--workers", "1", "--no-color", "--request-timeout", "10"]
    env = {k: v for k, v in os.environ.items() if k != "SCHEMATHESIS_HOOKS"}
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-12000:] + "\n--- warmfront log ---\n" + wf.tail(30)
    generated = re.search(r"(\d+) generated", out)
    assert generated and int(generated.group(1)) > 100, out[-3000:]
    print(generated.group(0), "requests, no failures")
    assert wf.proc.poll() is None, wf.tail()
