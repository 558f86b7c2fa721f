"""Admin inputs that used to take the process down, against a real `warmfront run` over HTTP.

Before: `{"pin": 1e30}` was accepted and the loop hung (RSS 2.6 GB in 22 s, SIGTERM ignored); an
event with `duration: 100000000d` answered 500 but was saved, after which /admin/events,
/admin/status and the dashboard answered 500, also after a restart; deeply nested JSON was a 500
(RecursionError); `baseline_rps: false` was taken as 0. Now each is a 400 (or 415) with a message
naming the key, nothing invalid is stored, and a bad stored entry is skipped and reported.
"""
import json
import signal
import time

import pytest

from balancer.operator.controls import ScaleOverride, constrain
from pools.reconciler import Desired
from predictor.events import Event
from tests.proxykit import DemoBackend
from tests.runkit import Warmfront, http, wait_until

TOKEN = "h0stile"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}
CAPACITY_MAX = 3
EVENT = {"name": "sale", "kind": "campaign", "start": "2031-05-01T09:00:00Z", "duration": "2h",
         "scope": {"source": "acme"}}


def start(cfg, backend, state_dir=None) -> Warmfront:
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "pools.yaml").write_text(f"pools:\n  web:\n    backend: static\n    servers: ['127.0.0.1:{backend.port}']\n"
                                    f"    capacity: {{min: 1, max: {CAPACITY_MAX}}}\n")
    (cfg / "routing.yaml").write_text("routes:\n  - name: all\n    pool: web\n")
    w = Warmfront("--config", str(cfg), state_dir=state_dir, env={"WARMFRONT_ADMIN_TOKEN": TOKEN})
    assert wait_until(lambda: http(w.admin + "/admin/status", AUTH)[0] == 200, 20), w.tail()
    return w


@pytest.fixture(scope="module")
def backend():
    b = DemoBackend()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def wf(tmp_path_factory, backend):
    w = start(tmp_path_factory.mktemp("hostile"), backend)
    yield w
    w.cleanup()


def call(wf, method, path, body=None, headers=None, timeout=10.0):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    code, raw, hdrs = http(wf.admin + path, JSON if headers is None else headers, data=data, method=method,
                           timeout=timeout)
    return code, raw, hdrs


def refused(wf, method, path, body, code=400, headers=None) -> str:
    """Asserts `code` with a JSON error; returns the message."""
    got, raw, hdrs = call(wf, method, path, body, headers)
    assert got == code, (body if not isinstance(body, bytes) else body[:80], got, raw[:300])
    assert hdrs["Content-Type"].startswith("application/json")
    message = json.loads(raw)["error"]
    assert message and "Traceback" not in message
    return message


def still_serving(wf) -> None:
    for path in ("/admin/status", "/admin/events", "/admin/dashboard", "/admin/sources", "/admin/costs"):
        t0 = time.monotonic()
        code, raw, _ = http(wf.admin + path, AUTH, timeout=5)
        assert code == 200, (path, raw[:300], wf.tail())
        assert time.monotonic() - t0 < 2.0, path
    assert wf.proc.poll() is None


# ---------------------------------------------------------------- member counts
@pytest.mark.parametrize("body, key, says", [
    ({"pin": 1e30}, "pin", "1000"),
    ({"pin": 10 ** 30}, "pin", "1000"),
    ({"pin": CAPACITY_MAX + 1}, "pin", f"at most {CAPACITY_MAX}, the capacity.max of pool 'web'"),
    ({"min": CAPACITY_MAX + 1}, "min", "capacity.max"),
    ({"max": 999}, "max", "capacity.max"),
    ({"pin": True}, "pin", "integer"),
    ({"pin": 2.5}, "pin", "integer"),
    ({"pin": -1}, "pin", "0"),
    ({"pin": "2"}, "pin", "integer"),
    ({"min": 2, "max": 1}, "max", "min"),
    ({"pin": 1, "duration": "100000000d"}, "duration", "3650d"),
    ({"pin": 1, "duration": "31d"}, "duration", "2592000"),
    ({"pin": 1, "duration": 0}, "duration", "0.001"),
])
def test_scale_counts_beyond_capacity_or_of_the_wrong_type_are_a_400_naming_the_key(wf, body, key, says):
    message = refused(wf, "POST", "/admin/pools/web/scale", {**body, "reason": "hostile"})
    assert message.startswith(f"{key}:") and says in message, message
    assert json.loads(http(wf.admin + "/admin/status", AUTH)[1])["pools"]["web"]["override"] is None
    still_serving(wf)


