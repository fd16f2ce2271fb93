"""The HTTP/1.1 connection protocol: uvicorn's httptools protocol with the limits a server
facing careless or hostile clients needs, which uvicorn leaves out.

- request line + headers are bounded (``max_header_size`` → 431) while they arrive, so a
  64 MiB header never reaches the parser's buffers;
- a client gets ``header_timeout`` to send them and may stall a body ``body_timeout`` between
  two reads (→ 408); a fresh connection that sends nothing is closed after ``header_timeout``;
- at most ``max_connections`` are open: a new one first displaces the oldest idle keep-alive
  connection (as nginx reuses connections), and only when all are busy gets 503 and is closed;
- after an early answer (413 before the body was read) the rest of the body is read and
  thrown away for up to ``body_timeout`` seconds, so clients that send the whole body before
  reading (``requests``, ``urllib``) see the JSON error instead of "connection reset".

Rejections are written directly as JSON with ``connection: close``; the socket is then
half-closed and what the client still sends is discarded briefly (a lingering close), so the
answer is not destroyed by a TCP reset.

An answer's status line and headers are held back until its first body write (``HeldHead``),
so a small answer leaves in one ``send()`` instead of two. A system call saved per request is
worth +22-30% throughput on a 16-core box under gVisor, where system calls are dear.

A route may also answer whole requests from the parser's callbacks, with no ASGI task
(``DirectExchange``): the container proxy's hot path, where the task, the ASGI messages and the
await chain through the app cost more than forwarding the bytes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.parse
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import httptools
from starlette.types import Receive, Scope, Send
from uvicorn._types import ASGI3Application, ASGIVersions
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from inferd.logs import get_logger

log = get_logger()

LINGER_SECONDS = 5.0  # nginx's lingering_timeout: how long a rejected client may keep sending


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_size: int
    header_timeout: float
    body_timeout: float
    max_connections: int


class IdleConnections:
    """Which open connection has waited longest for its next request. A connection stamps itself
    (``idle_since``: an order, not a time; 0 while a request is read or answered) on every
    request's path, and the oldest is looked for by a scan of the open connections only when a new
    one finds the server at its limit."""

    def __init__(self) -> None:
        self.order = itertools.count(1)

    @staticmethod
    def oldest(connections: Iterable[object]) -> InferdHttpProtocol | None:
        idle = [conn for conn in connections if isinstance(conn, InferdHttpProtocol) and conn.idle_since]
        return min(idle, key=lambda conn: conn.idle_since, default=None)


def json_response(status: int, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return b"".join([STATUS_LINE[status], b"content-type: application/json\r\n",
                     b"content-length: ", str(len(body)).encode(), b"\r\nconnection: close\r\n\r\n", body])


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
JOIN_LIMIT = 64 * 1024  # bodies up to this size are joined to their head (copying is cheaper than a writev)


class HeldHead:
    """The transport one request's answer is written through. uvicorn writes the head and the
    body separately; this holds the head and sends it with the first body write, which every
    answer but HEAD's has (uvicorn writes even an empty body). A head with no body write in the
    same loop step (a stream whose first piece is slow) is sent at the end of the step, so a
    client never waits on headers the server already has."""

    __slots__ = ("transport", "loop", "head", "fresh")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.head: bytes | None = None
        self.fresh = True  # nothing but 100 Continue written yet

    def write(self, data: bytes) -> None:
        if self.fresh and data != CONTINUE:
            self.fresh = False
            self.head = data
            self.loop.call_soon(self.flush)
            return
        head, self.head = self.head, None
        if head is None:
            self.transport.write(data)
        elif len(data) <= JOIN_LIMIT:
            self.transport.write(head + data)
        else:
            self.transport.writelines((head, data))  # one writev: a large body is not copied to join it

    def flush(self) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            if not self.transport.is_closing():
                self.transport.write(head)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class _NoWaiter:
    """A direct exchange's message event while nothing can wait on it (no ASGI task yet)."""

    __slots__ = ()

    def set(self) -> None:
        pass


NO_WAITER = _NoWaiter()


