"""The operator API over real HTTP against a running `warmfront run`: shapes, errors and the token."""
import json

import pytest

from tests.runkit import Warmfront, copy_config, http, wait_until

H = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    cfg = copy_config(tmp_path_factory.mktemp("api"))
    w = Warmfront("--config", str(cfg))
    try:
        w.wait_ready(2)
        yield w
    finally:
        w.cleanup()


def call(wf, method, path, body=None, headers=None):
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    code, raw, hdrs = http(wf.admin + path, {**H, **(headers or {})}, data=data, method=method)
    return code, raw, hdrs


def jcall(wf, method, path, body=None, headers=None):
    code, raw, _ = call(wf, method, path, body, headers)
    return code, json.loads(raw)


def test_events_can_be_added_listed_replaced_and_deleted(wf):
    event = {"name": "spring-sale", "kind": "campaign", "start": "2031-05-01T09:00:00Z", "duration": "2h",
             "scope": {"source": "acme"}, "multiplier": 3}
    code, body = jcall(wf, "POST", "/admin/events", event)
    assert code == 201 and body["end"] == "2031-05-01T11:00:00Z" and body["origin"] == "api"
    assert jcall(wf, "POST", "/admin/events", {**event, "multiplier": 2})[0] == 409   # exists: PUT replaces
    replacement = {k: v for k, v in event.items() if k != "name"}
    assert jcall(wf, "PUT", "/admin/events/spring-sale", {**replacement, "multiplier": 2})[0] == 200
    code, body = jcall(wf, "GET", "/admin/events")
    assert [(e["name"], e["multiplier"]) for e in body["events"]] == [("spring-sale", 2.0)]
    assert [e["name"] for e in wf.status()["events"]] == ["spring-sale"]
    assert jcall(wf, "DELETE", "/admin/events/spring-sale") == (200, {"deleted": "spring-sale"})
    code, body = jcall(wf, "DELETE", "/admin/events/spring-sale")
    assert code == 404 and "spring-sale" in body["error"]


def test_invalid_event_is_a_400_naming_the_key(wf):
    code, body = jcall(wf, "POST", "/admin/events", {"name": "x", "start": "2031-01-01T00:00:00Z",
                                                      "duration": "1h", "scope": {"pool": "web"}})
    assert code == 400 and body["error"].startswith("kind:")
    code, body = jcall(wf, "POST", "/admin/events", {"name": "x", "kind": "campaign", "start": "2031-01-01",
                                                      "duration": "1h", "scope": {"pool": "web"}, "pin": 2})
    assert code == 400 and "maintenance" in body["error"]
    code, raw, _ = call(wf, "POST", "/admin/events", b"{not json")
    assert code == 400 and "JSON" in json.loads(raw)["error"]


def test_source_opt_out_and_profile_are_stored_and_shown_in_status(wf):
    for _ in range(5):
        http(wf.url + "/", {"X-Tenant": "optout"})
    # counted once the workers have reported them (about a second)
    assert wait_until(lambda: any(s["source"] == "optout" and s["requests"] == 5
                                  for s in (wf.status() or {}).get("sources", [])), 10)
    profile = {"peak_rps": 40, "schedule": [{"start": "09:00", "end": "17:00", "rps": 30, "days": ["mon", "tue"]}]}
    code, body = jcall(wf, "PUT", "/admin/sources/optout",
                       {"predictive": False, "latency_sensitivity": "high", "abandon_after": "2s", "profile": profile})
    assert code == 200
    assert (body["predictive"], body["latency_sensitivity"], body["abandon_after"]) == (False, "high", 2.0)
    assert body["profile"]["schedule"][0]["rps"] == 30 and body["requests_24h"] == 5
    code, body = jcall(wf, "GET", "/admin/sources/optout")
    assert body["predictive"] is False
    assert jcall(wf, "PUT", "/admin/sources/optout", {"predictive": True})[1]["latency_sensitivity"] == "high"
    jcall(wf, "PUT", "/admin/sources/optout", {"predictive": False})
    rows = [s for s in wf.status()["sources"] if s["source"] == "optout"]
    assert rows and all(s["predictive"] is False for s in rows)
    code, body = jcall(wf, "PUT", "/admin/sources/optout",
                       {"profile": {"peak_rps": 5, "schedule": [{"start": "10:00", "end": "09:00", "rps": 1}]}})
    assert code == 400 and "end" in body["error"]
    code, body = jcall(wf, "GET", "/admin/sources")
    assert "optout" in [s["source"] for s in body["sources"]]