def test_a_whole_float_count_is_a_count(wf):
    code, raw, _ = call(wf, "POST", "/admin/pools/web/scale", {"pin": 2.0, "duration": "1m", "reason": "x"})
    assert code == 200 and json.loads(raw)["override"]["min"] == 2
    assert call(wf, "DELETE", "/admin/pools/web/scale")[0] == 200


def test_pin_1e30_leaves_the_process_responsive_and_stoppable(tmp_path, backend):
    w = start(tmp_path / "cfg", backend)
    try:
        refused(w, "POST", "/admin/pools/web/scale", {"pin": 1e30, "reason": "boom"})
        refused(w, "POST", "/admin/events", {**EVENT, "kind": "maintenance", "scope": {"pool": "web"}, "pin": 10 ** 6})
        still_serving(w)
        t0 = time.monotonic()
        assert w.stop(signal.SIGTERM, timeout=15) is not None
        assert time.monotonic() - t0 < 15
    finally:
        w.cleanup()


def test_constrain_never_asks_for_more_than_capacity_max():
    desired = Desired(ready=1, shadow=1, shadow_state="running", max_members=4, drain_timeout=30)
    pinned = constrain(desired, ScaleOverride("web", 10, 10, 1e12, "old override", 0), []).desired
    assert (pinned.ready, pinned.max_members) == (4, 4)
    maintenance = Event("m", "maintenance", 0, 1e12, "pool", "web", pin=50)
    assert constrain(desired, None, [maintenance]).desired.ready == 4


# ---------------------------------------------------------------- durations and times
@pytest.mark.parametrize("change, key", [
    ({"duration": "100000000d"}, "duration"),
    ({"duration": 1e308}, "duration"),
    ({"duration": "367d"}, "duration"),
    ({"duration": "9" * 400}, "duration"),
    ({"duration": 5e-324}, "duration"),
    ({"duration": None, "end": "9999-12-31T00:00:00Z"}, "end"),
    ({"duration": None, "end": "2033-05-01T09:00:00Z"}, "end"),       # > 366 days after start
    ({"start": "1237-09-13T07:56:19+06:49"}, "start"),
    ({"start": "0001-01-01T00:00:00Z"}, "start"),
    ({"start": "2031-02-30T00:00:00Z"}, "start"),
    ({"start": "next tuesday"}, "start"),
    ({"multiplier": 1e300}, "multiplier"),
])
def test_unbounded_durations_and_times_are_a_400_and_nothing_is_stored(wf, change, key):
    body = {k: v for k, v in {**EVENT, "name": "bad", **change}.items() if v is not None}
    message = refused(wf, "POST", "/admin/events", body)
    assert message.startswith(key), message
    assert "bad" not in [e["name"] for e in json.loads(http(wf.admin + "/admin/events", AUTH)[1])["events"]]
    stored = wf.state_dir / "events.json"
    assert not stored.exists() or "bad" not in [e["name"] for e in json.loads(stored.read_text())]
    still_serving(wf)


def test_a_long_but_bounded_event_is_accepted_and_listed(wf):
    code, raw, _ = call(wf, "POST", "/admin/events", {**EVENT, "name": "year", "duration": "366d"})
    assert code == 201, raw
    assert json.loads(raw)["end"] == "2032-05-01T09:00:00Z"
    still_serving(wf)
    assert call(wf, "DELETE", "/admin/events/year")[0] == 200


@pytest.mark.parametrize("body, key", [
    ({"abandon_after": "100000000d"}, "abandon_after"),
    ({"abandon_after": "2h"}, "abandon_after"),
    ({"profile": {"peak_rps": 1e300}}, "profile.peak_rps"),
    ({"profile": {"peak_rps": 5, "schedule": [{"start": "10:00", "end": "09:00", "rps": 1}]}}, "profile.schedule[0].end"),
])
def test_source_settings_out_of_bounds_are_a_400(wf, body, key):
    assert refused(wf, "PUT", "/admin/sources/acme", body).startswith(key)


def test_costs_with_extreme_windows_answer_finite_json(wf):
    for query in ("since=1" + "0" * 300, "since=99999999999d", "until=0", "since=2099-01-01T00:00:00Z",
                  "since=0&until=99999999999", "since=2000-01-01"):
        code, raw, _ = http(wf.admin + "/admin/costs?" + query, AUTH)
        assert code == 200, (query, raw[:200])
        json.loads(raw, parse_constant=lambda c: pytest.fail(f"{query}: {c} in JSON"))
    for query in ("since=yesterday", "since=1e3", "until=1999-01-01T00:00:00Z", "format=", "format=xml"):
        assert json.loads(http(wf.admin + "/admin/costs?" + query, AUTH)[1])["error"], query


