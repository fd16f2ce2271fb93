"""``ContainerProxy``: a container RealtimeAPI's front, Cortex's proxy sidecar on one node.

Every verb, the sub-path (``/<endpoint>/x`` → ``/x``) and the query string go to a ready
replica (the one with the fewest admitted requests), bodies streamed both ways, hop-by-hop
headers dropped, ``X-Cortex-Request-ID`` added (the client's ``X-Request-ID`` when it sent a
usable one). A replica takes ``max_concurrency`` requests at once and queues
``max_queue_length`` more; beyond that the answer is 503 JSON. A replica that dies mid-request
answers 502 JSON naming the API. Bodies over ``max_body_size`` get 413, as for Python APIs.

The common case takes a shorter road (``direct``): a whole request of known length, to a replica
with a free place and an idle kept-alive connection, is written to the container from the HTTP
protocol's callback, and an answer that arrives whole goes back in one write, with no ASGI task.
Everything else (a body still arriving, a chunked one, a queue to wait in, a streamed answer, an
error) goes the general way below, which the direct road hands over to before it sends anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from inferd.containers.replica import ContainerReplica
from inferd.containers.upstream import UpstreamConnection, UpstreamGone
from inferd.http.body import BodyTooLarge, ClientGone, send_too_large
from inferd.http.protocol import DirectExchange, DirectHandler
from inferd.http.realtime import REQUEST_ID, new_request_id_bytes, retry_after_header
from inferd.http.responses import send_error
from inferd.logs import get_logger
from inferd.metrics import Metrics
from inferd.worker.backend import WorkerBackend
from inferd.worker.pool import ApiUnavailable, WorkerPool

log = get_logger()
RECOVERY_POLL = 0.02  # how often a request waiting for a replica back in rotation looks
WHOLE_ANSWER = 64 << 10  # a body of known length up to this size is waited for and sent with its head
REQUEST_ID_HEADER = b"x-cortex-request-id"
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
                        b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"proxy-connection"})
# also never forwarded as sent: the proxy frames the body itself, answers Expect itself (uvicorn
# sends 100 Continue when the body is read), and sets the request id
_REQUEST_DROP = HOP_BY_HOP | {b"content-length", b"expect", REQUEST_ID_HEADER, b"x-request-id"}
_RESPONSE_DROP = HOP_BY_HOP | {b"date"}  # the server adds its own Date


class ReplicaFull(Exception):
    pass


class ContainerProxy:
    answers_directly = True  # see inferd.http.routing.answers_directly
    def __init__(self, api: str, endpoint: str, pool: WorkerPool, max_body_size: int, metrics: Metrics) -> None:
        self.api = api
        self.endpoint = endpoint.encode("latin-1")
        self.pool = pool
        self.max_body_size = max_body_size
        self.recorder = metrics.recorder(api)
        self._turn = 0

    def switch(self, pool: WorkerPool, endpoint: str) -> None:
        """A reload replaced the API's replicas: requests from now on go to the new pool."""
        self.pool = pool
        self.endpoint = endpoint.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.recorder.record(self._serve(scope, receive, send))

    def direct(self, scope: Scope) -> DirectHandler:
        return self._direct

    # -- the direct road ---------------------------------------------------------------------

    def _direct(self, exchange: DirectExchange) -> bool:
        """Send the request now if nothing needs waiting for; False leaves it to ``__call__``."""
        scope = exchange.scope
        rid, length, chunked, fields = _request_facts(scope["headers"])
        if chunked or (length is not None and (not length.isdigit() or int(length) > self.max_body_size)):
            return False
        replica = self._choose()
        if replica is None or not replica.take_place():
            return False
        rid = rid or new_request_id_bytes()
        conn = replica.upstream.idle_connection() if replica.upstream is not None else None
        if conn is None:  # the replica's first requests: a connection to open, in a task
            exchange.continue_async(lambda receive, send: self.recorder.record(
                self._forward_inside(replica, scope, receive, send, rid, length, fields)))
            return True
        try:
            conn.write(self._head(scope, fields, rid, length, False, exchange.body))
        except UpstreamGone:
            replica.leave(True)
            return False
        self._answer_on_head(exchange, replica, conn, rid, self.recorder.begin())
        return True

    def _answer_on_head(self, exchange: DirectExchange, replica: ContainerReplica, conn: UpstreamConnection,
                        rid: bytes, started: float) -> None:
        """``_direct_answer`` at the end of the connection's next read that has its head (or fails)."""
        conn.on_head = lambda: self._direct_answer(exchange, replica, conn, rid, started)

    def _direct_answer(self, exchange: DirectExchange, replica: ContainerReplica, conn: UpstreamConnection,
                       rid: bytes, started: float) -> None:
        """The container's head is here, or its connection failed (and again at each read while
        the rest of a short body is on its way): answer whole, or hand over."""
        if not conn.complete and conn.error is None:
            if _short_body(conn.headers):  # its head and body came in separate writes: the next read
                self._answer_on_head(exchange, replica, conn, rid, started)
                return
            exchange.continue_async(lambda receive, send: self._direct_rest(  # streamed or large: piece by piece
                replica, started, self._relay(replica, conn, None, receive, send, rid)))
            return
        if not conn.complete:
            failed = conn.error or "the container closed the connection"
            conn.close()
            if conn.reused and not conn.got_bytes:
                # a kept-alive connection the container closed as we reused it: the general road tries afresh
                self._direct_end(replica, started, 0)
                exchange.fallback()
                return
            exchange.continue_async(lambda receive, send: self._direct_rest(
                replica, started, self._bad_gateway(send, replica, failed, rid)))
            return
        status = conn.status
        body = conn.whole_body()
        fields = _answer_fields(conn.headers, status, len(body))
        if replica.upstream is not None:
            replica.upstream.release(conn)
        else:
            conn.close()
        exchange.answer_fields(status, fields, body)
        self._direct_end(replica, started, status)

    async def _direct_rest(self, replica: ContainerReplica, started: float, serve: Awaitable[int]) -> None:
        status = 0
        try:
            status = await serve
        finally:
            self._direct_end(replica, started, status)

    def _direct_end(self, replica: ContainerReplica, started: float, status: int) -> None:
        replica.leave(True)
        self.recorder.end(started, status)

    async def _forward_inside(self, replica: ContainerReplica, scope: Scope, receive: Receive, send: Send,
                              rid: bytes, length: bytes | None, fields: bytes) -> int:
        try:
            return await self._forward(replica, scope, receive, send, rid, length, False, fields)
        finally:
            replica.leave(True)

    # -- one request -------------------------------------------------------------------------

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> int:
        rid, length, chunked, fields = _request_facts(scope["headers"])
        rid = rid or new_request_id_bytes()
        rid_header = [(b"x-request-id", rid)]
        if length is not None and (not length.isdigit() or int(length) > self.max_body_size):
            await send_too_large(send, self.api, self.max_body_size, rid_header)
            return 413
        try:
            replica = await self._pick()
        except ApiUnavailable as exc:
            await send_error(send, 503, self.api, str(exc), [*rid_header, *retry_after_header(exc)])
            return 503
        except ReplicaFull as exc:
            await send_error(send, 503, self.api, str(exc), rid_header)
            return 503
        entered = False
        try:
            await replica.enter()
            entered = True
            return await self._forward(replica, scope, receive, send, rid, length, chunked, fields)
        finally:
            replica.leave(entered)

    async def _pick(self) -> ContainerReplica:
        replica = self._choose()
        if replica is None:
            await self._wait_ready()
            replica = self._choose()
        if replica is None:
            raise ApiUnavailable(f"api '{self.api}' has no ready replica")
        if not replica.admit():
            pod = replica.pod
            ready = sum(1 for w in self.pool.workers if isinstance(w, ContainerReplica) and w.state == "ready")
            raise ReplicaFull(f"api '{self.api}' is at capacity: {ready} replica(s) x (pod.max_concurrency "
                              f"{pod.max_concurrency} + pod.max_queue_length {pod.max_queue_length}) requests admitted")
        return replica

    def _choose(self) -> ContainerReplica | None:
        """The ready replica with the fewest admitted requests; ties go round the replicas."""
        workers = self.pool.workers
        count = len(workers)
        if not count:
            return None
        self._turn = turn = (self._turn + 1) % count
        best: ContainerReplica | None = None
        for index in range(turn, turn + count):
            worker = workers[index % count]
            if isinstance(worker, ContainerReplica) and worker.state == "ready" and \
                    (best is None or worker.in_flight < best.in_flight):
                best = worker
        return best

    async def _wait_ready(self) -> list[WorkerBackend]:
        """No replica is ready: while one is only out of rotation for now (a failing readiness
        probe, a container restarting in place) the pool hears nothing of its return, so it is
        watched here, up to ``ready_wait``; otherwise the pool says when one is ready, or why not."""
        pool = self.pool
        deadline = time.monotonic() + pool.config.ready_wait
        while any(w is not None and w.state in ("unready", "restarting") for w in pool.workers):
            if pool.ready_workers() or time.monotonic() >= deadline:
                break
            await asyncio.sleep(RECOVERY_POLL)
        return pool.ready_workers() or await pool.wait_ready_workers()

    def _head(self, scope: Scope, fields: bytes, rid: bytes, length: bytes | None, chunked: bool,
              body: bytes | bytearray = b"") -> bytes:
        """The request's head as the container gets it (and ``body`` after it, in the same bytes);
        ``fields``: the client's header lines it keeps."""
        raw = scope.get("raw_path") or scope["path"].encode("latin-1")
        endpoint = self.endpoint
        path = raw[len(endpoint):] if raw.startswith(endpoint) else b"/" + scope["path_params"]["path"].encode()
        if path[:1] != b"/":
            path = b"/" + path
        query = scope["query_string"]
        if query:
            path += b"?" + query
        client = scope.get("client")
        forwarded = b"x-forwarded-for: %s\r\n" % str(client[0]).encode("latin-1") if client else b""
        framing = b"content-length: %s\r\n" % length if length is not None else \
            b"transfer-encoding: chunked\r\n" if chunked else b""
        return b"%s %s HTTP/1.1\r\n%s%s%s: %s\r\n%s\r\n%s" % (
            scope["method"].encode("latin-1"), path, fields, forwarded, REQUEST_ID_HEADER, rid, framing, body)

    async def _forward(self, replica: ContainerReplica, scope: Scope, receive: Receive, send: Send, rid: bytes,
                       length: bytes | None, chunked: bool, fields: bytes) -> int:
        upstream = replica.upstream
        if upstream is None or replica.state == "exited":
            return await self._bad_gateway(send, replica, "the replica is gone", rid)
        head = self._head(scope, fields, rid, length, chunked)
        has_body = chunked or (length is not None and length != b"0")
        first: Message | None = await receive() if has_body else None
        if first is not None and first["type"] == "http.disconnect":
            return 0
        body = first.get("body", b"") if first is not None else b""
        more = bool(first.get("more_body", False)) if first is not None else False
        if len(body) > self.max_body_size:
            await send_too_large(send, self.api, self.max_body_size, [(b"x-request-id", rid)])
            return 413
        head_only = scope["method"] == "HEAD"
        for attempt in (1, 2):
            try:
                conn = await upstream.connect(head_only)
            except UpstreamGone as exc:
                return await self._bad_gateway(send, replica, str(exc), rid)
            sender = None
            try:
                conn.write(head + _frame(body, chunked, last=not more) if body or (chunked and not more) else head)
                sender = asyncio.ensure_future(self._send_rest(conn, receive, chunked, len(body))) if more else None
                await self._wait_head(conn, sender)
            except UpstreamGone as exc:
                conn.close()
                if sender is not None:
                    sender.cancel()
                if attempt == 1 and conn.reused and not conn.got_bytes and not more:
                    continue  # a keep-alive connection the container closed as we reused it: once more, afresh
                return await self._bad_gateway(send, replica, str(exc), rid)
            except BodyTooLarge:
                conn.close()
                await send_too_large(send, self.api, self.max_body_size, [(b"x-request-id", rid)])
                return 413
            except ClientGone:
                conn.close()
                return 0
            return await self._relay(replica, conn, sender, receive, send, rid)
        raise AssertionError("unreachable")

    async def _wait_head(self, conn: UpstreamConnection, sender: asyncio.Future[None] | None) -> None:
        if sender is None:
            await conn.head
            return
        await asyncio.wait({conn.head, sender}, return_when=asyncio.FIRST_COMPLETED)
        if sender.done() and sender.exception() is not None and not conn.head.done():
            raise sender.exception()  # type: ignore[misc]
        await conn.head

    async def _send_rest(self, conn: UpstreamConnection, receive: Receive, chunked: bool, sent: int) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            body = message.get("body", b"")
            more = bool(message.get("more_body", False))
            sent += len(body)
            if sent > self.max_body_size:
                raise BodyTooLarge()
            if body or (chunked and not more):
                conn.write(_frame(body, chunked, last=not more))
                await conn.drain()
            if not more:
                return

    async def _relay(self, replica: ContainerReplica, conn: UpstreamConnection, sender: asyncio.Future[None] | None,
                     receive: Receive, send: Send, rid: bytes) -> int:
        headers = _response_headers(conn.headers)
        status = conn.status
        upstream = replica.upstream
        watcher: asyncio.Task[Any] | None = None
        started = False
        try:
            data = await conn.read_body()
            started = True
            await send({"type": "http.response.start", "status": status, "headers": headers})
            if conn.complete:  # the whole answer is here (read_body took every piece): one write
                await send({"type": "http.response.body", "body": data or b""})
                return status
            if not any(name == b"content-length" for name, _ in headers):
                watcher = asyncio.ensure_future(_until_disconnect(receive, conn)) if sender is None else None
            while data is not None:
                await send({"type": "http.response.body", "body": data, "more_body": True})
                data = await conn.read_body()
            await send({"type": "http.response.body", "body": b""})
            return status
        except UpstreamGone as exc:
            conn.close()
            if not started:  # nothing sent yet: the client gets to know why
                return await self._bad_gateway(send, replica, str(exc), rid)
            log.warning("container_answer_cut", api=self.api, slot=replica.slot, request_id=rid.decode(), error=str(exc))
            return status  # the answer started: the client sees it end early (the connection closes)
        finally:
            if watcher is not None:
                watcher.cancel()
            if sender is not None:
                if not sender.done():
                    sender.cancel()
                    conn.close()  # the container answered before it read the whole body
                with contextlib.suppress(BaseException):
                    await sender
            if upstream is not None:
                upstream.release(conn)

    async def _bad_gateway(self, send: Send, replica: ContainerReplica, why: str, rid: bytes) -> int:
        message = f"api '{self.api}': replica {replica.slot} (port {replica.port}) failed this request: {why}"
        log.warning("container_request_failed", api=self.api, slot=replica.slot, request_id=rid.decode(), error=why)
        await send_error(send, 502, self.api, message, [(b"x-request-id", rid)])
        return 502


