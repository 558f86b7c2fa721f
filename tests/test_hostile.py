"""Hostile input on the request path, over raw sockets against real backends on loopback.

Each class of attack is tested with its neighbours: what matters is that the backend parses
exactly the requests the client framed, and that every client gets only its own responses.
"""
import asyncio
import resource

import pytest

from config.models import Limits, Route, RouteMatch, Timeouts
from tests.hostilekit import LoggingBackend, ScriptedBackend, exchange, parse_responses
from tests.proxykit import running_proxy, table_for

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: t\r\nX-Id: smuggled\r\n\r\n"


def one(b) -> dict:
    return {"web": [("127.0.0.1", b.port)]}


def req(path: str = "/", rid: str = "", extra: bytes = b"", method: bytes = b"GET", body: bytes | None = None,
        version: bytes = b"1.1") -> bytes:
    head = method + b" " + path.encode() + b" HTTP/" + version + b"\r\nHost: t\r\n"
    if rid:
        head += b"X-Id: " + rid.encode() + b"\r\n"
    if body is not None:
        head += b"Content-Length: %d\r\n" % len(body)
    return head + extra + b"\r\n" + (body or b"")


def statuses(data: bytes) -> list[int]:
    return [r.status for r in parse_responses(data)]


# ------------------------------------------------------------------ Connection-named framing headers
@pytest.mark.parametrize("named", [b"Content-Length", b"content-length", b"close, Content-Length",
                                   b"Transfer-Encoding", b"Host", b"keep-alive, HOST"])
async def test_connection_naming_a_framing_header_is_refused_and_nothing_is_forwarded(named):
    async with LoggingBackend() as b, running_proxy(table_for(one(b))) as p:
        attack = (b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nConnection: %b\r\n\r\n%b"
                  % (len(SMUGGLED), named, SMUGGLED))
        if named.lower().endswith(b"transfer-encoding"):
            attack = (b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: %b\r\n\r\n"
                      b"%x\r\n%b\r\n0\r\n\r\n" % (named, len(SMUGGLED), SMUGGLED))
        out, _ = await exchange(p.port, [attack])
        assert statuses(out) == [400], out
        assert b.seen == [], [s.target for s in b.seen]


async def test_connection_naming_an_ordinary_header_removes_it_and_keeps_the_framing():
    async with LoggingBackend() as b, running_proxy(table_for(one(b))) as p:
        out, _ = await exchange(p.port, [req("/a", "1", b"X-Secret: s\r\nConnection: X-Secret\r\n", b"POST", b"abc")
                                         + req("/b", "2")], until=lambda d: len(parse_responses(d)) == 2)
        assert [r.json()["id"] for r in parse_responses(out)] == ["1", "2"]
        assert [(s.target, s.body) for s in b.seen] == [("/a", b"abc"), ("/b", b"")]
        assert "x-secret" not in b.seen[0].headers
        assert all("x-forwarded-for" in s.headers for s in b.seen)


async def test_underscore_spellings_of_forwarded_headers_are_dropped():
    async with LoggingBackend() as b, running_proxy(table_for(one(b))) as p:
        out, _ = await exchange(p.port, [req("/", "u", b"X_Forwarded_For: 6.6.6.6\r\nX_Forwarded_Proto: https\r\n"
                                                   b"X_Other: kept\r\nConnection: close\r\n")])
        assert statuses(out) == [200]
        h = b.seen[0].headers
        assert "x_forwarded_for" not in h and "x_forwarded_proto" not in h and h["x_other"] == "kept"
        assert h["x-forwarded-for"] == "127.0.0.1"


async def test_smuggling_attempt_cannot_reach_a_second_client():
    """The reported attack end to end: attacker then victim on a shared upstream keep-alive pool."""
    async with LoggingBackend() as b, running_proxy(table_for(one(b))) as p:
        attack = (b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nConnection: Content-Length\r\n\r\n%b"
                  % (len(SMUGGLED), SMUGGLED))
        for i in range(5):
            a, v = await asyncio.gather(exchange(p.port, [attack]),
                                        exchange(p.port, [req("/victim", f"v{i}")],
                                                 until=lambda d: bool(parse_responses(d))))
            assert statuses(a[0]) == [400]
            assert [r.json()["id"] for r in parse_responses(v[0])] == [f"v{i}"]
        assert all(s.target == "/victim" for s in b.seen)


