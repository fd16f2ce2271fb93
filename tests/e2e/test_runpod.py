"""RunPodAPI against the real daemon: unchanged RunPod worker files (tests/projects/runpod) served
with RunPod's queue API under /v2/<api>, driven with plain HTTP and with RunPod's own client SDK
(runpod_client.py, in its own process, pointed at inferd by RUNPOD_ENDPOINT_BASE_URL)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import INTERNAL_FAULTS, PROJECTS, RunningDaemon, pid_alive, raw_answers

CLIENT = Path(__file__).with_name("runpod_client.py")
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")
OPEN = ("IN_QUEUE", "IN_PROGRESS")
HOST = socket.gethostname()
QUIET_WORKERS = {"idle": 1, "running": 0, "initializing": 0, "unhealthy": 0}


# -- helpers -------------------------------------------------------------------------------------

def assert_clean(daemon: RunningDaemon) -> None:
    """What every daemon's log must never show, whatever the test did to it."""
    faults = [e for e in daemon.log_events() if e.get("event") in INTERNAL_FAULTS]
    assert not faults, faults[:3]
    assert "Exception in ASGI application" not in daemon.logs()


def serve(project: Path, tmp: Path, ready_timeout: float = 120) -> Iterator[RunningDaemon]:
    """A daemon for a module; every worker imports the SDK (seconds of CPU each) on a shared machine."""
    daemon = RunningDaemon(project, tmp)
    try:
        daemon.wait_ready(timeout=ready_timeout)
        yield daemon
    finally:
        daemon.stop()
    assert_clean(daemon)


def worker_id(pid: int) -> str:
    return f"{HOST}-{pid}"


