"""What inferd adds around a RunPod worker as the platform would: webhooks called with the final
job, metrics of queue delay and execution time, and a hub.json GPU count taken as a hint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.conftest import PROJECTS, metrics_once


class Receiver(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["content-length"]))
        Receiver.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_gets_the_final_job_and_never_blocks_the_queue(start_daemon) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_port}/done"
    try:
        daemon = start_daemon(PROJECTS / "runpod")
        daemon.wait_ready(["sync"])
        # a dead receiver first: its retries (10 s apart) must not hold up the next job
        dead = daemon.client.post("/v2/sync/run", json={"input": {"n": 0}, "webhook": "http://127.0.0.1:9/nobody"})
        started = time.monotonic()
        answer = daemon.client.post("/v2/sync/runsync", json={"input": {"n": 1}, "webhook": hook}).json()
        assert answer["status"] == "COMPLETED" and time.monotonic() - started < 8
        deadline = time.monotonic() + 10
        while not Receiver.received and time.monotonic() < deadline:
            time.sleep(0.05)
        (delivered,) = Receiver.received
        assert delivered["id"] == answer["id"] and delivered["status"] == "COMPLETED"
        assert delivered["input"] == {"n": 1} and delivered["webhook"] == hook
        assert delivered["output"]["input"] == {"n": 1}
        assert {"delayTime", "executionTime"} <= delivered.keys()
        assert daemon.client.get(f"/v2/sync/status/{dead.json()['id']}").json()["status"] == "COMPLETED"
        events = [e for e in daemon.log_events() if e.get("event") == "webhook_delivered"]
        assert events and events[0]["request_id"] == answer["id"]
        text = metrics_once(daemon, 'inferd_runpod_execution_seconds_count{api="sync"}')
        assert 'inferd_runpod_queue_delay_seconds_count{api="sync"}' in text
        assert 'inferd_runpod_jobs{api="sync",status="COMPLETED"}' in metrics_once(daemon, "inferd_runpod_jobs")
    finally:
        server.shutdown()


def test_hub_json_gpu_count_is_a_hint_on_a_node_without_gpus(tmp_path: Path, start_daemon) -> None:
    project = tmp_path / "gpu-worker"
    (project / ".runpod").mkdir(parents=True)
    shutil.copy(PROJECTS / "runpod" / "sync.py", project / "handler.py")
    (project / ".runpod" / "hub.json").write_text(json.dumps({"config": {"gpuCount": 1, "env": [
        {"key": "GREETING", "value": "hi"}]}}))
    daemon = start_daemon(project)
    daemon.wait_ready(["gpu-worker"])
    api = daemon.api("gpu-worker")
    assert "hub.json asks for 1 GPU(s)" in api["gpu_note"]
    assert api["workers"][0]["gpus"] == []
    assert (api["queue_length"], api["running_jobs"]) == (0, 0)
    assert daemon.client.post("/v2/gpu-worker/runsync", json={"input": {}}).json()["status"] == "COMPLETED"
    assert any(e.get("event") == "gpu_hint_reduced" for e in daemon.log_events())
    shown = subprocess.run([sys.executable, "-m", "inferd", "status", "gpu-worker", "--state-dir", str(daemon.state_dir)],
                           capture_output=True, text=True, timeout=60)
    assert "queue length 0" in shown.stdout and "running jobs 0" in shown.stdout, shown


def test_runpod_api_keys_setting_guards_apis_without_their_own(tmp_path: Path, start_daemon) -> None:
    project = tmp_path / "keyed-worker"
    project.mkdir()
    shutil.copy(PROJECTS / "runpod" / "sync.py", project / "handler.py")
    daemon = start_daemon(project, env={"INFERD_RUNPOD_API_KEYS": "one, two"})
    daemon.wait_ready(["keyed-worker"])
    url = "/v2/keyed-worker/runsync"
    refused = daemon.client.post(url, json={"input": {}}, headers={"authorization": "Bearer three"})
    assert refused.status_code == 401 and "accepted API key" in refused.json()["error"]
    assert daemon.client.post(url, json={"input": {}}).status_code == 401
    for key in ("Bearer two", "one"):  # the SDKs send Bearer; RunPod's docs show the bare key
        assert daemon.client.post(url, json={"input": {}}, headers={"authorization": key}).json()["status"] == "COMPLETED"


DIES = '''import os
import pathlib

import runpod


def handler(job):
    marker = pathlib.Path(job["input"]["marker"])
    if job["input"].get("always") or not marker.exists():
        marker.touch()
        os._exit(3)  # the worker dies mid-job, as an OOM kill or a segfault would
    return "survived"


runpod.serverless.start({"handler": handler})
'''


def test_a_job_whose_worker_dies_is_requeued_once_then_failed(tmp_path: Path, start_daemon) -> None:
    project = tmp_path / "dying-worker"
    project.mkdir()
    (project / "handler.py").write_text(DIES)
    daemon = start_daemon(project)
    daemon.wait_ready(["dying-worker"])
    base = "/v2/dying-worker"
    once = daemon.client.post(f"{base}/runsync", json={"input": {"marker": str(tmp_path / "once")}}).json()
    assert (once["status"], once["output"]) == ("COMPLETED", "survived")  # the second attempt, on a new worker
    always = daemon.client.post(f"{base}/runsync", json={"input": {"marker": str(tmp_path / "x"), "always": True}}).json()
    assert always["status"] == "FAILED"
    assert always["error"].startswith("the worker running it stopped: worker ") and "died" in always["error"], always
    assert daemon.client.post(f"{base}/runsync", json={"input": {"marker": str(tmp_path / "once")}}).json()["status"] == "COMPLETED"
    events = [e for e in daemon.log_events() if e.get("event") == "runpod_job_interrupted"]
    assert [e["status"] for e in events] == ["IN_QUEUE", "IN_QUEUE", "FAILED"]
