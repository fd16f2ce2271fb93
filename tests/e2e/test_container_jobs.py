"""Container AsyncAPI, BatchAPI and TaskAPI (Cortex's container generation, seeds 002 and 003)
with real processes: the user's own web server (tests/projects/container_jobs/jobserver.py) and
task program (task.py), run as local processes."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import INTERNAL_FAULTS, PROJECTS, RunningDaemon, children_of, pid_alive
from tests.e2e.jobs_client import status, submit, wait_for


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    tmp = tmp_path_factory.mktemp("container_jobs")
    project = tmp / "project"
    shutil.copytree(PROJECTS / "container_jobs", project)
    running = RunningDaemon(project, tmp / "d", env={"INFERD_CONTAINER_ENGINE": "none"})
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()
    faults = [e for e in running.log_events() if e.get("event") in INTERNAL_FAULTS or "Traceback" in json.dumps(e)]
    assert not faults, faults[:3]
    scratch = running.state_dir / "scratch"
    assert [p.name for p in scratch.iterdir() if p.is_dir()] == []  # every replica's scratch went with it


def calls(daemon: RunningDaemon, **match: str) -> list[dict[str, Any]]:
    """The requests the user's server recorded whose headers match ``match``."""
    path = daemon.project / "calls.jsonl"
    found = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [c for c in found if all(c["headers"].get(k.replace("_", "-")) == v for k, v in match.items())]


def poll_async(daemon: RunningDaemon, job_id: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = daemon.client.get(f"/queue/{job_id}")
        assert reply.status_code == 200, reply.text
        if reply.json()["status"] in ("completed", "failed"):
            return reply.json()
        time.sleep(0.05)
    raise AssertionError(f"async job {job_id} unfinished: {reply.json()}")


def queue(daemon: RunningDaemon, **kwargs: Any) -> str:
    reply = daemon.client.post("/queue", **kwargs)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["id"])


# -- AsyncAPI --------------------------------------------------------------------------------


def test_async_jobs_reach_the_container_with_their_body_type_and_request_id(daemon: RunningDaemon) -> None:
    as_json = queue(daemon, content=b'{"x":1}', headers={"Content-Type": "application/json"})
    as_text = queue(daemon, content="héllo".encode(), headers={"Content-Type": "text/plain; charset=utf-8"})
    done = poll_async(daemon, as_json)
    assert done["status"] == "completed"
    assert done["result"] == {"body": '{"x":1}', "content_type": "application/json", "request_id": as_json}
    text = poll_async(daemon, as_text)["result"]
    assert text == {"body": "héllo", "content_type": "text/plain; charset=utf-8", "request_id": as_text}
    (call,) = calls(daemon, x_cortex_request_id=as_json)
    assert call["path"] == "/" and call["headers"]["x-cortex-job-id"] is None
    env = call["env"]
    assert env["CORTEX_VERSION"] == "0.42.0" and env["CORTEX_API_BASE_URL"] == daemon.url
    assert env["CORTEX_PORT"] not in ("8080", None)  # the replica's own port stands in for pod.port


@pytest.mark.parametrize(("mode", "named"), [
    ("text", "Content-Type text/plain, not application/json"),
    ("badjson", "not valid JSON"),
    ("status", "status 500, not 200"),
    ("empty", "not valid JSON"),
    # the server lives on: the job fails naming the hang-up, it is not run again as after a death
    ("hangup", "the container closed the connection before it answered in full"),
])
def test_an_async_reply_that_is_no_json_result_fails_the_job_naming_why(daemon: RunningDaemon, mode: str,
                                                                        named: str) -> None:
    job_id = queue(daemon, json={"mode": mode})
    failed = poll_async(daemon, job_id)
    assert failed["status"] == "failed" and named in failed["error"], failed
    assert "result" not in failed
    assert len(calls(daemon, x_cortex_request_id=job_id)) == 1


def test_a_replica_takes_at_most_max_concurrency_jobs_at_once(daemon: RunningDaemon) -> None:
    ids = [queue(daemon, json={"mode": "slow", "n": n}) for n in range(5)]
    assert all(poll_async(daemon, job_id)["status"] == "completed" for job_id in ids)
    inside = [call["inside"] for job_id in ids for call in calls(daemon, x_cortex_request_id=job_id)]
    assert max(inside) == 2  # pod.max_concurrency 2, one replica


