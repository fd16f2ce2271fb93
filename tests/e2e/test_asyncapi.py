"""AsyncAPI against the real daemon and the real SQLite file: submit, poll, crash, sweep."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECTS, RunningDaemon, children_of, metrics_once, pid_alive


@pytest.fixture
def project(tmp_path: Path) -> Path:
    target = tmp_path / "project"
    shutil.copytree(PROJECTS / "asyncapi", target)
    return target


def poll(daemon: RunningDaemon, job_id: str, until=("completed", "failed"), timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = daemon.client.get(f"/jobs/{job_id}")
        assert reply.status_code == 200, reply.text
        if reply.json()["status"] in until:
            return reply.json()
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {reply.json()['status']} after {timeout}s")


def rows(daemon: RunningDaemon) -> int:
    with sqlite3.connect(daemon.state_dir / "async.db") as db:
        return db.execute("select count(*) from jobs").fetchone()[0]


def submit(daemon: RunningDaemon, **kwargs) -> str:
    reply = daemon.client.post("/jobs", **kwargs)
    assert reply.status_code == 200, reply.text
    assert reply.json().keys() == {"id"}
    return reply.json()["id"]


def test_submit_and_poll_each_payload_type(project: Path, start_daemon) -> None:
    daemon = start_daemon(project)
    daemon.wait_ready()
    json_id = submit(daemon, json={"text": "hi"})
    text_id = submit(daemon, content="café".encode("latin-1"), headers={"content-type": "text/plain; charset=latin-1"})
    bytes_id = submit(daemon, content=b"\x00\x01", headers={"content-type": "application/octet-stream"})
    done = poll(daemon, json_id)
    assert done["status"] == "completed"
    assert done["result"] == {"echo": {"type": "dict", "value": {"text": "hi"}}, "request_id": json_id}
    assert done["timestamp"].endswith("Z") and done["id"] == json_id
    assert poll(daemon, text_id)["result"]["echo"] == {"type": "str", "value": "café"}
    assert poll(daemon, bytes_id)["result"]["echo"] == {"type": "bytes", "hex": "0001"}
    assert len({json_id, text_id, bytes_id}) == 3 and all(len(i) >= 32 for i in (json_id, text_id, bytes_id))


def test_failures_are_stored_and_worker_keeps_serving(project: Path, start_daemon) -> None:
    daemon = start_daemon(project)
    daemon.wait_ready()
    failed = poll(daemon, submit(daemon, json={"action": "fail"}))
    assert failed["status"] == "failed" and "job failed on purpose" in failed["error"]
    assert "result" not in failed
    not_json = poll(daemon, submit(daemon, json={"action": "bytes"}))
    assert not_json["status"] == "failed" and "JSON-serialisable" in not_json["error"]
    assert poll(daemon, submit(daemon, json={"ok": 1}))["status"] == "completed"


def test_in_queue_then_in_progress_and_submission_order(project: Path, start_daemon) -> None:
    daemon = start_daemon(project)
    daemon.wait_ready()
    blocker = submit(daemon, json={"action": "sleep", "seconds": 1.0})
    ids = [submit(daemon, json={"seq": i}) for i in range(8)]
    assert poll(daemon, blocker, until=("in_progress",))["status"] == "in_progress"
    queued = daemon.client.get(f"/jobs/{ids[-1]}").json()
    assert queued == {"id": ids[-1], "status": "in_queue"}
    for job_id in ids:
        poll(daemon, job_id)
    assert (project / "order.log").read_text().split() == [str(i) for i in range(8)]


def test_unknown_id_is_404_text(project: Path, start_daemon) -> None:
    daemon = start_daemon(project)
    daemon.wait_ready()
    reply = daemon.client.get("/jobs/doesnotexist")
    assert reply.status_code == 404
    assert reply.text == "error: id doesnotexist not found"
    assert daemon.client.get("/jobs").status_code == 405


def test_bad_input_stores_nothing(project: Path, start_daemon) -> None:
    daemon = start_daemon(project, env={"INFERD_MAX_BODY_SIZE": "1000", "INFERD_ASYNC_MAX_QUEUE_LENGTH": "2"})
    daemon.wait_ready()
    malformed = daemon.client.post("/jobs", content=b"{oops", headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and "malformed JSON" in malformed.json()["error"]
    assert daemon.client.post("/jobs", content=b"x" * 2000).status_code == 413
    assert rows(daemon) == 0
    poll(daemon, submit(daemon, json={"action": "sleep", "seconds": 1.5}), until=("in_progress",))
    submit(daemon, json={"seq": 1})
    submit(daemon, json={"seq": 2})
    full = daemon.client.post("/jobs", json={"seq": 3})
    assert full.status_code == 503 and "limit" in full.json()["error"] and full.headers["retry-after"] == "1"
    assert rows(daemon) == 3


def test_kill9_of_daemon_loses_no_job(project: Path, start_daemon, tmp_path: Path) -> None:
    first = start_daemon(project)
    first.wait_ready()
    running = submit(first, json={"action": "sleep", "seconds": 2, "seq": 0})
    queued = [submit(first, json={"seq": i}) for i in range(1, 6)]
    poll(first, running, until=("in_progress",))
    workers = children_of(first.proc.pid)
    first.proc.kill()
    first.proc.wait()
    second = start_daemon(project, extra_args=["--state-dir", str(first.state_dir)])
    second.wait_ready()
    results = [poll(second, job_id) for job_id in [running, *queued]]
    assert [r["status"] for r in results] == ["completed"] * 6
    events = [e for e in second.log_events() if e.get("event") == "async_jobs_recovered"]
    assert events and events[0]["requeued"] == 1
    assert not any(pid_alive(pid) for pid in workers)  # the killed daemon's workers died with it


def test_worker_killed_mid_job_requeues_once_then_fails(project: Path, start_daemon) -> None:
    daemon = start_daemon(project)
    daemon.wait_ready()
    survivor = poll(daemon, submit(daemon, json={"action": "die_once"}), timeout=60)
    assert survivor["status"] == "completed"
    poison = poll(daemon, submit(daemon, json={"action": "die"}), timeout=60)
    assert poison["status"] == "failed"
    assert "interrupted 2 times" in poison["error"]
    assert poll(daemon, submit(daemon, json={"after": True}), timeout=60)["status"] == "completed"


def test_retention_sweep_deletes_old_jobs(project: Path, start_daemon) -> None:
    # 0.00002 days is 1.7 s: the sweep is the same code as with 7 days, only the setting moves
    daemon = start_daemon(project, env={"INFERD_ASYNC_RETENTION_DAYS": "0.00002", "INFERD_ASYNC_SWEEP_INTERVAL": "0.3"})
    daemon.wait_ready()
    job_id = submit(daemon, json={"x": 1})
    assert poll(daemon, job_id)["status"] == "completed"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and daemon.client.get(f"/jobs/{job_id}").status_code == 200:
        time.sleep(0.2)
    assert daemon.client.get(f"/jobs/{job_id}").status_code == 404
    assert rows(daemon) == 0
    assert any(e.get("event") == "async_jobs_swept" for e in daemon.log_events())


def test_job_metrics_follow_the_store(project: Path, start_daemon) -> None:
    daemon = start_daemon(project)
    daemon.wait_ready()
    poll(daemon, submit(daemon, json={"x": 1}))
    text = metrics_once(daemon, 'inferd_async_jobs{api="jobs",status="completed"} 1.0')
    assert 'inferd_async_jobs{api="jobs",status="completed"} 1.0' in text
    assert 'inferd_queue_length{api="jobs"} 0.0' in text


def test_submissions_and_polls_are_counted_as_requests(project: Path, start_daemon) -> None:
    daemon = start_daemon(project)
    daemon.wait_ready()
    poll(daemon, submit(daemon, json={"x": 1}))
    assert daemon.client.get("/jobs/unknown").status_code == 404
    assert daemon.client.post("/jobs", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    text = daemon.client.get("/-/metrics").text
    assert 'inferd_requests_total{api="jobs",code="200"}' in text
    assert 'inferd_requests_total{api="jobs",code="404"} 1.0' in text
    assert 'inferd_requests_total{api="jobs",code="400"} 1.0' in text
    status = subprocess.run([sys.executable, "-m", "inferd", "status", "--json", "--state-dir", str(daemon.state_dir)],
                            capture_output=True, text=True, timeout=60)
    jobs = next(api for api in json.loads(status.stdout) if api["name"] == "jobs")
    assert jobs["requests_per_second"] > 0 and jobs["p50_ms"] > 0
