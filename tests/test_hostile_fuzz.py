"""Property: the backend receives exactly the requests the client sent, each framed as the client
framed it, and every client gets exactly its own responses — whatever the request heads, however
the bytes are cut into reads, with several clients at once and malformed requests among them.

Bounded for CI (WARMFRONT_FUZZ_EXAMPLES, default 40; derandomized, so a run is repeatable).
"""
import asyncio
import os

from hypothesis import HealthCheck, given, settings, strategies as st

from tests.hostilekit import LoggingBackend, exchange, parse_responses
from tests.proxykit import running_proxy, table_for

EXAMPLES = int(os.environ.get("WARMFRONT_FUZZ_EXAMPLES", "40"))

token = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.~", min_size=1, max_size=12)
value = st.text("".join(chr(c) for c in range(0x21, 0x7f)) + " ", min_size=1, max_size=40).map(str.strip).filter(bool)
header_name = st.sampled_from(["X-A", "X-B", "Accept", "User-Agent", "Cookie", "X-Forwarded-For", "Referer",
                               "Cache-Control", "X-Tenant", "Accept-Language", "If-None-Match"])

# Malformed heads the proxy must refuse, and the status it answers with.
MALFORMED = [
    (b"Connection: Content-Length\r\nContent-Length: 5\r\n", b"hello", (400,)),
    (b"Connection: close, Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n", (400,)),
    (b"Connection: host\r\n", b"", (400,)),
    (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n", (400,)),
    (b"Content-Length: 2\r\nContent-Length: 3\r\n", b"abc", (400,)),
    (b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n", (501,)),
    (b"X-Fold: a\r\n b\r\n", b"", (400,)),
    (b"Content-Length : 1\r\n", b"a", (400,)),
    (b"Host: second\r\n", b"", (400,)),
]


@st.composite
def requests(draw, client: int, n: int):
    out = []
    for i in range(n):
        rid = f"c{client}-{i}"
        method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"]))
        path = "/" + "/".join(draw(st.lists(token, max_size=3)))
        if draw(st.booleans()):
            path += "?" + draw(token) + "=" + draw(token)
        head = method + b" " + path.encode() + b" HTTP/1.1\r\nHost: t\r\nX-Id: " + rid.encode() + b"\r\n"
        for name, val in draw(st.lists(st.tuples(header_name, value), max_size=5)):
            head += name.encode() + b": " + val.encode() + b"\r\n"
        kind = draw(st.sampled_from(["none", "length", "chunked", "upgrade", "malformed"]
                                    if i == n - 1 else ["none", "length", "chunked", "upgrade"]))
        body = b""
        expect = None
        if kind == "length":
            body = draw(st.binary(max_size=3000))
            raw = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        elif kind == "chunked":
            chunks = draw(st.lists(st.binary(min_size=1, max_size=700), max_size=4))
            body = b"".join(chunks)
            raw = head + b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(
                b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        elif kind == "upgrade":
            # The backend does not upgrade: the bytes after this head are the next request.
            raw = head + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        elif kind == "malformed":
            extra, payload, expect = draw(st.sampled_from(MALFORMED))
            raw = head + extra + b"\r\n" + payload
        else:
            raw = head + b"\r\n"
        out.append((rid, method.decode(), path, body, raw, expect))
    return out


@st.composite
def scenario(draw):
    clients = draw(st.integers(1, 3))
    plans = []
    for c in range(clients):
        reqs = draw(requests(c, draw(st.integers(1, 5))))
        data = b"".join(r[4] for r in reqs)
        cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=6))))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        plans.append((reqs, pieces))
    return plans


async def run(plans) -> None:
    async with LoggingBackend() as b, running_proxy(table_for({"web": [("127.0.0.1", b.port)]})) as p:
        def done(reqs):
            want = len(reqs)
            return lambda d: len(parse_responses(d)) >= want
        results = await asyncio.gather(*(exchange(p.port, pieces, gap=0.002, timeout=2, until=done(reqs))
                                         for reqs, pieces in plans))
        sent_ids = {r[0] for reqs, _ in plans for r in reqs}
        for (reqs, _), (data, _) in zip(plans, results):
            good = [r for r in reqs if r[5] is None]
            got = parse_responses(data)
            assert [r.json()["id"] for r in got[:len(good)]] == [r[0] for r in good], data
            assert all(r.status == 200 for r in got[:len(good)])
            if len(good) < len(reqs):
                assert [r.status for r in got[len(good):]] == [reqs[-1][5][0]] or \
                    (len(got) == len(good) + 1 and got[-1].status in reqs[-1][5]), data
            else:
                assert len(got) == len(good)
            mine = [s for s in b.seen if s.rid.startswith(reqs[0][0].split("-")[0] + "-")]
            assert [(s.rid, s.method, s.target, s.body) for s in mine] == \
                [(r[0], r[1], r[2], r[3]) for r in good]
            assert all("x-forwarded-for" in s.headers for s in mine)
        # Nothing reached the backend that a client did not send as a request of its own.
        assert all(s.rid in sent_ids for s in b.seen), [s.rid for s in b.seen]
        assert b.errors == []


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(scenario())
def test_backend_sees_exactly_what_each_client_framed_and_each_client_gets_its_own_answers(plans):
    asyncio.run(run(plans))
