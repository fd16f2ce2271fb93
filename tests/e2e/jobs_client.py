"""Helpers for the BatchAPI and TaskAPI end-to-end tests (tests/projects/jobs)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.conftest import PROJECTS, RunningDaemon, children_of

PROJECT = PROJECTS / "jobs"
REPO = Path(__file__).resolve().parents[2]
FINAL = ("succeeded", "completed_with_failures", "worker_error", "worker_oom", "timed_out", "stopped", "unexpected_error")
# the workers import inferd from this tree even where an older copy is installed
ENV = {"PYTHONPATH": str(REPO)}


def start(tmp: Path, extra_args: list[str] | None = None) -> RunningDaemon:
    daemon = RunningDaemon(PROJECT, tmp, extra_args=extra_args, env=ENV)
    daemon.wait_ready()
    return daemon


def submit(daemon: RunningDaemon, api: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = daemon.client.post(f"/{api}", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()


def status(daemon: RunningDaemon, api: str, job_id: str) -> dict[str, Any]:
    reply = daemon.client.get(f"/{api}", params={"jobID": job_id})
    assert reply.status_code == 200, reply.text
    return reply.json()["job_status"]


def wait_for(daemon: RunningDaemon, api: str, job_id: str, until: tuple[str, ...] = FINAL,
             timeout: float = 30, done: int | None = None) -> dict[str, Any]:
    """The job's status once it is one of ``until`` (and, with ``done``, that many batches finished)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = status(daemon, api, job_id)
        metrics = job.get("batch_metrics") or {}
        finished = metrics.get("succeeded", 0) + metrics.get("failed", 0)
        if job["status"] in until and (done is None or finished >= done):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} is {job['status']} after {timeout}s: {job}")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def items_and_ends(path: Path) -> tuple[list[Any], list[str]]:
    """The items written (in file order) and the batch ids that finished, per line of ``path``."""
    found = lines(path)
    return [line["item"] for line in found if "item" in line], [line["end"] for line in found if "end" in line]


def wait_no_workers(daemon: RunningDaemon, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while children_of(daemon.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not children_of(daemon.proc.pid), "the job's workers are still running"
