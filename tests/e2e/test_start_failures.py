"""Workers that never become ready: one that dies silently in ``__init__`` fails waiting
requests and reloads at once with its exit status, and a failing constructor's traceback is
logged once per distinct failure, readable on a terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECTS, RunningDaemon

READY_WAIT = 30  # what a request would wait for a worker that never comes
FAST = 10        # generous: a behavioural check that nobody waited READY_WAIT, not a benchmark


@pytest.fixture
def settings(tmp_path: Path) -> list[str]:
    config = tmp_path / "inferd.yaml"
    config.write_text(f"ready_wait: {READY_WAIT}\n")
    return ["--config", str(config)]


def copy_project(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(PROJECTS / name, target)
    return target


def timed_post(daemon: RunningDaemon, path: str) -> tuple[float, int, dict]:
    started = time.monotonic()
    response = daemon.client.post(path, json={})
    return time.monotonic() - started, response.status_code, response.json()


def reload(daemon: RunningDaemon) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferd", "reload", "--state-dir", str(daemon.state_dir)],
                          capture_output=True, text=True, timeout=120)


def test_requests_to_a_worker_that_dies_at_start_get_503_at_once_with_its_exit_status(start_daemon, settings) -> None:
    daemon = start_daemon(PROJECTS / "dies_at_start", extra_args=settings)
    # the first request arrives while the first worker is still starting, later ones during backoff
    for attempt in range(3):
        elapsed, status, body = timed_post(daemon, "/dies")
        assert elapsed < FAST, f"request {attempt} waited {elapsed:.1f}s"
        assert status == 503, body
        assert body["api"] == "dies", body
        assert "worker exited with code 1 before it was ready" in body["error"], body
    during_backoff = daemon.client.post("/dies", json={})
    assert "next start in" in during_backoff.json()["error"]
    assert int(during_backoff.headers["retry-after"]) >= 1
    elapsed, status, body = timed_post(daemon, "/killed")
    assert elapsed < FAST and status == 503, (elapsed, body)
    assert "killed by SIGKILL" in body["error"] and "before it was ready" in body["error"], body
    daemon.wait_ready(["serving"])
    assert daemon.client.post("/serving", json={}).json()["version"] == 1
    assert daemon.api("dies")["state"] == "failed"


def test_reload_to_a_handler_that_dies_at_start_reports_its_exit_status_and_keeps_the_old_version(
        tmp_path: Path, start_daemon, settings) -> None:
    project = copy_project(tmp_path, "dies_at_start")
    daemon = start_daemon(project, extra_args=settings)
    daemon.wait_ready(["serving"])
    handler = project / "serving.py"
    handler.write_text(handler.read_text().replace("        pass", "        os._exit(1)", 1).replace("VERSION = 1", "VERSION = 2"))
    started = time.monotonic()
    result = reload(daemon)
    elapsed = time.monotonic() - started
    assert elapsed < FAST, f"reload took {elapsed:.1f}s: {result.stderr}"
    assert result.returncode == 1, result
    assert "serving: worker exited with code 1 before it was ready" in result.stderr, result.stderr
    assert daemon.client.post("/serving", json={}).json()["version"] == 1
    assert "reload failed, still serving the previous version" in daemon.api("serving")["error"]


TRACEBACK_LINE = 'raise RuntimeError("model weights not found")'  # only a traceback quotes the source
QUOTED = "raise RuntimeError("  # the same, as it reads in the JSON log (its quotes are escaped there)


def test_a_failing_constructors_traceback_is_logged_once_per_distinct_failure(tmp_path: Path, start_daemon) -> None:
    project = copy_project(tmp_path, "broken")
    daemon = start_daemon(project)
    deadline = time.monotonic() + 60
    while daemon.api("broken")["restarts"] < 3:
        assert time.monotonic() < deadline, daemon.logs()[-4000:]
        time.sleep(0.1)
    failures = [e for e in daemon.log_events() if e.get("event") == "handler_init_failed"]
    assert len(failures) >= 3, failures
    assert [e.get("attempt") for e in failures[:3]] == [1, 2, 3]
    assert TRACEBACK_LINE in failures[0]["traceback"]
    assert all(e.get("same_failure_again") is True and "traceback" not in e for e in failures[1:]), failures
    assert all(e["error"] == "RuntimeError: model weights not found" for e in failures), failures
    assert daemon.logs().count(QUOTED) == 1, daemon.logs()[-6000:]
    api_log = subprocess.run([sys.executable, "-m", "inferd", "logs", "broken", "--state-dir", str(daemon.state_dir)],
                             capture_output=True, text=True, timeout=60)
    assert api_log.returncode == 0 and api_log.stdout.count(QUOTED) == 1, api_log  # `inferd logs broken` too
    # a different failure is news: its traceback is logged in full, once
    broken = project / "broken.py"
    broken.write_text(broken.read_text().replace('RuntimeError("model weights not found")', 'KeyError("tokenizer")'))
    deadline = time.monotonic() + 60
    while "raise KeyError(" not in daemon.logs():
        assert time.monotonic() < deadline, daemon.logs()[-4000:]
        time.sleep(0.1)
    changed = [e for e in daemon.log_events() if e.get("event") == "handler_init_failed" and "KeyError" in e["error"]]
    assert len(changed) == 1 and 'raise KeyError("tokenizer")' in changed[0]["traceback"], changed
    assert daemon.logs().count("raise KeyError(") == 1
    assert daemon.logs().count(QUOTED) == 1


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_a_failing_constructors_traceback_reads_as_lines_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal the daemon renders events for a person: the traceback as Python printed it."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}
    proc = subprocess.Popen([sys.executable, "-m", "inferd", "run", "--project", str(PROJECTS / "broken"),
                             "--port", "0", "--grpc-port", "0", "--state-dir", str(tmp_path / "state")],
                            stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    output = b""

    def read_for(seconds: float) -> None:
        nonlocal output
        if select.select([leader], [], [], seconds)[0]:
            try:
                output += os.read(leader, 65536)
            except OSError:  # the daemon exited
                pass

    try:
        deadline = time.monotonic() + 60
        while b"handler_init_failed" not in output:
            assert time.monotonic() < deadline and proc.poll() is None, output.decode(errors="replace")[-4000:]
            read_for(0.2)
        settled = time.monotonic() + 2  # whatever else this failure prints
        while time.monotonic() < settled:
            read_for(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        os.close(leader)
    lines = [ANSI.sub("", line).rstrip("\r") for line in output.decode(errors="replace").split("\n")]
    assert "Traceback (most recent call last):" in lines, "\n".join(lines[-60:])
    assert f"    {TRACEBACK_LINE}" in lines, "\n".join(lines[-60:])
    assert "RuntimeError: model weights not found" in lines
    assert sum(TRACEBACK_LINE in line for line in lines) == 1, "\n".join(lines[-60:])