def worker_pid(daemon: RunningDaemon, api: str, other_than: int | None = None, timeout: float = 60) -> int:
    """The pid of the API's ready worker (one that is not ``other_than``), once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = daemon.api(api)
        ready = [w["pid"] for w in described["workers"] if w["state"] == "ready" and w["pid"] != other_than]
        if ready and described["state"] == "ready":
            return int(ready[0])
        time.sleep(0.05)
    raise AssertionError(f"{api}: no ready worker other than {other_than} after {timeout}s: {daemon.api(api)}")


def run(daemon: RunningDaemon, api: str, job_input: object, **extra: object) -> str:
    reply = daemon.client.post(f"/v2/{api}/run", json={"input": job_input, **extra})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body == {"id": body["id"], "status": "IN_QUEUE"}
    assert body["id"].endswith("-u1")
    return body["id"]


def runsync(daemon: RunningDaemon, api: str, job_input: object, **extra: object) -> dict:
    reply = daemon.client.post(f"/v2/{api}/runsync", json={"input": job_input, **extra}, timeout=120)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["id"].startswith("sync-") and body["status"] in FINAL, body
    return body


def status(daemon: RunningDaemon, api: str, job_id: str) -> dict:
    reply = daemon.client.get(f"/v2/{api}/status/{job_id}")
    assert reply.status_code == 200, reply.text
    return reply.json()


def wait_status(daemon: RunningDaemon, api: str, job_id: str, until: tuple[str, ...] = FINAL,
                timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = status(daemon, api, job_id)
        if body["status"] in until:
            return body
        time.sleep(0.05)
    raise AssertionError(f"{api} job {job_id} still {body} after {timeout}s")


def running_outputs(daemon: RunningDaemon, api: str, job_id: str, timeout: float = 30) -> list:
    """The distinct ``output`` values /status showed while the job was IN_PROGRESS, until it finished."""
    seen: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = status(daemon, api, job_id)
        if body["status"] in FINAL:
            return seen
        if body["status"] == "IN_PROGRESS" and "output" in body and body["output"] not in seen[-1:]:
            seen.append(body["output"])
        time.sleep(0.05)
    raise AssertionError(f"{api} job {job_id} still {body} after {timeout}s")


def health(daemon: RunningDaemon, api: str) -> dict:
    reply = daemon.client.get(f"/v2/{api}/health")
    assert reply.status_code == 200, reply.text
    return reply.json()


def assert_times(job: dict) -> None:
    assert isinstance(job["delayTime"], int) and job["delayTime"] >= 0, job
    assert isinstance(job["executionTime"], int) and job["executionTime"] >= 0, job


def sdk(daemon: RunningDaemon, calls: dict[str, tuple[str, str, object]], timeout: float = 120) -> dict[str, object]:
    """RunPod's client SDK, in one process of its own, each call in its own thread: name -> result."""
    env = {**os.environ, "RUNPOD_ENDPOINT_BASE_URL": f"{daemon.url}/v2"}
    done = subprocess.run([sys.executable, str(CLIENT), "many", json.dumps(list(calls.values()))],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    failed = {name: a["exception"] for name, a in zip(calls, answers, strict=True) if "exception" in a}
    assert not failed, failed
    return {name: a["result"] for name, a in zip(calls, answers, strict=True)}


# -- daemons shared by the module ----------------------------------------------------------------

@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    yield from serve(PROJECTS / "runpod", tmp_path_factory.mktemp("runpod"))


@pytest.fixture(scope="module")
def extra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    yield from serve(PROJECTS / "runpod_extra", tmp_path_factory.mktemp("runpod_extra"))


# -- the queue API with plain HTTP ---------------------------------------------------------------

def test_run_then_status_until_completed(daemon: RunningDaemon) -> None:
    pid = worker_pid(daemon, "sync")
    job_id = run(daemon, "sync", {"prompt": "hello"})
    done = wait_status(daemon, "sync", job_id)
    assert_times(done)
    assert done == {
        "id": job_id, "status": "COMPLETED", "delayTime": done["delayTime"], "executionTime": done["executionTime"],
        "workerId": worker_id(pid),
        "output": {"id": job_id, "keys": ["id", "input"], "input": {"prompt": "hello"}, "argv": [], "cwd": "runpod",
                   "main": "sync.py is __main__", "thread": "runpod-jobs"},
    }
    assert status(daemon, "sync", job_id) == done  # a finished job stays as it is


def test_runsync_returns_the_finished_job(daemon: RunningDaemon) -> None:
    pid = worker_pid(daemon, "sync")
    done = runsync(daemon, "sync", {"return": [1, "two", None]})
    assert_times(done)
    assert done == {"id": done["id"], "status": "COMPLETED", "delayTime": done["delayTime"],
                    "executionTime": done["executionTime"], "output": [1, "two", None], "workerId": worker_id(pid)}
    assert status(daemon, "sync", done["id"]) == done


def test_a_large_and_unicode_output_is_answered_as_the_handler_returned_it(daemon: RunningDaemon) -> None:
    returned = {"image": "iVBORw0KGgo" * 200_000, "caption": "café ☕ \u2028 \"quoted\"\n", "scores": [0.5, 1e-9, -3]}
    done = runsync(daemon, "sync", {"return": returned})
    assert done["status"] == "COMPLETED" and done["output"] == returned
    assert status(daemon, "sync", done["id"])["output"] == returned
    queued = run(daemon, "sync", {"return": returned})
    assert wait_status(daemon, "sync", queued)["output"] == returned


def test_runsync_that_arrives_whole_is_answered_from_the_protocol_in_order(daemon: RunningDaemon) -> None:
    host = daemon.url.removeprefix("http://")

    def request(body: bytes, query: str = "", close: bool = False) -> bytes:
        extra = "Connection: close\r\n" if close else ""
        return (f"POST /v2/sync/runsync{query} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n{extra}\r\n").encode() + body

    # the first arrives whole in one read (the direct road); the pipelined ones take the ASGI path
    answers, closed = raw_answers(daemon, request(b'{"input": {"return": 0}}') + request(b'{"inputs": {}}')
                                  + request(b'{"input": {}}', "?wait=5")
                                  + request(b'{"input": {"return": 3}}', close=True), close=True)
    assert [status for status, _, _ in answers] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request",
                                                    b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 200 OK"]
    bodies = [json.loads(body) for _, _, body in answers]
    assert bodies[1] == {"error": '"input" is required: send {"input": {...}}', "api": "sync"}
    assert bodies[2] == {"error": "wait must be milliseconds in 1000-300000, got '5'", "api": "sync"}
    assert [(b["status"], b["output"]) for b in (bodies[0], bodies[3])] == [("COMPLETED", 0), ("COMPLETED", 3)]
    for (_, headers, body), job in zip(answers, bodies, strict=True):
        assert headers["content-type"] == "application/json" and headers["content-length"] == str(len(body))
        assert "date" in headers
        if "id" in job:
            assert status(daemon, "sync", job["id"]) == job  # answered as stored
    assert closed


def test_a_keyed_runsync_that_arrives_whole_is_answered_for_its_key_only(daemon: RunningDaemon) -> None:
    host = daemon.url.removeprefix("http://")
    body = b'{"input": {"return": "ok"}}'

    def request(key: str) -> bytes:
        return (f"POST /v2/keyed/runsync HTTP/1.1\r\nHost: {host}\r\nAuthorization: {key}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    for key, expected in (("Bearer s3cret", 200), ("s3cret", 200), ("Bearer wrong", 401)):
        [(status_line, _, answer)], _ = raw_answers(daemon, request(key))
        assert status_line.split()[1] == str(expected).encode(), (key, answer)
        job = json.loads(answer)
        if expected == 200:
            assert (job["status"], job["output"]) == ("COMPLETED", "ok")
        else:
            assert job == {"error": "Authorization does not carry an accepted API key", "api": "keyed"}


def test_runsync_wait_runs_out_on_a_slow_job(daemon: RunningDaemon) -> None:
    started = time.monotonic()
    reply = daemon.client.post("/v2/sync/runsync?wait=1000", json={"input": {"sleep": 2.5}})
    waited = time.monotonic() - started
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body == {"id": body["id"], "status": body["status"]} and body["status"] in OPEN, body
    assert body["id"].startswith("sync-")
    assert waited >= 0.9, waited  # it did wait
    done = wait_status(daemon, "sync", body["id"])
    assert done["status"] == "COMPLETED" and done["output"]["input"] == {"sleep": 2.5}
    assert done["executionTime"] >= 2500


@pytest.mark.parametrize(("route", "body", "error"), [
    ("run", {"inputs": {}}, '"input" is required: send {"input": {...}}'),
    ("runsync", {"input": None}, '"input" is required: send {"input": {...}}'),
    ("run", [1], 'body must be a JSON object like {"input": {...}}'),
    ("run", {"input": {}, "policy": {"executionTimeout": 1000}},
     '"policy.executionTimeout" must be an integer of milliseconds in 5000-604800000, got 1000'),
    ("runsync", {"input": {}, "policy": {"executionTimeout": "60s"}},
     "\"policy.executionTimeout\" must be an integer of milliseconds in 5000-604800000, got '60s'"),
    ("run", {"input": {}, "policy": {"ttl": 10**12}},
     '"policy.ttl" must be an integer of milliseconds in 10000-604800000, got 1000000000000'),
    ("run", {"input": {}, "policy": {"ttl": True}},
     '"policy.ttl" must be an integer of milliseconds in 10000-604800000, got True'),
    ("run", {"input": {}, "policy": 60000}, '"policy" must be an object like {"executionTimeout": 60000}'),
    ("run", {"input": {}, "webhook": "ftp://example.com/done"},
     "\"webhook\" must be an http(s) URL, got 'ftp://example.com/done'"),
    ("runsync?wait=10", {"input": {}}, "wait must be milliseconds in 1000-300000, got '10'"),
])
def test_bad_requests_are_400_naming_the_field(daemon: RunningDaemon, route: str, body: object, error: str) -> None:
    before = health(daemon, "sync")["jobs"]
    reply = daemon.client.post(f"/v2/sync/{route}", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json() == {"error": error, "api": "sync"}
    assert health(daemon, "sync")["jobs"] == before  # nothing was queued


def test_body_that_is_not_json_is_400(daemon: RunningDaemon) -> None:
    reply = daemon.client.post("/v2/sync/run", content=b"{not json", headers={"content-type": "application/json"})
    assert reply.status_code == 400
    assert reply.json()["api"] == "sync" and reply.json()["error"].startswith("body is not JSON: ")


def test_api_keys(daemon: RunningDaemon) -> None:
    before = daemon.client.get("/v2/keyed/health", headers={"Authorization": "s3cret"}).json()["jobs"]
    refused = {"error": "Authorization does not carry an accepted API key", "api": "keyed"}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "nope"}, {"Authorization": "Bearer  s3cret x"},
                    {"Authorization": "Basic s3cret"}, {"Authorization": "s3cret2"}):
        reply = daemon.client.post("/v2/keyed/runsync", json={"input": {"return": "x"}}, headers=headers)
        assert (reply.status_code, reply.json()) == (401, refused), headers
    assert daemon.client.get("/v2/keyed/health").status_code == 401
    assert daemon.client.get("/v2/keyed/status/anything").status_code == 401
    for key in ("Bearer s3cret", "bearer s3cret", "s3cret"):
        reply = daemon.client.post("/v2/keyed/runsync", json={"input": {"return": key}}, headers={"Authorization": key})
        assert reply.status_code == 200, (key, reply.text)
        assert reply.json()["status"] == "COMPLETED" and reply.json()["output"] == key
    after = daemon.client.get("/v2/keyed/health", headers={"Authorization": "Bearer s3cret"}).json()["jobs"]
    assert after == {**before, "completed": before["completed"] + 3}  # the refused requests queued nothing


def test_body_over_max_run_body_is_413(daemon: RunningDaemon) -> None:
    auth = {"Authorization": "Bearer s3cret"}
    big = {"input": {"text": "x" * 1000}}
    for route in ("run", "runsync"):  # the runsync limit is the default 20 MB: only /run is bounded
        reply = daemon.client.post(f"/v2/keyed/{route}", json=big, headers=auth)
        if route == "run":
            assert reply.status_code == 413, reply.text
            assert reply.json() == {"error": "request body is larger than the limit of 1000 bytes", "api": "keyed"}
        else:
            assert reply.status_code == 200 and reply.json()["status"] == "COMPLETED"
    small = daemon.client.post("/v2/keyed/run", json={"input": {"text": "x" * 900}}, headers=auth)
    assert small.status_code == 200 and small.json()["status"] == "IN_QUEUE"


def test_unknown_job_is_404(daemon: RunningDaemon) -> None:
    for method, route in (("GET", "status"), ("GET", "stream"), ("POST", "cancel"), ("POST", "retry")):
        reply = daemon.client.request(method, f"/v2/sync/{route}/no-such-job")
        assert reply.status_code == 404, (route, reply.text)
        assert reply.json() == {"error": "job no-such-job not found (unknown, or past its retention)", "api": "sync"}
    # another API's job is unknown here
    job_id = runsync(daemon, "errdict", {"ok": True})["id"]
    reply = daemon.client.get(f"/v2/sync/status/{job_id}")
    assert reply.status_code == 404 and reply.json()["error"] == f"job {job_id} not found (unknown, or past its retention)"
    reply = daemon.client.get("/v2/sync/bogus")
    assert reply.status_code == 404 and reply.json()["api"] == "sync"
    assert reply.json()["error"].startswith("no route /bogus; a RunPod endpoint answers /cancel, /health")


def test_wrong_method_is_405_with_allow(daemon: RunningDaemon) -> None:
    for method, route, allow in (("GET", "run", "POST"), ("PUT", "runsync", "POST"), ("POST", "status/x", "GET"),
                                 ("GET", "cancel/x", "POST"), ("POST", "health", "GET"), ("GET", "purge-queue", "POST")):
        reply = daemon.client.request(method, f"/v2/sync/{route}")
        assert reply.status_code == 405, (method, route, reply.text)
        assert reply.headers["allow"] == allow
        operation = route.split("/")[0]
        assert reply.json() == {"error": f"{method} /{operation} is not allowed; use {allow}", "api": "sync"}


# -- every kind of handler -----------------------------------------------------------------------

def test_async_handler(daemon: RunningDaemon) -> None:
    pid = worker_pid(daemon, "asyncer")
    done = runsync(daemon, "asyncer", {})
    assert done["status"] == "COMPLETED" and done["workerId"] == worker_id(pid)
    assert done["output"] == {"id": done["id"], "running_with": 1, "thread": "MainThread"}


def test_async_handler_takes_one_job_at_a_time_by_default(daemon: RunningDaemon) -> None:
    ids = [run(daemon, "asyncer", {"sleep": 0.3}) for _ in range(3)]
    done = [wait_status(daemon, "asyncer", job_id) for job_id in ids]
    assert [d["status"] for d in done] == ["COMPLETED"] * 3
    assert [d["output"]["running_with"] for d in done] == [1, 1, 1]


def test_generator_streams_each_item_once(daemon: RunningDaemon) -> None:
    job_id = run(daemon, "gen", {"count": 4, "pause": 0.3})
    items, polls = [], 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = daemon.client.get(f"/v2/gen/stream/{job_id}")
        assert reply.status_code == 200
        body = reply.json()
        assert body.keys() == {"id", "status", "stream"} and body["id"] == job_id
        items += [chunk["output"] for chunk in body["stream"]]
        polls += 1
        if body["status"] in FINAL and not body["stream"]:
            break
        time.sleep(0.1)
    assert items == ["item 0", "item 1", "item 2", "item 3"]  # in order, none twice
    assert polls > 2  # handed out as they came, not at the end
    assert body["status"] == "COMPLETED"
    final = status(daemon, "gen", job_id)
    assert final["status"] == "COMPLETED" and final["output"] == []  # no return_aggregate_stream
    assert daemon.client.get(f"/v2/gen/stream/{job_id}").json() == {"id": job_id, "status": "COMPLETED", "stream": []}


def test_async_generator(daemon: RunningDaemon) -> None:
    done = runsync(daemon, "agen", {"count": 3})
    assert done["status"] == "COMPLETED" and done["output"] == []
    stream = daemon.client.get(f"/v2/agen/stream/{done['id']}").json()
    assert stream == {"id": done["id"], "status": "COMPLETED",
                      "stream": [{"output": {"token": 0}}, {"output": {"token": 1}}, {"output": {"token": 2}}]}
    assert daemon.client.get(f"/v2/agen/stream/{done['id']}").json()["stream"] == []


def test_async_generator_that_raises_after_items(daemon: RunningDaemon) -> None:
    done = runsync(daemon, "agen", {"count": 2, "raise": True})
    assert done["status"] == "FAILED", done
    # the SDK's generator error is a plain string, not the JSON of a raising plain handler
    assert done["error"].startswith("handler: 'missing' \ntraceback: Traceback (most recent call last):")
    assert done["error"].endswith("KeyError: 'missing'\n")
    stream = daemon.client.get(f"/v2/agen/stream/{done['id']}").json()
    assert stream == {"id": done["id"], "status": "FAILED", "stream": [{"output": {"token": 0}}, {"output": {"token": 1}}]}
    assert runsync(daemon, "agen", {"count": 1})["status"] == "COMPLETED"  # the worker serves on


def test_aggregate_output_is_the_list(daemon: RunningDaemon) -> None:
    done = runsync(daemon, "aggregate", {"text": "one small step"})
    assert done["status"] == "COMPLETED" and done["output"] == ["ONE", "SMALL", "STEP"]


def test_error_dict(daemon: RunningDaemon) -> None:
    failed = runsync(daemon, "errdict", {})
    assert_times(failed)
    assert failed == {"id": failed["id"], "status": "FAILED", "delayTime": failed["delayTime"],
                      "executionTime": failed["executionTime"], "error": "temperature must be a float",
                      "output": {"hint": "send 0.7"}, "workerId": failed["workerId"]}
    only = runsync(daemon, "errdict", {"only_error": True})
    assert only["status"] == "FAILED" and only["error"] == "nothing to do" and "output" not in only
    assert runsync(daemon, "errdict", {"ok": True})["output"] == {"fine": True}


def test_raises(daemon: RunningDaemon) -> None:
    failed = runsync(daemon, "raises", {"name": "this"})
    assert failed["status"] == "FAILED" and "output" not in failed
    assert isinstance(failed["error"], str)
    error = json.loads(failed["error"])
    assert error.keys() == {"error_type", "error_message", "error_traceback", "hostname", "worker_id", "runpod_version"}
    assert error["error_type"] == "<class 'ValueError'>"
    assert error["error_message"] == "cannot handle this"
    assert "raises.py" in error["error_traceback"] and "ValueError: cannot handle this" in error["error_traceback"]
    assert (error["hostname"], error["worker_id"], error["runpod_version"]) == ("unknown", "unknown", "1.12.0")


def test_refresh_worker_replaces_the_worker_after_each_job(daemon: RunningDaemon) -> None:
    first = worker_pid(daemon, "refresh")
    done = runsync(daemon, "refresh", {})
    assert (done["status"], done["output"], done["workerId"]) == ("COMPLETED", "done", worker_id(first))
    second = worker_pid(daemon, "refresh", other_than=first)
    described = daemon.api("refresh")
    assert (described["state"], described["restarts"], described["last_error"]) == ("ready", 0, None)
    assert not pid_alive(first)
    again = runsync(daemon, "refresh", {"fail": True})  # a failed job refreshes the worker too
    assert (again["status"], again["workerId"]) == ("FAILED", worker_id(second))
    assert json.loads(again["error"])["error_message"] == "failed once"


def test_returned_refresh_worker_replaces_the_worker_after_that_job(daemon: RunningDaemon) -> None:
    first = worker_pid(daemon, "sync")
    done = runsync(daemon, "sync", {"return": {"refresh_worker": True, "answer": 42}})
    assert (done["status"], done["output"], done["workerId"]) == ("COMPLETED", {"answer": 42}, worker_id(first))
    second = worker_pid(daemon, "sync", other_than=first)
    kept = runsync(daemon, "sync", {"return": {"refresh_worker": False}})
    assert (kept["status"], kept["workerId"]) == ("COMPLETED", worker_id(second))
    assert "output" not in kept  # the SDK drops an output left empty
    assert worker_pid(daemon, "sync") == second  # refresh_worker: False keeps it
    assert daemon.api("sync")["restarts"] == 0


def test_refresh_keeps_the_api_ready(daemon: RunningDaemon) -> None:
    first = worker_pid(daemon, "refresh")
    assert runsync(daemon, "refresh", {})["status"] == "COMPLETED"
    seen = set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        described = daemon.api("refresh")
        seen.add((described["state"], daemon.client.get("/-/ready/refresh").status_code))
        if any(w["pid"] != first and w["state"] == "ready" for w in described["workers"]):
            break
        time.sleep(0.02)
    assert seen == {("ready", 200)}


def test_progress_shows_while_running_then_the_result(daemon: RunningDaemon) -> None:
    job_id = run(daemon, "progress", {"steps": 3, "sleep": 1.5, "name": "inferd"})
    seen = running_outputs(daemon, "progress", job_id)
    body = status(daemon, "progress", job_id)
    assert seen and seen[-1] == {"from": "thread"}, seen  # the latest; the one that was not JSON was dropped
    assert all(s in ("Update 1/3", "Update 2/3", "Update 3/3", {"from": "thread"}) for s in seen), seen
    assert body["status"] == "COMPLETED" and body["output"] == "Hello, inferd!"


def test_late_progress_never_reopens_a_job(extra: RunningDaemon) -> None:
    job_id = run(extra, "late", {"sleep": 1, "late": 0.3, "n": 1})
    assert running_outputs(extra, "late", job_id) == ["working"]
    done = status(extra, "late", job_id)
    assert done["status"] == "COMPLETED" and done["output"] == {"done": 1}
    time.sleep(1.0)  # the handler's thread reports progress 0.3 s after the job returned
    assert status(extra, "late", job_id) == done
    assert runsync(extra, "late", {"late": 0})["output"] == {"done": None}  # the worker serves on


def test_concurrency_modifier_api(daemon: RunningDaemon) -> None:
    pid = worker_pid(daemon, "concurrency")
    ids = [run(daemon, "concurrency", {}) for _ in range(5)]
    done = [wait_status(daemon, "concurrency", job_id) for job_id in ids]
    assert [(d["status"], d["output"], d["workerId"]) for d in done] == [("COMPLETED", {"max": 3}, worker_id(pid))] * 5


def test_concurrent_jobs_on_one_worker_bounded_by_the_modifier(extra: RunningDaemon) -> None:
    pid = worker_pid(extra, "parallel")
    ids = [run(extra, "parallel", {"sleep": 0.5}) for _ in range(7)]
    done = [wait_status(extra, "parallel", job_id) for job_id in ids]
    assert {(d["status"], d["output"]["pid"], d["workerId"]) for d in done} == {("COMPLETED", pid, worker_id(pid))}
    running_with = [d["output"]["running_with"] for d in done]
    assert max(running_with) == 3, running_with  # several at once, never more than --max_concurrency 3


# -- /runsync jobs not queued in the store: straight to a free worker, or in line for one ----------

def wait_health(daemon: RunningDaemon, api: str, **expected: int) -> dict:
    deadline = time.monotonic() + 30
    while (jobs := health(daemon, api)["jobs"]) and any(jobs[k] != v for k, v in expected.items()):
        assert time.monotonic() < deadline, (jobs, expected)
        time.sleep(0.02)
    return jobs


def runsync_in_thread(daemon: RunningDaemon, api: str, job_input: object, query: str = "") -> tuple[threading.Thread, list]:
    answers: list = []

    def call() -> None:
        reply = daemon.client.post(f"/v2/{api}/runsync{query}", json={"input": job_input}, timeout=120)
        answers.append(reply)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, answers


def test_runsync_jobs_line_up_in_arrival_order_with_a_queued_run_job(extra: RunningDaemon, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    first, first_answer = runsync_in_thread(extra, "gated", {"n": "a", "gate": str(gate)})
    wait_health(extra, "gated", inProgress=1, inQueue=0)  # handed to the worker, in no queue
    second, second_answer = runsync_in_thread(extra, "gated", {"n": "b"})
    wait_health(extra, "gated", inProgress=1, inQueue=1)  # in line for the busy worker
    queued = run(extra, "gated", {"n": "run"})
    assert status(extra, "gated", queued)["status"] == "IN_QUEUE"
    third, third_answer = runsync_in_thread(extra, "gated", {"n": "c"})
    wait_health(extra, "gated", inProgress=1, inQueue=3)
    gate.touch()
    for thread in (first, second, third):
        thread.join(60)
    answers = [answer[0].json() for answer in (first_answer, second_answer, third_answer)]
    run_job = wait_status(extra, "gated", queued)
    jobs = [*answers, run_job]
    assert all(job["status"] == "COMPLETED" for job in jobs), jobs
    in_order = [job["output"]["n"] for job in sorted(jobs, key=lambda job: job["output"]["started"])]
    assert in_order == ["a", "b", "run", "c"]  # the /run job after the line's earlier job, before its later one
    for answer in answers:  # every answered job is in the store as answered
        assert status(extra, "gated", answer["id"]) == answer
    for job in jobs:
        assert_times(job)
    wait_health(extra, "gated", inProgress=0, inQueue=0)


def test_runsync_wait_runs_out_in_line_and_the_job_is_queued(extra: RunningDaemon, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    first, first_answer = runsync_in_thread(extra, "gated-line", {"n": "a", "gate": str(gate)})
    wait_health(extra, "gated-line", inProgress=1, inQueue=0)
    reply = extra.client.post("/v2/gated-line/runsync?wait=1000", json={"input": {"n": "b"}})
    assert reply.status_code == 200, reply.text
    waited = reply.json()
    assert waited == {"id": waited["id"], "status": "IN_QUEUE"}
    assert status(extra, "gated-line", waited["id"])["status"] == "IN_QUEUE"  # the id it answered finds the job
    gate.touch()
    first.join(60)
    assert first_answer[0].json()["status"] == "COMPLETED"
    done = wait_status(extra, "gated-line", waited["id"])
    assert (done["status"], done["output"]["n"]) == ("COMPLETED", "b")


def test_a_reload_lets_the_old_worker_finish_the_runsync_jobs_in_its_line(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(PROJECTS / "runpod_extra", project)
    daemon = RunningDaemon(project, tmp_path / "daemon")
    try:
        daemon.wait_ready()
        old_pid = worker_pid(daemon, "gated")
        gate = tmp_path / "gate"
        first, first_answer = runsync_in_thread(daemon, "gated", {"n": "a", "gate": str(gate)})
        wait_health(daemon, "gated", inProgress=1, inQueue=0)
        second, second_answer = runsync_in_thread(daemon, "gated", {"n": "b"})
        wait_health(daemon, "gated", inProgress=1, inQueue=1)
        config = project / "cortex.yaml"
        config.write_text(config.read_text().replace("    path: gated.py\n", "    path: gated.py\n    env:\n      V: '2'\n", 1))
        reloaded = subprocess.run([sys.executable, "-m", "inferd", "reload", "--state-dir", str(daemon.state_dir)],
                                  capture_output=True, text=True, timeout=120)
        assert reloaded.returncode == 0, reloaded.stderr
        assert "replaced gated" in reloaded.stdout
        assert worker_pid(daemon, "gated", other_than=old_pid) != old_pid  # the new version serves
        gate.touch()
        first.join(60)
        second.join(60)
        answers = [answer[0].json() for answer in (first_answer, second_answer)]
        # accepted before the switch: finished by the old version's worker, not handed back unfinished
        assert [(a["status"], a["output"]["n"], a["workerId"]) for a in answers] == [
            ("COMPLETED", "a", worker_id(old_pid)), ("COMPLETED", "b", worker_id(old_pid))]
    finally:
        daemon.stop()
    assert_clean(daemon)


# -- RunPod's client SDK -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sdk_results(daemon: RunningDaemon) -> dict[str, object]:
    """One client process runs every scenario at once, each on an API of its own."""
    # the purge scenario's running job (asyncer's own execution_timeout is 6 s)
    blocker = run(daemon, "asyncer", {"sleep": 60}, policy={"executionTimeout": 60000})
    wait_status(daemon, "asyncer", blocker, until=("IN_PROGRESS",))
    queued = [run(daemon, "asyncer", {"n": n}) for n in range(2)]
    raises_health = health(daemon, "raises")
    results = sdk(daemon, {
        "run_sync": ("run_sync", "sync", {"hello": "sdk"}),
        "run": ("run", "errdict", {"ok": True}),
        "stream": ("stream", "aggregate", {"text": "a b c"}),
        "cancel": ("cancel", "progress", {"sleep": 30}),
        "health": ("health", "raises", {}),
        "purge": ("purge", "asyncer", {}),
        "asyncio": ("asyncio", "agen", {"count": 2}),
        "cancel_then_stream": ("cancel_then_stream", "gen", {"count": 100, "pause": 0.1}),
    })
    return {**results, "blocker": blocker, "queued": queued, "raises_health": raises_health}


def test_sdk_run_sync(daemon: RunningDaemon, sdk_results: dict) -> None:
    output = sdk_results["run_sync"]
    assert output == {"id": output["id"], "keys": ["id", "input"], "input": {"hello": "sdk"}, "argv": [], "cwd": "runpod",
                      "main": "sync.py is __main__", "thread": output["thread"]}
    assert output["id"].startswith("sync-")
    # the job thread, or the worker's loop once the API's jobs are known to be short (earlier tests')
    assert output["thread"] in ("runpod-jobs", "MainThread")


def test_sdk_run_output_status(daemon: RunningDaemon, sdk_results: dict) -> None:
    result = sdk_results["run"]
    assert result == {"id": result["id"], "output": {"fine": True}, "status": "COMPLETED"}
    assert status(daemon, "errdict", result["id"])["output"] == {"fine": True}


def test_sdk_stream_ends_on_its_own(sdk_results: dict) -> None:
    assert sdk_results["stream"] == {"chunks": ["A", "B", "C"], "status": "COMPLETED"}


def test_sdk_cancel(daemon: RunningDaemon, sdk_results: dict) -> None:
    result = sdk_results["cancel"]
    job_id = result["cancel"]["id"]
    assert result == {"cancel": {"id": job_id, "status": "CANCELLED"}, "status": "CANCELLED"}
    assert status(daemon, "progress", job_id)["status"] == "CANCELLED"


def test_sdk_health(sdk_results: dict) -> None:
    assert sdk_results["health"] == sdk_results["raises_health"]
    assert sdk_results["health"]["workers"] == QUIET_WORKERS
    assert sdk_results["health"]["jobs"].keys() == {"completed", "failed", "inProgress", "inQueue", "retried"}


def test_sdk_purge_removes_only_queued_jobs(daemon: RunningDaemon, sdk_results: dict) -> None:
    assert sdk_results["purge"] == {"removed": 2, "status": "completed"}
    for job_id in sdk_results["queued"]:
        assert daemon.client.get(f"/v2/asyncer/status/{job_id}").status_code == 404
    blocker = sdk_results["blocker"]
    assert status(daemon, "asyncer", blocker)["status"] == "IN_PROGRESS"  # running: not purged
    assert daemon.client.post(f"/v2/asyncer/cancel/{blocker}").json() == {"id": blocker, "status": "CANCELLED"}
    assert daemon.client.post("/v2/asyncer/purge-queue").json() == {"removed": 0, "status": "completed"}


def test_sdk_asyncio_endpoint(sdk_results: dict) -> None:
    result = sdk_results["asyncio"]
    assert {k: result[k] for k in ("status", "output", "chunks")} == {
        "status": "COMPLETED", "output": [], "chunks": [{"token": 0}, {"token": 1}]}
    assert result["health"]["jobs"]["completed"] >= 1 and result["health"]["workers"] == QUIET_WORKERS


def test_sdk_stream_of_a_cancelled_job_ends(daemon: RunningDaemon, sdk_results: dict) -> None:
    result = sdk_results["cancel_then_stream"]
    job_id = result["cancel"]["id"]
    assert result["cancel"] == {"id": job_id, "status": "CANCELLED"}
    # /stream reports a cancelled job as FAILED, the only way to end the SDK's stream() (it stops
    # on COMPLETED, FAILED or TIMED_OUT); the SDK's Job then remembers that status
    assert result["status"] == "FAILED"
    chunks = result["chunks"]
    assert chunks == [f"item {i}" for i in range(len(chunks))]  # what it made before the cancel, once each
    assert status(daemon, "gen", job_id)["status"] == "CANCELLED"


# -- cancel, timeouts, retry ---------------------------------------------------------------------

def test_cancel_a_queued_and_a_running_async_job(daemon: RunningDaemon) -> None:
    pid = worker_pid(daemon, "asyncer")
    running = run(daemon, "asyncer", {"sleep": 30}, policy={"executionTimeout": 60000})
    wait_status(daemon, "asyncer", running, until=("IN_PROGRESS",))
    queued = run(daemon, "asyncer", {"never": "runs"})
    assert status(daemon, "asyncer", queued)["status"] == "IN_QUEUE"  # one job at a time: it waits

    assert daemon.client.post(f"/v2/asyncer/cancel/{queued}").json() == {"id": queued, "status": "CANCELLED"}
    cancelled = status(daemon, "asyncer", queued)
    assert cancelled == {"id": queued, "status": "CANCELLED", "delayTime": cancelled["delayTime"], "executionTime": 0}

    started = time.monotonic()
    assert daemon.client.post(f"/v2/asyncer/cancel/{running}").json() == {"id": running, "status": "CANCELLED"}
    stopped = status(daemon, "asyncer", running)
    assert (stopped["status"], stopped["workerId"]) == ("CANCELLED", worker_id(pid))
    assert "output" not in stopped and "error" not in stopped
    # an async handler is cancelled in place: the same worker takes the next job at once
    nxt = runsync(daemon, "asyncer", {})
    assert time.monotonic() - started < 10
    assert (nxt["status"], nxt["workerId"]) == ("COMPLETED", worker_id(pid))
    assert nxt["output"]["running_with"] == 1  # the cancelled one is no longer running
    assert worker_pid(daemon, "asyncer") == pid
    assert status(daemon, "asyncer", queued) == cancelled  # it never ran
    assert status(daemon, "asyncer", running)["status"] == "CANCELLED"
    # cancelling a finished job changes nothing
    assert daemon.client.post(f"/v2/asyncer/cancel/{nxt['id']}").json() == {"id": nxt["id"], "status": "COMPLETED"}
    assert daemon.client.post(f"/v2/asyncer/cancel/{running}").json() == {"id": running, "status": "CANCELLED"}


def test_cancel_a_running_sync_job_replaces_the_worker(daemon: RunningDaemon) -> None:
    pid = worker_pid(daemon, "sync")
    running = run(daemon, "sync", {"sleep": 30})
    wait_status(daemon, "sync", running, until=("IN_PROGRESS",))
    assert daemon.client.post(f"/v2/sync/cancel/{running}").json() == {"id": running, "status": "CANCELLED"}
    stopped = status(daemon, "sync", running)
    assert (stopped["status"], stopped["workerId"]) == ("CANCELLED", worker_id(pid))
    assert "output" not in stopped and "error" not in stopped
    # a sync handler cannot be interrupted: its worker is replaced, and the next job runs on the new one
    replacement = worker_pid(daemon, "sync", other_than=pid)
    after = runsync(daemon, "sync", {"after": "cancel"})
    assert (after["status"], after["workerId"]) == ("COMPLETED", worker_id(replacement))
    assert not pid_alive(pid)
    assert daemon.api("sync")["restarts"] == 0
    assert status(daemon, "sync", running) == stopped


def test_a_job_handed_to_a_busy_sync_worker_cancels_alone(daemon: RunningDaemon, tmp_path: Path) -> None:
    for n in range(20):  # quick jobs, as most traffic is: the worker is then handed jobs ahead
        assert runsync(daemon, "sync", {"return": n})["output"] == n
    pid = worker_pid(daemon, "sync")
    release = tmp_path / "release"
    running = run(daemon, "sync", {"wait_file": str(release)})
    behind = run(daemon, "sync", {"after": "the running one"})
    handed = run(daemon, "sync", {"never": "runs"})
    for job_id in (running, behind, handed):  # all three are on the worker, two waiting their turn
        assert wait_status(daemon, "sync", job_id, until=("IN_PROGRESS",))["workerId"] == worker_id(pid)
    assert daemon.client.post(f"/v2/sync/cancel/{handed}").json() == {"id": handed, "status": "CANCELLED"}
    release.touch()
    done = [wait_status(daemon, "sync", job_id) for job_id in (running, behind)]
    # the worker dropped the cancelled job when its turn came: nothing was replaced
    assert [(d["status"], d["workerId"]) for d in done] == [("COMPLETED", worker_id(pid))] * 2
    assert done[1]["output"]["input"] == {"after": "the running one"}
    assert status(daemon, "sync", handed)["status"] == "CANCELLED" and "output" not in status(daemon, "sync", handed)
    assert worker_pid(daemon, "sync") == pid and pid_alive(pid)


def test_execution_timeout_then_retry(daemon: RunningDaemon) -> None:
    pid = worker_pid(daemon, "asyncer")
    retried_before = health(daemon, "asyncer")["jobs"]["retried"]
    started = time.monotonic()
    job_id = run(daemon, "asyncer", {"sleep": 20}, policy={"executionTimeout": 5000})
    timed_out = wait_status(daemon, "asyncer", job_id)
    elapsed = time.monotonic() - started
    assert timed_out == {"id": job_id, "status": "TIMED_OUT", "delayTime": timed_out["delayTime"],
                         "executionTime": timed_out["executionTime"], "workerId": worker_id(pid),
                         "error": "execution timeout of 5000 ms (policy.executionTimeout) passed"}
    assert timed_out["executionTime"] >= 5000
    assert 4.9 <= elapsed < 15, elapsed
    # the worker that ran it is replaced, and the next job is served
    replacement = worker_pid(daemon, "asyncer", other_than=pid)
    nxt = runsync(daemon, "asyncer", {})
    assert (nxt["status"], nxt["workerId"]) == ("COMPLETED", worker_id(replacement))

    # /retry: the same id and input, queued again and run again
    assert daemon.client.post(f"/v2/asyncer/retry/{job_id}").json() == {"id": job_id, "status": "IN_QUEUE"}
    again = wait_status(daemon, "asyncer", job_id, until=("IN_PROGRESS",))
    assert again == {"id": job_id, "status": "IN_PROGRESS", "delayTime": again["delayTime"],
                     "executionTime": again["executionTime"], "workerId": worker_id(replacement)}
    assert health(daemon, "asyncer")["jobs"]["retried"] == retried_before + 1
    assert daemon.client.post(f"/v2/asyncer/cancel/{job_id}").json() == {"id": job_id, "status": "CANCELLED"}
    # only FAILED and TIMED_OUT jobs can be retried
    for other in (job_id, nxt["id"]):
        reply = daemon.client.post(f"/v2/asyncer/retry/{other}")
        assert reply.status_code == 400
        current = status(daemon, "asyncer", other)["status"]
        assert reply.json() == {"error": f"job {other} is {current}; only FAILED or TIMED_OUT jobs can be retried",
                                "api": "asyncer"}


@pytest.mark.parametrize(("api", "job_input"), [("sync", {"sleep": 20}), ("progress", {"steps": 1, "sleep": 20})],
                         ids=["result-only", "progress-first"])
def test_runsync_execution_timeout_answers_timed_out(daemon: RunningDaemon, api: str, job_input: dict) -> None:
    """A /runsync job reaching its execution timeout, followed from callbacks until then, or
    (once it reported progress) by a task that must keep the deadline it began with."""
    pid = worker_pid(daemon, api)
    started = time.monotonic()
    reply = daemon.client.post(f"/v2/{api}/runsync", json={"input": job_input, "policy": {"executionTimeout": 5000}},
                               timeout=60)
    elapsed = time.monotonic() - started
    timed_out = reply.json()
    assert reply.status_code == 200 and timed_out == {
        "id": timed_out["id"], "status": "TIMED_OUT", "delayTime": timed_out["delayTime"],
        "executionTime": timed_out["executionTime"], "workerId": worker_id(pid),
        "error": "execution timeout of 5000 ms (policy.executionTimeout) passed"}
    assert timed_out["executionTime"] >= 5000 and 4.9 <= elapsed < 15, (timed_out, elapsed)
    assert status(daemon, api, timed_out["id"]) == timed_out
    # a sync handler cannot be interrupted: its worker is replaced, and the next job runs on the new one
    replacement = worker_pid(daemon, api, other_than=pid)
    assert runsync(daemon, api, {"steps": 0} if api == "progress" else {"return": "next"})["workerId"] == \
        worker_id(replacement)


def test_retry_a_failed_job(daemon: RunningDaemon) -> None:
    failed = runsync(daemon, "raises", {"name": "it"})
    assert failed["status"] == "FAILED"
    before = health(daemon, "raises")["jobs"]
    assert daemon.client.post(f"/v2/raises/retry/{failed['id']}").json() == {"id": failed["id"], "status": "IN_QUEUE"}
    again = wait_status(daemon, "raises", failed["id"])
    assert again["status"] == "FAILED" and json.loads(again["error"])["error_message"] == "cannot handle it"
    after = health(daemon, "raises")["jobs"]
    assert after == {**before, "retried": before["retried"] + 1}


def test_runsync_never_reports_an_expired_job_as_queued(extra: RunningDaemon) -> None:
    # the job runs past its ttl (10 s, the least a policy may ask): RunPod deletes it, so does inferd
    reply = extra.client.post("/v2/late/runsync?wait=11000",
                              json={"input": {"sleep": 10.3, "late": 0}, "policy": {"ttl": 10000}})
    gone = extra.client.get(f"/v2/late/status/{reply.json()['id']}") if reply.status_code == 200 else None
    if reply.status_code == 200 and reply.json()["status"] in OPEN:
        assert gone is not None and gone.status_code == 200, (reply.json(), gone.json())


def test_endpoint_execution_timeout_below_the_policy_minimum(tmp_path: Path, start_daemon) -> None:
    project = tmp_path / "short"
    project.mkdir()
    shutil.copy(PROJECTS / "runpod" / "sync.py", project / "sync.py")
    (project / "cortex.yaml").write_text(
        "- name: short\n  kind: RunPodAPI\n  handler:\n    path: sync.py\n  runpod:\n    execution_timeout: 2s\n")
    checked = subprocess.run([sys.executable, "-m", "inferd", "validate", "--project", str(project)],
                             capture_output=True, text=True, timeout=60)
    if checked.returncode != 0:  # refusing the setting up front would be a fix too
        assert "execution_timeout" in checked.stdout + checked.stderr
        return
    daemon = start_daemon(project)
    daemon.wait_ready()
    reply = daemon.client.post("/v2/short/runsync", json={"input": {"return": "ok"}})
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "COMPLETED"
    assert wait_status(daemon, "short", run(daemon, "short", {"sleep": 30}))["status"] == "TIMED_OUT"


# -- restart, discovery --------------------------------------------------------------------------

@contextlib.contextmanager
def restarting(tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[tuple[RunningDaemon, Callable[[], RunningDaemon]]]:
    """A daemon on runpod_restart, and how to start the next one on its state directory, as
    after a restart (the last --state-dir wins); every daemon stopped, the next checked, at the end."""
    project, state = PROJECTS / "runpod_restart", ["--state-dir", str(tmp_path / "state")]
    first = RunningDaemon(project, tmp_path / "first", extra_args=state, env=env)
    later: list[RunningDaemon] = []

    def restart() -> RunningDaemon:
        later.append(RunningDaemon(project, tmp_path / "second", extra_args=state))
        later[-1].wait_ready()
        return later[-1]

    try:
        yield first, restart
    finally:
        for daemon in (first, *later):
            daemon.stop()
    assert later, "the test never restarted"
    assert_clean(later[-1])


def test_queued_jobs_survive_a_restart(tmp_path: Path) -> None:
    with restarting(tmp_path) as (first, restart):
        first.wait_ready()
        first_pid = worker_pid(first, "slow")
        running = run(first, "slow", {"sleep": 1.5, "n": 0})
        wait_status(first, "slow", running, until=("IN_PROGRESS",))
        queued = [run(first, "slow", {"n": n}) for n in (1, 2, 3)]
        assert [status(first, "slow", job_id)["status"] for job_id in queued] == ["IN_QUEUE"] * 3
        assert first.stop(signal.SIGTERM) == 0
        assert_clean(first)

        second = restart()
        second_pid = worker_pid(second, "slow")
        done = [wait_status(second, "slow", job_id) for job_id in [running, *queued]]
        assert [(d["id"], d["status"], d["output"]) for d in done] == [
            (running, "COMPLETED", {"n": 0, "pid": first_pid}),  # the running job finished before the first stopped
            *[(job_id, "COMPLETED", {"n": n, "pid": second_pid}) for n, job_id in enumerate(queued, 1)],
        ]
        assert health(second, "slow")["jobs"] == {"completed": 4, "failed": 0, "inProgress": 0, "inQueue": 0,
                                                  "retried": 0}


def test_a_runsync_job_in_line_at_stop_runs_after_the_restart(tmp_path: Path) -> None:
    # a grace period shorter than the running job: both jobs are still waiting when it ends
    with restarting(tmp_path, env={"INFERD_SHUTDOWN_GRACE_PERIOD": "0.5"}) as (first, restart):
        first.wait_ready()
        running, running_answer = runsync_in_thread(first, "slow", {"sleep": 3, "n": 0})
        wait_health(first, "slow", inProgress=1, inQueue=0)
        waiting, waiting_answer = runsync_in_thread(first, "slow", {"n": 1})
        wait_health(first, "slow", inProgress=1, inQueue=1)
        assert first.stop(signal.SIGTERM) == 0
        running.join(30)
        waiting.join(30)
        assert_clean(first)
        # answered as when a wait runs out: the id, to poll once the daemon is back
        answers = [answer[0].json() for answer in (running_answer, waiting_answer)]
        assert answers == [{"id": answers[0]["id"], "status": "IN_PROGRESS"},
                           {"id": answers[1]["id"], "status": "IN_QUEUE"}]

        second = restart()
        second_pid = worker_pid(second, "slow")
        done = [wait_status(second, "slow", answer["id"]) for answer in answers]
        assert [(d["status"], d["output"]) for d in done] == [("COMPLETED", {"n": 0, "pid": second_pid}),
                                                              ("COMPLETED", {"n": 1, "pid": second_pid})]
        with sqlite3.connect(tmp_path / "state" / "async.db") as db:
            attempts = dict(db.execute("SELECT id, attempts FROM runpod_jobs").fetchall())
        # stored running at the stop: its second attempt; stored queued: its first
        assert attempts == {answers[0]["id"]: 2, answers[1]["id"]: 1}


def test_project_without_cortex_yaml_is_served_as_its_directory(tmp_path: Path, start_daemon) -> None:
    project = tmp_path / "my-worker"
    project.mkdir()
    shutil.copy(PROJECTS / "runpod" / "sync.py", project / "handler.py")
    daemon = start_daemon(project)
    daemon.wait_ready()
    assert [(a["name"], a["kind"], a["endpoint"]) for a in daemon.client.get("/-/apis").json()["apis"]] == [
        ("my-worker", "RunPodAPI", "/v2/my-worker")]
    done = runsync(daemon, "my-worker", {"hi": 1})
    assert done["status"] == "COMPLETED"
    assert done["output"] == {"id": done["id"], "keys": ["id", "input"], "input": {"hi": 1}, "argv": [],
                              "cwd": "my-worker", "main": "sync.py is __main__", "thread": "runpod-jobs"}
    assert ("no cortex.yaml: serving RunPod worker handler.py (found by its name) as api my-worker at "
            "/v2/my-worker/run") in daemon.logs()
    daemon.stop()
    assert_clean(daemon)


def test_project_without_cortex_yaml_runs_the_dockerfile_command(tmp_path: Path, start_daemon) -> None:
    project = tmp_path / "Docker_Worker"
    (project / "src").mkdir(parents=True)
    shutil.copy(PROJECTS / "runpod" / "sync.py", project / "src" / "serve.py")
    (project / "handler.py").write_text(  # found by its name only when no Dockerfile says otherwise
        'import runpod\n\nrunpod.serverless.start({"handler": lambda job: "the wrong file"})\n')
    (project / "Dockerfile").write_text(
        "FROM runpod/base:0.6.2-cuda12.2.0\n"
        "WORKDIR /app\n"
        "COPY src /app/src\n"
        'CMD ["python", "-u", "/app/src/serve.py", "--mode", "fast"]\n')
    daemon = start_daemon(project)
    daemon.wait_ready()
    assert [a["name"] for a in daemon.client.get("/-/apis").json()["apis"]] == ["docker-worker"]
    done = runsync(daemon, "docker-worker", {"hi": 2})
    assert done["status"] == "COMPLETED", done
    assert (done["output"]["input"], done["output"]["argv"], done["output"]["main"]) == (
        {"hi": 2}, ["--mode", "fast"], "sync.py is __main__")
    assert ("no cortex.yaml: serving RunPod worker src/serve.py (named by the CMD on Dockerfile:4) as api "
            "docker-worker at /v2/docker-worker/run") in daemon.logs()
    daemon.stop()
    assert_clean(daemon)
