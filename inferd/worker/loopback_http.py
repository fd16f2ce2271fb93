"""``LoopbackServer``: a small HTTP/1.1 server on 127.0.0.1 for one local client process (h11 over
asyncio streams), for a worker that reaches inferd over HTTP (the RunPod SDK's worker loop).

Each request's headers go to ``authorize`` before its body is read: a refused one is answered 401
and its connection closed, late (``REFUSE_DELAY``), so a misconfigured client cannot spin. An
accepted request is answered by ``handle``, which may hold it open (long polls): the server puts
no deadline on it. A connection must send its first request's headers within ``HEADER_TIMEOUT``;
after that it is never closed from this side while the server runs, because an HTTP client that
reuses a keep-alive connection at the moment the server closes it loses that request, and here a
lost request can be a job's result.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import h11

HEADER_TIMEOUT = 10.0  # seconds a new connection has to send its first request's headers
REFUSE_DELAY = 1.0     # seconds before a refused request is answered
READ_SIZE = 1 << 16
REASONS = {200: b"OK", 204: b"No Content", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found",
           405: b"Method Not Allowed"}


@dataclass
class Request:
    method: str
    path: str                       # without the query string
    query: dict[str, str]           # the last value of each name
    headers: dict[str, str]         # lower-case names
    body: bytes = b""
    disconnected: Callable[[], bool] = field(default=lambda: False)  # the client closed its side


@dataclass
class Reply:
    status: int
    body: bytes = b""


def json_reply(value: object, status: int = 200) -> Reply:
    return Reply(status, json.dumps(value).encode())


Handle = Callable[[Request], Awaitable[Reply]]
Authorize = Callable[[dict[str, str]], bool]


class LoopbackServer:
    def __init__(self, handle: Handle, authorize: Authorize, on_refused: Callable[[Request], None] = lambda r: None) -> None:
        self._handle = handle
        self._authorize = authorize
        self._on_refused = on_refused
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> int:
        """Listen on 127.0.0.1 on a port the kernel picks; returns it."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def close(self) -> None:
        """Stop listening and drop every connection, held requests included."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        connection = h11.Connection(h11.SERVER)
        try:
            first = True
            while True:
                reading = self._next_event(connection, reader)
                event = await (asyncio.wait_for(reading, HEADER_TIMEOUT) if first else reading)
                if not isinstance(event, h11.Request):
                    return  # the client closed the connection, or broke the protocol
                first = False
                request = Request(event.method.decode(), *split_target(event.target.decode("latin-1")),
                                  {name.decode().lower(): value.decode("latin-1") for name, value in event.headers},
                                  disconnected=reader.at_eof)
                if not self._authorize(request.headers):
                    self._on_refused(request)
                    await asyncio.sleep(REFUSE_DELAY)
                    await self._send(connection, writer, json_reply({"error": "unauthorized"}, 401), close=True)
                    return
                request.body = await self._read_body(connection, reader)
                reply = await self._handle(request)
                await self._send(connection, writer, reply, close=False)
                if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return
                connection.start_next_cycle()
        except (h11.ProtocolError, ConnectionError, TimeoutError):
            return
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _next_event(self, connection: h11.Connection, reader: asyncio.StreamReader) -> object:
        while True:
            event = connection.next_event()
            if event is not h11.NEED_DATA:
                return event
            connection.receive_data(await reader.read(READ_SIZE))

    async def _read_body(self, connection: h11.Connection, reader: asyncio.StreamReader) -> bytes:
        parts = []
        while True:
            event = await self._next_event(connection, reader)
            if isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(parts)
            else:
                raise ConnectionError("the connection ended inside a request body")

    async def _send(self, connection: h11.Connection, writer: asyncio.StreamWriter, reply: Reply, close: bool) -> None:
        headers = [(b"content-type", b"application/json")]
        if reply.status != 204:
            headers.append((b"content-length", str(len(reply.body)).encode()))
        if close:
            headers.append((b"connection", b"close"))
        data = connection.send(h11.Response(status_code=reply.status, headers=headers,
                                            reason=REASONS.get(reply.status, b"")))
        if reply.body and reply.status != 204:
            data = (data or b"") + (connection.send(h11.Data(data=reply.body)) or b"")
        data = (data or b"") + (connection.send(h11.EndOfMessage()) or b"")
        writer.write(data)
        await writer.drain()


def split_target(target: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(target)
    return parts.path, dict(parse_qsl(parts.query, keep_blank_values=True))
