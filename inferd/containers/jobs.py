"""Container APIs' queued work: async jobs' replies checked, and ``ContainerJobWorkers``, the
``JobWorkers`` of a container BatchAPI or TaskAPI (seeds 002 and 003).

- AsyncAPI: each job is ``POST /`` (``ContainerReplica.call``); the reply must be 200 with a
  JSON Content-Type and valid JSON, else the job fails naming what was wrong (``async_reply_problem``);
  a server that hangs up and lives on fails it too, one that dies under it requeues it once.
- BatchAPI: each batch is ``POST /`` with the JSON array, ``Content-Type: application/json``
  and ``X-Cortex-Job-ID``; 200 is success, any other status a failed batch (retried within
  ``max_receive_count``). At the end one replica gets ``POST /on-job-complete``; a 404 means it
  has none. A replica that hangs up without dying fails the batch rather than the replica.
- TaskAPI: the replica runs to its end (``one_shot``): every container exiting 0 is success,
  one exiting otherwise a ``worker_error`` with its exit and the tail of its stderr; a SIGKILL
  inferd did not send is the OOM killer's (``JobRun`` decides, from ``WorkerGone``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from inferd.containers.engine import Engine
from inferd.containers.launch import JobFiles
from inferd.containers.replica import HANGUP_GRACE, ContainerReplica
from inferd.gpu import visible_devices_env
from inferd.jobs.batch_launch import COMPLETE_METHOD, RUN_METHOD, TASK_METHOD, Outcome
from inferd.spec.model import PodSpec
from inferd.store.batch import Batch
from inferd.worker.backend import Response, WorkerBackend, WorkerGone, exit_reason

JOB_ID_HEADER = "x-cortex-job-id"
JOB_COMPLETE_BODY = b'"job_complete"'
QUOTE = 300         # characters of an unexpected answer quoted in an error


def async_reply_problem(reply: Response) -> str | None:
    """Why a container's answer to an async job is no result (None: it is one)."""
    if reply.status != 200:
        return f"the container answered status {reply.status}, not 200: {_quote(reply.body)}"
    content_type = next((value for name, value in reply.headers if name.lower() == "content-type"), "")
    if not content_type.split(";", 1)[0].strip().lower() == "application/json":
        shown = content_type or "none"
        return f"the container answered Content-Type {shown}, not application/json: {_quote(reply.body)}"
    try:
        json.loads(reply.body)
    except ValueError as exc:
        return f"the container's answer is not valid JSON ({exc}): {_quote(reply.body)}"
    return None


def _quote(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    return repr(text[:QUOTE] + ("..." if len(text) > QUOTE else ""))


@dataclass(frozen=True)
class ContainerJobWorkers:
    api: str
    pod: PodSpec
    env: Mapping[str, str]          # the slot environment (container_slots), without GPUs
    project_dir: Path
    base_url: str
    scratch_root: Path
    engine: Engine | None
    spec_envs: tuple[str, ...]
    one_shot: bool                  # a TaskAPI's
    on_log: Callable[[str], None]

    def create(self, slot: int, gpus: tuple[int, ...], spec_path: Path) -> WorkerBackend:
        return ContainerReplica(self.api, slot, self.pod, {**self.env, **visible_devices_env(gpus)}, gpus,
                                self.project_dir, self.base_url, self.scratch_root, self.engine, self.on_log,
                                job=JobFiles(spec_path, self.spec_envs), one_shot=self.one_shot)

    async def send(self, worker: WorkerBackend, job_id: str, method: str, batch: Batch | None,
                   exited: asyncio.Task[int | None]) -> Outcome:
        assert isinstance(worker, ContainerReplica)
        if method == TASK_METHOD:
            return await self._task(worker, exited)
        started = time.monotonic()
        headers = [("content-type", "application/json"), (JOB_ID_HEADER, job_id)]
        try:
            if method == RUN_METHOD:
                assert batch is not None
                reply = await worker.post("/", headers, batch.payload)
            else:
                assert method == COMPLETE_METHOD
                reply = await worker.post("/on-job-complete", headers, JOB_COMPLETE_BODY)
        except WorkerGone as gone:
            await asyncio.wait({exited}, timeout=HANGUP_GRACE)
            if exited.done() or worker.state == "exited":  # exited: its other containers may take a while to go
                raise
            return Outcome(False, str(gone))
        seconds = time.monotonic() - started
        if method == COMPLETE_METHOD and reply.status == 404:
            return Outcome(True, seconds=seconds)  # the container has no /on-job-complete: fine
        if reply.status == 200 or (method == COMPLETE_METHOD and 200 <= reply.status < 300):
            return Outcome(True, seconds=seconds, ran=True)
        what = f"batch {batch.id}" if batch is not None else "POST /on-job-complete"
        return Outcome(False, f"the container answered status {reply.status} to {what}: {_quote(reply.body)}")

    async def _task(self, worker: ContainerReplica, exited: asyncio.Task[int | None]) -> Outcome:
        code = await exited
        if code == 0:
            return Outcome(True, seconds=time.monotonic() - worker.started_at)
        if code is None or code < 0:  # killed (by inferd, or the OOM killer): JobRun tells which
            raise WorkerGone(worker.error or exit_reason(code))
        return Outcome(False, worker.error or f"the task's container {exit_reason(code)}")