def test_scale_pin_holds_members_and_shows_in_status_then_clears(wf):
    code, body = jcall(wf, "POST", "/admin/pools/web/scale", {"pin": 3, "duration": "5m", "reason": "load test"})
    assert code == 200 and body["override"]["min"] == body["override"]["max"] == 3
    wf.wait_ready(3)
    pool = wf.status()["pools"]["web"]
    assert pool["override"]["reason"] == "load test"
    assert any(a["action"] == "override" and "load test" in a["reason"] for a in pool["recent_actions"])
    code, body = jcall(wf, "DELETE", "/admin/pools/web/scale")
    assert (code, body["override"]) == (200, None)
    assert wf.status()["pools"]["web"]["override"] is None
    assert jcall(wf, "DELETE", "/admin/pools/web/scale")[0] == 404
    code, body = jcall(wf, "POST", "/admin/pools/nope/scale", {"pin": 1, "reason": "x"})
    assert code == 404 and "nope" in body["error"]
    code, body = jcall(wf, "POST", "/admin/pools/web/scale", {"min": 3, "max": 1, "reason": "x"})
    assert code == 400 and "max" in body["error"]
    assert jcall(wf, "POST", "/admin/pools/web/scale", {"pin": 2})[0] == 400   # reason required


def test_drain_takes_a_member_out_and_its_place_is_refilled(wf):
    victim = wf.wait_ready(2)[0]["id"]
    code, body = jcall(wf, "POST", f"/admin/pools/web/members/{victim}/drain", b"")
    assert (code, body["state"]) == (200, "draining")
    gone = wait_until(lambda: victim not in [m["id"] for m in wf.status()["pools"]["web"]["members"]], 20)
    assert gone, wf.tail()
    wf.wait_ready(2)
    actions = wf.status()["pools"]["web"]["recent_actions"]
    assert any(a["action"] == "drain" and a["member"] == victim and a["reason"] == "manual" for a in actions)
    assert jcall(wf, "POST", f"/admin/pools/web/members/{victim}/drain", b"")[0] == 404


def test_costs_as_json_and_csv_with_requests_attributed(wf):
    for _ in range(10):
        http(wf.url + "/", {"X-Tenant": "payer"})
    def attributed() -> bool:   # the workers report about once a second, the history then merges
        body = jcall(wf, "GET", "/admin/costs?since=1h")[1]
        return body["pools"]["web"]["total_s"] > 0 and any(
            s["source"] == "payer" and s["requests"] == 10 for s in body["sources"])
    wait_until(attributed, 15)
    code, body = jcall(wf, "GET", "/admin/costs?since=1h")
    assert code == 200 and body["unit"] == "container-seconds"
    web = body["pools"]["web"]
    assert set(web["tiers"]) == {"baseline", "burst", "overhead", "predictive_ready", "shadow"}
    assert web["tiers"]["baseline"] > 0
    payer = [s for s in body["sources"] if s["source"] == "payer"]
    assert payer and payer[0]["requests"] == 10 and payer[0]["total_s"] > 0
    code, raw, hdrs = call(wf, "GET", "/admin/costs?since=1h&format=csv")
    assert code == 200 and hdrs["Content-Type"].startswith("text/csv")
    assert raw.decode().splitlines()[0].startswith("pool,source,predictive,requests")
    code, raw, _ = call(wf, "GET", "/admin/costs", headers={"Accept": "text/csv"})
    assert raw.startswith(b"pool,source")
    code, body = jcall(wf, "GET", "/admin/costs?since=yesterday")
    assert code == 400 and "since" in body["error"]


def test_mutating_endpoints_require_the_token_when_one_is_configured(tmp_path):
    cfg = copy_config(tmp_path)
    w = Warmfront("--config", str(cfg), env={"WARMFRONT_ADMIN_TOKEN": "tok3n"})
    try:
        assert wait_until(lambda: http(w.admin + "/healthz")[0] == 200, 20)
        for method, path in [("POST", "/admin/events"), ("DELETE", "/admin/events/x"), ("PUT", "/admin/sources/a"),
                             ("POST", "/admin/pools/web/scale"), ("DELETE", "/admin/pools/web/scale"),
                             ("POST", "/admin/pools/web/members/m/drain"), ("POST", "/admin/reload")]:
            code, raw, _ = http(w.admin + path, H, data=b"{}", method=method)
            assert code == 401 and json.loads(raw)["error"], (method, path)
        code, raw, _ = http(w.admin + "/admin/reload", {"Authorization": "Bearer tok3n"}, data=b"", method="POST")
        assert code == 200 and json.loads(raw)["status"] == "reloaded"
    finally:
        w.cleanup()
