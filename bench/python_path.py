"""The Python cost of one proxied request, without sockets (see bench/README.md).

Real parsers, routing table, stats and history; fake transports, so the figure is the proxy's own
Python work per request, free of the kernel's (and a shared machine's) noise.
"""
from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from balancer.dataplane import proxy as P  # noqa: E402
from balancer.wiring.app import static_config  # noqa: E402
from balancer.control.history import History  # noqa: E402
from balancer.dataplane.routing import CompiledRoute, PoolTargets, RoutingTable, SourceExtractor, Target  # noqa: E402

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"   # what wrk sends
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 16:06:46 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n" + b"x" * 100)


class FakeTransport:
    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def writelines(self, data) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str):
        return ("127.0.0.1", 5555)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


def setup() -> tuple[P.ClientConnection, P.UpstreamConnection, FakeTransport]:
    asyncio.set_event_loop(asyncio.new_event_loop())
    cfg = static_config([("127.0.0.1", 9)])
    r = cfg.routing
    pools = {"default": PoolTargets.from_spec("default", cfg.pools["default"], (Target("m1", "127.0.0.1", 9),))}
    table = RoutingTable([CompiledRoute(rt) for rt in r.routes], SourceExtractor(r.sources), pools, r.preserve_host)
    proxy = P.Proxy(table, r.timeouts, r.limits, History(None, r.history.max_sources, r.history.retention))
    client = P.ClientConnection(proxy)
    to_client = FakeTransport()
    client.connection_made(to_client)
    member = proxy.upstreams["m1"]
    upstream = P.UpstreamConnection(proxy, member)
    upstream.connection_made(FakeTransport())
    member.idle.append(upstream)   # a kept-alive connection, as in steady state
    return client, upstream, to_client


def main(n: int = 100_000) -> int:
    client, upstream, to_client = setup()
    feed_client, feed_upstream = client.data_received, upstream.data_received
    for _ in range(1000):
        feed_client(REQUEST)
        feed_upstream(RESPONSE)
    # Every request must have been answered on the reused connection, or the figure means nothing.
    if to_client.writes != 1000 or upstream.transport.writes != 1000:
        print(f"unexpected path: {to_client.writes} client writes, {upstream.transport.writes} upstream writes")
        return 1
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            feed_client(REQUEST)
            feed_upstream(RESPONSE)
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    print(f"{best:.2f} µs of Python per proxied request (best of 5 × {n})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
