"""Hot reload under load: a broken file is refused with file:line: key and nothing changes; a good one
applies (new routes at once, changed pools rolled through drain) without a failed request."""
import json
import signal
import threading

import pytest

from tests.runkit import Warmfront, copy_config, http, wait_until


class Load:
    """A bounded request loop in a thread, counting every response by status."""

    def __init__(self, url: str, path: str = "/") -> None:
        self.url, self.path = url, path
        self.codes: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for _ in range(100_000):
            if self._stop.is_set():
                return
            code = http(self.url + self.path, {"X-Tenant": "loadgen"}, timeout=10)[0]
            self.codes[code] = self.codes.get(code, 0) + 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)


@pytest.fixture
def running(tmp_path):
    cfg = copy_config(tmp_path)
    w = Warmfront("--config", str(cfg))
    try:
        w.wait_ready(2)
        yield w, cfg
    finally:
        w.cleanup()


def reload(w) -> tuple[int, dict]:
    code, raw, _ = http(w.admin + "/admin/reload", data=b"", method="POST")
    return code, json.loads(raw)


def test_broken_then_good_reload_under_load_fails_no_request(running):
    w, cfg = running
    pools = cfg / "pools.yaml"
    good = pools.read_text()
    before = {m["id"] for m in w.ready_members()}
    with Load(w.url) as load:
        pools.write_text(good.replace("concurrency: 32", "concurrency: [32"))
        code, body = reload(w)
        assert code == 400 and "pools.yaml:" in body["error"] and body["file"].endswith("pools.yaml")
        assert {m["id"] for m in w.ready_members()} == before       # the running config stays
        # A member-shaping change (warm-up) rolls the pool; a new route applies at once.
        pools.write_text(good.replace("requests: 5 ", "requests: 2 "))
        routing = cfg / "routing.yaml"
        routing.write_text(routing.read_text().replace(
            "routes:\n", "routes:\n  - name: health\n    match: {path_prefix: /hz}\n    pool: web\n    type: hz\n", 1))
        code, body = reload(w)
        assert code == 200, body
        assert body["rolled"] == ["web"] and body["routes"] == 4
        rolled = wait_until(lambda: (lambda ids: len(ids) >= 2 and not ids & before)(
            {m["id"] for m in w.ready_members()}) and not [
            m for m in w.status()["pools"]["web"]["members"] if m["id"] in before], 30)
        assert rolled, w.tail()
    assert set(load.codes) == {200} and load.codes[200] > 20, load.codes


def test_sighup_rereads_the_yaml(running):
    w, cfg = running
    pools = cfg / "pools.yaml"
    pools.write_text(pools.read_text().replace("min: 2 ", "min: 3 "))
    w.proc.send_signal(signal.SIGHUP)
    assert len(w.wait_ready(3)) == 3
    assert any('"config.reloaded"' in line and '"retuned": ["web"]' in line
               for line in w.log_path.read_text().splitlines())
