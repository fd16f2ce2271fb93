"""Shared fixtures: a real ``inferd run`` process on free ports with a temporary state dir."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

PROJECTS = Path(__file__).parent / "projects"
INTERNAL_FAULTS = {"frame_handler_failed", "background_task_crashed", "call_failed"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def children_of(pid: int) -> list[int]:
    """Direct children, read from /proc (no psutil needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry.name))
    return found


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class RunningDaemon:
    def __init__(self, project: Path, tmp: Path, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.project = project
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.grpc_port = free_port()
        self.state_dir = tmp / "state"
        self.log_path = tmp / "daemon.log"
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "inferd", "run", "--project", str(project), "--port", str(self.port),
               "--grpc-port", str(self.grpc_port), "--state-dir", str(self.state_dir), *(extra_args or [])]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}
        full_env.update(env or {})
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def wait_ready(self, apis: list[str] | None = None, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if apis is None:
                    if self.client.get("/-/ready").status_code == 200:
                        return
                else:
                    states = {a["name"]: a["state"] for a in self.client.get("/-/apis").json()["apis"]}
                    if all(states.get(name) == "ready" for name in apis):
                        return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.logs()}")

    def api(self, name: str) -> dict:
        return next(a for a in self.client.get("/-/apis").json()["apis"] if a["name"] == name)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict]:
        events = []
        for line in self.logs().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        return events

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.client.close()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator:
    started: list[RunningDaemon] = []

    def start(project: Path, **kwargs) -> RunningDaemon:
        daemon = RunningDaemon(project, tmp_path / f"d{len(started)}", **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def shared_daemon(project: str, factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    """Body of a module-scoped fixture: one ready daemon for a whole test module."""
    running = RunningDaemon(PROJECTS / project, factory.mktemp(project))
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()
    # internal faults are logged rather than fatal, so a whole module's run must show none
    faults = [e for e in running.log_events() if e.get("event") in INTERNAL_FAULTS]
    assert not faults, faults[:3]


def metrics_once(daemon: RunningDaemon, needle: str, timeout: float = 10) -> str:
    """/-/metrics text as soon as it contains ``needle`` (some gauges refresh on a timer)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = daemon.client.get("/-/metrics").text
        if needle in text:
            break
        time.sleep(0.1)
    return text