# ---------------------------------------------------------------- the body itself
@pytest.mark.parametrize("raw", [
    b"[" * 30000 + b"]" * 30000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b'{"reason": "x", "pin": ' + b"[" * 33 + b"]" * 33 + b"}",
])
def test_deeply_nested_json_is_a_400(wf, raw):
    for path, method in (("/admin/pools/web/scale", "POST"), ("/admin/events", "POST"), ("/admin/sources/a", "PUT")):
        assert "nested" in refused(wf, method, path, raw)
    still_serving(wf)


@pytest.mark.parametrize("path, method, body, key", [
    ("/admin/sources/a", "PUT", {"profile": {"peak_rps": 1, "baseline_rps": False}}, "profile.baseline_rps"),
    ("/admin/sources/a", "PUT", {"predictive": "no"}, "predictive"),
    ("/admin/sources/a", "PUT", {"predictive": 0}, "predictive"),
    ("/admin/sources/a", "PUT", {"latency_sensitivity": 3}, "latency_sensitivity"),
    ("/admin/sources/a", "PUT", {"profile": {"peak_rps": "5"}}, "profile.peak_rps"),
    ("/admin/sources/a", "PUT", {"nope": 1}, "nope"),
    ("/admin/events", "POST", {**EVENT, "multiplier": "3"}, "multiplier"),
    ("/admin/events", "POST", {**EVENT, "kind": "maintenance", "drain": 1}, "drain"),
    ("/admin/events", "POST", {**EVENT, "scope": {"source": "a", "pool": "web"}}, "scope"),
    ("/admin/events", "POST", {**EVENT, "name": "x" * 201}, "name"),
    ("/admin/pools/web/scale", "POST", {"pin": 1, "reason": ""}, "reason"),
    ("/admin/pools/web/scale", "POST", {"pin": 1, "reason": 7}, "reason"),
    ("/admin/pools/web/scale", "POST", [1, 2], "-"),
    ("/admin/pools/web/scale", "POST", "pin", "-"),
])
def test_wrong_types_are_a_400_naming_the_key(wf, path, method, body, key):
    assert refused(wf, method, path, body).startswith(f"{key}:")


