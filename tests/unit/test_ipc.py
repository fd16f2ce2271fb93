"""Frames over a real socket pair: split reads, large bodies, corrupt input."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from inferd.worker.ipc import (
    KEEP_BODY,
    LARGE_BODY,
    MAX_BODY,
    MAX_META,
    MIN_READ,
    PREFIX,
    SCRATCH,
    FrameError,
    FrameProtocol,
    channel_pair,
    encode_frame,
)


async def _pair(received: list, closed: list):
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    _, sender = await loop.create_unix_connection(lambda: FrameProtocol(lambda m, b: None, lambda e: None), sock=a)
    _, receiver = await loop.create_unix_connection(
        lambda: FrameProtocol(lambda m, body: received.append((m, body)), closed.append), sock=b)
    return sender, receiver


def test_frames_roundtrip_including_large_body() -> None:
    async def scenario() -> list:
        received: list = []
        sender, receiver = await _pair(received, [])
        big = bytes(range(256)) * 40000  # 10 MB, arrives in many reads
        sender.send({"t": "call", "id": 1}, big)
        sender.send({"t": "sent", "id": 1})
        for _ in range(500):
            if len(received) == 2:
                break
            await asyncio.sleep(0.01)
        sender.transport.close()
        return received

    received = asyncio.run(scenario())
    assert received[0][0] == {"t": "call", "id": 1} and received[0][1] == bytes(range(256)) * 40000
    assert received[1] == ({"t": "sent", "id": 1}, b"")


def test_oversized_meta_closes_the_channel() -> None:
    async def scenario() -> list:
        closed: list = []
        received: list = []
        proto = FrameProtocol(lambda m, b: received.append(m), closed.append)
        proto.data_received(PREFIX.pack(1 << 30, 0))
        return closed

    closed = asyncio.run(scenario())
    assert isinstance(closed[0], FrameError)


def test_encode_keeps_body_separate() -> None:
    head, body = encode_frame({"t": "x"}, b"payload")
    assert body == b"payload"
    assert PREFIX.unpack_from(head) == (len(b'{"t":"x"}'), 7)


# -- parsing, fed by hand -------------------------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False
        self.paused = 0
        self.resumed = 0

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1


class Recorder:
    def __init__(self, on_frame: Callable[[dict[str, Any], bytes], None] | None = None) -> None:
        self.frames: list[tuple[dict[str, Any], bytes]] = []
        self.closed: list[Exception | None] = []
        self._on_frame = on_frame
        self.proto = FrameProtocol(self.on_frame, self.closed.append)
        self.transport = FakeTransport()
        self.proto.connection_made(self.transport)  # type: ignore[arg-type]

    def on_frame(self, meta: dict[str, Any], body: bytes) -> None:
        self.frames.append((meta, body))
        if self._on_frame is not None:
            self._on_frame(meta, body)

    def read(self, data: bytes, step: int | None = None) -> None:
        """What the event loop does: ask for a buffer, have the kernel fill part of it, report."""
        view = memoryview(data)
        while view and not self.proto._closed:
            buf = self.proto.get_buffer(-1)
            assert len(buf) > 0
            n = min(len(buf), len(view), step or len(view))
            buf[:n] = view[:n]
            del buf
            self.proto.buffer_updated(n)
            view = view[n:]


def frame(meta: dict[str, Any], body: bytes = b"") -> bytes:
    head, payload = encode_frame(meta, body)
    return head + payload


def run(scenario: Callable[[], Any]) -> Any:
    async def wrapper() -> Any:
        return scenario()
    return asyncio.run(wrapper())


def pattern(size: int, seed: int = 0) -> bytes:
    """No zero bytes: a body cut short and padded from a zeroed buffer cannot pass for it."""
    block = bytes(1 + (i * 7 + seed) % 255 for i in range(256))
    return (block * (size // 256 + 1))[:size]


def test_large_frame_in_many_small_chunks() -> None:
    body = pattern(3 * LARGE_BODY + 123)
    stream = frame({"t": "call", "id": 1}, body) + frame({"t": "sent", "id": 1})

    def scenario() -> Recorder:
        rec = Recorder()
        rec.read(stream, step=1000)
        return rec

    rec = run(scenario)
    assert rec.frames == [({"t": "call", "id": 1}, body), ({"t": "sent", "id": 1}, b"")]
    assert type(rec.frames[0][1]) is bytes
    assert rec.closed == []


@pytest.mark.parametrize("step", [1, 7, PREFIX.size, 4096])
def test_frames_byte_by_byte_and_odd_splits(step: int) -> None:
    frames = [({"t": "a", "i": i}, pattern(i * 37, i)) for i in range(40)]
    frames += [({"t": "big"}, pattern(LARGE_BODY + 5)), ({"t": "last"}, b"z")]
    stream = b"".join(frame(m, b) for m, b in frames)

    def scenario() -> Recorder:
        rec = Recorder()
        rec.read(stream, step=step)
        return rec

    rec = run(scenario)
    assert rec.frames == frames
    assert rec.proto._start == rec.proto._end == 0 and rec.proto._body is None  # nothing left over


def test_several_frames_in_one_chunk() -> None:
    frames = [({"t": "small", "i": 1}, b"x"), ({"t": "empty"}, b""), ({"t": "big"}, pattern(LARGE_BODY * 2)),
              ({"t": "small", "i": 2}, b"yz"), ({"t": "medium"}, pattern(LARGE_BODY - 1, 3))]
    stream = b"".join(frame(m, b) for m, b in frames)

    def scenario() -> tuple[Recorder, Recorder]:
        whole = Recorder()
        whole.proto.data_received(stream)  # one read, larger than the scratch buffer
        bulk = Recorder()
        bulk.read(stream)
        return whole, bulk

    whole, bulk = run(scenario)
    assert whole.frames == frames and bulk.frames == frames


def test_frame_split_exactly_at_the_prefix_boundary() -> None:
    meta, body = {"t": "call", "id": 9}, b"hello"
    data = frame(meta, body)
    meta_len = len(json.dumps(meta, separators=(",", ":")))

    def scenario() -> list[list]:
        seen = []
        for cut in (PREFIX.size, PREFIX.size + meta_len):  # after the prefix; after the meta
            rec = Recorder()
            rec.read(data[:cut])
            before = list(rec.frames)
            rec.read(data[cut:])
            seen.append([before, rec.frames])
        return seen

    for before, after in run(scenario):
        assert before == [] and after == [(meta, body)]


def test_large_body_split_at_its_own_start() -> None:
    """Header and meta in one read, the whole large body in later ones."""
    body = pattern(LARGE_BODY * 3, 5)
    data = frame({"t": "call"}, body)
    cut = len(data) - len(body)

    def scenario() -> Recorder:
        rec = Recorder()
        rec.read(data[:cut])
        rec.read(data[cut:], step=LARGE_BODY // 2)
        return rec

    assert run(scenario).frames == [({"t": "call"}, body)]


@pytest.mark.parametrize("size", sorted({0, 1, MIN_READ - 1, MIN_READ, LARGE_BODY - 1, LARGE_BODY, LARGE_BODY + 1,
                                         SCRATCH - 100, SCRATCH, SCRATCH + 1, KEEP_BODY, KEEP_BODY + 1}))
def test_bodies_at_every_threshold(size: int) -> None:
    body = pattern(size, size & 0xFF)
    stream = frame({"t": "before"}, b"ab") + frame({"t": "call", "n": size}, body) + frame({"t": "after"})

    def scenario() -> list[Recorder]:
        recorders = []
        for step in (None, 65536, 999):
            rec = Recorder()
            rec.read(stream, step=step)
            recorders.append(rec)
        return recorders

    for rec in run(scenario):
        assert rec.frames == [({"t": "before"}, b"ab"), ({"t": "call", "n": size}, body), ({"t": "after"}, b"")]
        assert rec.closed == []


def test_meta_of_exactly_max_meta_is_accepted_and_the_buffer_shrinks_back() -> None:
    filler = "x" * (MAX_META - len('{"t":"big","f":""}'))
    meta = {"t": "big", "f": filler}
    data = frame(meta, b"body")
    assert PREFIX.unpack_from(data) == (MAX_META, 4)

    def scenario() -> tuple[Recorder, int]:
        rec = Recorder()
        rec.read(data, step=50000)
        rec.read(frame({"t": "next"}, b"1"))
        return rec, len(rec.proto._buf)

    rec, size = run(scenario)
    assert rec.frames == [(meta, b"body"), ({"t": "next"}, b"1")]
    assert size == SCRATCH


@pytest.mark.parametrize("prefix", [PREFIX.pack(MAX_META + 1, 0), PREFIX.pack(0, MAX_BODY + 1)])
def test_frame_over_the_limits_closes_the_channel(prefix: bytes) -> None:
    def scenario() -> Recorder:
        rec = Recorder()
        rec.read(frame({"t": "ok"}) + prefix + b"{}")
        return rec

    rec = run(scenario)
    assert rec.frames == [({"t": "ok"}, b"")]
    assert len(rec.closed) == 1 and isinstance(rec.closed[0], FrameError)
    assert rec.transport.aborted


@pytest.mark.parametrize("raw", [b"{not json", b'{"t": "x"', b"\xff\xfe{}", b"[1, 2]", b'"str"', b""])
def test_bad_meta_closes_the_channel_once(raw: bytes) -> None:
    def scenario() -> Recorder:
        rec = Recorder()
        rec.read(frame({"t": "ok"}) + PREFIX.pack(len(raw), 3) + raw + b"abc" + frame({"t": "never"}))
        rec.proto.connection_lost(None)  # the transport reporting the loss too
        return rec

    rec = run(scenario)
    assert rec.frames == [({"t": "ok"}, b"")]
    assert len(rec.closed) == 1 and isinstance(rec.closed[0], FrameError)
    assert rec.transport.aborted


def test_bad_meta_of_a_large_frame_closes_the_channel() -> None:
    def scenario() -> Recorder:
        rec = Recorder()
        rec.read(PREFIX.pack(3, LARGE_BODY * 2) + b"{x}" + b"\0" * 100)
        return rec

    rec = run(scenario)
    assert rec.frames == [] and isinstance(rec.closed[0], FrameError)


def test_a_failing_frame_handler_does_not_stop_the_channel() -> None:
    def boom(meta: dict[str, Any], body: bytes) -> None:
        if meta["t"] == "boom":
            raise RuntimeError("handler bug")

    def scenario() -> Recorder:
        rec = Recorder(boom)
        rec.read(frame({"t": "boom"}) + frame({"t": "ok"}, b"1") + frame({"t": "boom"}, pattern(LARGE_BODY))
                 + frame({"t": "ok"}, b"2"))
        return rec

    rec = run(scenario)
    assert [m["t"] for m, _ in rec.frames] == ["boom", "ok", "boom", "ok"]
    assert rec.closed == []


def test_large_bodies_do_not_share_memory_and_reading_yields_after_each() -> None:
    """The receive buffer of a large body is reused: bodies already handed out must not change."""
    first, second = pattern(LARGE_BODY * 2, 1), pattern(LARGE_BODY * 3, 2)
    stream = frame({"t": "a"}, first) + frame({"t": "b"}, second) + frame({"t": "c"}, first[:LARGE_BODY])

    async def scenario() -> Recorder:
        rec = Recorder()
        rec.read(stream, step=10000)
        assert rec.transport.paused == 3 and rec.transport.resumed == 0
        await asyncio.sleep(0)
        assert rec.transport.resumed == 3
        return rec

    rec = asyncio.run(scenario())
    assert rec.frames == [({"t": "a"}, first), ({"t": "b"}, second), ({"t": "c"}, first[:LARGE_BODY])]


# -- over real sockets, on both event loops --------------------------------------------------


def _loops() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio", "uvloop"]


@pytest.mark.parametrize("loop_kind", _loops())
def test_many_frames_both_ways_over_a_channel_pair(loop_kind: str) -> None:
    sizes = [0, 10, LARGE_BODY - 1, LARGE_BODY, 1 << 20, 3, SCRATCH + 7, 5 << 20, 100]

    async def scenario() -> tuple[list, list, list]:
        loop = asyncio.get_running_loop()
        a, b = channel_pair()
        got_a: list = []
        got_b: list = []
        closed: list = []
        done = loop.create_future()

        def on_b(meta: dict[str, Any], body: bytes) -> None:
            got_b.append((meta, body))
            side_b.send({"t": "echo", "i": meta["i"]}, body[::-1])

        def on_a(meta: dict[str, Any], body: bytes) -> None:
            got_a.append((meta, body))
            if len(got_a) == len(sizes) and not done.done():
                done.set_result(None)

        _, side_a = await loop.create_unix_connection(lambda: FrameProtocol(on_a, closed.append), sock=a)
        _, side_b = await loop.create_unix_connection(lambda: FrameProtocol(on_b, closed.append), sock=b)
        for i, size in enumerate(sizes):
            side_a.send({"t": "call", "i": i}, pattern(size, i))
        await asyncio.wait_for(done, 30)
        side_a.transport.close()
        for _ in range(100):
            if len(closed) == 2:
                break
            await asyncio.sleep(0.01)
        return got_a, got_b, closed

    if loop_kind == "uvloop":
        import uvloop

        got_a, got_b, closed = uvloop.run(scenario())
    else:
        got_a, got_b, closed = asyncio.run(scenario())
    assert got_b == [({"t": "call", "i": i}, pattern(size, i)) for i, size in enumerate(sizes)]
    assert got_a == [({"t": "echo", "i": i}, pattern(size, i)[::-1]) for i, size in enumerate(sizes)]
    assert len(closed) == 2 and not any(isinstance(exc, FrameError) for exc in closed)
