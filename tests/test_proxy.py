"""Proxy semantics against real backends on loopback: each test names the behaviour it proves."""
import asyncio
import hashlib
import time

import aiohttp
import pytest

from balancer.dataplane.routing import Target
from config.models import Limits, Route, RouteMatch, Timeouts
from tests.proxykit import (DemoBackend, RawBackend, RecordingHistory, free_port, raw_exchange, running_proxy,
                            table_for)


@pytest.fixture(scope="module")
def demo():
    b = DemoBackend()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def demo2():
    b = DemoBackend()
    yield b
    b.stop()


def one(backend) -> dict:
    return {"web": [("127.0.0.1", backend.port)]}


async def test_sse_events_arrive_unbuffered(demo):
    async with running_proxy(table_for(one(demo))) as p, aiohttp.ClientSession() as s:
        t0 = time.monotonic()
        async with s.get(p.url + "/sse?n=4&interval=300") as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            first = await r.content.readuntil(b"\n\n")
            t_first = time.monotonic() - t0
            rest = await r.read()
    assert first == b"data: 0\n\n"
    assert rest == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
    assert t_first < 0.25, f"first event took {t_first:.3f}s: buffered behind the rest"


async def test_chunked_response_streams_each_chunk(demo):
    async with running_proxy(table_for(one(demo))) as p, aiohttp.ClientSession() as s:
        async with s.get(p.url + "/stream/3?interval=300") as r:
            assert r.headers.get("Transfer-Encoding") == "chunked"
            t0 = time.monotonic()
            first = await r.content.readuntil(b"\n")
            assert time.monotonic() - t0 < 0.25
            assert first == b"chunk 0\n"
            assert await r.read() == b"chunk 1\nchunk 2\n"


async def test_websocket_upgrade_echoes(demo):
    async with running_proxy(table_for(one(demo))) as p, aiohttp.ClientSession() as s:
        async with s.ws_connect(p.url + "/ws") as ws:
            for msg in ("hello", "x" * 100_000):
                await ws.send_str(msg)
                got = await ws.receive(timeout=5)
                assert got.data == msg
            await ws.send_bytes(b"\x00\x01")
            assert (await ws.receive(timeout=5)).data == b"\x00\x01"
    assert p.stats.requests.get(("web", "page", "GET", 101)) == 1


@pytest.mark.parametrize("request_line", [b"HEAD /bytes/100", b"GET /status/204", b"GET /status/304"])
async def test_responses_without_body_keep_the_connection_usable(demo, request_line):
    async with running_proxy(table_for(one(demo))) as p:
        req = request_line + b" HTTP/1.1\r\nHost: x\r\n\r\nGET /bytes/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        out = await raw_exchange(p.port, req)
    first, _, second = out.partition(b"\r\n\r\n")
    assert first.split(b"\r\n")[0].split(b" ")[1] in (b"200", b"204", b"304")
    # The next thing on the wire is the second response: the first carried no body bytes.
    assert second.startswith(b"HTTP/1.1 200"), out
    assert second.endswith(b"\x00\x01\x02")
    if request_line.startswith(b"HEAD"):
        assert b"content-length: 100" in first.lower()


async def test_repeated_set_cookie_headers_are_preserved(demo):
    async with running_proxy(table_for(one(demo))) as p, aiohttp.ClientSession() as s:
        async with s.get(p.url + "/cookies") as r:
            assert r.headers.getall("Set-Cookie") == ["a=1", "b=2", "c=3"]


async def test_path_and_query_pass_byte_exact_and_headers_are_rewritten():
    be = await RawBackend().start()
    try:
        async with running_proxy(table_for(one(be))) as p:
            req = (b"GET /a%2Fb/../c;x=1/%7Euser?q=%20a+b&q=2&e=%zz HTTP/1.1\r\n"
                   b"Host: shop.example:8080\r\n"
                   b"Connection: keep-alive, X-Secret\r\n"
                   b"X-Secret: hop\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: x\r\n"
                   b"X-Forwarded-For: 10.1.1.1\r\nX-Forwarded-Proto: https\r\n"
                   b"Accept: a\r\nAccept: b\r\n\r\n")
            out = await raw_exchange(p.port, req, read_until_close=False)
        assert out.startswith(b"HTTP/1.1 200")
        head = be.heads[0]
        lines = head.split(b"\r\n")
        assert lines[0] == b"GET /a%2Fb/../c;x=1/%7Euser?q=%20a+b&q=2&e=%zz HTTP/1.1"
        lower = [l.lower() for l in lines]
        assert b"host: shop.example:8080" in lower
        for hop in (b"connection:", b"x-secret:", b"keep-alive:", b"te:", b"proxy-connection:"):
            assert not any(l.startswith(hop) for l in lower), (hop, head)
        assert b"x-forwarded-for: 10.1.1.1, 127.0.0.1" in lower
        assert b"x-forwarded-proto: http" in lower
        assert b"x-forwarded-host: shop.example:8080" in lower
        assert lower.count(b"accept: a") == 1 and lower.count(b"accept: b") == 1
    finally:
        await be.stop()