# ------------------------------------------------------------------ CL / TE framing variants
@pytest.mark.parametrize("raw,status", [
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length : 3\r\n\r\nabc", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\nabc", 501),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST / HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n", 400),
    (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\nHost: t\n\n", 400),
    (b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n", 400),
])
async def test_ambiguous_framing_is_refused_and_never_forwarded(raw, status):
    async with LoggingBackend() as b, running_proxy(table_for(one(b))) as p:
        out, _ = await exchange(p.port, [raw + SMUGGLED])
        assert statuses(out) == [status], out
        assert b.seen == []


async def test_chunked_body_split_anywhere_reaches_the_backend_whole():
    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"
    raw = b"POST /c HTTP/1.1\r\nHost: t\r\nX-Id: c\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    async with LoggingBackend() as b, running_proxy(table_for(one(b))) as p:
        for cut in range(1, len(raw), 7):
            out, _ = await exchange(p.port, [raw[:cut], raw[cut:] + req("/n", "n", b"Connection: close\r\n")],
                                    gap=0.005)
            assert [r.json()["id"] for r in parse_responses(out)] == ["c", "n"], (cut, out)
        assert {s.body for s in b.seen if s.target == "/c"} == {b"hello world"}


# ------------------------------------------------------------------ Upgrades
WS = (b"GET /ws HTTP/1.1\r\nHost: t\r\nX-Id: up\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


@pytest.mark.parametrize("mode", ["refuse", "reject"])
async def test_bytes_after_a_failed_upgrade_are_the_clients_next_request_not_a_smuggled_one(mode):
    async with LoggingBackend(upgrade=mode) as b, running_proxy(table_for(one(b))) as p:
        out, _ = await exchange(p.port, [WS + SMUGGLED], until=lambda d: len(parse_responses(d)) == 2)
        rs = parse_responses(out)
        assert [r.status for r in rs] == [200 if mode == "refuse" else 426, 200]
        assert rs[1].json()["id"] == "smuggled"
        # The backend parsed each as a request the proxy framed, X-Forwarded-For and all, and the
        # second one on a connection of its own: nothing unframed followed the upgrade offer.
        assert [s.target for s in b.seen] == ["/ws", "/smuggled"]
        assert all("x-forwarded-for" in s.headers for s in b.seen)
        assert b.seen[0].conn != b.seen[1].conn


async def test_failed_upgrade_never_hands_a_victim_the_smuggled_response():
    async with LoggingBackend(upgrade="refuse") as b, running_proxy(table_for(one(b))) as p:
        for i in range(10):
            attack = WS + b"GET /sleep HTTP/1.1\r\nHost: t\r\nX-Id: smuggled\r\n\r\n"
            results = await asyncio.gather(
                exchange(p.port, [attack], until=lambda d: len(parse_responses(d)) == 2),
                *(exchange(p.port, [req("/victim", f"v{i}-{j}")], until=lambda d: bool(parse_responses(d)))
                  for j in range(3)))
            for j, (out, _) in enumerate(results[1:]):
                assert [r.json()["id"] for r in parse_responses(out)] == [f"v{i}-{j}"]


async def test_upgrade_accepted_forwards_the_early_bytes_after_101():
    async with LoggingBackend(upgrade="accept") as b, running_proxy(table_for(one(b))) as p:
        out, _ = await exchange(p.port, [WS + b"early", b"later"], gap=0.2,
                                until=lambda d: d.count(b"echo:") >= 2)
        assert out.startswith(b"HTTP/1.1 101 ")
        assert out.split(b"\r\n\r\n", 1)[1] == b"echo:earlyecho:later"


async def test_h2c_upgrade_is_removed_and_the_request_served_as_http1():
    h2c = (b"GET /h HTTP/1.1\r\nHost: t\r\nX-Id: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
           b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
    async with LoggingBackend(upgrade="accept") as b, running_proxy(table_for(one(b))) as p:
        out, _ = await exchange(p.port, [h2c + req("/next", "n")], until=lambda d: len(parse_responses(d)) == 2)
        assert [r.json()["id"] for r in parse_responses(out)] == ["h", "n"]
        assert "upgrade" not in b.seen[0].headers and "http2-settings" not in b.seen[0].headers


@pytest.mark.parametrize("answer", [
    b"",                                                                  # closes without a word
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",                         # 101 without Upgrade
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
])
async def test_upgrade_failing_in_other_ways_forwards_nothing_unframed(answer):
    async def script(head, w):
        if answer:
            w.write(answer)
            await w.drain()
        return False
    async with ScriptedBackend(script) as b, running_proxy(table_for(one(b))) as p:
        out, _ = await exchange(p.port, [WS + SMUGGLED], timeout=3)
        assert statuses(out)[:1] in ([502], [400]), out
        assert all(b"/smuggled" not in h or h.startswith(b"GET /smuggled HTTP/1.1\r\n") and b"X-Forwarded-For" in h
                   for h in b.heads), b.heads
        assert b.heads[0].startswith(b"GET /ws ")


async def test_101_to_a_request_that_offered_no_upgrade_is_a_502():
    async def script(head, w):
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw")
        await w.drain()
    async with ScriptedBackend(script) as b, running_proxy(table_for(one(b))) as p:
        out, _ = await exchange(p.port, [req("/x")])
        assert statuses(out) == [502] and b"raw" not in out


async def test_upgrade_answered_by_the_proxy_parses_the_held_bytes_as_http():
    routes = [Route(name="ws", pool="web", type="page", match=RouteMatch(path_prefix="/ws"))]
    async with LoggingBackend() as b, running_proxy(table_for(one(b), routes=routes)) as p:
        # Answered at once (404): the connection closes and the held bytes go nowhere.
        out, _ = await exchange(p.port, [WS.replace(b"/ws", b"/nowhere") + req("/ws/ok", "ok")])
        assert statuses(out) == [404]
        assert b.seen == []


async def test_connect_is_refused():
    async with LoggingBackend() as b, running_proxy(table_for(one(b))) as p:
        for target in (b"evil:443", b"/"):
            out, _ = await exchange(p.port, [b"CONNECT %b HTTP/1.1\r\nHost: evil:443\r\n\r\n" % target + SMUGGLED])
            assert statuses(out) == [405] and b.seen == []


# ------------------------------------------------------------------ Response heads in pieces, 1xx
SMALL = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\n\r\nok\n"


def split_at(response: bytes, cut: int):
    async def script(head, w):
        w.write(response[:cut])
        await w.drain()
        await asyncio.sleep(0.01)
        w.write(response[cut:])
        await w.drain()
    return script


async def test_response_head_split_at_every_byte_arrives_byte_correct():
    async with ScriptedBackend(split_at(SMALL, len(SMALL))) as b0, running_proxy(table_for(one(b0))) as p:
        whole, _ = await exchange(p.port, [req("/", extra=b"Connection: close\r\n")])
    assert whole.endswith(b"\r\n\r\nok\n")
    for cut in range(1, len(SMALL)):
        async with ScriptedBackend(split_at(SMALL, cut)) as b, running_proxy(table_for(one(b))) as p:
            out, elapsed = await exchange(p.port, [req("/", extra=b"Connection: close\r\n")], timeout=3)
            assert out == whole, (cut, out)
            assert elapsed < 2


async def test_response_head_one_byte_per_read_with_interim_responses():
    full = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            + SMALL)

    async def script(head, w):
        for i in range(len(full)):
            w.write(full[i:i + 1])
            await w.drain()
            await asyncio.sleep(0.001)
    async with ScriptedBackend(script) as b, running_proxy(table_for(one(b))) as p:
        out, _ = await exchange(p.port, [req("/", extra=b"Connection: close\r\n")], timeout=5)
    rs = parse_responses(out)
    assert [r.status for r in rs] == [100, 103, 200], out
    assert rs[1].header("Link") == "</s.css>; rel=preload"
    assert rs[2].body == b"ok\n" and rs[2].header("X-A") == "1"


async def test_expect_100_continue_upload_gets_100_then_the_final_response():
    body = b"x" * 200_000

    async def script(head, w):
        w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await w.drain()
        await asyncio.sleep(0.05)
        w.write(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone")
        await w.drain()
    async with ScriptedBackend(script, read_body=False) as b, running_proxy(table_for(one(b))) as p:
        head = (b"PUT /u HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(head)
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        final = await asyncio.wait_for(reader.readuntil(b"done"), 5)
        writer.close()
    assert final.startswith(b"HTTP/1.1 201 Created\r\n")


async def test_interim_responses_are_not_sent_to_http10_clients():
    async def script(head, w):
        w.write(b"HTTP/1.1 100 Continue\r\n\r\n" + SMALL)
        await w.drain()
    async with ScriptedBackend(script) as b, running_proxy(table_for(one(b))) as p:
        out, _ = await exchange(p.port, [req("/", version=b"1.0")])
    assert statuses(out) == [200] and out.endswith(b"ok\n")


async def test_oversize_response_head_is_a_502_not_forwarded():
    big = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 1000) for i in range(10_000))

    async def script(head, w):
        w.write(big)
        await w.drain()
        w.write(b"Content-Length: 2\r\n\r\nok")
        await w.drain()
    async with ScriptedBackend(script) as b, running_proxy(table_for(one(b)), limits=Limits()) as p:
        out, elapsed = await exchange(p.port, [req("/")], timeout=5, until=lambda d: bool(parse_responses(d)))
    assert statuses(out) == [502] and b"X-Pad" not in out
    assert elapsed < 2


async def test_bytes_past_the_end_of_a_response_reach_nobody():
    async def script(head, w):
        if b"/first" in head:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsmuggle")
        else:
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
        await w.drain()
    async with ScriptedBackend(script) as b, running_proxy(table_for(one(b))) as p:
        out, _ = await exchange(p.port, [req("/first") + req("/second")],
                                until=lambda d: len(parse_responses(d)) == 2)
    assert [r.body for r in parse_responses(out)] == [b"ok", b"second"]


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
])
async def test_ambiguous_response_framing_is_a_502(response):
    async def script(head, w):
        w.write(response)
        await w.drain()
    async with ScriptedBackend(script) as b, running_proxy(table_for(one(b))) as p:
        out, _ = await exchange(p.port, [req("/")])
    assert statuses(out) == [502], out


