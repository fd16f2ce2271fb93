"""AsyncAPI over HTTP: ``POST /<endpoint>`` queues a job, ``GET /<endpoint>/<id>`` reports it.

A submission is answered only after its row committed, so an acknowledged id survives a crash;
bad input (a payload the worker could not parse, too large, queue full) is refused before
anything is stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from starlette.types import Receive, Scope, Send

from inferd.http.body import BodyTooLarge, ClientGone, read_body, send_too_large
from inferd.http.responses import send_bytes, send_error, send_json
from inferd.metrics import Metrics
from inferd.payload import PayloadError, parse_payload
from inferd.store import COMPLETED, FAILED, AsyncJobStore, Job

QUEUE_RECOUNT = 0.5  # seconds an estimated queue length is trusted

# Secrets and hop-by-hop headers are not kept for seven days in the job store.
UNSTORED_HEADERS = frozenset({b"authorization", b"cookie", b"proxy-authorization", b"connection",
                              b"keep-alive", b"transfer-encoding", b"upgrade", b"te"})


def timestamp(job: Job) -> str:
    moment = job.finished_at or job.created_at
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def status_body(job: Job) -> bytes:
    """Cortex's shape; the stored result bytes are spliced in, never decoded and re-encoded."""
    head: dict[str, str | None] = {"id": job.id, "status": job.status}
    if job.status == FAILED:
        head["error"] = job.error
    text = json.dumps(head, separators=(",", ":")).encode()
    if job.status != COMPLETED:
        return text
    stamp = json.dumps(timestamp(job)).encode()
    return text[:-1] + b',"result":' + (job.result or b"null") + b',"timestamp":' + stamp + b"}"


class AsyncEndpoint:
    def __init__(self, api: str, endpoint: str, store: AsyncJobStore, notify: Callable[[], None],
                 max_body_size: int, max_queue_length: int, metrics: Metrics) -> None:
        self.api = api
        self.endpoint = endpoint
        self.store = store
        self.notify = notify
        self.max_body_size = max_body_size
        self.max_queue_length = max_queue_length
        self.recorder = metrics.recorder(api)
        self._queued = 0
        self._counted_at = float("-inf")

    def switch(self, endpoint: str, notify: Callable[[], None]) -> None:
        """A reload replaced the API's workers (and maybe moved its endpoint): wake the new
        dispatcher on submissions."""
        self.endpoint = endpoint
        self.notify = notify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # counted like the RealtimeAPI front: in inferd_requests_total and `inferd status` req/s
        await self.recorder.record(self._serve(scope, receive, send))

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> int:
        """The status answered; 0 when the client left before an answer."""
        method = scope["method"]
        job_id = scope.get("path_params", {}).get("path", "")
        if job_id and method == "GET":
            return await self._poll(job_id, send)
        if not job_id and method == "POST":
            return await self._submit(scope, receive, send)
        allow = b"GET" if job_id else b"POST"
        if method == "OPTIONS":  # CORS headers, when the API allows origins, are inferd.http.cors's
            await send_bytes(send, 204, [(b"allow", allow)], b"")
            return 204
        await send_error(send, 405, self.api, f"method {method} is not allowed here; use {allow.decode()}",
                         [(b"allow", allow)])
        return 405

    async def _poll(self, job_id: str, send: Send) -> int:
        job = await self.store.get(job_id, self.api)
        if job is None:  # Cortex's text body, kept for clients that match on it
            await send_bytes(send, 404, [(b"content-type", b"text/plain; charset=utf-8")],
                             f"error: id {job_id} not found".encode())
            return 404
        await send_bytes(send, 200, [(b"content-type", b"application/json")], status_body(job))
        return 200

    async def _submit(self, scope: Scope, receive: Receive, send: Send) -> int:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k not in UNSTORED_HEADERS}
        content_type = headers.get("content-type", "application/octet-stream")
        try:
            body = await read_body(receive, self.max_body_size, headers.get("content-length"))
        except BodyTooLarge:
            await send_too_large(send, self.api, self.max_body_size)
            return 413
        except ClientGone:
            return 0
        try:
            parse_payload(content_type, body)  # the worker's own parser: same rule, same message
        except PayloadError as exc:
            await send_error(send, 400, self.api, str(exc))
            return 400
        queued = await self._queued_jobs()
        if queued >= self.max_queue_length:
            await send_error(send, 503, self.api, f"api '{self.api}' has {queued} jobs queued, the limit "
                             f"(async_max_queue_length) is {self.max_queue_length}; retry later",
                             [(b"retry-after", b"1")])
            return 503
        job_id = await self.store.submit(self.api, body, content_type, headers)
        self._queued += 1
        self.notify()
        await send_json(send, 200, {"id": job_id})
        return 200

    async def _queued_jobs(self) -> int:
        """An estimate kept between counts (a COUNT per submission was the bottleneck); it is
        recounted when stale, and always before refusing, so a refusal is never a guess."""
        now = time.monotonic()
        if now - self._counted_at > QUEUE_RECOUNT or self._queued >= self.max_queue_length:
            self._counted_at = now  # before the await: concurrent submissions must not all recount
            self._queued = await self.store.queue_length(self.api)
        return self._queued
