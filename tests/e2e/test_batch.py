"""BatchAPI against the real daemon (tests/projects/jobs): submission, batches run exactly once,
retries, on_job_complete once, DELETE, timeout, OOM, kill -9 and restart, file sources, the CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunningDaemon, children_of, metrics_once, shared_daemon
from tests.e2e.jobs_client import ENV, PROJECT, REPO, items_and_ends, start, status, submit, wait_for, wait_no_workers

SPEC_KEYS = ["job_id", "api_name", "kind", "workers", "sqs_dead_letter_queue", "config", "timeout", "api_id",
             "sqs_url", "total_batch_count", "start_time"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    yield from shared_daemon(PROJECT, tmp_path_factory, env=ENV)


def config(tmp_path: Path, **extra: object) -> dict[str, object]:
    return {"output": str(tmp_path / "out.jsonl"), "complete_marker": str(tmp_path / "complete"), **extra}


def cli(daemon: RunningDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferd", *args, "--state-dir", str(daemon.state_dir)],
                          capture_output=True, text=True, timeout=30, cwd=REPO, env={**ENV, "PATH": "/usr/bin:/bin"})


def test_ready_with_no_job_and_no_standing_workers(daemon: RunningDaemon) -> None:
    assert daemon.client.get("/-/ready").status_code == 200
    api = daemon.api("batch")
    assert (api["kind"], api["state"], api["desired_workers"], api["workers"]) == ("BatchAPI", "ready", 0, [])
    assert children_of(daemon.proc.pid) == []


def test_every_item_once_and_on_job_complete_once(daemon: RunningDaemon, tmp_path: Path) -> None:
    spec = submit(daemon, "batch", {"workers": 2, "item_list": {"items": list(range(50)), "batch_size": 5},
                                    "config": config(tmp_path)})
    assert list(spec) == SPEC_KEYS  # Cortex's keys, in its order
    assert spec["kind"] == "BatchAPI" and spec["total_batch_count"] == 10 and spec["start_time"].endswith("Z")
    job = wait_for(daemon, "batch", spec["job_id"])
    assert job["status"] == "succeeded"
    assert job["batch_metrics"]["succeeded"] == 10 and job["batch_metrics"]["failed"] == 0
    assert job["batch_metrics"]["average_time_per_batch"] > 0 and job["batches_in_queue"] == 0
    assert "end_time" in job and "worker_counts" not in job  # a finished job has no workers
    items, ends = items_and_ends(tmp_path / "out.jsonl")
    assert sorted(items) == list(range(50))
    assert sorted(ends) == sorted(f"{spec['job_id']}-{i}" for i in range(10))
    assert (tmp_path / "complete").read_text() == spec["job_id"] + "\n"
    first = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[5])
    assert first["job_spec"] == spec["job_id"] and first["from_api"] == "api"  # job_spec and the merged config
    wait_no_workers(daemon)


def test_a_failing_batch_is_retried_and_one_that_always_fails_is_counted(daemon: RunningDaemon, tmp_path: Path) -> None:
    items = [{"n": 1, "fail_once": str(tmp_path / "marker")}, {"n": 2, "fail": True}, {"n": 3}, {"n": 4}]
    spec = submit(daemon, "batch", {"workers": 1, "item_list": {"items": items, "batch_size": 1},
                                    "config": config(tmp_path)})
    job = wait_for(daemon, "batch", spec["job_id"])
    assert job["status"] == "completed_with_failures"
    assert job["batch_metrics"]["succeeded"] == 3 and job["batch_metrics"]["failed"] == 1
    written, _ = items_and_ends(tmp_path / "out.jsonl")
    assert sorted(item["n"] for item in written) == [1, 3, 4]  # item 1 on its second attempt, once
    assert (tmp_path / "complete").read_text() == spec["job_id"] + "\n"  # on_job_complete runs all the same
    text = metrics_once(daemon, 'outcome="retried"')
    assert 'inferd_batches_total{api="batch",outcome="failed"}' in text
    assert 'inferd_batch_jobs{api="batch",status="completed_with_failures"}' in metrics_once(daemon, "completed_with_failures")
    failures = [e for e in daemon.log_events() if e.get("event") == "batch_failed" and e.get("job_id") == spec["job_id"]]
    assert {e["batch_id"] for e in failures} == {f"{spec['job_id']}-0", f"{spec['job_id']}-1"}


def test_on_job_complete_raising_is_a_worker_error_with_its_traceback(daemon: RunningDaemon, tmp_path: Path) -> None:
    spec = submit(daemon, "batch", {"workers": 1, "item_list": {"items": [1, 2], "batch_size": 2},
                                    "config": config(tmp_path, complete_fails=True)})
    job = wait_for(daemon, "batch", spec["job_id"])
    assert job["status"] == "worker_error" and job["batch_metrics"]["succeeded"] == 1
    assert "RuntimeError: on_job_complete refused" in job["error"] and "Traceback" in job["error"]
    listed = cli(daemon, "jobs", "batch")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("JOB ID") and f"{spec['job_id']}  worker_error" in listed.stdout
    detail = cli(daemon, "jobs", "batch", spec["job_id"])
    assert detail.returncode == 0, detail.stderr
    assert "worker_error" in detail.stdout and "RuntimeError: on_job_complete refused" in detail.stdout
    assert 'in on_job_complete' in detail.stdout  # the traceback's frame in the handler
    missing = cli(daemon, "jobs", "batch", "0000")
    assert missing.returncode == 1 and "no job 0000" in missing.stderr


def test_delete_stops_a_running_job_and_its_workers(daemon: RunningDaemon, tmp_path: Path) -> None:
    items = [{"n": i, "sleep": 0.3} for i in range(20)]
    spec = submit(daemon, "batch", {"workers": 1, "item_list": {"items": items, "batch_size": 1}, "config": config(tmp_path)})
    job = wait_for(daemon, "batch", spec["job_id"], until=("running",), done=1)
    assert job["worker_counts"] == {"running": 1}
    shown = cli(daemon, "status")
    assert f"batch job {spec['job_id']} running" in shown.stdout and "/20 batches" in shown.stdout, shown.stdout
    reply = daemon.client.delete("/batch", params={"jobID": spec["job_id"]})
    assert reply.status_code == 200 and reply.json() == {"message": f"stopped job {spec['job_id']}"}
    assert status(daemon, "batch", spec["job_id"])["status"] == "stopped"
    wait_no_workers(daemon)
    again = daemon.client.delete("/batch", params={"jobID": spec["job_id"]})
    assert again.status_code == 400 and again.json()["kind"] == "job.job_has_already_been_stopped"
    time.sleep(0.4)
    job = status(daemon, "batch", spec["job_id"])
    assert job["status"] == "stopped" and job["batch_metrics"]["succeeded"] < 20
    assert not (tmp_path / "complete").exists()


def test_timeout_ends_the_job_and_kills_its_workers(daemon: RunningDaemon, tmp_path: Path) -> None:
    items = [{"n": i, "sleep": 5} for i in range(3)]
    spec = submit(daemon, "batch", {"workers": 1, "timeout": 1, "item_list": {"items": items, "batch_size": 1},
                                    "config": config(tmp_path)})
    assert spec["timeout"] == 1
    job = wait_for(daemon, "batch", spec["job_id"], timeout=10)
    assert job["status"] == "timed_out" and "timeout of 1s" in job["error"]
    wait_no_workers(daemon, timeout=3)


def test_a_worker_killed_like_the_oom_killer_is_worker_oom(daemon: RunningDaemon, tmp_path: Path) -> None:
    spec = submit(daemon, "batch", {"workers": 1, "item_list": {"items": [{"n": 1, "oom": True}], "batch_size": 1},
                                    "config": config(tmp_path)})
    job = wait_for(daemon, "batch", spec["job_id"])
    assert job["status"] == "worker_oom" and "OOM killer" in job["error"]


def test_two_jobs_of_one_api_run_at_once(daemon: RunningDaemon, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    items = [{"n": i, "sleep": 0.2} for i in range(4)]
    first = submit(daemon, "batch", {"workers": 1, "item_list": {"items": items, "batch_size": 1}, "config": config(a)})
    second = submit(daemon, "batch", {"workers": 1, "item_list": {"items": items, "batch_size": 1}, "config": config(b)})
    assert first["job_id"] > second["job_id"]  # Cortex's ids: the newer sorts first
    wait_for(daemon, "batch", first["job_id"], until=("running",), done=1)
    assert status(daemon, "batch", second["job_id"])["status"] == "running"
    for job, directory in ((first, a), (second, b)):
        assert wait_for(daemon, "batch", job["job_id"])["status"] == "succeeded"
        assert sorted(item["n"] for item in items_and_ends(directory / "out.jsonl")[0]) == [0, 1, 2, 3]
    listed = daemon.client.get("/batch").json()["jobs"]
    ids = [job["job_id"] for job in listed]
    assert ids.index(second["job_id"]) < ids.index(first["job_id"])  # newest first


@pytest.mark.parametrize(("body", "kind", "text"), [
    (b"{not json", "error", "invalid JSON"),
    (b'{"workers": 1}', "job.specify_exactly_one_key", "specify exactly one of the following keys"),
    (b'{"workers": 1, "item_list": {"items": [1], "batch_size": 1}, "file_path_lister": {"s3_paths": ["/x"], "batch_size": 1}}',
     "job.conflicting_fields", "(but not more than one at the same time)"),
    (b'{"workers": 0, "item_list": {"items": [1], "batch_size": 1}}', "configreader.must_be_greater_than_or_equal_to",
     "workers: 0 must be greater than or equal to 1"),
    (b'{"workers": 1, "item_list": {"items": [1], "batch_size": 0}}', "configreader.must_be_greater_than_or_equal_to",
     "item_list: batch_size: 0"),
    (b'{"workers": 1, "item_list": {"items": [], "batch_size": 1}}', "configreader.too_few_elements", "items"),
    (b'{"workers": 65, "item_list": {"items": [1], "batch_size": 1}}', "configreader.must_be_less_than_or_equal_to",
     "max_job_workers is 64"),
    (b'{"workers": 1, "timeout": 0, "item_list": {"items": [1], "batch_size": 1}}',
     "configreader.must_be_greater_than_or_equal_to", "timeout"),
    (b'{"workers": "two", "item_list": {"items": [1], "batch_size": 1}}', "error", "cannot unmarshal string"),
    (b'{"workers": 1, "file_path_lister": {"s3_paths": ["/nonexistent-dir/x"], "batch_size": 1}}',
     "batchapi.no_s3_files_found", "no s3 files match"),
])
def test_malformed_submissions_get_cortex_400s(daemon: RunningDaemon, body: bytes, kind: str, text: str) -> None:
    before = len(daemon.client.get("/batch", params={"limit": 1000}).json()["jobs"])
    reply = daemon.client.post("/batch", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["kind"] == kind and text in reply.json()["message"], reply.json()
    assert len(daemon.client.get("/batch", params={"limit": 1000}).json()["jobs"]) == before  # nothing stored


def test_other_errors(daemon: RunningDaemon) -> None:
    big = daemon.client.post("/batch", content=b"[" + b"1," * (6 << 20) + b"1]")
    assert big.status_code == 413 and "limit of 10485760 bytes" in big.json()["error"]
    unknown = daemon.client.get("/batch", params={"jobID": "0123"})
    assert unknown.status_code == 404 and unknown.json() == {"kind": "job.not_found", "message": "unable to find job 0123"}
    assert daemon.client.delete("/batch", params={"jobID": "0123"}).status_code == 404
    no_id = daemon.client.delete("/batch")
    assert no_id.status_code == 400 and no_id.json()["kind"] == "endpoints.query_param_required"
    assert daemon.client.put("/batch").status_code == 405
    assert daemon.client.get("/batch/sub").status_code == 404


def write_files(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "a.jsonl").write_text('{"n": 1}\n{"n": 2}\n')
    (root / "sub" / "b.jsonl").write_text('{"n": 3}\n')
    (root / "skip.txt").write_text("not json")


def test_dry_run_lists_files_and_stores_nothing(daemon: RunningDaemon, tmp_path: Path) -> None:
    write_files(tmp_path / "data")
    before = len(daemon.client.get("/batch", params={"limit": 1000}).json()["jobs"])
    body = {"workers": 1, "file_path_lister": {"s3_paths": [str(tmp_path / "data")], "includes": ["**.jsonl"],
                                               "batch_size": 1}}
    reply = daemon.client.post("/batch", params={"dryRun": "true"}, json=body)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    assert reply.text == f"{tmp_path}/data/a.jsonl\n{tmp_path}/data/sub/b.jsonl\nvalidations passed"
    bad = daemon.client.post("/batch", params={"dryRun": "true"}, json={"workers": 1})
    assert bad.status_code == 400 and "specify exactly one" in bad.text
    assert len(daemon.client.get("/batch", params={"limit": 1000}).json()["jobs"]) == before


def test_file_path_lister_and_delimited_files_over_local_files(daemon: RunningDaemon, tmp_path: Path) -> None:
    write_files(tmp_path / "data")
    (tmp_path / "l").mkdir(), (tmp_path / "d").mkdir()
    lister = submit(daemon, "batch", {"workers": 1, "config": config(tmp_path / "l"), "file_path_lister": {
        "s3_paths": [f"file://{tmp_path}/data"], "excludes": ["**.txt"], "batch_size": 5}})
    delimited = submit(daemon, "batch", {"workers": 1, "config": config(tmp_path / "d"), "delimited_files": {
        "s3_paths": [str(tmp_path / "data")], "includes": ["**.jsonl"], "batch_size": 2}})
    assert wait_for(daemon, "batch", lister["job_id"])["status"] == "succeeded"
    assert wait_for(daemon, "batch", delimited["job_id"])["status"] == "succeeded"
    assert items_and_ends(tmp_path / "l" / "out.jsonl")[0] == [f"file://{tmp_path}/data/a.jsonl",
                                                              f"file://{tmp_path}/data/sub/b.jsonl"]
    assert items_and_ends(tmp_path / "d" / "out.jsonl")[0] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert delimited["total_batch_count"] == 2


def test_kill_9_mid_job_then_restart_resumes_without_rerunning_finished_batches(tmp_path: Path) -> None:
    first = start(tmp_path / "run1")
    items = [{"n": i, "sleep": 0.4} for i in range(8)]
    spec = submit(first, "batch", {"workers": 1, "item_list": {"items": items, "batch_size": 1}, "config": config(tmp_path)})
    wait_for(first, "batch", spec["job_id"], until=("running",), done=2)
    workers = children_of(first.proc.pid)
    first.stop(signal.SIGKILL)
    for pid in workers:  # orphaned workers notice their parent is gone
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    done_before = len(items_and_ends(tmp_path / "out.jsonl")[1])
    second = RunningDaemon(first.project, tmp_path / "run2", env=ENV,
                           extra_args=["--state-dir", str(first.state_dir)])  # the same store
    try:
        second.wait_ready()
        job = wait_for(second, "batch", spec["job_id"], timeout=30)
        assert job["status"] == "succeeded" and job["batch_metrics"]["succeeded"] == 8
        items_written, ends = items_and_ends(tmp_path / "out.jsonl")
        assert done_before >= 2 and sorted(ends) == sorted(f"{spec['job_id']}-{i}" for i in range(8))
        assert Counter(ends).most_common(1)[0][1] == 1  # no finished batch ran twice
        assert sorted(item["n"] for item in items_written) == list(range(8))
        assert (tmp_path / "complete").read_text() == spec["job_id"] + "\n"
        assert any(e.get("event") == "job_resumed" for e in second.log_events())
    finally:
        second.stop()
