"""BatchAPI and TaskAPI over HTTP (spec cortex.md §4.1, §4.3-§4.5), on the API's endpoint:

- ``POST /<endpoint>[?dryRun=true]``: a job submission (JSON, at most 10 MiB, else 413 JSON);
  answered with the job spec document once the job and all its batches are committed.
- ``GET /<endpoint>?jobID=<id>``: ``{"job_status", "endpoint", "api_spec"}``; without ``jobID``
  ``{"jobs": [...]}``, the API's recent jobs, newest first.
- ``DELETE /<endpoint>?jobID=<id>``: ``{"message": "stopped job <id>"}``.

Errors are Cortex's ``{"kind", "message"}``: 400 for a bad submission or a job that cannot be
stopped, 404 for an unknown job. A failed dry run answers ``text/plain``, as Cortex did.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from inferd.http.body import BodyTooLarge, ClientGone, content_length, read_body, send_too_large
from inferd.http.responses import send_bytes, send_json
from inferd.jobs.batch_jobs import JobManager
from inferd.jobs.batch_submission import MAX_BODY_BYTES, SubmissionError, dry_run, dry_run_error, parse_submission
from inferd.metrics import Metrics
from inferd.store.batch import StopResult

DEFAULT_LIST, MAX_LIST = 20, 1000
TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
STOP_ERRORS = {
    StopResult.ALREADY_STOPPED: ("job.job_has_already_been_stopped", "job {id} has already been stopped"),
    StopResult.NOT_IN_PROGRESS: ("job.job_is_not_in_progress", "cannot stop job {id} because it is not in progress"),
}


def query(scope: Scope) -> dict[str, str]:
    """The first value of each query parameter."""
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


async def send_kind_error(send: Send, status: int, kind: str, message: str) -> int:
    await send_json(send, status, {"kind": kind, "message": message})
    return status


class JobEndpoint:
    def __init__(self, api: str, kind: str, endpoint: str, manager: JobManager, api_spec: dict[str, Any],
                 metrics: Metrics) -> None:
        self.api = api
        self.kind = kind
        self.manager = manager
        self.recorder = metrics.recorder(api)
        self.switch(endpoint, api_spec)

    def switch(self, endpoint: str, api_spec: dict[str, Any]) -> None:
        """A reload (maybe a new endpoint, new handler config): reported from now on."""
        self.endpoint = endpoint
        self.api_spec = api_spec

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.recorder.record(self._serve(scope, receive, send))

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> int:
        """The status answered; 0 when the client left first."""
        if scope.get("path_params", {}).get("path", ""):  # Cortex had no sub-paths under a job API
            return await send_kind_error(send, 404, "error", f"{scope['path']} not found: jobs are at "
                                         f"{self.endpoint}?jobID=<id>")
        method, params = scope["method"], query(scope)
        job_id = params.get("jobID", "")
        if method == "POST":
            return await self._submit(scope, receive, send, params.get("dryRun", "").lower() == "true")
        if method == "GET":
            return await (self._status(scope, send, job_id) if job_id else self._list(send, params))
        if method == "DELETE":
            if not job_id:
                return await send_kind_error(send, 400, "endpoints.query_param_required", "query params required: jobID")
            return await self._stop(send, job_id)
        if method == "OPTIONS":  # CORS headers, when the API allows origins, are inferd.http.cors's
            await send_bytes(send, 204, [(b"allow", b"GET, POST, DELETE")], b"")
            return 204
        await send_json(send, 405, {"kind": "error", "message": f"method {method} is not allowed here; "
                                    "use POST, GET or DELETE"}, [(b"allow", b"GET, POST, DELETE")])
        return 405

    async def _submit(self, scope: Scope, receive: Receive, send: Send, dry: bool) -> int:
        try:
            body = await read_body(receive, MAX_BODY_BYTES, content_length(scope["headers"]))
        except BodyTooLarge:
            await send_too_large(send, self.api, MAX_BODY_BYTES)
            return 413
        except ClientGone:
            return 0
        bound, reason = self.manager.max_workers()
        try:
            submission = await asyncio.to_thread(parse_submission, body, self.kind, max_workers=bound,
                                                 max_workers_reason=reason)
            if dry:
                text = await asyncio.to_thread(dry_run, submission)
                await send_bytes(send, 200, list(TEXT), text.encode())
                return 200
            spec = await self.manager.submit(submission)
        except SubmissionError as exc:
            if dry:
                await send_bytes(send, 400, list(TEXT), dry_run_error(exc).encode())
                return 400
            return await send_kind_error(send, 400, exc.kind, exc.message)
        await send_json(send, 200, spec)
        return 200

    async def _status(self, scope: Scope, send: Send, job_id: str) -> int:
        job = await self.manager.get(job_id)
        if job is None:
            return await send_kind_error(send, 404, "job.not_found", f"unable to find job {job_id}")
        await send_json(send, 200, {"job_status": self.manager.status_of(job),
                                    "endpoint": f"{self._base_url(scope)}?jobID={job_id}", "api_spec": self.api_spec})
        return 200

    async def _list(self, send: Send, params: dict[str, str]) -> int:
        limit = params.get("limit", "")
        count = min(int(limit), MAX_LIST) if limit.isdigit() and int(limit) > 0 else DEFAULT_LIST
        jobs = await self.manager.recent(count)
        await send_json(send, 200, {"jobs": [self.manager.status_of(job) for job in jobs]})
        return 200

    async def _stop(self, send: Send, job_id: str) -> int:
        result = await self.manager.stop(job_id)
        if result is StopResult.STOPPED:
            await send_json(send, 200, {"message": f"stopped job {job_id}"})
            return 200
        if result is StopResult.UNKNOWN:
            return await send_kind_error(send, 404, "job.not_found", f"unable to find job {job_id}")
        kind, message = STOP_ERRORS[result]
        return await send_kind_error(send, 400, kind, message.format(id=job_id))

    def _base_url(self, scope: Scope) -> str:
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        if not host and scope.get("server"):
            server_host, port = scope["server"]
            host = f"{server_host}:{port}"
        return f"{scope.get('scheme', 'http')}://{host}{self.endpoint}"
