"""RunPodAPI with ``handler.runner: sdk``: each unchanged worker file (the direct runner's own,
tests/projects/runpod and runpod_extra, served by tests/projects/runpod_sdk/cortex.yaml) runs as ``python -u <file>`` in the SDK's production mode, and inferd plays the RunPod platform
for its job loop (job-take, job-stream, job-done, job-stop, ping), behind RunPod's queue API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import PROJECTS, RunningDaemon, children_of, pid_alive
from tests.e2e.test_runpod import FINAL, assert_clean, run, runsync, serve, status, wait_status, worker_id, worker_pid

PROJECT = PROJECTS / "runpod_sdk"  # its cortex.yaml; the worker files are the direct runner's
SOURCES = (PROJECTS / "runpod", PROJECTS / "runpod_extra")
READY_TIMEOUT = 120  # every worker imports the SDK (seconds of CPU each) on a shared machine


# -- helpers (also used by test_runpod_differential.py) -------------------------------------------

def sdk_project(tmp: Path) -> Path:
    """tests/projects/runpod_sdk with the worker files its cortex.yaml names, copied from the
    direct runner's projects: both runners serve the very same files."""
    project = tmp / "runpod_sdk"
    shutil.copytree(PROJECT, project)
    for api in yaml.safe_load((PROJECT / "cortex.yaml").read_text()):
        name = api["handler"]["path"]
        if not (project / name).exists():
            shutil.copy(next(source / name for source in SOURCES if (source / name).exists()), project / name)
    return project


def streamed(daemon: RunningDaemon, api: str, job_id: str) -> list:
    """What /stream hands out for a job (each item once), until it is final and drained."""
    items = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = daemon.client.get(f"/v2/{api}/stream/{job_id}").json()
        items += [chunk["output"] for chunk in body["stream"]]
        if body["status"] in FINAL and not body["stream"]:
            return items
        time.sleep(0.1)
    raise AssertionError(f"{api} job {job_id} stream did not end: {items}")


def worker_lines(daemon: RunningDaemon, api: str) -> list[str]:
    """The worker's own output lines (the SDK's log), as the daemon logged them."""
    return [e["line"] for e in daemon.log_events() if e.get("event") == "worker_output" and e.get("api") == api]


# -- the project's daemon ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    tmp = tmp_path_factory.mktemp("sdk")
    yield from serve(sdk_project(tmp), tmp / "daemon")


def test_the_worker_is_the_file_itself_in_its_own_process_group(daemon: RunningDaemon) -> None:
    pid = worker_pid(daemon, "sync")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert [part.decode() for part in cmdline] == [sys.executable, "-u", str(daemon.project / "sync.py")]
    assert os.getpgid(pid) == pid
    assert "--- Starting Serverless Worker |  Version 1.12.0 ---" in worker_lines(daemon, "sync")


def test_sync_handler(daemon: RunningDaemon) -> None:
    pid = worker_pid(daemon, "sync")
    done = runsync(daemon, "sync", {"prompt": "hello"})
    assert done == {
        "id": done["id"], "status": "COMPLETED", "delayTime": done["delayTime"], "executionTime": done["executionTime"],
        "workerId": worker_id(pid),
        # the SDK calls a sync handler on its own event loop: the main thread
        "output": {"id": done["id"], "keys": ["id", "input"], "input": {"prompt": "hello"}, "argv": [], "cwd": "runpod_sdk",
                   "main": "sync.py is __main__", "thread": "MainThread"},
    }
    assert status(daemon, "sync", done["id"]) == done
    assert runsync(daemon, "sync", {"return": [1, "two", None]})["output"] == [1, "two", None]


def test_async_handler(daemon: RunningDaemon) -> None:
    pid = worker_pid(daemon, "asyncer")
    done = runsync(daemon, "asyncer", {})
    assert (done["status"], done["workerId"]) == ("COMPLETED", worker_id(pid))
    assert done["output"] == {"id": done["id"], "running_with": 1, "thread": "MainThread"}


