"""The container proxy's direct road in one process: Python's cost per request, without sockets.

    python bench/proxy_path.py [--requests 60000]

inferd's own objects (``InferdHttpProtocol``, ``InferdApp``, ``ContainerProxy``, a ready
``ContainerReplica`` and its ``UpstreamConnection``) are given fake transports that only keep
what is written; each request is the client's bytes fed to the protocol, then the container's
answer fed to the upstream connection. The baseline is a minimal proxy on the same parser
(httptools) with none of inferd's limits, metrics, admission, routing or CORS. No system calls,
no other process: what is left is the interpreter's work, steadier than wrk on a shared machine
(bench/containers.py measures the whole thing, with wrk, against the container called directly).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import types
from collections import deque
from collections.abc import Callable

import httptools
import uvicorn
import uvloop
from uvicorn.server import ServerState

from inferd.containers.proxy import ContainerProxy
from inferd.containers.replica import ContainerReplica
from inferd.containers.upstream import UpstreamConnection, UpstreamPool
from inferd.http.app import InferdApp
from inferd.http.cors import with_cors
from inferd.http.protocol import ConnectionLimits, IdleConnections, InferdHttpProtocol
from inferd.http.routing import Route, RouteTable
from inferd.metrics import Metrics

REQUEST = (b"POST /noop HTTP/1.1\r\nHost: 127.0.0.1:8888\r\nContent-Length: 8\r\nContent-Type: application/json\r\n"
           b"\r\n{\"n\": 1}")
ANSWER = (b"HTTP/1.1 200 OK\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\nserver: uvicorn\r\ncontent-length: 11\r\n"
          b"content-type: application/json\r\n\r\n{\"ok\":true}")
Road = tuple[Callable[[], None], "FakeTransport", "FakeTransport"]


class FakeTransport:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 8888), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class OnePool:
    """The one thing ContainerProxy's direct road asks of a WorkerPool: its workers."""

    def __init__(self, workers: list[ContainerReplica]) -> None:
        self.workers = workers


def inferd_road() -> Road:
    pod = types.SimpleNamespace(max_concurrency=64, max_queue_length=64, containers=[])
    replica = ContainerReplica("noop", 0, pod, {}, (), None, "", None, None)  # type: ignore[arg-type]
    replica.state, replica.port, replica.upstream = "ready", 1, UpstreamPool(1)
    conn, upstream_out = UpstreamConnection(), FakeTransport()
    conn.connection_made(upstream_out)  # type: ignore[arg-type]
    conn.complete = conn.keep_alive = True
    replica.upstream.release(conn)
    proxy = ContainerProxy("noop", "/noop", OnePool([replica]), 1 << 20, Metrics())  # type: ignore[arg-type]
    app = InferdApp(lambda scope, receive, send: None)  # type: ignore[arg-type,return-value]
    app.set_routes(RouteTable([Route("/noop", with_cors(proxy, [], "noop"))]))
    config = uvicorn.Config(app, loop="none", lifespan="off", log_config=None, access_log=False, server_header=False)
    config.load()
    protocol = InferdHttpProtocol(config, ServerState(), {}, ConnectionLimits(16384, 30, 30, 1000), IdleConnections(),
                                  direct=app)
    client_out = FakeTransport()
    protocol.connection_made(client_out)  # type: ignore[arg-type]

    def one() -> None:
        protocol.data_received(REQUEST)
        conn.data_received(ANSWER)
    return one, client_out, upstream_out


class MinimalUpstream(asyncio.Protocol):
    def __init__(self, idle: deque[MinimalUpstream]) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.idle = idle
        self.client: MinimalClient | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        lines = [b"HTTP/1.1 %d OK\r\n" % self.parser.get_status_code()]
        for name, value in self.headers:
            lines += [name, b": ", value, b"\r\n"]
        lines += [b"\r\n", *self.body]
        if self.client is not None:
            self.client.transport.write(b"".join(lines))  # type: ignore[attr-defined]
        self.idle.append(self)


class MinimalClient(asyncio.Protocol):
    def __init__(self, idle: deque[MinimalUpstream]) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.idle = idle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body = b"", [], b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        lines = [self.parser.get_method(), b" ", self.url[len(b"/noop"):] or b"/", b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            if name != b"connection":
                lines += [name, b": ", value, b"\r\n"]
        lines += [b"x-cortex-request-id: 0123456789abcdef\r\n\r\n", self.body]
        upstream = self.idle.pop()
        upstream.client, upstream.headers, upstream.body = self, [], []
        upstream.transport.write(b"".join(lines))  # type: ignore[attr-defined]


def minimal_road() -> Road:
    idle: deque[MinimalUpstream] = deque()
    upstream, upstream_out = MinimalUpstream(idle), FakeTransport()
    upstream.connection_made(upstream_out)  # type: ignore[arg-type]
    idle.append(upstream)
    client, client_out = MinimalClient(idle), FakeTransport()
    client.connection_made(client_out)  # type: ignore[arg-type]

    def one() -> None:
        client.data_received(REQUEST)
        upstream.data_received(ANSWER)
    return one, client_out, upstream_out


async def per_request(road: Road, requests: int, repeats: int = 12) -> float:
    """The best of ``repeats`` runs, in µs per request; the loop turns every 64 requests."""
    one, client_out, upstream_out = road
    one()
    await asyncio.sleep(0)
    if not (client_out.out and upstream_out.out):
        raise SystemExit("a road wrote nothing: the harness no longer matches the code")
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(requests // repeats):
            one()
            if i % 64 == 0:
                client_out.out.clear()
                upstream_out.out.clear()
                await asyncio.sleep(0)
        best = min(best, (time.perf_counter() - started) / (requests // repeats) * 1e6)
    return best


async def measure(requests: int) -> dict[str, float]:
    results: dict[str, list[float]] = {"inferd": [], "minimal": []}
    for _ in range(2):  # alternating, twice
        results["inferd"].append(await per_request(inferd_road(), requests))
        results["minimal"].append(await per_request(minimal_road(), requests))
    return {name: min(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60000)
    args = parser.parse_args()
    best = uvloop.run(measure(args.requests))
    print("container proxy, direct road, in one process (fake transports), best of 24 runs each\n")
    print(f"{'road':10s} {'µs/request':>11s}")
    for name, value in best.items():
        print(f"{name:10s} {value:11.2f}")
    print(f"\ninferd/minimal Python cost per request: {best['inferd'] / best['minimal']:.2f}x (lower is better)")


if __name__ == "__main__":
    main()