def test_a_job_whose_replica_dies_under_it_goes_back_to_the_queue_once(daemon: RunningDaemon) -> None:
    (before,) = daemon.api("queue")["workers"]
    job_id = queue(daemon, json={"mode": "exit_once"})
    done = poll_async(daemon, job_id)
    assert done["status"] == "completed", done
    first, second = calls(daemon, x_cortex_request_id=job_id)  # the server died under it, then answered
    # the container was restarted in place: same replica, same port, a new process
    (after,) = daemon.api("queue")["workers"]
    assert after["port"] == before["port"] and after["pid"] != before["pid"]
    assert after["containers"][0]["restarts"] == before["containers"][0]["restarts"] + 1
    assert first["env"]["CORTEX_PORT"] == second["env"]["CORTEX_PORT"] == str(before["port"])


# -- BatchAPI --------------------------------------------------------------------------------


def test_batches_arrive_with_the_job_id_and_on_job_complete_runs_once(daemon: RunningDaemon) -> None:
    job = submit(daemon, "batches", {"workers": 2, "item_list": {"items": [1, 2, 3, 4, 5, 6], "batch_size": 2},
                                     "config": {"threshold": 7}})
    done = wait_for(daemon, "batches", job["job_id"])
    assert done["status"] == "succeeded", done
    assert done["batch_metrics"]["succeeded"] == 3 and done["batch_metrics"]["failed"] == 0
    seen = calls(daemon, x_cortex_job_id=job["job_id"])
    batches = [c for c in seen if c["path"] == "/"]
    assert sorted(item for c in batches for item in json.loads(c["body"])) == [1, 2, 3, 4, 5, 6]
    assert all(c["headers"]["content-type"] == "application/json" for c in batches)
    assert [c["path"] for c in seen].count("/on-job-complete") == 1
    spec = json.loads(batches[0]["spec"])  # the job spec file, as CORTEX_JOB_SPEC names it
    assert spec["job_id"] == job["job_id"] and spec["config"] == {"threshold": 7} and spec["kind"] == "BatchAPI"
    assert batches[0]["env"]["CORTEX_API_BASE_URL"] == daemon.url
    assert_no_replicas(daemon, "batches")
    assert not Path(batches[0]["env"]["CORTEX_JOB_SPEC"]).exists()  # gone with the job


def test_a_batch_answered_with_500_is_retried_then_counted_failed(daemon: RunningDaemon) -> None:
    job = submit(daemon, "batches", {"workers": 1, "item_list": {"items": ["fail", "ok"], "batch_size": 1}})
    done = wait_for(daemon, "batches", job["job_id"])
    assert done["status"] == "completed_with_failures", done
    assert done["batch_metrics"]["succeeded"] == 1 and done["batch_metrics"]["failed"] == 1
    failing = [c for c in calls(daemon, x_cortex_job_id=job["job_id"]) if c["body"] == '["fail"]']
    assert len(failing) == 2  # max_receive_count 2: tried twice


def test_a_batch_whose_replica_dies_is_retried_on_a_new_replica(daemon: RunningDaemon) -> None:
    job = submit(daemon, "batches", {"workers": 1, "item_list": {"items": ["die_once", "ok"], "batch_size": 1}})
    done = wait_for(daemon, "batches", job["job_id"])
    assert done["status"] == "succeeded", done
    dying = [c for c in calls(daemon, x_cortex_job_id=job["job_id"]) if c["body"] == '["die_once"]']
    assert len(dying) == 2 and dying[0]["env"]["CORTEX_PORT"] != dying[1]["env"]["CORTEX_PORT"]


# -- TaskAPI ---------------------------------------------------------------------------------


def run_task(daemon: RunningDaemon, body: dict[str, Any], until: tuple[str, ...] | None = None) -> dict[str, Any]:
    job = submit(daemon, "task", body)
    return wait_for(daemon, "task", job["job_id"], **({"until": until} if until else {}))


def test_a_task_exiting_0_succeeds_and_reads_its_spec(daemon: RunningDaemon) -> None:
    done = run_task(daemon, {"config": {"exit": 0, "greeting": "hi"}})
    assert done["status"] == "succeeded", done
    seen = json.loads((daemon.project / f"task-{done['job_id']}.json").read_text())
    assert seen["spec"]["config"] == {"exit": 0, "greeting": "hi"} and seen["spec"]["kind"] == "TaskAPI"
    env = seen["env"]
    assert env["CORTEX_TASK_SPEC"] == env["CORTEX_JOB_SPEC"] and env["CORTEX_API_BASE_URL"] == daemon.url
    assert env["CORTEX_VERSION"] == "0.42.0"
    assert_no_replicas(daemon, "task")