def test_generator_streams_items_as_they_come(daemon: RunningDaemon) -> None:
    job_id = run(daemon, "gen", {"count": 4, "pause": 0.3})
    items, polls = [], 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = daemon.client.get(f"/v2/gen/stream/{job_id}").json()
        items += [chunk["output"] for chunk in body["stream"]]
        polls += 1
        if body["status"] in FINAL and not body["stream"]:
            break
        time.sleep(0.1)
    assert items == ["item 0", "item 1", "item 2", "item 3"]
    assert polls > 2  # handed out as the SDK posted them, not at the end
    final = status(daemon, "gen", job_id)
    assert final["status"] == "COMPLETED" and final["output"] == []


def test_generator_that_raises_and_one_that_yields_an_error(daemon: RunningDaemon) -> None:
    broke = runsync(daemon, "gen", {"count": 3, "raise_at": 1})
    assert broke["status"] == "FAILED" and broke["error"].startswith("handler: generator broke \ntraceback: Traceback")
    assert streamed(daemon, "gen", broke["id"]) == ["item 0"]
    bad = runsync(daemon, "gen", {"count": 3, "error_at": 1})
    assert (bad["status"], bad["error"]) == ("FAILED", "{'message': 'bad item', 'code': 7}")


def test_async_generator(daemon: RunningDaemon) -> None:
    done = runsync(daemon, "agen", {"count": 3})
    assert done["status"] == "COMPLETED" and done["output"] == []
    assert streamed(daemon, "agen", done["id"]) == [{"token": 0}, {"token": 1}, {"token": 2}]


def test_aggregate_output_is_the_list(daemon: RunningDaemon) -> None:
    done = runsync(daemon, "aggregate", {"text": "one small step"})
    assert done["status"] == "COMPLETED" and done["output"] == ["ONE", "SMALL", "STEP"]
    assert streamed(daemon, "aggregate", done["id"]) == ["ONE", "SMALL", "STEP"]


def test_error_dict(daemon: RunningDaemon) -> None:
    failed = runsync(daemon, "errdict", {})
    assert failed == {"id": failed["id"], "status": "FAILED", "delayTime": failed["delayTime"],
                      "executionTime": failed["executionTime"], "error": "temperature must be a float",
                      "output": {"hint": "send 0.7"}, "workerId": failed["workerId"]}
    only = runsync(daemon, "errdict", {"only_error": True})
    assert only["status"] == "FAILED" and only["error"] == "nothing to do" and "output" not in only


def test_raises(daemon: RunningDaemon) -> None:
    failed = runsync(daemon, "raises", {"name": "this"})
    assert failed["status"] == "FAILED" and "output" not in failed
    error = json.loads(failed["error"])
    assert error.keys() == {"error_type", "error_message", "error_traceback", "hostname", "worker_id", "runpod_version"}
    assert (error["error_type"], error["error_message"]) == ("<class 'ValueError'>", "cannot handle this")
    assert "raises.py" in error["error_traceback"] and "ValueError: cannot handle this" in error["error_traceback"]
    assert (error["hostname"], error["runpod_version"]) == ("unknown", "1.12.0")


def test_progress_shows_while_running_and_never_reopens_the_job(daemon: RunningDaemon) -> None:
    job_id = run(daemon, "progress", {"steps": 3, "sleep": 1.5, "name": "inferd"})
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = status(daemon, "progress", job_id)
        if body["status"] in FINAL:
            break
        if body["status"] == "IN_PROGRESS" and "output" in body and body["output"] not in seen:
            seen.append(body["output"])
        time.sleep(0.05)
    # each progress_update is posted from a thread of its own: they may arrive in any order
    assert seen and all(s in ("Update 1/3", "Update 2/3", "Update 3/3", {"from": "thread"}) for s in seen), seen
    assert body["status"] == "COMPLETED" and body["output"] == "Hello, inferd!"
    time.sleep(1.0)
    assert status(daemon, "progress", job_id) == body


