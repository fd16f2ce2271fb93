"""RealtimeAPI over HTTP: each verb on the API's endpoint goes to its ``handle_<verb>``.

This is the hot path, so it is a bare ASGI callable: headers are scanned once, the body is
read once (and refused with 413 as soon as it passes the limit), and forwarded as the one
frame's body without copies or parsing; the worker parses it by Content-Type.
"""

from __future__ import annotations

import itertools
import math
import os
import re

from starlette.types import Receive, Scope, Send

from inferd.http.body import BodyTooLarge, ClientGone, read_body_parts, send_too_large
from inferd.http.responses import send_bytes, send_error
from inferd.logs import get_logger
from inferd.metrics import Metrics
from inferd.worker import protocol
from inferd.worker.pool import ApiUnavailable, CallTimedOut, WorkerPool

VERBS = ("post", "get", "put", "patch", "delete")
log = get_logger()
REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_ID_PREFIX = os.urandom(8).hex()
_ID_PREFIX_BYTES = _ID_PREFIX.encode()
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """An id for a request that brought none: 32 hex digits, as ``uuid4().hex``, unique within this
    daemon (a prefix drawn at start, then a counter). uuid4 asks the kernel for randomness every
    time, a system call per request; these ids correlate log lines, they guard nothing."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def new_request_id_bytes() -> bytes:
    """``new_request_id``, as the bytes a header carries."""
    return b"%s%016x" % (_ID_PREFIX_BYTES, next(_id_counter))


class RealtimeEndpoint:
    def __init__(self, api: str, pool: WorkerPool, max_body_size: int, metrics: Metrics,
                 max_header_size: int = 64 << 10) -> None:
        self.api = api
        self.pool = pool
        self.max_body_size = max_body_size
        self.max_header_size = max_header_size
        self.recorder = metrics.recorder(api)

    def switch(self, pool: WorkerPool) -> None:
        """A reload replaced the API's workers: calls from now on go to the new pool."""
        self.pool = pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.recorder.record(self._serve(scope, receive, send))

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> int:
        verb = scope["method"].lower()
        content_type, length, request_id = "", None, None
        header_bytes = len(scope["query_string"])  # the query rides in the same frame meta
        for name, value in scope["headers"]:
            header_bytes += len(name) + len(value)
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                length = value
            elif name == b"x-request-id" and REQUEST_ID.match(value):
                request_id = value.decode()
        rid = request_id or new_request_id()
        rid_header = (b"x-request-id", rid.encode())
        if header_bytes > self.max_header_size:
            # refused here: a worker must never receive a call frame it cannot read
            await send_error(send, 431, self.api, f"request headers total {header_bytes} bytes, more than the "
                             f"limit of {self.max_header_size} bytes (max_header_size)", [rid_header])
            return 431
        try:
            info = self.pool.info or await self.pool.wait_info()
        except ApiUnavailable as exc:
            await send_error(send, 503, self.api, str(exc), [rid_header, *retry_after_header(exc)])
            return 503
        verbs = info.get("verbs", {})
        wants = verbs.get(verb) if verb in VERBS else None
        if wants is None:
            allow = ", ".join(v.upper() for v in VERBS if v in verbs)
            if verb == "options":  # CORS headers, when the API allows origins, are inferd.http.cors's
                await send_bytes(send, 204, [(b"allow", allow.encode()), rid_header], b"")
                return 204
            await send_error(send, 405, self.api, f"method {verb.upper()} is not implemented by api '{self.api}'",
                             [(b"allow", allow.encode()), rid_header])
            return 405
        try:
            body = await read_body_parts(receive, self.max_body_size, length)
        except BodyTooLarge:
            await send_too_large(send, self.api, self.max_body_size, [rid_header])
            return 413
        except ClientGone:
            return 0
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]] if "headers" in wants else None
        call = protocol.Call(0, rid, verb, content_type, scope["query_string"].decode("latin-1"), headers,
                             body[0] if len(body) == 1 else body)  # no piece, or several: sent as they are
        try:
            reply = await self.pool.call(call)
        except ApiUnavailable as exc:
            log.warning("request_unavailable", api=self.api, request_id=rid, error=str(exc))
            await send_error(send, 503, self.api, str(exc), [rid_header, *retry_after_header(exc)])
            return 503
        except CallTimedOut as exc:
            log.warning("request_timed_out", api=self.api, request_id=rid, error=str(exc))
            await send_error(send, 504, self.api, str(exc), [rid_header])
            return 504
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers if k.lower() != "content-length"]
        out.append(rid_header)
        try:
            await send_bytes(send, reply.status, out, reply.body)
        finally:
            if reply.ack is not None:
                reply.ack()  # even if sending failed: the callback runs, and never leaks
        return reply.status


def retry_after_header(exc: ApiUnavailable) -> list[tuple[bytes, bytes]]:
    """Retry-After when the pool knows when its next worker starts (restart backoff)."""
    if exc.retry_after is None:
        return []
    return [(b"retry-after", str(max(1, math.ceil(exc.retry_after))).encode())]
