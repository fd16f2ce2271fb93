"""The two RunPod runners side by side: every worker file of tests/projects/runpod_sdk is served
twice in one project, once as ``<name>`` (``handler.runner: sdk``: the SDK's own job loop against
the platform inferd plays) and once as ``<name>-direct`` (the direct runner: the file imported
into an inferd worker). The same inputs must give the same jobs on both: /runsync and /status
JSON, /stream items, and whether the next job ran on the same worker (refresh_worker).

What legitimately differs is left out: ids, times and workerId; inside a handler exception's
error JSON the traceback, hostname and worker_id (the SDK is told its worker id); a generator's
traceback text. One difference is known and asserted as such: the SDK calls a sync handler on its
main thread, the direct runner on a thread of its own ("runpod-jobs")."""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from tests.conftest import RunningDaemon
from tests.e2e.test_runpod_sdk_runner import FINAL, PROJECT, run, runsync, sdk_project, serve, status, streamed

DIRECT = "-direct"
ERROR_FIELDS = {"error_type", "error_message", "error_traceback", "hostname", "worker_id", "runpod_version"}
# per API, in order (a refresh replaces the worker, so order matters); the same on both runners
CASES: dict[str, list[object]] = {
    "sync": [{"x": 1}, {"return": [1, "two", None]}, {"return": "text"}, {"return": 0.5}, {"return": False},
             {"return": None}, {"return": {}}, {"return": {"error": "bad", "hint": 1}},
             {"return": {"refresh_worker": True, "v": 1}}, {"return": "after refresh"}],
    "asyncer": [{}, {"progress": "half"}],
    "gen": [{"count": 3}, {"count": 3, "raise_at": 1}, {"count": 3, "error_at": 1}],
    "agen": [{"count": 3}, {"count": 2, "raise": True}],
    "aggregate": [{"text": "one small step"}],
    "errdict": [{}, {"only_error": True}, {"ok": True}],
    "raises": [{"name": "this"}],
    "refresh": [{}, {"fail": True}, {}],
    "progress": [{"steps": 2, "name": "x"}],
}
SYNC_THREAD = {"sdk": "MainThread", "direct": "runpod-jobs"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    tmp = tmp_path_factory.mktemp("differential")
    project = tmp / "twice"
    project.mkdir()
    for path in sdk_project(tmp).glob("*.py"):
        shutil.copy(path, project / path.name)
    apis = yaml.safe_load((PROJECT / "cortex.yaml").read_text())
    twins = []
    for api in (api for api in apis if api["name"] in CASES):
        direct = copy.deepcopy(api)
        direct["name"] += DIRECT
        direct["handler"]["runner"] = "direct"
        twins += [api, direct]
    (project / "cortex.yaml").write_text(yaml.safe_dump(twins, sort_keys=False))
    yield from serve(project, tmp / "daemon")


def normal(job: dict, runner: str) -> dict:
    """A finished job without what legitimately differs between runners (see the docstring)."""
    job = dict(job)
    job_id = job.pop("id")
    for key in ("delayTime", "executionTime", "workerId"):
        job.pop(key, None)
    output = job.get("output")
    if isinstance(output, dict):
        output = job["output"] = dict(output)
        if output.get("id") == job_id:
            output["id"] = "<the job's id>"
        if "thread" in output and output.get("keys") == ["id", "input"]:  # sync.py's echo
            assert output.pop("thread") == SYNC_THREAD[runner], job
    error = job.get("error")
    if isinstance(error, str) and error.startswith('{"error_type"'):  # a handler's exception
        parsed = json.loads(error)
        assert parsed.keys() == ERROR_FIELDS, parsed
        assert parsed["error_traceback"].startswith("Traceback (most recent call last):"), parsed
        job["error"] = {"error_type": parsed["error_type"], "error_message": parsed["error_message"]}
    elif isinstance(error, str) and "\ntraceback: " in error:
        head, trace = error.split("\ntraceback: ", 1)
        assert trace.startswith("Traceback (most recent call last):"), error
        job["error"] = head + "\ntraceback: ..."
    return job


def observe(daemon: RunningDaemon, api: str, runner: str) -> list[dict]:
    """Each case of ``api`` (as served by ``runner``) through /runsync, then /status and /stream of its job."""
    seen = []
    previous_worker = None
    for job_input in CASES[api.removesuffix(DIRECT)]:
        done = runsync(daemon, api, job_input)
        assert status(daemon, api, done["id"]) == done  # /status says what /runsync said
        seen.append({
            "input": job_input,
            "job": normal(done, runner),
            "stream": streamed(daemon, api, done["id"]),
            "same_worker_as_before": None if previous_worker is None else done["workerId"] == previous_worker,
        })
        previous_worker = done["workerId"]
    return seen


def test_the_same_inputs_give_the_same_jobs(daemon: RunningDaemon) -> None:
    calls = [(api + suffix, runner) for api in CASES for suffix, runner in (("", "sdk"), (DIRECT, "direct"))]
    with ThreadPoolExecutor(len(calls)) as pool:
        results = dict(zip(calls, pool.map(lambda call: observe(daemon, *call), calls), strict=True))
    differences = {api: {"sdk": results[(api, "sdk")], "direct": results[(api + DIRECT, "direct")]}
                   for api in CASES if results[(api, "sdk")] != results[(api + DIRECT, "direct")]}
    assert not differences, json.dumps(differences, indent=1)
    # and they are what RunPod's SDK makes of these handlers, not merely the same
    by_api = {api: [case["job"] for case in results[(api, "sdk")]] for api in CASES}
    assert by_api["sync"][5:8] == [{"status": "COMPLETED", "output": None}, {"status": "COMPLETED"},
                                   {"status": "FAILED", "error": "bad", "output": {"hint": 1}}]
    assert by_api["gen"][1:] == [{"status": "FAILED", "error": "handler: generator broke \ntraceback: ..."},
                                 {"status": "FAILED", "error": "{'message': 'bad item', 'code': 7}"}]
    assert by_api["raises"] == [{"status": "FAILED", "error": {"error_type": "<class 'ValueError'>",
                                                               "error_message": "cannot handle this"}}]
    refreshed = [case["same_worker_as_before"] for case in results[("refresh", "sdk")]]
    assert refreshed == [None, False, False]
    assert [case["same_worker_as_before"] for case in results[("sync", "sdk")]][-2:] == [True, False]


def progress_seen(daemon: RunningDaemon, api: str) -> tuple[list[object], dict]:
    job_id = run(daemon, api, {"steps": 3, "sleep": 1.5, "name": "both"})
    seen: list[object] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = status(daemon, api, job_id)
        if body["status"] in FINAL:
            return seen, normal(body, "sdk")
        if body["status"] == "IN_PROGRESS" and "output" in body and body["output"] not in seen:
            seen.append(body["output"])
        time.sleep(0.05)
    raise AssertionError(f"{api} job {job_id} did not finish")


def test_progress_while_running(daemon: RunningDaemon) -> None:
    with ThreadPoolExecutor(2) as pool:
        sdk, direct = pool.map(lambda api: progress_seen(daemon, api), ["progress", "progress" + DIRECT])
    assert sdk[1] == direct[1] == {"status": "COMPLETED", "output": "Hello, both!"}
    # the SDK posts each progress_update from a thread of its own, so their order is not fixed
    allowed = ("Update 1/3", "Update 2/3", "Update 3/3", {"from": "thread"})
    for seen in (sdk[0], direct[0]):
        assert seen and all(value in allowed for value in seen), seen
