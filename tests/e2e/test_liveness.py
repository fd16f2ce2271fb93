"""Hung workers: a frozen process is found by its missing heartbeat, a handler stuck in
``while True`` by ``handler.request_timeout``; both are killed and replaced."""

from __future__ import annotations

import os
import signal
import time

from tests.conftest import PROJECTS, RunningDaemon, pid_alive


def worker_pid(daemon: RunningDaemon, api: str) -> int:
    return daemon.api(api)["workers"][0]["pid"]


def wait_new_ready_worker(daemon: RunningDaemon, api: str, old_pid: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = daemon.api(api)
        workers = row["workers"]
        if row["state"] == "ready" and workers and workers[0]["pid"] != old_pid and workers[0]["state"] == "ready":
            return int(workers[0]["pid"])
        time.sleep(0.1)
    raise AssertionError(f"{api}: no new ready worker after {timeout}s:\n{daemon.logs()[-4000:]}")


def test_frozen_worker_is_detected_by_heartbeat_killed_and_replaced(start_daemon) -> None:
    daemon = start_daemon(PROJECTS / "hung", env={"INFERD_WORKER_LIVENESS_TIMEOUT": "2"})
    daemon.wait_ready()
    frozen = worker_pid(daemon, "frozen")
    assert daemon.client.post("/frozen", json={}).json() == {"pid": frozen}
    os.kill(frozen, signal.SIGSTOP)
    replacement = wait_new_ready_worker(daemon, "frozen", frozen)
    assert daemon.client.post("/frozen", json={}).json() == {"pid": replacement}
    deadline = time.monotonic() + 10
    while pid_alive(frozen) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(frozen), "the frozen worker was not killed (or left a zombie)"
    aborted = [e for e in daemon.log_events() if e.get("event") == "worker_aborted" and e.get("pid") == frozen]
    assert aborted and "no heartbeat" in aborted[0]["reason"], daemon.logs()[-3000:]
    exited = [e for e in daemon.log_events() if e.get("event") == "worker_exited" and e.get("pid") == frozen]
    assert exited and "no heartbeat" in exited[0]["error"]
    # the other APIs never noticed
    assert daemon.client.post("/spinner", json={}).status_code == 200


def test_stuck_handler_gets_504_and_its_worker_is_replaced(start_daemon) -> None:
    daemon = start_daemon(PROJECTS / "hung")
    daemon.wait_ready()
    stuck = worker_pid(daemon, "spinner")
    started = time.monotonic()
    response = daemon.client.post("/spinner", json={"spin": True})
    assert response.status_code == 504
    body = response.json()
    assert body["api"] == "spinner" and "request_timeout" in body["error"], body
    assert time.monotonic() - started < 10
    replacement = wait_new_ready_worker(daemon, "spinner", stuck)
    assert daemon.client.post("/spinner", json={}).json() == {"pid": replacement}
    # SIGABRT first: faulthandler printed where the handler was stuck
    lines = [e.get("line", "") for e in daemon.log_events() if e.get("event") == "worker_output" and e.get("pid") == stuck]
    assert any("handle_post" in line for line in lines), lines[-20:]
    assert not pid_alive(stuck)


def test_stuck_async_job_times_out_and_the_queue_moves_on(start_daemon) -> None:
    daemon = start_daemon(PROJECTS / "hung")
    daemon.wait_ready()
    stuck = daemon.client.post("/jobs", json={"spin": True}).json()["id"]
    fine = daemon.client.post("/jobs", json={"n": 1}).json()["id"]
    deadline = time.monotonic() + 40
    statuses: dict[str, dict] = {}
    while time.monotonic() < deadline:
        statuses = {job: daemon.client.get(f"/jobs/{job}").json() for job in (stuck, fine)}
        if statuses[stuck]["status"] == "failed" and statuses[fine]["status"] == "completed":
            break
        time.sleep(0.2)
    assert statuses[fine]["status"] == "completed", statuses
    assert statuses[fine]["result"]["echo"] == {"n": 1}
    # requeued once after its first timeout, failed on the second: a poison job cannot loop forever
    assert statuses[stuck]["status"] == "failed", statuses
