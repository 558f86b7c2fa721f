import base64

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from balancer.operator.server import admin_needs_token, make_admin_app, status_sources
from balancer.control.history import History
from balancer.operator.metrics import make_registry
from balancer.dataplane.stats import ProxyStats
from pools.members import MemberState, MemberView

TOKEN = "s3cret-token"


def members() -> dict[str, list[MemberView]]:
    return {
        "web": [
            MemberView("web-1", "web", "127.0.0.1", 9001, MemberState.READY),
            MemberView("web-2", "web", "127.0.0.1", 9002, MemberState.READY),
            MemberView("web-3", "web", "127.0.0.1", 9003, MemberState.SHADOW, shadow_state="paused"),
        ]
    }


@pytest.fixture
def stats() -> ProxyStats:
    return ProxyStats()


async def serve(stats: ProxyStats, token: str | None, status: dict | None = None):
    app = make_admin_app(lambda: status or {"pools": {}, "sources": []}, make_registry(lambda: stats, members), token)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def get(server: TestServer, path: str, token: str | None = None) -> tuple[int, str, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url(path), headers=headers) as resp:
            return resp.status, resp.content_type, await resp.text()


async def test_healthz_answers_ok(stats):
    server = await serve(stats, None)
    try:
        assert await get(server, "/healthz") == (200, "application/json", '{"status": "ok"}')
    finally:
        await server.close()


async def test_metrics_expose_proxy_counters_with_labels(stats):
    for _ in range(3):
        stats.answered("web", "page", b"GET", 200, 0.0)
    stats.answered("web", "api", b"POST", 502, 0.0)
    stats.answered("web", "static", b"GET", 200, 0.004)
    stats.answered("web", "static", b"BREW", 200, 0.3)
    stats.connections_open = 7
    server = await serve(stats, None)
    try:
        code, ctype, text = await get(server, "/metrics")
    finally:
        await server.close()
    assert code == 200 and ctype == "text/plain"
    assert 'warmfront_requests_total{code="200",method="GET",pool="web",type="page"} 3.0' in text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples["warmfront_requests_total", (("code", "502"), ("method", "POST"), ("pool", "web"), ("type", "api"))] == 1
    # a method outside the standard set is counted as `other`: a client cannot grow the label set
    assert samples["warmfront_requests_total", (("code", "200"), ("method", "other"), ("pool", "web"),
                                                ("type", "static"))] == 1
    assert samples["warmfront_upstream_latency_seconds_bucket", (("le", "0.005"), ("pool", "web"))] == 1
    assert samples["warmfront_upstream_latency_seconds_bucket", (("le", "0.5"), ("pool", "web"))] == 2
    assert samples["warmfront_upstream_latency_seconds_bucket", (("le", "+Inf"), ("pool", "web"))] == 2
    assert samples["warmfront_upstream_latency_seconds_count", (("pool", "web"),)] == 2
    assert samples["warmfront_upstream_latency_seconds_sum", (("pool", "web"),)] == pytest.approx(0.304)
    assert samples["warmfront_connections_open", ()] == 7
    assert samples["warmfront_pool_members", (("pool", "web"), ("state", "ready"))] == 2
    assert samples["warmfront_pool_members", (("pool", "web"), ("state", "shadow"))] == 1
    assert samples["warmfront_pool_members", (("pool", "web"), ("state", "draining"))] == 0


async def test_metrics_reflect_counts_added_after_start(stats):
    server = await serve(stats, None)
    try:
        _, _, before = await get(server, "/metrics")
        stats.answered("api", "api", b"GET", 200, 0.0)
        _, _, after = await get(server, "/metrics")
    finally:
        await server.close()
    assert 'pool="api"' not in before
    assert 'warmfront_requests_total{code="200",method="GET",pool="api",type="api"} 1.0' in after


async def test_token_is_required_except_for_healthz(stats):
    status = {"pools": {"web": {"ready": 2}}, "sources": [{"source": "alice"}]}
    server = await serve(stats, TOKEN, status)
    try:
        for path in ("/admin/status", "/metrics", "/nowhere"):
            code, ctype, body = await get(server, path)
            assert (code, ctype) == (401, "application/json"), path
            assert "error" in body
            assert (await get(server, path, "wrong"))[0] == 401
        assert (await get(server, "/healthz"))[0] == 200
        code, _, body = await get(server, "/admin/status", TOKEN)
        assert code == 200 and '"alice"' in body and '"ready": 2' in body
        assert (await get(server, "/metrics", TOKEN))[0] == 200
    finally:
        await server.close()


async def test_a_browser_can_authenticate_with_basic_auth(stats):
    server = await serve(stats, TOKEN, {"pools": {}, "sources": []})
    basic = lambda user, password: {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}  # noqa: E731
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.make_url("/admin/status")) as resp:
                assert resp.status == 401
                assert 'Basic realm="warmfront admin"' in resp.headers.getall("WWW-Authenticate")
                assert "Bearer" in resp.headers.getall("WWW-Authenticate")
            for headers, code in ((basic("admin", TOKEN), 200), (basic("", TOKEN), 200), (basic("admin", "nope"), 401),
                                  ({"Authorization": "Basic !!notbase64"}, 401), ({"Authorization": "Basic "}, 401)):
                async with session.get(server.make_url("/admin/status"), headers=headers) as resp:
                    assert resp.status == code, headers
    finally:
        await server.close()


async def test_unknown_path_is_a_json_404(stats):
    server = await serve(stats, TOKEN)
    try:
        assert await get(server, "/nope", TOKEN) == (404, "application/json", '{"error": "Not Found"}')
    finally:
        await server.close()


async def test_wrong_method_is_a_json_405(stats):
    server = await serve(stats, None)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(server.make_url("/admin/status")) as resp:
                assert resp.status == 405
                assert "GET" in resp.headers["Allow"]
                assert (await resp.json())["error"] == "Method Not Allowed"
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("host", "needed"),
    [
        ("127.0.0.1", False), ("127.8.9.10", False), ("::1", False), ("[::1]", False),
        ("localhost", False), ("0.0.0.0", True), ("::", True), ("192.168.1.4", True),
        ("admin.example.com", True), ("", True),
    ],
)
def test_admin_needs_token_beyond_loopback(host, needed):
    assert admin_needs_token(host) is needed


def test_status_sources_lists_busiest_first():
    h = History(None, clock=lambda: 1_700_000_000.0)
    for _ in range(3):
        h.record("bob", "api", 500, 5, 50, 0.02, False)
    h.record("alice", "page", 200, 1, 10, 0.01, True)
    rows = status_sources(h)
    assert [r["source"] for r in rows] == ["bob", "alice"]
    assert {"source", "type", "requests", "errors", "aborts", "bytes_in", "bytes_out", "mean_latency_ms"} <= set(rows[0])
    assert (rows[0]["requests"], rows[0]["errors"], rows[0]["mean_latency_ms"]) == (3, 3, 20.0)
    assert rows[1]["aborts"] == 1