async def test_response_headers_named_in_connection_are_removed_but_framing_stays():
    async def script(head, w):
        w.write(b"HTTP/1.1 200 OK\r\nConnection: X-Internal, Content-Length\r\nX-Internal: 1\r\n"
                b"Content-Length: 2\r\n\r\nok")
        await w.drain()
    async with ScriptedBackend(script) as b, running_proxy(table_for(one(b))) as p:
        out, _ = await exchange(p.port, [req("/") + req("/")], until=lambda d: len(parse_responses(d)) == 2)
    rs = parse_responses(out)
    assert [r.body for r in rs] == [b"ok", b"ok"]
    assert rs[0].header("X-Internal") is None and rs[0].header("Content-Length") == "2"


# ------------------------------------------------------------------ Slow clients
async def test_trickled_head_times_out_from_its_first_byte():
    head = req("/", "t")
    async with LoggingBackend() as b, running_proxy(table_for(one(b)), Timeouts(client_header=1.0)) as p:
        pieces = [head[i:i + 1] for i in range(len(head))]
        out, elapsed = await exchange(p.port, pieces, gap=0.15, timeout=6)
    assert statuses(out) == [408]
    assert 0.9 <= elapsed < 2.0
    assert b.seen == []


async def test_trickled_line_breaks_before_a_request_time_out_too():
    async with LoggingBackend() as b, running_proxy(table_for(one(b)), Timeouts(client_header=1.0)) as p:
        out, elapsed = await exchange(p.port, [b"\r\n"] * 40, gap=0.1, timeout=6)
    assert statuses(out) == [408] and elapsed < 2.0