class DirectExchange(RequestResponseCycle):
    """A request offered to its route's direct handler once it has arrived whole in one read.

    The handler either declines (returns False: the request takes the ASGI path, as if never
    offered) or takes it and, later, ends it with ``answer`` (the whole answer, one write),
    ``fallback`` (nothing sent yet: the ASGI path after all) or ``continue_async`` (what needs a
    task, such as a streamed answer, with the cycle's own ``receive`` and ``send``).

    It is the connection's request cycle itself, made with only what the direct road reads: the
    rest of uvicorn's cycle (its event, flow control, loggers) is made when an ASGI task takes
    it over (``_start``), which most direct requests never need."""

    scope: Scope  # type: ignore[assignment]  # the handlers' view: starlette's Scope
    # what every exchange starts with, until it changes (then the instance's own)
    keep_alive = True  # the protocol decides the close (InferdHttpProtocol._closing)
    disconnected = False
    body: bytearray = b""  # type: ignore[assignment]  # one piece as read (no copy); a bytearray from a second on
    more_body = True
    response_started = False
    response_complete = False
    message_event: asyncio.Event = NO_WAITER  # type: ignore[assignment]

    def __init__(self, protocol: InferdHttpProtocol, scope: Scope, handler: DirectHandler) -> None:
        # not RequestResponseCycle.__init__: see _start
        self.protocol = protocol
        self.scope = scope
        self.handler = handler

    def answer(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """The whole answer, with the server's default headers (Date) as uvicorn would add them."""
        fields: list[bytes] = []
        for name, value in headers:
            fields += (name, b": ", value, b"\r\n")
        self.answer_fields(status, fields, body)

    def answer_fields(self, status: int, fields: list[bytes], body: bytes) -> None:
        """``answer`` with its headers already serialized: ``name: value\\r\\n`` pieces."""
        protocol = self.protocol
        self.response_started = True
        if not self.disconnected:
            lines = [STATUS_LINE[status]]
            for name, value in protocol.server_state.default_headers:
                lines += (name, b": ", value, b"\r\n")
            lines += fields
            if protocol.closes_after_answer:
                lines.append(b"connection: close\r\n")
            lines += (b"\r\n", body)
            protocol.transport.write(b"".join(lines))
        self.response_complete = True
        protocol.on_response_complete()

    def fallback(self) -> None:
        self._start(self.protocol.app)

    def continue_async(self, rest: Callable[[Receive, Send], Awaitable[None]]) -> None:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await rest(receive, send)
        self._start(app)  # type: ignore[arg-type]

    def _start(self, app: ASGI3Application) -> None:
        """The rest of a RequestResponseCycle, then its task."""
        protocol = self.protocol
        self.transport = HeldHead(protocol.transport, protocol.loop)  # type: ignore[assignment]
        self.flow = protocol.flow
        self.logger = protocol.logger
        self.access_logger = protocol.access_logger
        self.access_log = protocol.access_log
        self.default_headers = protocol.server_state.default_headers
        self.waiting_for_100_continue = False
        self.chunked_encoding = None
        self.expected_content_length = 0
        self.on_response = protocol.on_response_complete
        self.body = bytearray(self.body)
        self.message_event = asyncio.Event()
        if self.body or not self.more_body or self.disconnected:
            self.message_event.set()
        protocol.start_asgi(self, app)


DirectHandler = Callable[[DirectExchange], bool]


class DirectRouter(Protocol):
    def direct_handler(self, scope: Scope) -> DirectHandler | None:
        """The handler that takes this request from the protocol's callbacks, if its route has one."""


class InferdHttpProtocol(HttpToolsProtocol):
    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 limits: ConnectionLimits, idle: IdleConnections, direct: DirectRouter | None = None,
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.idle = idle
        self.idle_since = 0  # see IdleConnections
        self._asgi_info: ASGIVersions = {"version": self.asgi_version, "spec_version": "2.3"}  # the scope's "asgi"
        self.direct = direct
        self._held: DirectExchange | None = None  # offered once it has arrived whole
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadline = 0.0
        self._on_deadline: Callable[[], object] | None = None
        self._in_message = False       # between the first byte of a request and its end
        self._in_head = False          # ... and before its headers were complete
        self._head_bytes = 0            # bytes read while the head was unfinished (bounds the parser's buffer)
        self._read_size = 0             # the read being parsed
        self._discard_until = 0.0      # lingering: the end of discarding an early-answered body
        self._rejected = False
        self._began = False            # a request began in the read being parsed
        # per request read and not yet answered, in order: whether the connection closes after its
        # answer (pipelined requests each have their own; the answers complete in this order)
        self._closing: deque[bool] = deque()
        self._close_when_read = False   # answered early, and the connection closes once the body is read

    # -- connection -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._displace_idle():
            log.warning("http_connection_refused", reason="max_connections", limit=self.limits.max_connections)
            self._reject(503, f"the server is at its limit of {self.limits.max_connections} open connections; "
                              "retry shortly")
            return
        self._arm(self.limits.header_timeout, self._on_idle_timeout)
        self.idle_since = next(self.idle.order)

    def _displace_idle(self) -> bool:
        oldest = self.idle.oldest(self.connections)
        if oldest is None or oldest is self:
            return False
        oldest.idle_since = 0
        oldest.transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
        self.idle_since = 0
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return  # lingering: what a rejected client still sends is dropped unparsed
        self._read_size = len(data)
        self._began = False
        # uvicorn's own, inline (this runs for every read)
        if self.timeout_keep_alive_task is not None:
            self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        if self._held is not None:  # its body goes on past this read: the ASGI path reads the rest
            exchange = self._held
            self._held = None
            if not (self._rejected or self.transport.is_closing()):
                exchange.fallback()
        if self._rejected or self.transport.is_closing():
            return
        # timers are set once per read, not per parser event: a small request needs none
        if self._in_head:
            # the parser buffers an unfinished header line itself, so bound what reaches it
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_header_size:
                self._reject_head()
            elif self._began:
                self._arm(self.limits.header_timeout, self._on_head_timeout)  # from the first byte, never extended
        elif self._in_message:
            self._arm(self.limits.body_timeout, self._on_body_timeout)  # between two reads of a body

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _reject_head(self) -> None:
        self._reject(431, f"request line and headers are larger than the limit of {self.limits.max_header_size} bytes "
                          "(max_header_size)")

    # -- parser callbacks -------------------------------------------------------------------------

    # after a rejection the parser may still be inside the rejected read: ignore the rest of it

    def on_message_begin(self) -> None:
        if self._rejected:
            return
        # uvicorn's own
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {
            "type": "http", "asgi": self._asgi_info, "http_version": "1.1",
            "server": self.server, "client": self.client, "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path, "headers": self.headers, "state": self.app_state.copy()}
        self._in_message = self._in_head = True
        self._head_bytes = 0
        self._began = True
        self.idle_since = 0
        self._on_deadline = None  # the idle connection's timer (_disarm): a request is being read now

    def on_headers_complete(self) -> None:
        if self._rejected:
            return
        self._in_head = False
        # a head that finished inside the read it began in escaped the running count: measure it
        if self._head_bytes + self._read_size > self.limits.max_header_size and self._head_size() > self.limits.max_header_size:
            self._reject_head()
            return
        # uvicorn's own, but for the cycle it makes: a direct exchange where the route has one
        parser = self.parser
        http_version = parser.get_http_version()
        scope = self.scope
        method = scope["method"] = parser.get_method().decode("ascii")
        if http_version != "1.1":
            scope["http_version"] = http_version
        if parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        scope["path"] = self.root_path + path
        scope["raw_path"] = self.root_path.encode("ascii") + raw_path if self.root_path else raw_path
        scope["query_string"] = parsed_url.query or b""
        # uvicorn closes right after the answer when the client asked for "connection: close";
        # the close is ours to make, once any body still arriving has been read and dropped
        self._closing.append(http_version == "1.0" or not parser.should_keep_alive())
        fresh = self.cycle is None or self.cycle.response_complete  # else pipelined behind an answer to come
        handler = self._direct_handler(method) if fresh else None
        if handler is not None:  # offered once it has arrived whole
            self.cycle = self._held = DirectExchange(self, scope, handler)  # type: ignore[arg-type]
            return
        self.cycle = RequestResponseCycle(
            scope=scope, transport=self.transport if method == "HEAD" else HeldHead(self.transport, self.loop),  # type: ignore[arg-type]
            flow=self.flow, logger=self.logger, access_logger=self.access_logger, access_log=self.access_log,
            default_headers=self.server_state.default_headers, message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue, keep_alive=True, on_response=self.on_response_complete)
        if fresh:
            self.start_asgi(self.cycle, self.app)
        else:
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, self.app))

    def on_body(self, body: bytes) -> None:
        if self._rejected:
            return
        cycle = self.cycle
        if cycle.response_complete:
            if time.monotonic() > self._discard_until:
                self._close(f"request body still arriving {self.limits.body_timeout:g}s after the answer")
            return
        # uvicorn's own
        if self.parser.should_upgrade() and self._should_upgrade():
            return
        if cycle.body.__class__ is bytes and cycle.body:  # type: ignore[comparison-overlap]  # a direct exchange's second piece
            cycle.body = bytearray(cycle.body)
        cycle.body += body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        if self._rejected:
            return
        self._in_message = False
        self._on_deadline = None  # _disarm
        cycle = self.cycle
        if not cycle.response_complete and not (self.parser.should_upgrade() and self._should_upgrade()):
            cycle.more_body = False  # uvicorn's own
            cycle.message_event.set()
        if self._held is not None:
            self._offer(self._held)
        if self.cycle.response_complete:  # else the answer marks the connection idle
            if self._close_when_read:
                self._close("request done")
            self._mark_idle_if_done()

    # -- direct exchanges -------------------------------------------------------------------------

    def _direct_handler(self, method: str) -> DirectHandler | None:
        """The handler of the route that answers this request directly, if it has one; an answer
        to HEAD has no body write, and Expect: 100-continue waits on the ASGI path's first read."""
        if self.direct is None or self.expect_100_continue or method == "HEAD":
            return None
        return self.direct.direct_handler(self.scope)  # type: ignore[arg-type]

    def start_asgi(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        super()._start_asgi_task(cycle, app)

    def _offer(self, exchange: DirectExchange) -> None:
        self._held = None
        try:
            taken = exchange.handler(exchange)
        except Exception:
            # a bug of ours, raised inside the parser's callback: never let it become the parser's error
            log.exception("direct_exchange_failed", path=exchange.scope["path"])
            self.transport.close()
            return
        if not taken:
            exchange.fallback()

    @property
    def closes_after_answer(self) -> bool:
        """Whether the connection closes once the oldest unanswered request is answered."""
        return bool(self._closing) and self._closing[0]

    def on_response_complete(self) -> None:
        closes = self._closing.popleft() if self._closing else False
        if self._in_message:
            # answered before the body was read (413, 404 on a POST): keep reading and dropping it
            self._discard_until = time.monotonic() + self.limits.body_timeout
            self._close_when_read = closes
        elif closes:
            self._close("answered")
            return
        # uvicorn's own, less its keep-alive timer: a new timer per answer, where the lazy one
        # that _mark_idle_if_done arms covers the idle connection
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self.timeout_keep_alive_task is not None:
            self._unset_keepalive_if_required()
        if self.flow.read_paused:
            self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self.start_asgi(cycle, app)
        self._mark_idle_if_done()

    def _mark_idle_if_done(self) -> None:
        done = not self._in_message and (self.cycle is None or self.cycle.response_complete) and not self.pipeline
        if done and not self.transport.is_closing():
            self.idle_since = next(self.idle.order)
            # uvicorn arms its keep-alive timer when the answer is sent; a body discarded after it
            # cancelled that timer, so this one covers the idle connection either way
            self._arm(self.timeout_keep_alive, self._on_idle_timeout)

    def send_400_response(self, msg: str) -> None:
        self._reject(400, f"malformed HTTP request: {msg.rstrip('.')}")

    # -- timeouts ---------------------------------------------------------------------------------

    # One lazy timer per connection: arming on every parser event only moves a deadline, and the
    # loop's timer is rescheduled when it fires early or must fire sooner (as nginx's timer tree).

    def _arm(self, delay: float, callback: Callable[[], object]) -> None:
        deadline = self._deadline = self.loop.time() + delay
        self._on_deadline = callback
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._deadline_reached)

    def _disarm(self) -> None:
        self._on_deadline = None

    def _deadline_reached(self) -> None:
        self._timer = None
        if self._on_deadline is None:
            return
        if self.loop.time() < self._deadline:
            self._timer_at = self._deadline
            self._timer = self.loop.call_at(self._deadline, self._deadline_reached)
            return
        callback, self._on_deadline = self._on_deadline, None
        callback()

    def _on_idle_timeout(self) -> None:
        self._close("no request")

    def _on_head_timeout(self) -> None:
        self._reject(408, f"request line and headers not received within {self.limits.header_timeout:g}s")

    def _on_body_timeout(self) -> None:
        if self.flow.read_paused:
            # we stopped reading (the handler is behind), so the client is not the slow one
            self._arm(self.limits.body_timeout, self._on_body_timeout)
            return
        if self.cycle is None or not self._in_message:
            return
        started = self.cycle.response_started
        self.cycle.disconnected = True  # the application's receive() gets http.disconnect
        self.cycle.message_event.set()
        if started:
            self._close(f"request body stalled for {self.limits.body_timeout:g}s")
        else:
            self._reject(408, f"request body stalled for {self.limits.body_timeout:g}s")

    # -- closing ----------------------------------------------------------------------------------

    def _reject(self, status: int, message: str) -> None:
        """Answer, half-close, and drop what the client still sends for a moment (lingering close)."""
        if self._rejected or self.transport.is_closing():
            return
        self._rejected = True
        self._held = None
        self.idle_since = 0
        if self.cycle is not None and not self.cycle.response_complete:
            # a pipelined request is still being answered: its answer can no longer be sent
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        log.info("http_request_rejected", status=status, client=_peer(self.client), error=message)
        self.transport.write(json_response(status, message))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self._arm(LINGER_SECONDS, self.transport.close)

    def _close(self, reason: str) -> None:
        if not self.transport.is_closing():
            log.debug("http_connection_closed", client=_peer(self.client), reason=reason)
            self.idle_since = 0
            self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown"