def test_late_progress_never_reopens_a_job(daemon: RunningDaemon) -> None:
    """late_progress.py leaves a thread that calls progress_update 0.3 s after the job returned:
    the SDK posts that IN_PROGRESS after the result."""
    job_id = run(daemon, "late", {"sleep": 1, "late": 0.3, "n": 1})
    done = wait_status(daemon, "late", job_id)
    assert done["status"] == "COMPLETED" and done["output"] == {"done": 1}
    time.sleep(1.5)
    assert status(daemon, "late", job_id) == done
    assert runsync(daemon, "late", {"late": 0})["output"] == {"done": None}  # the worker serves on


def test_refresh_worker_replaces_the_process(daemon: RunningDaemon) -> None:
    first = worker_pid(daemon, "refresh")
    done = runsync(daemon, "refresh", {})
    assert (done["status"], done["output"], done["workerId"]) == ("COMPLETED", "done", worker_id(first))
    second = worker_pid(daemon, "refresh", other_than=first)
    again = runsync(daemon, "refresh", {"fail": True})
    assert (again["status"], again["workerId"]) == ("FAILED", worker_id(second))
    assert json.loads(again["error"])["error_message"] == "failed once"
    worker_pid(daemon, "refresh", other_than=second)
    described = daemon.api("refresh")
    assert (described["restarts"], described["last_error"]) == (0, None)
    assert not pid_alive(first)


def test_jobs_run_side_by_side_up_to_the_concurrency_modifier(daemon: RunningDaemon) -> None:
    pid = worker_pid(daemon, "parallel")
    ids = [run(daemon, "parallel", {"sleep": 1}) for _ in range(7)]
    done = [wait_status(daemon, "parallel", job_id) for job_id in ids]
    assert {(d["status"], d["output"]["pid"], d["workerId"]) for d in done} == {("COMPLETED", pid, worker_id(pid))}
    running_with = [d["output"]["running_with"] for d in done]
    # the SDK asks for a batch once its modifier allows more (job-take-batch), never past --max_concurrency 3
    assert 2 <= max(running_with) <= 3, running_with


def test_cancel_a_running_async_job_through_job_stop(daemon: RunningDaemon) -> None:
    pid = worker_pid(daemon, "asyncer")
    job_id = run(daemon, "asyncer", {"sleep": 30})
    wait_status(daemon, "asyncer", job_id, until=("IN_PROGRESS",))
    started = time.monotonic()
    assert daemon.client.post(f"/v2/asyncer/cancel/{job_id}").json() == {"id": job_id, "status": "CANCELLED"}
    nxt = runsync(daemon, "asyncer", {})
    assert time.monotonic() - started < 10
    assert (nxt["status"], nxt["workerId"]) == ("COMPLETED", worker_id(pid))  # the same process
    assert nxt["output"]["running_with"] == 1  # the cancelled job no longer runs
    assert f"INFO   | {job_id} | Job stopped." in worker_lines(daemon, "asyncer")  # the SDK stopped it
    assert status(daemon, "asyncer", job_id)["status"] == "CANCELLED"


def test_cancel_a_running_sync_job_replaces_the_worker(daemon: RunningDaemon) -> None:
    pid = worker_pid(daemon, "sync")
    job_id = run(daemon, "sync", {"sleep": 30})
    wait_status(daemon, "sync", job_id, until=("IN_PROGRESS",))
    assert daemon.client.post(f"/v2/sync/cancel/{job_id}").json() == {"id": job_id, "status": "CANCELLED"}
    # a sync handler blocks the SDK's loop, so it cannot take the stop: its worker goes
    replacement = worker_pid(daemon, "sync", other_than=pid)
    after = runsync(daemon, "sync", {"after": "cancel"})
    assert (after["status"], after["workerId"]) == ("COMPLETED", worker_id(replacement))
    assert not pid_alive(pid)
    stopped = status(daemon, "sync", job_id)
    assert stopped["status"] == "CANCELLED" and "output" not in stopped