async def test_pipelined_head_that_trickles_after_a_request_times_out():
    async with LoggingBackend() as b, running_proxy(table_for(one(b)), Timeouts(client_header=1.0)) as p:
        first = req("/a", "a") + b"GET /b HTTP/1.1\r\nX-"
        out, elapsed = await exchange(p.port, [first] + [b"a"] * 40, gap=0.1, timeout=6)
    assert statuses(out) == [200, 408] and elapsed < 2.0


async def test_trickled_body_is_cut_by_the_minimum_rate():
    async with LoggingBackend() as b, running_proxy(table_for(one(b)), Timeouts(client_body=1.0),
                                                    Limits(min_body_rate=100)) as p:
        head = b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n"
        out, elapsed = await exchange(p.port, [head] + [b"x"] * 60, gap=0.1, timeout=6)
    assert statuses(out) == [408]
    assert 1.0 <= elapsed < 2.5


async def test_body_at_a_steady_rate_is_not_cut():
    async with LoggingBackend() as b, running_proxy(table_for(one(b)), Timeouts(client_body=0.5),
                                                    Limits(min_body_rate=1000)) as p:
        chunk = b"y" * 500
        head = b"POST /up HTTP/1.1\r\nHost: t\r\nX-Id: s\r\nContent-Length: %d\r\n\r\n" % (len(chunk) * 8)
        out, _ = await exchange(p.port, [head] + [chunk] * 8, gap=0.2, timeout=6,
                                until=lambda d: bool(parse_responses(d)))
    assert [r.json()["body"] for r in parse_responses(out)] == [4000]


