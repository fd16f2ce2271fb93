"""The command line as an operator meets it: a second daemon, `inferd logs` on a terminal and
for an unknown API, and `inferd run --config config/inferd.yaml` from the checkout."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECTS, RunningDaemon, shared_daemon

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    yield from shared_daemon("ops", tmp_path_factory)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}


def inferd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferd", *args], capture_output=True, text=True, timeout=120,
                          env=clean_env())


def on_a_terminal(*args: str, timeout: float = 60) -> str:
    """What ``inferd <args>`` prints when its stdout and stderr are a terminal."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "inferd", *args], stdin=subprocess.DEVNULL,
                            stdout=follower, stderr=follower, env=clean_env())
    os.close(follower)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([leader], [], [], 0.2)[0]:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the command exited and its end of the terminal closed
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(10) == 0, output.decode(errors="replace")
    finally:
        proc.kill()
        os.close(leader)
    return output.decode(errors="replace")


def test_a_second_daemon_on_the_same_state_dir_is_told_to_use_its_own(daemon: RunningDaemon) -> None:
    second = subprocess.run([sys.executable, "-m", "inferd", "run", "--project", str(PROJECTS / "ops"), "--port", "0",
                             "--grpc-port", "0", "--state-dir", str(daemon.state_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120, env=clean_env())
    assert second.returncode == 1, second.stdout
    assert "another inferd is listening on" in second.stdout
    assert "give this one its own --state-dir" in second.stdout
    assert "pass that --state-dir to inferd status, logs and reload" in second.stdout
    assert "Traceback" not in second.stdout and "Exception ignored" not in second.stdout, second.stdout
    # the first daemon keeps its control socket
    status = inferd("status", "--state-dir", str(daemon.state_dir))
    assert status.returncode == 0, status.stderr


def test_logs_of_an_unknown_api_says_so_like_status(daemon: RunningDaemon) -> None:
    logs = inferd("logs", "nosuch", "--state-dir", str(daemon.state_dir))
    assert logs.returncode == 1
    assert logs.stderr.strip() == "inferd: no api named 'nosuch'"
    assert logs.stdout == ""


def test_logs_on_a_terminal_are_rendered_like_the_daemons_lines(daemon: RunningDaemon) -> None:
    daemon.client.post("/main", json={"text": "hello"})
    shown = on_a_terminal("logs", "main", "--state-dir", str(daemon.state_dir))
    lines = [line for line in shown.splitlines() if line.strip()]
    assert any("worker_ready" in line for line in lines), shown
    assert not any(line.lstrip().startswith("{") for line in lines), shown
    piped = inferd("logs", "main", "--state-dir", str(daemon.state_dir))
    assert piped.returncode == 0
    assert piped.stdout and all(isinstance(json.loads(line), dict) for line in piped.stdout.splitlines())


def test_run_with_the_shipped_config_from_the_checkout_serves_the_quickstart(tmp_path: Path) -> None:
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "inferd", "run", "--config", "config/inferd.yaml", "--port", "0",
                                 "--grpc-port", "0", "--state-dir", str(tmp_path / "state")],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=clean_env())
        try:
            started = wait_for_event(proc, log_path, "inferd_started")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    assert started["project"] == str(ROOT / "examples" / "quickstart")
    assert started["apis"] == ["sentiment"]


def wait_for_event(proc: subprocess.Popen[bytes], log_path: Path, name: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and json.loads(line).get("event") == name:
                return json.loads(line)
        assert proc.poll() is None, f"inferd exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}"
        time.sleep(0.1)
    raise AssertionError(f"no {name} within {timeout}s:\n{log_path.read_text(errors='replace')}")
