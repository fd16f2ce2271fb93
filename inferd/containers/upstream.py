"""The HTTP/1.1 client the proxy forwards with: one keep-alive connection pool per replica,
requests written as they arrive, responses parsed by httptools (llhttp, as uvicorn) and handed
on piece by piece, with back-pressure both ways (a slow client pauses reading from the replica,
a slow replica pauses the sender)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import cast

import httptools

HOST = "127.0.0.1"
READ_HIGH_WATER = 1 << 20  # bytes of response buffered before reading from the replica pauses
MAX_IDLE = 512             # idle keep-alive connections kept per replica


class UpstreamGone(Exception):
    """The replica closed the connection, or answered with something that is not HTTP."""


class UpstreamConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._read_paused = False
        self.reset(head_only=False)

    def reset(self, head_only: bool) -> None:
        """Ready for the next exchange; ``head_only``: its answer has no body (HEAD)."""
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._head: asyncio.Future[None] | None = None  # made when awaited (``head``)
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.error: str | None = None
        self.keep_alive = False
        self.got_bytes = False
        self.head_only = head_only
        self._wake: asyncio.Future[None] | None = None
        # called once, at the end of the read that brought the head (or the failure): the direct
        # road's answer is written from there, with no task to wake
        self.on_head: Callable[[], None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"the container's answer is not valid HTTP: {exc}")
            self.close()
        if self.on_head is not None:
            self._tell_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.status and not self.complete and self.delimited_by_close and self.error is None:
            self.complete = True  # a body without length ends with the connection
            self._poke()
        elif not self.complete:
            self._fail("the container closed the connection before it answered in full")
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._tell_head()

    def _tell_head(self) -> None:
        if self.on_head is not None and (self.status or self.error is not None):
            on_head, self.on_head = self.on_head, None
            on_head()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.headers = []  # an interim answer (100 Continue): the real one follows
            return
        self.status = status
        self.keep_alive = bool(self.parser.should_keep_alive())
        if self.head_only:
            self.complete = True
            self.keep_alive = False  # the parser would wait for a body the answer to HEAD has not
        if self._head is not None:
            self._settle_head()

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > READ_HIGH_WATER and not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()
        if self._wake is not None:
            self._poke()

    def on_message_complete(self) -> None:
        if self.status:
            self.complete = True
            if self._wake is not None:
                self._poke()

    # -- the proxy's side ----------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
        if self._head is not None:
            self._settle_head()
        self._poke()

    @property
    def delimited_by_close(self) -> bool:
        """The answer's body has no length and no chunks: it ends when the connection does."""
        return self.status not in (204, 304) and not any(
            name in (b"content-length", b"transfer-encoding") for name, _ in self.headers)

    @property
    def head(self) -> asyncio.Future[None]:
        """Done once the answer's head is here; ``UpstreamGone`` when the connection failed first."""
        if self._head is None:
            self._head = asyncio.get_running_loop().create_future()
            self._settle_head()
        return self._head

    def _settle_head(self) -> None:
        head = self._head
        if head is None or head.done():
            return
        if self.status:
            head.set_result(None)
        elif self.error is not None:
            head.set_exception(UpstreamGone(self.error))
            head.exception()  # retrieved: a request that stopped waiting leaves no warning

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def write(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            raise UpstreamGone("the container closed the connection")
        self.transport.write(data)

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        if self.closed:
            raise UpstreamGone(self.error or "the container closed the connection")

    async def read_body(self) -> bytes | None:
        """The next piece of the answer's body; None once it is complete."""
        while not self.chunks:
            if self.complete:
                return None
            if self.error is not None:
                raise UpstreamGone(self.error)
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        return data

    def whole_body(self) -> bytes:
        """The body of a complete answer (``complete``), all of it at once."""
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        return data

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and not self.chunks

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Keep-alive connections to one replica's port."""

    def __init__(self, port: int, host: str = HOST) -> None:
        self.port = port
        self.host = host
        self.closed = False
        self._idle: deque[UpstreamConnection] = deque()

    def idle_connection(self, head_only: bool = False) -> UpstreamConnection | None:
        """A kept-alive connection ready for the next request, or None when none is idle."""
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                conn.reset(head_only)
                conn.reused = True
                return conn
        return None

    async def connect(self, head_only: bool = False) -> UpstreamConnection:
        conn = self.idle_connection(head_only)
        if conn is not None:
            return conn
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(UpstreamConnection, self.host, self.port)
        except OSError as exc:
            raise UpstreamGone(f"cannot connect to the container on port {self.port}: {exc.strerror or exc}") from None
        conn.head_only = head_only
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if self.closed or not conn.reusable or len(self._idle) >= MAX_IDLE:
            conn.close()
        else:
            self._idle.append(conn)

    def drop_idle(self) -> None:
        """Close the kept-alive connections (their server went away); the pool stays open."""
        while self._idle:
            self._idle.pop().close()

    def close(self) -> None:
        self.closed = True
        self.drop_idle()

    async def exchange(self, method: str, path: str, headers: Sequence[tuple[str, str]],
                       body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """One whole request and its whole answer (async jobs, batches): status, headers (names
        lower-cased), body. ``UpstreamGone`` when the replica is unreachable or hung up."""
        lines = [f"{method} {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        lines.append(f"content-length: {len(body)}\r\n\r\n")
        request = "".join(lines).encode("latin-1") + body
        for attempt in (1, 2):
            conn = await self.connect(head_only=method == "HEAD")
            try:
                conn.write(request)
                await conn.head
                chunks = []
                while (data := await conn.read_body()) is not None:
                    chunks.append(data)
            except UpstreamGone:
                conn.close()
                if attempt == 1 and conn.reused and not conn.got_bytes:
                    continue  # a keep-alive connection the replica closed as we reused it: once more, afresh
                raise
            self.release(conn)
            return conn.status, conn.headers, b"".join(chunks)
        raise AssertionError("unreachable")