def test_a_task_exiting_1_is_a_worker_error_with_its_output(daemon: RunningDaemon) -> None:
    done = run_task(daemon, {"config": {"exit": 1}})
    assert done["status"] == "worker_error", done
    assert "exited with code 1" in done["error"] and "task says goodbye" in done["error"]


def test_a_failed_task_s_error_keeps_only_the_tail_of_a_huge_output(daemon: RunningDaemon) -> None:
    done = run_task(daemon, {"config": {"exit": 1, "noise": 3_000_000}})  # a progress bar: one 3 MB "line"
    assert done["status"] == "worker_error", done
    assert done["error"].startswith("container run of api 'task' exited with code 1: ") and len(done["error"]) < 10_000
    assert "progress\rprogress" in done["error"][-100:], done["error"][-100:]


def test_a_task_killed_by_sigkill_inferd_did_not_send_is_worker_oom(daemon: RunningDaemon) -> None:
    done = run_task(daemon, {"config": {"oom": True}})
    assert done["status"] == "worker_oom", done
    assert "SIGKILL" in done["error"]


def test_a_task_past_its_timeout_is_timed_out_and_killed(daemon: RunningDaemon) -> None:
    started = time.monotonic()
    done = run_task(daemon, {"timeout": 1, "config": {"sleep": 60}})
    assert done["status"] == "timed_out" and time.monotonic() - started < 10, done
    pid = json.loads((daemon.project / f"task-{done['job_id']}.json").read_text())["pid"]
    assert_gone(pid)


def test_a_deleted_task_is_stopped_and_its_process_group_killed(daemon: RunningDaemon) -> None:
    job = submit(daemon, "task", {"config": {"sleep": 60}})
    record = daemon.project / f"task-{job['job_id']}.json"
    deadline = time.monotonic() + 10
    while not record.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.client.delete("/task", params={"jobID": job["job_id"]}).status_code == 200
    assert status(daemon, "task", job["job_id"])["status"] == "stopped"
    assert_gone(json.loads(record.read_text())["pid"])


def assert_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)


def assert_no_replicas(daemon: RunningDaemon, api: str, timeout: float = 10) -> None:
    """A job's replicas exist only while it runs: none is left once it finished."""
    deadline = time.monotonic() + timeout
    while daemon.api(api).get("running_jobs") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.api(api)["running_jobs"] == 0


def test_a_replica_dying_in_on_job_complete_ends_the_job_instead_of_hanging(daemon: RunningDaemon) -> None:
    job = submit(daemon, "batches", {"workers": 1, "item_list": {"items": ["die_at_end"], "batch_size": 1}})
    done = wait_for(daemon, "batches", job["job_id"], timeout=15)
    assert done["status"] == "worker_error", done
    assert "on_job_complete" in done["error"] and "exited with code 3" in done["error"], done
    assert_no_replicas(daemon, "batches")


def test_a_batch_replica_whose_command_cannot_run_is_a_worker_error_naming_it(daemon: RunningDaemon) -> None:
    job = submit(daemon, "unrunnable-batches", {"workers": 1, "item_list": {"items": [1], "batch_size": 1}})
    done = wait_for(daemon, "unrunnable-batches", job["job_id"], timeout=15)
    assert done["status"] == "worker_error", done
    assert "cannot run 'no-such-program-inferd'" in done["error"], done


def test_a_task_whose_command_cannot_run_is_a_worker_error_naming_it(daemon: RunningDaemon) -> None:
    done = run_task_of(daemon, "unrunnable-task", {})
    assert done["status"] == "worker_error", done
    assert "exited with code 127" in done["error"] and "cannot run 'no-such-program-inferd'" in done["error"], done


def run_task_of(daemon: RunningDaemon, api: str, body: dict[str, Any]) -> dict[str, Any]:
    job = submit(daemon, api, body)
    return wait_for(daemon, api, job["job_id"], timeout=15)


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in children_of(todo.pop()):
            found.add(child)
            todo.append(child)
    return found


