"""``RunPodPlatform``: the RunPod platform as one SDK worker process sees it (spec: runpod-wire.md §2).

inferd's dispatcher hands jobs to ``submit``; the worker's own loop takes them with long-polled
``GET /job-take/`` (or ``/job-take-batch/``: a JSON list) and posts back stream items
(``/job-stream/``), progress and results (``/job-done/``). The routes, as the URL templates
``urls`` gives the SDK make them (it appends ``&job_in_progress=``, ``&batch_size=``,
``&isStream=`` to each, so every template already has a query string)::

    GET  /job-take/<worker>?...        one job (JSON object), or 204 after TAKE_HOLD
    GET  /job-take-batch/<worker>?...  up to batch_size jobs (JSON list), or 204
    GET  /job-stop/<worker>?...        {"jobsToStop": [ids]}, or 204 after STOP_HOLD
    POST /job-stream/<worker>/<job>    {"output": item}
    POST /job-done/<worker>/<job>      the result, or {"status": "IN_PROGRESS", "output": x}
    GET  /ping/<worker>?...            heartbeat (status=unhealthy: a fitness check failed)

Each job's ``StreamCall`` gets exactly what the direct runner sends (see
``inferd.worker.runners.runpod``): ``{"stream": item}``, ``{"progress": x}``, then an ``End``
carrying ``{"result": <the posted dict>}``, or ``{"cancelled": true}`` for a stopped job.

Stopping a job: its id goes to the held ``/job-stop/`` poll. The SDK posts nothing for a job it
stopped, but it asks ``/job-stop/`` again only once it has acted on the answer (cancelled the
job's task), so that next poll is the sign. A stop that reaches the SDK before the job's task
exists (it starts taken jobs within 0.1 s) does nothing, so each stop is sent twice,
STOP_RESEND apart, and the job's call ends at the second sign. A sync handler blocks the SDK's
loop, so no sign comes: after STOP_GRACE its worker is replaced (``on_unstoppable``). A result that arrives once a job has
ended (a late progress post, a stopped job that finished anyway) is answered 200 and changes
nothing: the SDK retries only 5xx.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inferd.worker import protocol
from inferd.worker.loopback_http import Reply, Request, json_reply
from inferd.worker.stream import StreamCall

TAKE_HOLD = 10.0    # seconds a job-take waits for a job before 204: the SDK re-asks at once after a 204
STOP_HOLD = 10.0    # seconds a job-stop poll is held before 204 (the SDK then waits 1 s)
STOP_GRACE = 6.0    # seconds for the SDK to let go of a stopped job before its worker is replaced
STOP_RESEND = 0.5   # seconds between the two stops a job is sent
STOPS_TAKEN = 2     # stops the SDK must have acted on before a job counts as stopped
CANCELLED = json.dumps({"cancelled": True}).encode()
NO_CONTENT = Reply(204)
OK = json_reply({})


def urls(base: str, worker: str, query: str) -> dict[str, str]:
    """The SDK's RUNPOD_WEBHOOK_* templates for a platform served at ``base`` (its ``$ID`` and
    ``$RUNPOD_POD_ID`` are the SDK's own placeholders)."""
    return {
        "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/{worker}?{query}",
        "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/{worker}/$ID?{query}",
        "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/{worker}/$ID?{query}",
        "RUNPOD_WEBHOOK_PING": f"{base}/ping/{worker}?{query}",
    }


@dataclass(eq=False)
class PlatformJob:
    """One job between ``submit`` and the end of its call."""

    id: str
    body: bytes                  # the job object, as job-take hands it to the SDK
    stream: StreamCall
    stop_requested: bool = False
    stops_taken: int = 0          # job-stop answers with its id that the SDK has acted on

    def end(self, body: bytes) -> None:
        self.stream.on_end(protocol.End(self.stream.id, has_reply=True, body=body))


