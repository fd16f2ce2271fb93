"""Frames over a real socket pair: split reads, large bodies, corrupt input."""

from __future__ import annotations

import asyncio
import socket

from inferd.worker.ipc import PREFIX, FrameError, FrameProtocol, encode_frame


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