def test_a_daemon_stopping_with_container_jobs_running_leaves_no_process_or_scratch(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(PROJECTS / "container_jobs", project)
    running = RunningDaemon(project, tmp_path / "d", env={"INFERD_CONTAINER_ENGINE": "none"})
    try:
        running.wait_ready()
        task = submit(running, "task", {"config": {"sleep": 60}})
        batch = submit(running, "batches", {"workers": 2, "item_list": {"items": ["slow"] * 20, "batch_size": 1}})
        jobs = [queue(running, json={"mode": "slow", "n": n}) for n in range(4)]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (
                (project / f"task-{task['job_id']}.json").exists() and calls(running, x_cortex_job_id=batch["job_id"])
                and calls(running, x_cortex_request_id=jobs[0])):
            time.sleep(0.05)
        started = descendants(running.proc.pid)
        assert len(started) >= 4, started  # the task, two batch replicas, the async replica
    finally:
        assert running.stop() == 0
    for pid in started:
        assert_gone(pid, timeout=5)
    scratch = running.state_dir / "scratch"
    assert [p.name for p in scratch.iterdir()] == []
    assert not any((running.state_dir / "jobs").rglob("spec.json"))


def jobserver_daemon(tmp_path: Path, cortex_yaml: str) -> RunningDaemon:
    """A daemon, started but not yet ready, on a project of jobserver.py and ``cortex_yaml``."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PROJECTS / "container_jobs" / "jobserver.py", project)
    (project / "cortex.yaml").write_text(cortex_yaml)
    return RunningDaemon(project, tmp_path / "d", env={"INFERD_CONTAINER_ENGINE": "none"})


NEVER_READY = """\
- name: queue
  kind: AsyncAPI
  pod:
    containers:
      - name: api
        command: [python, jobserver.py, $(CORTEX_PORT)]
        readiness_probe:
          http_get:
            path: /unready
            port: 8080
          period_seconds: 1
          failure_threshold: 1
"""


def test_a_replica_that_never_gets_ready_says_why_and_its_jobs_wait(tmp_path: Path) -> None:
    running = jobserver_daemon(tmp_path, NEVER_READY)
    try:
        job_id = queue(running, json={"x": 1})
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "503" not in (running.api("queue")["workers"][0]["not_ready"] or ""):
            time.sleep(0.1)
        time.sleep(2)  # two more failed probes: the same reason is not logged again
        (worker,) = running.api("queue")["workers"]
        assert worker["state"] == "starting", worker
        assert worker["not_ready"] == ("readiness probe of container api failed: GET /unready on port "
                                       f"{worker['port']} answered 503"), worker
        assert running.client.get(f"/queue/{job_id}").json()["status"] == "in_queue"
        assert not calls(running, x_cortex_request_id=job_id)
        told = [e for e in running.log_events() if e.get("event") == "replica_not_ready"]
        # told once per reason: the port refused connections while the server started, then 503
        assert told and told[-1]["error"].endswith("answered 503"), told
        assert len({e["error"] for e in told}) == len(told) <= 2, told
    finally:
        running.stop()


SLOW_START = """\
- name: queue
  kind: AsyncAPI
  pod:
    containers:
      - name: api
        command: [python, jobserver.py, $(CORTEX_PORT)]
        env:
          START_DELAY: "1.5"
        liveness_probe:
          tcp_socket:
            port: 8080
          initial_delay_seconds: 4
          period_seconds: 1
          failure_threshold: 1
"""


def test_a_container_restarted_in_place_gets_its_liveness_initial_delay_again(tmp_path: Path) -> None:
    running = jobserver_daemon(tmp_path, SLOW_START)
    try:
        running.wait_ready()
        (before,) = running.api("queue")["workers"]
        time.sleep(4)  # the first liveness probes passed
        done = poll_async(running, queue(running, json={"mode": "exit_once"}), timeout=20)
        assert done["status"] == "completed", done
        (after,) = running.api("queue")["workers"]
        # the liveness probe waited for the restarted server: the replica was not aborted and replaced
        assert after["port"] == before["port"] and after["containers"][0]["restarts"] == 1, after
        assert not [e for e in running.log_events() if e.get("event") == "replica_aborted"]
    finally:
        running.stop()


def test_batches_sent_while_a_dead_replica_stops_its_other_containers_are_not_failed(daemon: RunningDaemon) -> None:
    # the server dies under its first batch; its sidecar takes 3 s to go after SIGTERM, and
    # the batches meanwhile wait for the next replica instead of failing on the dying one
    items = ["die_once", "a", "b", "c", "d"]
    job = submit(daemon, "batches-sidecar", {"workers": 1, "item_list": {"items": items, "batch_size": 1}})
    done = wait_for(daemon, "batches-sidecar", job["job_id"], timeout=30)
    assert done["status"] == "succeeded", done
    assert done["batch_metrics"]["succeeded"] == 5 and done["batch_metrics"]["failed"] == 0
    sent = [json.loads(c["body"])[0] for c in calls(daemon, x_cortex_job_id=job["job_id"]) if c["path"] == "/"]
    assert sorted(sent) == sorted([*items, "die_once"]), sent  # only the batch the server died under ran twice