class RunPodPlatform:
    def __init__(self, on_take: Callable[[int, int], None], on_unstoppable: Callable[[str], None],
                 on_unhealthy: Callable[[str], None]) -> None:
        self._on_take = on_take                # (jobs asked for, jobs the SDK holds): the first one means ready
        self._on_unstoppable = on_unstoppable  # job id: the SDK did not take its stop signal
        self._on_unhealthy = on_unhealthy      # why a start-up fitness check failed
        self.queued: deque[PlatformJob] = deque()   # submitted, not yet taken by the SDK
        self.taken: dict[str, PlatformJob] = {}     # taken by the SDK, not ended
        self._to_stop: list[PlatformJob] = []       # to send on the next job-stop answer
        self._stops_sent: list[PlatformJob] = []    # sent on the last job-stop answer
        self.closed = False                         # the worker is stopping: no more jobs out
        self.last_request: float | None = None      # monotonic time of the latest request
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- from the daemon ---------------------------------------------------------------------

    def submit(self, job: PlatformJob) -> None:
        self.queued.append(job)
        self._wake()

    def stop_job(self, job: PlatformJob) -> None:
        """The daemon stopped this job (cancel, timeout): it gets no result from here on."""
        if job.stream.finished or job.stop_requested:
            return
        job.stop_requested = True
        if job in self.queued:  # never handed out: nothing runs it
            self.queued.remove(job)
            job.end(CANCELLED)
            return
        self._to_stop.append(job)
        self._wake()
        asyncio.get_running_loop().call_later(STOP_GRACE, self._check_stopped, job)

    def close(self) -> None:
        """No more jobs for the SDK; held polls are answered 204 now."""
        self.closed = True
        self._wake()

    def drop_queued(self, reason: str) -> None:
        """Jobs the SDK has not taken end unanswered (the dispatcher queues them again)."""
        for job in self.queued:
            job.stream.on_gone(reason)
        self.queued.clear()

    def fail_all(self, reason: str) -> None:
        self.drop_queued(reason)
        for job in self.taken.values():
            job.stream.on_gone(reason)
        self.taken.clear()
        self._to_stop.clear()
        self._stops_sent.clear()

    # -- requests from the SDK ---------------------------------------------------------------

    async def handle(self, request: Request) -> Reply:
        self.last_request = time.monotonic()
        route = request.path.strip("/").split("/")
        name, method = route[0], request.method
        if name in ("job-take", "job-take-batch") and method == "GET":
            return await self._take(request, batch=name == "job-take-batch")
        if name == "job-stop" and method == "GET":
            return await self._stop_poll(request)
        if name in ("job-done", "job-stream") and method == "POST" and len(route) >= 3:
            return self._posted(name, "/".join(route[2:]), request.body)
        if name == "ping" and method == "GET":
            self._pinged(request.query)
            return OK
        return json_reply({"error": f"no route {method} {request.path}"}, 404)

    async def _take(self, request: Request, batch: bool) -> Reply:
        try:
            size = max(1, int(request.query.get("batch_size", "1"))) if batch else 1
        except ValueError:
            return json_reply({"error": "batch_size must be an integer"}, 400)
        self._on_take(size, len(self.taken))
        await self._until(lambda: self.closed or bool(self.queued) or request.disconnected(), TAKE_HOLD)
        if self.closed or request.disconnected():
            return NO_CONTENT
        jobs = [self.queued.popleft() for _ in range(min(size, len(self.queued)))]
        if not jobs:
            return NO_CONTENT
        for job in jobs:
            self.taken[job.id] = job
        if batch:
            return Reply(200, b"[" + b",".join(job.body for job in jobs) + b"]")
        return Reply(200, jobs[0].body)

    async def _stop_poll(self, request: Request) -> Reply:
        self._stops_taken()
        await self._until(lambda: self.closed or bool(self._to_stop) or request.disconnected(), STOP_HOLD)
        if not self._to_stop or request.disconnected():
            return NO_CONTENT
        sending, self._to_stop = self._to_stop, []
        self._stops_sent = sending
        return json_reply({"jobsToStop": [job.id for job in sending]})

    def _posted(self, route: str, job_id: str, body: bytes) -> Reply:
        job = self.taken.get(job_id)
        if job is None or (job.stop_requested and route == "job-stream"):
            return OK  # ended (or never ours): a late post reopens nothing
        try:
            posted = json.loads(body)
        except ValueError:
            return json_reply({"error": "the body is not JSON"}, 400)
        if not isinstance(posted, dict):
            return json_reply({"error": "the body is not a JSON object"}, 400)
        if route == "job-stream":
            job.stream.on_message(json.dumps({"stream": posted.get("output")}).encode())
        elif posted.get("status") == "IN_PROGRESS":
            if not job.stop_requested:
                job.stream.on_message(json.dumps({"progress": posted.get("output")}).encode())
        elif job.stop_requested:
            self._end_stopped(job)  # it finished before the SDK took the stop signal
        else:
            del self.taken[job_id]
            job.end(json.dumps({"result": posted}).encode())
        return OK

    def _pinged(self, query: dict[str, str]) -> None:
        if query.get("status") == "unhealthy":
            self._on_unhealthy(f"fitness check {query.get('check', '?')} failed: {query.get('reason', '')}")

    # -- stopping ----------------------------------------------------------------------------

    def _stops_taken(self) -> None:
        """A new job-stop poll: the SDK has acted on the previous answer."""
        sent, self._stops_sent = self._stops_sent, []
        for job in sent:
            if self.taken.get(job.id) is not job:
                continue
            job.stops_taken += 1
            if job.stops_taken >= STOPS_TAKEN:
                self._end_stopped(job)
            else:
                asyncio.get_running_loop().call_later(STOP_RESEND, self._stop_again, job)

    def _stop_again(self, job: PlatformJob) -> None:
        if self.taken.get(job.id) is job and job not in self._to_stop:
            self._to_stop.append(job)
            self._wake()

    def _end_stopped(self, job: PlatformJob) -> None:
        self.taken.pop(job.id, None)
        if job in self._to_stop:
            self._to_stop.remove(job)
        job.end(CANCELLED)

    def _check_stopped(self, job: PlatformJob) -> None:
        if not job.stream.finished and self.taken.get(job.id) is job:
            self._on_unstoppable(job.id)

    # -- waiting -----------------------------------------------------------------------------

    def _wake(self) -> None:
        """Every held request looks again at what it waits for."""
        if not self._changed.done():
            self._changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()

    async def _until(self, done: Callable[[], bool], timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            left = deadline - loop.time()
            if left <= 0:
                return
            await asyncio.wait({self._changed}, timeout=left)


def job_id_of(body: bytes) -> str:
    """The ``id`` of a job object (as the dispatcher's ``Open`` body carries it)."""
    job: Any = json.loads(body)
    if not isinstance(job, dict) or not isinstance(job.get("id"), str):
        raise ValueError("a RunPod job must be a JSON object with a string id")
    return str(job["id"])
