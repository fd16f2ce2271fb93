"""RunPod's queue API for one RunPodAPI, under its endpoint (default ``/v2/<api>``), so
unchanged ``runpod.Endpoint`` clients work with ``RUNPOD_ENDPOINT_BASE_URL=http://<inferd>/v2``.

Shapes, status strings and defaults are RunPod's (spec runpod.md §4): ``/run``, ``/runsync``,
``/status/<id>``, ``/stream/<id>``, ``/cancel/<id>``, ``/retry/<id>``, ``/health``,
``/purge-queue``. A job is committed to the store before ``/run`` answers.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from starlette.datastructures import QueryParams
from starlette.types import Receive, Scope, Send

from inferd.http.body import BodyTooLarge, ClientGone, content_length, read_body, send_too_large
from inferd.http.protocol import DirectExchange, DirectHandler
from inferd.http.responses import json_bytes, send_bytes, send_error, send_json
from inferd.jobs.webhooks import WebhookSender
from inferd.metrics import Metrics
from inferd.store.runpod import CANCELLED, FINAL_STATUSES, IN_PROGRESS, IN_QUEUE, RunPodJob, RunPodJobStore

SYNC_WAIT_MS = 90_000          # /runsync's default wait
SYNC_WAIT_RANGE = (1_000, 300_000)
EXECUTION_TIMEOUT_RANGE = (5_000, 7 * 24 * 3_600_000)
TTL_RANGE = (10_000, 7 * 24 * 3_600_000)
# The SDK's stream() stops only on COMPLETED, FAILED or TIMED_OUT with an empty stream, so
# /stream reports a cancelled job as FAILED (with its error) or its client would poll forever.
CANCELLED_ON_STREAM = "FAILED"


class JobRequestError(ValueError):
    """A /run or /runsync body RunPod would refuse; the message names the field."""


@dataclass(frozen=True)
class JobRequest:
    input: bytes            # JSON of the request's ``input`` value
    webhook: str | None
    execution_timeout_ms: int
    ttl_ms: int


@dataclass(frozen=True)
class QueueSettings:
    execution_timeout_ms: int = 600_000
    ttl_ms: int = 86_400_000
    max_run_body: int = 10 * 1000 * 1000
    max_runsync_body: int = 20 * 1000 * 1000
    api_keys: tuple[str, ...] = ()


def parse_job_request(body: bytes | bytearray, settings: QueueSettings) -> JobRequest:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise JobRequestError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise JobRequestError('body must be a JSON object like {"input": {...}}')
    if "input" not in data or data["input"] is None:
        raise JobRequestError('"input" is required: send {"input": {...}}')
    webhook = data.get("webhook")
    if webhook is not None:
        _check_webhook(webhook)
    policy = data.get("policy") or {}
    if not isinstance(policy, dict):
        raise JobRequestError('"policy" must be an object like {"executionTimeout": 60000}')
    timeout = _policy_ms(policy, "executionTimeout", settings.execution_timeout_ms, EXECUTION_TIMEOUT_RANGE)
    ttl = _policy_ms(policy, "ttl", settings.ttl_ms, TTL_RANGE)
    return JobRequest(json.dumps(data["input"]).encode(), webhook, timeout, ttl)


def _check_webhook(webhook: object) -> None:
    """A webhook the sender can POST to: an http(s) URL with a host, that httpx can encode (an
    IDNA-invalid host would otherwise fail only at delivery, long after the client left)."""
    if not isinstance(webhook, str) or not webhook.startswith(("http://", "https://")):
        raise JobRequestError(f'"webhook" must be an http(s) URL, got {webhook!r}')
    try:
        host = httpx.URL(webhook).host
    except (httpx.InvalidURL, ValueError) as exc:  # IDNA errors are ValueErrors
        raise JobRequestError(f'"webhook" is not a valid URL ({exc}): {webhook!r}') from None
    if not host:
        raise JobRequestError(f'"webhook" has no host: {webhook!r}')


def _policy_ms(policy: dict[str, Any], name: str, default: int, bounds: tuple[int, int]) -> int:
    """A client's policy value within RunPod's bounds; the endpoint's own default is the operator's
    choice (cortex.yaml ``runpod:``) and is not held to them."""
    if name not in policy:
        return default
    value = policy[name]
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise JobRequestError(f'"policy.{name}" must be an integer of milliseconds in {bounds[0]}-{bounds[1]}, '
                              f"got {value!r}")
    return value


def presented_key(scope: Scope) -> str | None:
    """The key in ``Authorization``: ``Bearer <key>`` (the SDKs) or the bare key (RunPod's docs)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            text: str = value.decode("latin-1").strip()
            return text[7:].strip() if text[:7].lower() == "bearer " else text
    return None


def key_accepted(keys: tuple[str, ...], presented: str | None) -> bool:
    if not keys:
        return True
    return presented is not None and any(hmac.compare_digest(presented, key) for key in keys)


JobCallback = Callable[[RunPodJob], None]


class FinishedJobs:
    """Waiters for jobs to reach a final status (``/runsync``), woken by the dispatcher; also
    woken with a job left unfinished by a stopping daemon, which they answer as still open."""

    def __init__(self) -> None:
        self._waiters: dict[str, list[JobCallback]] = {}

    def finished(self, job: RunPodJob) -> None:
        for waiter in self._waiters.pop(job.id, []):
            waiter(job)

    def add(self, job_id: str, waiter: JobCallback) -> None:
        self._waiters.setdefault(job_id, []).append(waiter)

    def forget(self, job_id: str, waiter: JobCallback) -> None:
        waiters = self._waiters.get(job_id, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiters.pop(job_id, None)

    async def wait(self, job_id: str, timeout: float) -> RunPodJob | None:
        """The job once final (as the dispatcher stored it: no read back), or None after ``timeout``."""
        waiter: asyncio.Future[RunPodJob] = asyncio.get_running_loop().create_future()

        def wake(job: RunPodJob) -> None:
            if not waiter.done():
                waiter.set_result(job)

        self.add(job_id, wake)
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            return None
        finally:
            self.forget(job_id, wake)


Route = Callable[[str, Scope, Receive, Send], Any]


class Dispatcher(Protocol):
    """What the front asks of the API's job dispatcher (``inferd.jobs.runpod_dispatch``)."""

    def notify(self) -> None: ...

    def run_unqueued(self, job_input: bytes, webhook: str | None, execution_timeout_ms: int,
                     ttl_ms: int) -> RunPodJob | None: ...

    async def write_row(self, job_id: str) -> None: ...

    def unwritten(self) -> dict[str, int]: ...

    def stop_job(self, job_id: str, reason: str) -> bool: ...

    def health_workers(self) -> dict[str, int]: ...


class NoDispatcher:
    """Until the first pool's dispatcher is switched in."""

    def notify(self) -> None:
        pass

    def run_unqueued(self, job_input: bytes, webhook: str | None, execution_timeout_ms: int,
                     ttl_ms: int) -> RunPodJob | None:
        return None

    async def write_row(self, job_id: str) -> None:
        pass

    def unwritten(self) -> dict[str, int]:
        return {}

    def stop_job(self, job_id: str, reason: str) -> bool:
        return False

    def health_workers(self) -> dict[str, int]:
        return {}


JSON_TYPE = (b"content-type", b"application/json")


class RunPodEndpoint:
    answers_directly = True  # /runsync on a free worker, from the HTTP protocol's callbacks (``direct``)

    def __init__(self, api: str, jobs: RunPodJobStore, settings: QueueSettings, metrics: Metrics) -> None:
        self.api = api
        self.jobs = jobs
        self.settings = settings
        self.recorder = metrics.recorder(api)
        self.waiting = FinishedJobs()
        self.webhooks = WebhookSender()
        self.dispatcher: Dispatcher = NoDispatcher()
        self.routes: dict[tuple[str, str], Route] = {
            ("POST", "run"): self._run, ("POST", "runsync"): self._runsync, ("GET", "status"): self._status,
            ("GET", "stream"): self._stream, ("POST", "cancel"): self._cancel, ("POST", "retry"): self._retry,
            ("GET", "health"): self._health, ("POST", "purge-queue"): self._purge,
        }

    def switch(self, jobs: RunPodJobStore, settings: QueueSettings, dispatcher: Dispatcher) -> None:
        """A reload replaced the API's workers and dispatcher (and maybe its settings): use the new ones."""
        self.jobs, self.settings, self.dispatcher = jobs, settings, dispatcher

    def job_finished(self, job: RunPodJob) -> None:
        """The dispatcher finished a job (or, stopping, left it unfinished): wake its /runsync
        waiters, and call its webhook once it is final."""
        self.waiting.finished(job)
        if job.webhook is not None and job.status in FINAL_STATUSES:
            payload = {**job.to_status_json(), "input": json.loads(job.input), "webhook": job.webhook}
            self.webhooks.deliver(self.api, job.id, job.webhook, payload)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.recorder.record(self._serve(scope, receive, send))

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> int:
        path = scope.get("path_params", {}).get("path", "").strip("/")
        operation, _, job_id = path.partition("/")
        route = self.routes.get((scope["method"], operation))
        if route is None:
            return await self._no_route(scope["method"], operation, send)
        if self._refuses_key(scope):
            await send_error(send, 401, self.api, "Authorization does not carry an accepted API key")
            return 401
        if (operation in ("status", "stream", "cancel", "retry")) != bool(job_id):
            await send_error(send, 404, self.api, f"no route /{path} (job routes are /{operation}/<job id>)")
            return 404
        status: int = await route(job_id, scope, receive, send)
        return status

    async def _no_route(self, method: str, operation: str, send: Send) -> int:
        allowed = sorted({m for m, op in self.routes if op == operation})
        if allowed:
            await send_error(send, 405, self.api, f"{method} /{operation} is not allowed; use {', '.join(allowed)}",
                             [(b"allow", ", ".join(allowed).encode())])
            return 405
        known = ", ".join(sorted({f"/{op}" for _, op in self.routes}))
        await send_error(send, 404, self.api, f"no route /{operation}; a RunPod endpoint answers {known}")
        return 404

    # -- submitting ------------------------------------------------------------------------------

    async def _submit(self, scope: Scope, receive: Receive, send: Send, limit: int, sync: bool) -> RunPodJob | int:
        try:
            body = await read_body(receive, limit, content_length(scope["headers"]))
        except BodyTooLarge:
            await send_too_large(send, self.api, limit)
            return 413
        except ClientGone:
            return 0
        try:
            request = parse_job_request(body, self.settings)
        except JobRequestError as exc:
            await send_error(send, 400, self.api, str(exc))
            return 400
        if sync:  # straight to a free worker while nothing is queued: one write, when it ends
            unqueued = self.dispatcher.run_unqueued(request.input, request.webhook, request.execution_timeout_ms,
                                                    request.ttl_ms)
            if unqueued is not None:
                return unqueued
        submitted = asyncio.ensure_future(self.jobs.submit(self.api, request.input, request.webhook,
                                                           request.execution_timeout_ms, request.ttl_ms, sync))
        # the dispatcher is woken before the insert commits: its claim then usually joins the
        # insert's group commit (inserts run first in a batch), one transaction for both
        self.dispatcher.notify()
        return await submitted

    async def _run(self, job_id: str, scope: Scope, receive: Receive, send: Send) -> int:
        job = await self._submit(scope, receive, send, self.settings.max_run_body, sync=False)
        if isinstance(job, int):
            return job
        await send_json(send, 200, {"id": job.id, "status": IN_QUEUE})
        return 200

    async def _runsync(self, job_id: str, scope: Scope, receive: Receive, send: Send) -> int:
        try:
            wait_ms = sync_wait_ms(QueryParams(scope["query_string"])) if scope["query_string"] else SYNC_WAIT_MS
        except JobRequestError as exc:
            await send_error(send, 400, self.api, str(exc))
            return 400
        job = await self._submit(scope, receive, send, self.settings.max_runsync_body, sync=True)
        if isinstance(job, int):
            return job
        try:
            current = await self.waiting.wait(job.id, runsync_wait_s(wait_ms, job))
        except asyncio.CancelledError:
            # only a shutdown past its grace period cancels a request: the job is kept, and
            # its client gets what a wait that ran out gets (as on the direct road), not a 503
            current = None
        if current is None:
            return await self._answer_late(job, send)
        await send_bytes(send, 200, [JSON_TYPE], runsync_answer(current))
        return 200

    async def _answer_late(self, job: RunPodJob, send: Send) -> int:
        """/runsync's answer once its wait ran out: the job as the store now has it."""
        await self.dispatcher.write_row(job.id)  # the id it answers must find the job
        current = await self.jobs.get(job.id)
        if current is None:
            await send_error(send, 404, self.api, f"job {job.id} passed its ttl of {job.ttl_ms} ms before it "
                                                  "finished, and was deleted")
            return 404
        await send_bytes(send, 200, [JSON_TYPE], runsync_answer(current))
        return 200

    # -- /runsync on the direct road -------------------------------------------------------------

    def direct(self, scope: Scope) -> DirectHandler | None:
        """The handler for a /runsync that needs no task of its own (see ``_runsync_direct``);
        None for anything else, and for a key this endpoint refuses (the ASGI path says so)."""
        if scope["method"] != "POST" or scope.get("path_params", {}).get("path", "").strip("/") != "runsync":
            return None
        if self._refuses_key(scope):
            return None
        return self._runsync_direct

    def _refuses_key(self, scope: Scope) -> bool:
        """``runpod_api_keys`` is set and the request carries none of them."""
        return bool(self.settings.api_keys) and not key_accepted(self.settings.api_keys, presented_key(scope))

    def _runsync_direct(self, exchange: DirectExchange) -> bool:
        """A /runsync that arrived whole, given to a worker (or its line) from the protocol's
        callback and answered from the dispatcher's: no ASGI task, no receive/send messages.
        Anything else (a bad request, a job that must be queued in the store) declines, and the
        ASGI path answers it as ever."""
        scope, body = exchange.scope, exchange.body
        if len(body) > self.settings.max_runsync_body:
            return False
        try:
            wait_ms = sync_wait_ms(QueryParams(scope["query_string"])) if scope["query_string"] else SYNC_WAIT_MS
            request = parse_job_request(body, self.settings)
        except JobRequestError:
            return False
        job = self.dispatcher.run_unqueued(request.input, request.webhook, request.execution_timeout_ms, request.ttl_ms)
        if job is None:
            return False
        started = self.recorder.begin()

        def finished(current: RunPodJob) -> None:
            timer.cancel()
            answer = runsync_answer(current)
            exchange.answer(200, [JSON_TYPE, (b"content-length", b"%d" % len(answer))], answer)
            self.recorder.end(started, 200)

        def out_of_time() -> None:
            self.waiting.forget(job.id, finished)
            exchange.continue_async(lambda receive, send: self.recorder.end_after(started, self._answer_late(job, send)))

        timer = asyncio.get_running_loop().call_later(runsync_wait_s(wait_ms, job), out_of_time)
        self.waiting.add(job.id, finished)
        return True

    # -- one job ---------------------------------------------------------------------------------

    async def _known(self, job_id: str, send: Send) -> RunPodJob | None:
        job = await self.jobs.get(job_id)
        if job is None or job.api != self.api:
            await send_error(send, 404, self.api, f"job {job_id} not found (unknown, or past its retention)")
            return None
        return job

    async def _status(self, job_id: str, scope: Scope, receive: Receive, send: Send) -> int:
        job = await self._known(job_id, send)
        if job is None:
            return 404
        await send_bytes(send, 200, [JSON_TYPE], job.status_body())
        return 200

    async def _stream(self, job_id: str, scope: Scope, receive: Receive, send: Send) -> int:
        job = await self._known(job_id, send)
        if job is None:
            return 404
        chunks = await self.jobs.take_stream(job_id)
        stream = [{"output": json.loads(chunk)} for chunk in chunks]
        answer: dict[str, Any] = {"id": job.id, "status": job.status, "stream": stream}
        if job.status == CANCELLED:
            answer.update(status=CANCELLED_ON_STREAM, error="job was cancelled")
        await send_json(send, 200, answer)
        return 200

    async def _cancel(self, job_id: str, scope: Scope, receive: Receive, send: Send) -> int:
        if await self._known(job_id, send) is None:
            return 404
        job = await self.jobs.cancel(job_id)
        if job is not None and job.status == CANCELLED:
            self.dispatcher.stop_job(job_id, "cancelled by a client (/cancel)")
            self.waiting.finished(job)
        await send_json(send, 200, {"id": job_id, "status": job.status if job else CANCELLED})
        return 200

    async def _retry(self, job_id: str, scope: Scope, receive: Receive, send: Send) -> int:
        job = await self._known(job_id, send)
        if job is None:
            return 404
        retried = await self.jobs.retry(job_id)
        if retried is None:
            await send_error(send, 400, self.api, f"job {job_id} is {job.status}; only FAILED or TIMED_OUT jobs can be retried")
            return 400
        self.dispatcher.notify()
        await send_json(send, 200, {"id": job_id, "status": IN_QUEUE})
        return 200

    # -- the endpoint ----------------------------------------------------------------------------

    async def _health(self, job_id: str, scope: Scope, receive: Receive, send: Send) -> int:
        jobs = await self.jobs.counts(self.api)
        unwritten = self.dispatcher.unwritten()
        jobs["inProgress"] += unwritten.get(IN_PROGRESS, 0)
        jobs["inQueue"] += unwritten.get(IN_QUEUE, 0)
        await send_json(send, 200, {"jobs": jobs, "workers": self.dispatcher.health_workers()})
        return 200

    async def _purge(self, job_id: str, scope: Scope, receive: Receive, send: Send) -> int:
        removed = await self.jobs.purge(self.api)
        await send_json(send, 200, {"removed": removed, "status": "completed"})
        return 200


def runsync_wait_s(wait_ms: int, job: RunPodJob) -> float:
    """How long /runsync waits for ``job``: a job that outlives its ttl is deleted unfinished
    (RunPod's rule), so waiting longer is pointless."""
    return min(wait_ms, job.ttl_ms + 50) / 1000


def runsync_answer(job: RunPodJob) -> bytes:
    """/runsync's answer: the whole job once final, else its id and status to poll /status with."""
    return job.status_body() if job.status in FINAL_STATUSES else json_bytes({"id": job.id, "status": job.status})


def sync_wait_ms(query: QueryParams) -> int:
    raw = query.get("wait")
    if raw is None:
        return SYNC_WAIT_MS
    if not raw.isdigit() or not SYNC_WAIT_RANGE[0] <= int(raw) <= SYNC_WAIT_RANGE[1]:
        raise JobRequestError(f"wait must be milliseconds in {SYNC_WAIT_RANGE[0]}-{SYNC_WAIT_RANGE[1]}, got {raw!r}")
    return int(raw)