async def test_never_ending_header_line_is_refused_as_soon_as_it_passes_the_limit():
    async with LoggingBackend() as b, running_proxy(table_for(one(b)), limits=Limits(max_header_bytes=65536)) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ")
        sent = 0
        got = b""
        try:
            for _ in range(200):          # up to 12.8 MB if nobody stops it
                writer.write(b"a" * 65536)
                await writer.drain()
                sent += 65536
                try:
                    got = await asyncio.wait_for(reader.read(4096), 0.02)
                except TimeoutError:
                    continue
                if got:
                    break
        except ConnectionError:
            pass
        writer.close()
    assert got.startswith(b"HTTP/1.1 431 "), got
    assert sent <= 8 * 65536, sent


# ------------------------------------------------------------------ Request line and Host (RFC 9112)
@pytest.mark.parametrize("raw,status", [
    (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    (b"GET / HTTP/3.0\r\nHost: t\r\n\r\n", 505),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400),
    (b"GET http://user:pw@a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"GET a:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
])
async def test_request_line_and_host_rules(raw, status):
    async with LoggingBackend() as b, running_proxy(table_for(one(b))) as p:
        out, _ = await exchange(p.port, [raw])
        assert statuses(out) == [status], out
        assert b.seen == []


async def test_http09_request_gets_an_answer_not_silence():
    async with LoggingBackend() as b, running_proxy(table_for(one(b))) as p:
        out, elapsed = await exchange(p.port, [b"GET /\r\n"], timeout=5)
    assert statuses(out) == [400] and elapsed < 1


async def test_absolute_form_target_uses_its_authority():
    routes = [Route(name="api", pool="web", type="api", match=RouteMatch(host="api.example"))]
    async with LoggingBackend() as b, running_proxy(table_for(one(b), routes=routes)) as p:
        p.table.preserve_host = True
        raw = b"GET http://api.example:8080/v1/x?q=1 HTTP/1.1\r\nHost: other\r\nX-Id: abs\r\n\r\n"
        out, _ = await exchange(p.port, [raw + req("/", "plain")], until=lambda d: len(parse_responses(d)) == 2)
        rs = parse_responses(out)
        assert rs[0].status == 200 and rs[0].json()["target"] == "/v1/x?q=1"
        assert b.seen[0].headers["host"] == "api.example:8080"
        assert rs[1].status == 404   # Host: t matches no route: the absolute form was what routed


async def test_options_asterisk_is_forwarded():
    async with LoggingBackend() as b, running_proxy(table_for(one(b))) as p:
        out, _ = await exchange(p.port, [b"OPTIONS * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"])
    assert statuses(out) == [200] and b.seen[0].target == "*"


# ------------------------------------------------------------------ Connection cap
async def test_connection_cap_evicts_idle_and_trickling_connections_for_new_clients():
    async with LoggingBackend() as b, running_proxy(table_for(one(b)), limits=Limits(max_connections=20)) as p:
        hogs = []
        for _ in range(40):
            r, w = await asyncio.open_connection("127.0.0.1", p.port)
            w.write(b"GET / HTTP/1.1\r\nX-")
            hogs.append((r, w))
        await asyncio.sleep(0.2)
        assert len(p.clients) <= 20
        out, _ = await exchange(p.port, [req("/", "real")], until=lambda d: bool(parse_responses(d)))
        assert [r.json()["id"] for r in parse_responses(out)] == ["real"]
        assert p.stats.connections_evicted >= 20
        for _, w in hogs:
            w.close()


async def test_connection_cap_refuses_with_503_when_every_connection_is_busy():
    async def script(head, w):
        await asyncio.sleep(1.0)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await w.drain()
    async with ScriptedBackend(script) as b, running_proxy(table_for(one(b)), limits=Limits(max_connections=5)) as p:
        busy = [asyncio.create_task(exchange(p.port, [req("/")], until=lambda d: bool(parse_responses(d))))
                for _ in range(5)]
        await asyncio.sleep(0.3)
        out, elapsed = await exchange(p.port, [req("/")])
        assert statuses(out) == [503] and b"too many connections" in out and elapsed < 0.5
        assert all(statuses(o) == [200] for o, _ in await asyncio.gather(*busy))
        assert p.stats.connections_refused >= 1


def test_default_connection_cap_leaves_room_for_upstreams_and_checks():
    from balancer.dataplane.proxy import FD_RESERVE, default_max_connections
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = default_max_connections()
    assert cap * 2 + FD_RESERVE <= max(soft, 2 * 16 + FD_RESERVE)
    assert cap >= 16