async def test_upstream_read_timeout_gives_504(demo):
    async with running_proxy(table_for(one(demo)), timeouts=Timeouts(read=0.5)) as p, aiohttp.ClientSession() as s:
        t0 = time.monotonic()
        async with s.get(p.url + "/sleep/3000") as r:
            assert r.status == 504
        assert time.monotonic() - t0 < 2.0
        async with s.get(p.url + "/sleep/10") as r:   # the proxy still serves afterwards
            assert r.status == 200


async def test_refused_connection_is_retried_on_another_member(demo):
    dead = free_port()
    table = table_for({"web": [("127.0.0.1", dead), ("127.0.0.1", demo.port)]}, eject_after=1000)
    async with running_proxy(table) as p, aiohttp.ClientSession() as s:
        codes = []
        for _ in range(30):
            async with s.get(p.url + "/bytes/10") as r:
                codes.append(r.status)
        for _ in range(10):
            async with s.post(p.url + "/upload", data=b"abc") as r:
                codes.append(r.status)
    assert codes == [200] * 40
    assert p.member_stats("web-0").failures > 0, "the dead member was never tried: the test proved nothing"


async def test_refused_connection_with_no_other_member_gives_502():
    table = table_for({"web": [("127.0.0.1", free_port())]})
    async with running_proxy(table) as p, aiohttp.ClientSession() as s:
        async with s.get(p.url + "/") as r:
            assert r.status == 502


async def test_reset_after_request_sent_is_not_retried_for_post():
    be = await RawBackend(respond=lambda head: None).start()   # reads the request, closes
    try:
        async with running_proxy(table_for(one(be))) as p, aiohttp.ClientSession() as s:
            async with s.post(p.url + "/x", data=b"payload") as r:
                assert r.status == 502
        assert len(be.heads) == 1, "a non-idempotent request was sent twice"
    finally:
        await be.stop()


