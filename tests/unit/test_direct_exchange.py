"""The HTTP protocol's direct road (``DirectExchange``): whichever way the reads split a request,
and whether its route takes it or declines it, the route sees exactly the body that was sent,
every request is answered once, in order, and nothing is left running.

The protocol runs on a real event loop with a transport that keeps what is written; the route's
direct handler and its ASGI app are small recorders."""

from __future__ import annotations

import asyncio

import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.server import ServerState

from inferd.http.protocol import ConnectionLimits, DirectExchange, DirectHandler, IdleConnections, InferdHttpProtocol


class Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written += data

    def writelines(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.written += piece

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"sockname": ("127.0.0.1", 8888), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


class Route:
    """``/d`` answers directly unless told to decline; every request's body is recorded, with the
    road that answered it."""

    def __init__(self, decline: list[bool]) -> None:
        self.decline = decline
        self.seen: list[tuple[str, bytes]] = []

    def direct_handler(self, scope: dict) -> DirectHandler | None:
        return self.take if scope["path"] == "/d" else None

    def take(self, exchange: DirectExchange) -> bool:
        if self.decline.pop(0) if self.decline else False:
            return False
        self.seen.append(("direct", bytes(exchange.body)))
        exchange.answer(200, [(b"content-length", b"6")], b"direct")
        return True

    async def __call__(self, scope: dict, receive, send) -> None:  # the ASGI road
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.seen.append(("asgi", body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"asgi"})


def request(path: str, body: bytes, chunks: list[int] | None) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: localhost\r\n".encode()
    if chunks is None:
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    framed, rest = b"", body
    for size in chunks:
        if not rest:
            break
        piece, rest = rest[:size], rest[size:]
        framed += b"%x\r\n%s\r\n" % (len(piece), piece)
    if rest:
        framed += b"%x\r\n%s\r\n" % (len(rest), rest)
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + framed + b"0\r\n\r\n"


one_request = st.tuples(st.sampled_from(["/d", "/asgi"]), st.binary(max_size=300),
                        st.none() | st.lists(st.integers(1, 40), min_size=1, max_size=6))


@settings(max_examples=200, deadline=None)
@given(requests=st.lists(one_request, min_size=1, max_size=3), cuts=st.lists(st.integers(1, 200), max_size=6),
       decline=st.lists(st.booleans(), max_size=3))
def test_every_request_is_answered_once_in_order_with_its_whole_body(requests, cuts, decline) -> None:
    route = Route(list(decline))
    raw = b"".join(request(path, body, chunks) for path, body, chunks in requests)
    pieces, rest = [], raw
    for cut in cuts:
        if rest:
            pieces.append(rest[:cut])
            rest = rest[cut:]
    if rest:
        pieces.append(rest)

    async def scenario() -> tuple[bytes, list[tuple[str, bytes]]]:
        config = uvicorn.Config(route, loop="none", lifespan="off", log_config=None, access_log=False,
                                server_header=False, proxy_headers=False)
        config.load()
        protocol = InferdHttpProtocol(config, ServerState(), {}, ConnectionLimits(16384, 30, 30, 100),
                                      IdleConnections(), direct=route)  # type: ignore[arg-type]
        transport = Transport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        for piece in pieces:
            for _ in range(1000):  # a pipelined request waits (reading paused) for the answer before it
                if not transport.paused:
                    break
                await asyncio.sleep(0)
            assert not transport.paused, "reading stayed paused"
            protocol.data_received(piece)
            for _ in range(3):
                await asyncio.sleep(0)
        for _ in range(200):
            if len(route.seen) == len(requests) and transport.written.count(b"HTTP/1.1 200") == len(requests) \
                    and not protocol.tasks:
                break
            await asyncio.sleep(0)
        assert not protocol.tasks, "a request's task is still running"
        return bytes(transport.written), route.seen

    written, seen = asyncio.run(scenario())
    assert [body for _, body in seen] == [body for _, body, _ in requests]
    assert all(road == "asgi" for (path, _, _), (road, _) in zip(requests, seen, strict=True) if path == "/asgi")
    answers = [part for part in written.split(b"HTTP/1.1 200 OK\r\n") if part]
    assert [answer.endswith(road.encode()) for answer, (road, _) in zip(answers, seen, strict=True)] == \
        [True] * len(requests)
