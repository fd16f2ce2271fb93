"""TaskAPI against the real daemon (tests/projects/jobs): one Task call per job; success,
exception (worker_error with the traceback) and timeout (timed_out, the process killed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningDaemon, shared_daemon
from tests.e2e.jobs_client import ENV, PROJECT, submit, wait_for, wait_no_workers

SPEC_KEYS = ["job_id", "api_name", "kind", "workers", "config", "timeout", "api_id", "spec_id", "handler_id",
             "start_time"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    yield from shared_daemon(PROJECT, tmp_path_factory, env=ENV)


def test_ready_with_no_job(daemon: RunningDaemon) -> None:
    assert daemon.client.get("/-/ready").status_code == 200
    assert daemon.api("task")["state"] == "ready"


def test_a_task_that_returns_succeeds_with_the_merged_config(daemon: RunningDaemon, tmp_path: Path) -> None:
    spec = submit(daemon, "task", {"config": {"output": str(tmp_path / "out.json"), "nested": {"b": 2}}})
    assert list(spec) == SPEC_KEYS and spec["kind"] == "TaskAPI" and spec["workers"] == 1
    job = wait_for(daemon, "task", spec["job_id"])
    assert job["status"] == "succeeded" and "end_time" in job and "batch_metrics" not in job
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["config"] == {"from_api": "api", "nested": {"a": 1, "b": 2}, "output": str(tmp_path / "out.json")}
    assert written["spec"].endswith(f"/jobs/task/{spec['job_id']}/spec.json")  # CORTEX_TASK_SPEC
    assert not Path(written["spec"]).exists()  # removed with the job's workers
    wait_no_workers(daemon)


def test_a_task_that_raises_is_a_worker_error_with_its_traceback(daemon: RunningDaemon) -> None:
    spec = submit(daemon, "task", {"config": {"action": "raise"}})
    job = wait_for(daemon, "task", spec["job_id"])
    assert job["status"] == "worker_error"
    assert job["error"].startswith("ValueError: the task failed on purpose")
    assert "Traceback" in job["error"] and "task.py" in job["error"]


def test_a_task_past_its_timeout_is_timed_out_and_killed(daemon: RunningDaemon, tmp_path: Path) -> None:
    spec = submit(daemon, "task", {"timeout": 1, "config": {"action": "sleep", "seconds": 30,
                                                            "output": str(tmp_path / "never")}})
    job = wait_for(daemon, "task", spec["job_id"], timeout=10)
    assert job["status"] == "timed_out"
    wait_no_workers(daemon, timeout=3)
    assert not (tmp_path / "never").exists()


def test_delete_stops_a_task(daemon: RunningDaemon) -> None:
    spec = submit(daemon, "task", {"config": {"action": "sleep", "seconds": 30}})
    wait_for(daemon, "task", spec["job_id"], until=("running",))
    reply = daemon.client.delete("/task", params={"jobID": spec["job_id"]})
    assert reply.json() == {"message": f"stopped job {spec['job_id']}"}
    wait_no_workers(daemon)
    finished = daemon.client.delete("/task", params={"jobID": spec["job_id"]})
    assert finished.status_code == 400


@pytest.mark.parametrize(("body", "text"), [
    ({"workers": 2}, "workers: invalid value (got 2, must be 1)"),
    ({"timeout": 0}, "timeout: 0 must be greater than or equal to 1"),
    ({"config": [1]}, "cannot unmarshal array into field config"),
])
def test_malformed_task_submissions_get_400(daemon: RunningDaemon, body: dict, text: str) -> None:
    reply = daemon.client.post("/task", json=body)
    assert reply.status_code == 400 and text in reply.json()["message"], reply.text