async def test_a_kept_alive_connection_found_closed_is_retried_and_counted_as_stale():
    answers = iter([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", None])   # the 2nd closes unanswered
    be = await RawBackend(respond=lambda head: next(answers, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).start()
    try:
        async with running_proxy(table_for(one(be), eject_after=1)) as p, aiohttp.ClientSession() as s:
            for _ in range(2):
                async with s.get(p.url + "/x") as r:
                    assert r.status == 200
        assert p.stats.retries == {("web", "stale_connection"): 1}
        assert p.stats.ejections == {}, "a reconnect is not the member's failure"
    finally:
        await be.stop()


async def test_a_member_dying_before_its_answer_sends_a_get_to_the_next_one_counted_as_broken(demo):
    be = await RawBackend(respond=lambda head: None).start()   # reads the request, closes
    try:
        async with running_proxy(table_for({"web": [("127.0.0.1", be.port), ("127.0.0.1", demo.port)]},
                                           eject_after=1)) as p, aiohttp.ClientSession() as s:
            while not be.heads:
                async with s.get(p.url + "/bytes/1") as r:
                    assert r.status == 200
        assert p.stats.retries == {("web", "broken"): 1}
        assert p.stats.ejections == {"web": 1}
    finally:
        await be.stop()


async def test_no_ready_member_waits_then_503_with_retry_after():
    async with running_proxy(table_for({"web": []}), timeouts=Timeouts(queue=0.4)) as p, aiohttp.ClientSession() as s:
        t0 = time.monotonic()
        async with s.get(p.url + "/") as r:
            assert r.status == 503
            assert int(r.headers["Retry-After"]) >= 1
        assert 0.3 <= time.monotonic() - t0 < 2.0
    assert p.stats.queue_timeouts == {"web": 1}
    assert sum(p.stats.queue_wait["web"].counts) == 0, "never sent: no wait observed"


async def test_waiting_request_is_served_when_a_member_becomes_ready(demo):
    async with running_proxy(table_for({"web": []}), timeouts=Timeouts(queue=5)) as p, aiohttp.ClientSession() as s:
        async def later():
            await asyncio.sleep(0.3)
            p.set_table(table_for(one(demo)))
        asyncio.get_running_loop().create_task(later())
        async with s.get(p.url + "/bytes/5") as r:
            assert r.status == 200 and len(await r.read()) == 5
        async with s.get(p.url + "/bytes/5") as r:   # a member now: sent at once
            assert r.status == 200
    wait = p.stats.queue_wait["web"]
    assert wait.counts[0] == 1 and sum(wait.counts) == 2
    assert 0.25 <= wait.total < 1.0, "the first waited about 0.3 s for its member"


async def test_oversized_body_gives_413_and_oversized_headers_431(demo):
    async with running_proxy(table_for(one(demo)), limits=Limits(max_body_bytes=1000, max_header_bytes=4096)) as p:
        out = await raw_exchange(p.port, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 413")
        chunked = b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + (b"200\r\n" + b"a" * 512 + b"\r\n") * 3 + b"0\r\n\r\n"
        out = await raw_exchange(p.port, chunked)
        assert out.startswith(b"HTTP/1.1 413")
        out = await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 431")
        async with aiohttp.ClientSession() as s, s.post(p.url + "/upload", data=b"a" * 900) as r:
            assert r.status == 200


@pytest.mark.parametrize("raw", [
    b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
])
async def test_request_smuggling_shapes_are_rejected_with_400(raw):
    be = await RawBackend().start()
    try:
        async with running_proxy(table_for(one(be))) as p:
            out = await raw_exchange(p.port, raw)
        assert out.startswith(b"HTTP/1.1 400"), out
        assert be.heads == [], "a rejected request reached the backend"
    finally:
        await be.stop()


async def test_pipelined_requests_are_answered_in_order(demo):
    async with running_proxy(table_for(one(demo))) as p:
        reqs = b"".join(b"GET /sleep/%d HTTP/1.1\r\nHost: x\r\nX-N: %d\r\n\r\n" % (ms, i)
                        for i, ms in enumerate((300, 10, 150, 0)))
        reqs += b"GET /bytes/4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        out = await raw_exchange(p.port, reqs)
    assert out.count(b"HTTP/1.1 200") == 5
    bodies = [b"slept 300", b"slept 10", b"slept 150", b"slept 0"]
    positions = [out.find(b) for b in bodies]
    assert all(x >= 0 for x in positions), out
    assert positions == sorted(positions), "responses out of order"
    assert out.endswith(b"\x00\x01\x02\x03")


async def test_chunked_request_body_streams_through(demo):
    async with running_proxy(table_for(one(demo))) as p:
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (b"hello ", b"chunked ", b"world"))
        out = await raw_exchange(p.port, b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                          b"Connection: close\r\n\r\n" + body + b"0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")
    assert hashlib.sha256(b"hello chunked world").hexdigest().encode() in out


async def test_close_delimited_response_is_rechunked_for_keep_alive_clients(demo):
    async with running_proxy(table_for(one(demo))) as p, aiohttp.ClientSession() as s:
        async with s.get(p.url + "/close") as r:
            assert r.status == 200
            body = await r.read()
        assert body == b"body ends when the connection closes\n"
        async with s.get(p.url + "/bytes/3") as r:
            assert await r.read() == b"\x00\x01\x02"


async def test_request_without_matching_route_gets_404(demo):
    routes = [Route(name="api", pool="web", type="api", match=RouteMatch(path_prefix="/api/", methods=["GET"]))]
    async with running_proxy(table_for(one(demo), routes=routes)) as p, aiohttp.ClientSession() as s:
        async with s.get(p.url + "/api/x") as r:
            assert r.status == 200
        async with s.get(p.url + "/other") as r:
            assert r.status == 404
        async with s.post(p.url + "/api/x") as r:
            assert r.status == 404


async def test_least_outstanding_spreads_concurrent_load(demo, demo2):
    table = table_for({"web": [("127.0.0.1", demo.port), ("127.0.0.1", demo2.port)]})
    async with running_proxy(table) as p, aiohttp.ClientSession() as s:
        async def one_req():
            async with s.get(p.url + "/sleep/100") as r:
                return r.headers["X-Backend-Port"]
        ports = await asyncio.gather(*(one_req() for _ in range(40)))
    share = ports.count(str(demo.port)) / len(ports)
    assert 0.3 <= share <= 0.7, share


async def test_failing_member_is_ejected_and_traffic_moves_away(demo):
    be = await RawBackend(respond=lambda head: None).start()   # accepts, then resets
    table = table_for({"web": [("127.0.0.1", be.port), ("127.0.0.1", demo.port)]}, eject_after=3)
    try:
        async with running_proxy(table) as p, aiohttp.ClientSession() as s:
            for _ in range(30):
                async with s.get(p.url + "/bytes/1") as r:
                    assert r.status == 200   # idempotent: retried on the good member
            st = p.member_stats("web-0")
            assert st.ejected_until > p.loop.time()
            before = len(be.heads)
            for _ in range(20):
                async with s.get(p.url + "/bytes/1") as r:
                    assert r.status == 200
            assert len(be.heads) == before, "an ejected member still got requests"
    finally:
        await be.stop()


async def test_slow_start_ramps_a_new_member_unless_prewarmed(demo, demo2):
    old = Target("old", "127.0.0.1", demo.port, prewarmed=True)
    async with running_proxy(table_for({"web": [old]}, slow_start=30)) as p, aiohttp.ClientSession() as s:
        async def share_of_new(new):
            p.set_table(table_for({"web": [old, new]}, slow_start=30))
            ports = []
            for _ in range(60):
                async with s.get(p.url + "/bytes/1") as r:
                    ports.append(r.headers["X-Backend-Port"])
            return ports.count(str(demo2.port)) / len(ports)
        cold = await share_of_new(Target("cold", "127.0.0.1", demo2.port, prewarmed=False))
        warm = await share_of_new(Target("warm", "127.0.0.1", demo2.port, prewarmed=True))
    assert cold < 0.15, cold
    assert warm > 0.25, warm


async def test_client_abort_is_counted_and_upstream_connection_dropped(demo):
    rec = RecordingHistory()
    async with running_proxy(table_for(one(demo)), history=rec) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(b"GET /sleep/500 HTTP/1.1\r\nHost: x\r\nX-Tenant: acme\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        for _ in range(50):
            if rec.rows:
                break
            await asyncio.sleep(0.02)
    assert rec.rows and rec.rows[0][0] == "acme" and rec.rows[0][6] is True
    assert p.stats.requests.get(("web", "page", "GET", 499)) == 1


async def test_body_wrongly_sent_after_a_head_response_does_not_corrupt_the_next_response():
    def respond(head):
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nJUNK!"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood"
    be = await RawBackend(respond).start()
    try:
        async with running_proxy(table_for(one(be))) as p:
            out = await raw_exchange(p.port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
                                              b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"JUNK" not in out
        assert out.endswith(b"\r\n\r\ngood"), out
    finally:
        await be.stop()


async def test_host_is_rewritten_to_the_member_when_preserve_host_is_off():
    be = await RawBackend().start()
    try:
        table = table_for(one(be))
        table.preserve_host = False
        async with running_proxy(table) as p:
            await raw_exchange(p.port, b"GET / HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
        lower = be.heads[0].lower().split(b"\r\n")
        assert f"host: 127.0.0.1:{be.port}".encode() in lower
        assert b"x-forwarded-host: shop.example" in lower
        assert not any(l == b"host: shop.example" for l in lower)
    finally:
        await be.stop()


@pytest.mark.parametrize("rule,request_head,want", [
    ({"query": "tenant"}, b"GET /echo?a=1&tenant=acme HTTP/1.1\r\nHost: x\r\n", "acme"),
    ({"cookie": "org"}, b"GET /echo HTTP/1.1\r\nHost: x\r\nCookie: a=1; org=globex\r\n", "globex"),
    ({"path_segment": 1}, b"GET /echo/initech/orders HTTP/1.1\r\nHost: x\r\n", "initech"),
    ({"header": "X-Tenant"}, b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Tenant: umbrella\r\n", "umbrella"),
    ({"header": "X-Tenant"}, b"GET /echo HTTP/1.1\r\nHost: x\r\n", "127.0.0.1"),   # falls through to client_ip
])
async def test_source_rules_first_non_empty_wins(demo, rule, request_head, want):
    from config.models import SourceRule

    rec = RecordingHistory()
    table = table_for(one(demo), sources=[SourceRule(**rule), SourceRule(client_ip=True)])
    async with running_proxy(table, history=rec) as p:
        out = await raw_exchange(p.port, request_head + b"Connection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")
    assert rec.rows[0][0] == want
