"""``HeldHead``: an answer's head leaves with its first body write, in one send()."""

from __future__ import annotations

import asyncio

from inferd.http.protocol import CONTINUE, HeldHead


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def writelines(self, pieces: tuple[bytes, ...]) -> None:
        self.writes.append(b"|".join(pieces))  # "|": where the pieces met, to tell it from one write

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def held() -> tuple[HeldHead, Transport]:
    transport = Transport()
    return HeldHead(transport, asyncio.get_running_loop()), transport  # type: ignore[arg-type]


def test_head_and_body_leave_in_one_write() -> None:
    async def scenario() -> None:
        wrapper, transport = held()
        wrapper.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        wrapper.write(b"{}")
        await asyncio.sleep(0)
        assert transport.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]

    asyncio.run(scenario())


def test_continue_is_not_held() -> None:
    async def scenario() -> None:
        wrapper, transport = held()
        wrapper.write(CONTINUE)
        assert transport.writes == [CONTINUE]
        wrapper.write(b"HTTP/1.1 200 OK\r\n\r\n")
        wrapper.write(b"ok")
        assert transport.writes == [CONTINUE, b"HTTP/1.1 200 OK\r\n\r\nok"]

    asyncio.run(scenario())


def test_a_head_with_no_body_yet_leaves_at_the_end_of_the_loop_step() -> None:
    async def scenario() -> None:
        wrapper, transport = held()
        wrapper.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        assert transport.writes == []
        await asyncio.sleep(0)  # a stream whose first piece is slow: the client gets its headers now
        assert transport.writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
        wrapper.write(b"5\r\nfirst\r\n")
        assert transport.writes[-1] == b"5\r\nfirst\r\n"

    asyncio.run(scenario())


def test_close_sends_a_held_head_first() -> None:
    async def scenario() -> None:
        wrapper, transport = held()
        wrapper.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
        wrapper.close()
        assert transport.writes == [b"HTTP/1.1 500 Internal Server Error\r\n\r\n"] and transport.closed
        await asyncio.sleep(0)
        assert len(transport.writes) == 1  # the end-of-step flush finds nothing left

    asyncio.run(scenario())


def test_a_large_body_is_not_copied_to_join_its_head() -> None:
    async def scenario() -> None:
        wrapper, transport = held()
        body = b"x" * (1 << 20)
        wrapper.write(b"HTTP/1.1 200 OK\r\n\r\n")
        wrapper.write(body)
        assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\n|" + body]  # one writelines call

    asyncio.run(scenario())
