"""Scale overrides, events and error bodies as a new user meets them, over real HTTP against a
running `warmfront run` with two process pools (issue 13, item 6).

Before: a pin above capacity.max was taken; a manual pin under a maintenance pin looked applied and
status did not say why it was not; `desired` showed the planner's count under an override; clearing
an override retired members at once, past scale_down_delay; POSTing an existing event name replaced
it silently and a scope could name any pool; errors carried pydantic's wording; times were epoch floats.
"""
import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.runkit import Warmfront, http, wait_until

H = {"Content-Type": "application/json"}
DELAY_S = 6.0          # scale_down_delay of pool web
POOL = """    backend: process
    command: warmfront demo-backend --port {{port}}
    health: {{path: /healthz, interval: 1s, timeout: 1s, healthy_threshold: 1}}
    capacity: {{min: 1, max: 4}}
    scaling: {{scale_down_delay: {delay}s, cooldown: 0s}}
    drain_timeout: 2s
    stop_timeout: 1s
"""


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("overrides")
    (cfg / "pools.yaml").write_text("pools:\n  web:\n" + POOL.format(delay=DELAY_S)
                                    + "  batch:\n" + POOL.format(delay=300))
    (cfg / "routing.yaml").write_text("routes:\n  - name: all\n    pool: web\n")
    w = Warmfront("--config", str(cfg))
    try:
        w.wait_ready(1)
        w.wait_ready(1, pool="batch")
        yield w
    finally:
        w.cleanup()