def test_execution_timeout_kills_the_worker(daemon: RunningDaemon) -> None:
    pid = worker_pid(daemon, "asyncer")
    reply = daemon.client.post("/v2/asyncer/run", json={"input": {"sleep": 20}, "policy": {"executionTimeout": 5000}})
    timed_out = wait_status(daemon, "asyncer", reply.json()["id"])
    assert (timed_out["status"], timed_out["workerId"]) == ("TIMED_OUT", worker_id(pid))
    replacement = worker_pid(daemon, "asyncer", other_than=pid)
    assert runsync(daemon, "asyncer", {})["workerId"] == worker_id(replacement)


# -- a daemon of its own: stopping, and the platform's key ---------------------------------------

@pytest.fixture
def one_worker(tmp_path: Path) -> Path:
    """A project with the one worker whose jobs leave a process behind."""
    project = tmp_path / "children"
    project.mkdir()
    shutil.copy(PROJECT / "leaves_child.py", project / "leaves_child.py")
    (project / "cortex.yaml").write_text(  # at DEBUG the SDK logs each job-take it sends
        "- name: children\n  kind: RunPodAPI\n  handler:\n    path: leaves_child.py\n    runner: sdk\n"
        "    env:\n      RUNPOD_LOG_LEVEL: DEBUG\n")
    return project


def platform_port(daemon: RunningDaemon, pid: int) -> int:
    started = [e for e in daemon.log_events() if e.get("event") == "worker_started" and e.get("pid") == pid]
    return int(started[-1]["platform_port"])


def test_an_idle_worker_waits_and_stop_ends_the_whole_process_group(one_worker: Path, start_daemon) -> None:
    daemon = start_daemon(one_worker)
    daemon.wait_ready(timeout=READY_TIMEOUT)
    pid = worker_pid(daemon, "children")
    def takes() -> int:
        return sum("rp_job | get_job: " in line for line in worker_lines(daemon, "children"))

    time.sleep(1)
    before = takes()
    time.sleep(3)
    assert takes() - before <= 1  # its job-take is held, not answered at once (it would ask thousands of times)
    child = runsync(daemon, "children", {})["output"]["child"]
    left = children_of(pid)
    assert child in left and len(left) >= 2  # the job's process and the SDK's heartbeat process
    started = time.monotonic()
    assert daemon.stop() == 0
    took = time.monotonic() - started
    assert took < 8, took  # the held job-take is released: the SDK acts on SIGTERM at once
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in (pid, *left)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in (pid, *left))
    assert_clean(daemon)


def test_the_platform_refuses_requests_without_the_worker_key(one_worker: Path, start_daemon) -> None:
    daemon = start_daemon(one_worker)
    daemon.wait_ready(timeout=READY_TIMEOUT)
    pid = worker_pid(daemon, "children")
    port = platform_port(daemon, pid)
    for method, path in (("GET", "/job-take/w?api=children&job_in_progress=0"), ("POST", "/job-done/w/x?isStream=false")):
        for headers in ({}, {"Authorization": "guess"}):
            reply = httpx.request(method, f"http://127.0.0.1:{port}{path}", headers=headers, content=b"{}", timeout=10)
            assert reply.status_code == 401, (method, path, headers)
    assert runsync(daemon, "children", {})["workerId"] == worker_id(pid)  # no job went elsewhere
    events = [e for e in daemon.log_events() if e.get("event") == "runpod_platform_refused"]
    assert len(events) == 1 and "without this worker's key" in events[0]["detail"]


def test_sigkill_of_the_daemon_takes_the_worker_down(one_worker: Path, start_daemon) -> None:
    daemon = start_daemon(one_worker)
    daemon.wait_ready(timeout=READY_TIMEOUT)
    pid = worker_pid(daemon, "children")
    group = [pid, *children_of(pid)]  # with the SDK's heartbeat process
    try:
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait()
        deadline = time.monotonic() + 10
        while any(pid_alive(p) for p in group) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(pid_alive(p) for p in group)
    finally:
        try:
            os.killpg(pid, signal.SIGKILL)  # whatever this test's worker left, if it failed
        except ProcessLookupError:
            pass
