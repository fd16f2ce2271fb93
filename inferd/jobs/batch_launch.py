"""What a job's workers are started with, and the small pure pieces of running them: the
``batch.run`` body, reading an ``End``, the job spec file."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferd.store.batch import Batch, BatchJob
from inferd.worker import protocol
from inferd.worker.backend import exit_reason
from inferd.worker.process import WorkerProcess


@dataclass(frozen=True)
class JobLaunch:
    """How one API's job workers are started (built by its kind from the API's spec)."""

    api: str
    single_call: bool               # TaskAPI: one task.run, no batches, no worker restarts
    init: protocol.Init
    env: dict[str, str]             # without GPU pinning or the spec file
    cwd: str
    gpus_per_worker: int
    spec_envs: tuple[str, ...]      # the variables naming the job spec file
    jobs_dir: Path                  # <state>/jobs/<api>
    liveness_timeout: float
    stop_timeout: float
    on_metric: Callable[[dict[str, Any]], None]
    on_log: Callable[[str], None]


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


def oom_text(worker: WorkerProcess, code: int | None) -> str:
    return (f"worker {worker.pid} was killed by SIGKILL, which inferd did not send: most likely the kernel's "
            f"OOM killer (the worker ran out of memory) [{exit_reason(code)}]")