def jcall(wf, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    code, raw, _ = http(wf.admin + path, H, data=data, method=method)
    return code, json.loads(raw)


def parse_iso(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    assert moment.tzinfo is not None and moment.utcoffset() == timedelta(0), value
    return moment


def event(name: str, **extra) -> dict:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return {"name": name, "kind": "maintenance", "start": (now - timedelta(minutes=1)).isoformat(),
            "duration": "1h", "scope": {"pool": "batch"}, **extra}


def test_counts_beyond_capacity_max_or_below_zero_are_refused_naming_key_and_limit(wf):
    for body, key in [({"pin": 9}, "pin"), ({"min": 5}, "min"), ({"max": 7}, "max")]:
        code, answer = jcall(wf, "POST", "/admin/pools/web/scale", {**body, "reason": "too many"})
        assert code == 400 and answer["key"] == key, answer
        assert answer["error"] == (f"{key}: must be at most 4, the capacity.max of pool 'web' "
                                   f"(got {body[key]})")
    code, answer = jcall(wf, "POST", "/admin/pools/web/scale", {"max": -1, "reason": "negative"})
    assert (code, answer) == (400, {"error": "max: must be >= 0", "key": "max"})
    assert wf.status()["pools"]["web"]["override"] is None


def test_the_default_duration_is_documented_and_echoed_as_until(wf):
    schema = jcall(wf, "GET", "/admin/openapi.json")[1]["components"]["schemas"]["ScaleRequest"]
    assert schema["properties"]["duration"]["default"] == 3600 and "Default `1h`" in \
        schema["properties"]["duration"]["description"]
    assert "reason" in schema["required"] and "Required" in schema["properties"]["reason"]["description"]
    before = datetime.now(timezone.utc)
    code, body = jcall(wf, "POST", "/admin/pools/batch/scale", {"pin": 1, "reason": "default duration"})
    assert code == 200
    until = parse_iso(body["override"]["until"])
    assert before + timedelta(minutes=59) < until < before + timedelta(minutes=61)
    parse_iso(body["override"]["created"])
    assert jcall(wf, "DELETE", "/admin/pools/batch/scale")[0] == 200


def test_a_maintenance_pin_shadowing_a_manual_pin_is_said_in_the_answer_and_status(wf):
    assert jcall(wf, "POST", "/admin/events", event("db-upgrade", pin=2))[0] == 201
    code, body = jcall(wf, "POST", "/admin/pools/batch/scale", {"pin": 3, "reason": "load test"})
    assert code == 200
    override = body["override"]
    assert (override["min"], override["max"], override["effective"]) == (3, 3, 2)
    assert override["shadowed_by"] == "event:db-upgrade" and "db-upgrade" in override["note"]
    assert body["desired"]["ready"] == 2 and body["desired"]["set_by"] == "event:db-upgrade"
    pool = wf.status()["pools"]["batch"]
    assert pool["override"]["shadowed_by"] == "event:db-upgrade" and pool["override"]["effective"] == 2
    assert pool["desired"]["ready"] == 2 and pool["planned"]["ready"] == 1   # the planner's own, kept apart
    assert wf.wait_ready(2, pool="batch")
    # the event gone, the manual pin drives the pool
    assert jcall(wf, "DELETE", "/admin/events/db-upgrade")[0] == 200
    pool = wf.status()["pools"]["batch"]
    assert (pool["override"]["effective"], pool["override"]["shadowed_by"]) == (3, None)
    assert (pool["desired"]["ready"], pool["desired"]["set_by"]) == (3, "override")
    jcall(wf, "DELETE", "/admin/pools/batch/scale")


def test_clearing_an_override_lets_members_go_only_after_scale_down_delay(wf):
    assert jcall(wf, "POST", "/admin/pools/web/scale", {"pin": 3, "duration": "5m", "reason": "soak"})[0] == 200
    wf.wait_ready(3)
    cleared = time.time()
    code, body = jcall(wf, "DELETE", "/admin/pools/web/scale")
    assert code == 200 and body["override"] is None
    assert (body["desired"]["ready"], body["desired"]["set_by"]) == (3, "scale_down_delay")
    held_until = parse_iso(body["desired"]["held_until"]).timestamp()
    assert cleared + DELAY_S - 1 < held_until < cleared + DELAY_S + 1
    # while the delay runs, nothing is retired
    while time.time() < held_until - 1.5:
        assert len(wf.ready_members()) == 3 and wf.status()["pools"]["web"]["desired"]["ready"] == 3
        time.sleep(0.5)
    assert wait_until(lambda: wf.status()["pools"]["web"]["desired"]["ready"] == 1, DELAY_S + 10)
    assert wf.status()["pools"]["web"]["desired"]["set_by"] is None
    assert wait_until(lambda: len(wf.ready_members()) == 1, 20), wf.tail()
    retired = [a for a in wf.status()["pools"]["web"]["recent_actions"] if a["action"] in ("drain", "retire")]
    assert retired and all(parse_iso(a["time"]).timestamp() >= held_until - 1 for a in retired)


def test_posting_an_existing_event_name_is_a_409_that_says_to_put(wf):
    spring = {**event("spring"), "kind": "campaign", "scope": {"source": "acme"}}
    assert jcall(wf, "POST", "/admin/events", spring)[0] == 201
    code, body = jcall(wf, "POST", "/admin/events", {**spring, "multiplier": 2})
    assert code == 409 and "PUT /admin/events/spring" in body["error"]
    assert jcall(wf, "GET", "/admin/events/spring")[1]["multiplier"] is None   # not replaced
    replacement = {k: v for k, v in spring.items() if k != "name"}
    code, body = jcall(wf, "PUT", "/admin/events/spring", {**replacement, "multiplier": 2})
    assert (code, body["multiplier"]) == (200, 2)
    assert jcall(wf, "PUT", "/admin/events/autumn", replacement)[0] == 201
    code, body = jcall(wf, "PUT", "/admin/events/autumn", spring)
    assert code == 400 and body["key"] == "name"
    for name in ("spring", "autumn"):
        assert jcall(wf, "DELETE", f"/admin/events/{name}")[0] == 200


def test_an_event_scoped_to_a_pool_that_does_not_exist_is_a_400(wf):
    code, body = jcall(wf, "POST", "/admin/events", {**event("ghost"), "scope": {"pool": "nope"}})
    assert code == 400 and body["key"] == "scope.pool" and "'nope'" in body["error"]
    code, body = jcall(wf, "PUT", "/admin/events/ghost", {k: v for k, v in event("x", scope={"pool": "nope"}).items()
                                                          if k != "name"})
    assert code == 400 and body["key"] == "scope.pool"
    assert jcall(wf, "GET", "/admin/events/ghost")[0] == 404


@pytest.mark.parametrize("method, path, body, error", [
    ("POST", "/admin/pools/web/scale", {"pin": "x", "reason": "r"}, "pin: must be an integer, got the string 'x'"),
    ("POST", "/admin/pools/web/scale", {"pin": 1}, "reason: required key is missing"),
    ("POST", "/admin/pools/web/scale", {"pin": 1, "reason": "r", "pni": 2}, "pni: unknown key"),
    ("PUT", "/admin/sources/acme", {"predictive": "maybe"}, "predictive: must be true or false, got the string 'maybe'"),
    ("PUT", "/admin/sources/acme", {"latency_sensitivity": "x"},
     "latency_sensitivity: must be one of 'low', 'normal' or 'high', got 'x'"),
    ("POST", "/admin/events", {**event("e"), "drain": 1}, "drain: must be true or false, got the number 1"),
])
def test_validation_errors_read_like_check(wf, method, path, body, error):
    code, answer = jcall(wf, method, path, body)
    assert (code, answer["error"]) == (400, error)
    assert answer["key"] == error.split(":")[0]


def test_times_in_the_admin_json_are_iso_8601_and_the_dashboard_shows_them(wf):
    assert jcall(wf, "PUT", "/admin/sources/acme", {"predictive": False})[0] == 200
    parse_iso(jcall(wf, "GET", "/admin/sources/acme")[1]["updated"])
    actions = wf.status()["pools"]["web"]["recent_actions"]
    assert actions
    for action in actions:
        parse_iso(action["time"])
    code, html, _ = http(wf.admin + "/admin/dashboard")
    shown = parse_iso(actions[-1]["time"]).strftime("%Y-%m-%d %H:%M:%S")
    assert code == 200 and shown in html.decode()