def _request_facts(headers: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None, bool, bytes]:
    """What the proxy reads of a request's headers: the client's usable request id, its
    Content-Length, whether its body is chunked, and the header lines it passes on (not the
    hop-by-hop ones, nor those its Connection names), serialized."""
    rid: bytes | None = None
    length: bytes | None = None
    chunked = False
    named: set[bytes] = set()
    fields: list[bytes] = []
    for name, value in headers:
        if name not in _REQUEST_DROP:
            fields += (name, b": ", value, b"\r\n")
        elif name == b"x-request-id":
            if REQUEST_ID.match(value):
                rid = value
        elif name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            named.update(part.strip().lower() for part in value.split(b","))
    if named:
        fields = [part for name, value in headers if name not in _REQUEST_DROP and name not in named
                  for part in (name, b": ", value, b"\r\n")]
    return rid, length, chunked, b"".join(fields)


def _frame(body: bytes, chunked: bool, last: bool) -> bytes:
    if not chunked:
        return body
    piece = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
    return piece + (b"0\r\n\r\n" if last else b"")


def _short_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """The answer's body has a length, small enough to wait for and send whole."""
    for name, value in headers:
        if name == b"content-length":
            return value.isdigit() and int(value) <= WHOLE_ANSWER
    return False


def _answer_fields(headers: list[tuple[bytes, bytes]], status: int, length: int) -> list[bytes]:
    """A whole answer's headers as the client gets them, serialized: those ``_response_headers``
    drops left out, and a Content-Length for a body that came chunked (that framing is hop-by-hop)."""
    fields: list[bytes] = []
    framed = status in (204, 304)
    for name, value in headers:
        if name in _RESPONSE_DROP:
            if name == b"connection":  # it may name more to drop: filtered first, then as ever
                return _answer_fields(_response_headers(headers), status, length)
            continue
        if name == b"content-length":
            framed = True
        fields += (name, b": ", value, b"\r\n")
    if not framed:
        fields += (b"content-length: ", b"%d" % length, b"\r\n")
    return fields


def _response_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(part.strip().lower() for part in value.split(b","))
    return [(name, value) for name, value in headers if name not in _RESPONSE_DROP and name not in named]


async def _until_disconnect(receive: Receive, conn: UpstreamConnection) -> None:
    """A streamed answer to a client that left: stop reading it from the container."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not conn.complete:
                conn.close()
            return
