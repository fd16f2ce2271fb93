"""What a job's workers are started with and how work reaches them (``JobWorkers``: inferd's
worker processes here, the user's containers in ``inferd.containers.jobs``), and the small pure
pieces of running them: the ``batch.run`` body, reading an ``End``, the job spec file."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from inferd.gpu import visible_devices_env
from inferd.store.batch import Batch, BatchJob
from inferd.worker import protocol
from inferd.worker.backend import WorkerBackend, WorkerGone, exit_reason
from inferd.worker.process import WorkerProcess

# the runners' method names (the worker side of each call), for the job side
from inferd.worker.runners.batch import COMPLETE_METHOD as COMPLETE_METHOD
from inferd.worker.runners.batch import RUN_METHOD as RUN_METHOD
from inferd.worker.runners.task import TASK_METHOD as TASK_METHOD


@dataclass(frozen=True)
class Outcome:
    """How one batch, on_job_complete or task went on a live worker."""

    ok: bool
    error: str = ""                # what went wrong, when not ok
    seconds: float | None = None   # how long the handler took
    ran: bool = False              # on_job_complete: the API has one, and it ran


class JobWorkers(Protocol):
    """How one API's job workers start, and how a batch, on_job_complete or the task reaches one."""

    def create(self, slot: int, gpus: tuple[int, ...], spec_path: Path) -> WorkerBackend: ...

    async def send(self, worker: WorkerBackend, job_id: str, method: str, batch: Batch | None,
                   exited: asyncio.Task[int | None]) -> Outcome:
        """``method`` (``RUN_METHOD`` with ``batch``, ``COMPLETE_METHOD``, ``TASK_METHOD``) on
        ``worker``; ``WorkerGone`` when the worker went away under it (``exited`` then ends)."""
        ...


@dataclass(frozen=True)
class JobLaunch:
    """How one API's jobs run (built by its kind from the API's spec)."""

    api: str
    single_call: bool               # TaskAPI: one task.run, no batches, no worker restarts
    workers: JobWorkers
    gpus_per_worker: int
    jobs_dir: Path                  # <state>/jobs/<api>
    liveness_timeout: float
    stop_timeout: float


@dataclass(frozen=True)
class PythonJobWorkers:
    """inferd's own worker processes running the kind's runner (``handle_batch``, ``Task``)."""

    api: str
    init: protocol.Init
    env: dict[str, str]             # without GPU pinning or the spec file
    cwd: str
    spec_envs: tuple[str, ...]      # the variables naming the job spec file
    on_metric: Callable[[dict[str, Any]], None]
    on_log: Callable[[str], None]

    def create(self, slot: int, gpus: tuple[int, ...], spec_path: Path) -> WorkerBackend:
        env = {**self.env, **visible_devices_env(gpus), **dict.fromkeys(self.spec_envs, str(spec_path))}
        return WorkerProcess(self.api, slot, self.init, env, self.cwd, gpus, self.on_metric, self.on_log)

    async def send(self, worker: WorkerBackend, job_id: str, method: str, batch: Batch | None,
                   exited: asyncio.Task[int | None]) -> Outcome:
        stream = worker.open_stream(protocol.Open(0, job_id, method, body=batch_body(batch) if batch else b""))
        await stream.single()
        end = stream.end
        assert end is not None
        if end.code == protocol.UNAVAILABLE:  # the worker went away under the call
            raise WorkerGone(end.details)
        reply = reply_of(end)
        ok = end.code == protocol.OK
        return Outcome(ok, "" if ok else failure_text(reply, end), reply.get("seconds"), bool(reply.get("ran", False)))


def batch_body(batch: Batch) -> bytes:
    """The runner's ``{"batch_id", "payload"}``, spliced: the stored payload is a JSON array."""
    return b'{"batch_id":' + json.dumps(batch.id).encode() + b',"payload":' + batch.payload + b"}"


def reply_of(end: protocol.End) -> dict[str, Any]:
    try:
        body = json.loads(end.body) if end.has_reply and end.body else {}
    except ValueError:
        body = {}
    return body if isinstance(body, dict) else {}


def failure_text(reply: dict[str, Any], end: protocol.End) -> str:
    """The error and, when the handler raised, its traceback: what `inferd jobs` shows."""
    error = str(reply.get("error") or end.details or f"status {end.code}")
    trace = reply.get("traceback")
    return f"{error}\n{trace}".rstrip() if trace else error


def write_spec(jobs_dir: Path, job: BatchJob) -> Path:
    """The job spec document, readable by the daemon's user only (it holds the job's config)."""
    directory = jobs_dir / job.id
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / "spec.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(job.spec, out, indent=2)
    return path


def either(*futures: asyncio.Future[Any]) -> set[asyncio.Future[Any]]:
    """For asyncio.wait over futures of different result types."""
    return set(futures)


def oom_text(worker: WorkerBackend, code: int | None) -> str:
    return (f"worker {worker.pid} was killed by SIGKILL, which inferd did not send: most likely the kernel's "
            f"OOM killer (the worker ran out of memory) [{exit_reason(code)}]")