@pytest.mark.parametrize("raw, headers, code, says", [
    (b'{"pin": NaN, "reason": "x"}', JSON, 400, "NaN"),
    (b'{"pin": Infinity, "reason": "x"}', JSON, 400, "Infinity"),
    (b"{not json", JSON, 400, "JSON"),
    (b"", JSON, 400, "JSON"),
    (b'{"pin": 1, "reason": "\xff"}', JSON, 400, "UTF-8"),
    (b'{"pin": 1, "reason": "x"}', {**AUTH, "Content-Type": "text/plain"}, 415, "application/json"),
    (b'{"pin": 1, "reason": "x"}', {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    (b'{"pin": 1, "reason": "x"}', AUTH, 415, "application/json"),
    (b'{"pin": 1, "reason": "x"}', {**AUTH, "Content-Type": "application/json; charset=latin-1"}, 415, "UTF-8"),
    (b"{" + b" " * 70000 + b"}", JSON, 413, "larger"),
])
def test_bodies_that_are_not_json_get_a_clear_4xx(wf, raw, headers, code, says):
    assert says in refused(wf, "POST", "/admin/pools/web/scale", raw, code=code, headers=headers)


def test_a_body_with_a_json_suffix_type_is_json(wf):
    code, raw, _ = call(wf, "PUT", "/admin/sources/suffix", {"predictive": False},
                        {**AUTH, "Content-Type": "application/merge-patch+json"})
    assert code == 200 and json.loads(raw)["predictive"] is False


def test_null_resets_a_source_setting_to_its_default(wf):
    call(wf, "PUT", "/admin/sources/nulls", {"predictive": False, "latency_sensitivity": "high"})
    code, raw, _ = call(wf, "PUT", "/admin/sources/nulls", {"predictive": None, "latency_sensitivity": None})
    assert code == 200 and (json.loads(raw)["predictive"], json.loads(raw)["latency_sensitivity"]) == (True, "normal")


# ---------------------------------------------------------------- state written by someone else
def test_bad_stored_events_and_sources_are_skipped_and_reported_after_a_restart(tmp_path, backend):
    state = tmp_path / "state"
    state.mkdir()
    good = {**EVENT, "name": "good", "duration": 7200.0}
    (state / "events.json").write_text(json.dumps([
        {**EVENT, "name": "huge", "duration": 8640000000000.0},       # what `100000000d` used to store
        {**EVENT, "name": "ancient", "start": "0001-01-01T00:00:00Z"},
        "not an event", good]))
    (state / "sources.json").write_text(json.dumps({"sources": [
        {"source": "ok", "predictive": False},
        {"source": "bad", "profile": {"peak_rps": 1, "baseline_rps": False}},
        {"source": "worse", "predictive": True, "unknown_key": 1}]}))
    w = start(tmp_path / "cfg", backend, state_dir=state)
    try:
        still_serving(w)
        events = json.loads(http(w.admin + "/admin/events", AUTH)[1])
        assert [e["name"] for e in events["events"]] == ["good"]
        assert {s["name"] for s in events["skipped"]} == {"huge", "ancient", "#2"}
        assert any("duration" in s["error"] for s in events["skipped"])
        status = json.loads(http(w.admin + "/admin/status", AUTH)[1])
        assert len(status["events_skipped"]) == 3
        sources = {s["source"]: s for s in json.loads(http(w.admin + "/admin/sources", AUTH)[1])["sources"]}
        assert sources["ok"]["predictive"] is False and "bad" not in sources and "worse" not in sources
        assert "event.invalid_skipped" in w.log_path.read_text()
        # the next write keeps only what validates
        assert call(w, "POST", "/admin/events", {**EVENT, "name": "new"})[0] == 201
        assert [e["name"] for e in json.loads((state / "events.json").read_text())] == ["good", "new"]
    finally:
        w.cleanup()


def test_an_unreadable_events_file_does_not_stop_the_start(tmp_path, backend):
    state = tmp_path / "state"
    state.mkdir()
    (state / "events.json").write_text("[" * 100000)
    (state / "sources.json").write_text("{not json")
    w = start(tmp_path / "cfg", backend, state_dir=state)
    try:
        still_serving(w)
        assert json.loads(http(w.admin + "/admin/events", AUTH)[1])["skipped"][0]["name"] == "*"
    finally:
        w.cleanup()


# ---------------------------------------------------------------- what the document admits
def test_api_durations_are_the_documented_forms(wf):
    for duration, code in (("1h30m", 200), ("2d12h", 200), ("90m", 200), (5400, 200), (0.25, 200),
                           ("1.5h", 400), (" 1h", 400), ("5400", 400), ("0h5m", 400)):
        got, raw, _ = call(wf, "POST", "/admin/pools/web/scale", {"pin": 1, "duration": duration, "reason": "form"})
        assert got == code, (duration, raw)
        if code == 400:
            assert json.loads(raw)["key"] == "duration", raw
    assert call(wf, "DELETE", "/admin/pools/web/scale")[0] == 200


def test_an_integer_past_float_range_is_a_400(wf):
    big = b"1" + b"0" * 400
    assert refused(wf, "POST", "/admin/pools/web/scale", b'{"pin": 1, "reason": "x", "duration": ' + big + b"}")
    assert refused(wf, "PUT", "/admin/sources/a", b'{"abandon_after": ' + big + b"}").startswith("abandon_after")


@pytest.mark.parametrize("name", ["{a/b", "a}", "x/y", "%41", ".."])
def test_any_event_name_that_can_be_created_can_be_read_and_deleted(wf, name):
    from urllib.parse import quote
    assert call(wf, "POST", "/admin/events", {**EVENT, "name": name})[0] == 201
    assert call(wf, "GET", "/admin/events/" + quote(name, safe=""))[0] == 200
    assert call(wf, "DELETE", "/admin/events/" + quote(name, safe=""))[0] == 200


def test_the_document_bounds_this_pool_and_lists_min_max_pairs(wf):
    doc = json.loads(http(wf.admin + "/admin/openapi.json", AUTH)[1])
    body = doc["paths"]["/admin/pools/web/scale"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["pin"]["anyOf"][0]["maximum"] == CAPACITY_MAX
    pairs = [b for b in body["oneOf"][1]["anyOf"] if b["required"] == ["min", "max"]]
    assert [b["properties"]["min"]["const"] for b in pairs] == list(range(CAPACITY_MAX + 1))
    event = doc["components"]["schemas"]["EventSpec"]
    assert "end" not in event["properties"] and "duration" in event["required"]
    # `end` is still taken, as in events.yaml
    assert call(wf, "POST", "/admin/events", {**{k: v for k, v in EVENT.items() if k != "duration"},
                                              "name": "ends", "end": "2031-05-01T10:00:00Z"})[0] == 201
    assert call(wf, "DELETE", "/admin/events/ends")[0] == 200
