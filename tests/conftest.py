"""Shared fixtures: a real ``inferd run`` process with a temporary state dir, on ports the
kernel picked (``--port 0``), read back from its ``inferd_listening`` log line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

PROJECTS = Path(__file__).parent / "projects"
INTERNAL_FAULTS = {"frame_handler_failed", "background_task_crashed", "call_failed"}


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
                 env: dict[str, str] | None = None, preexec_fn: Callable[[], object] | None = None) -> None:
        self.project = project
        tmp.mkdir(parents=True, exist_ok=True)
        self.state_dir = tmp / "state"
        self.log_path = tmp / "daemon.log"
        cmd = [sys.executable, "-m", "inferd", "run", "--project", str(project), "--port", "0",
               "--grpc-port", "0", "--state-dir", str(self.state_dir), *(extra_args or [])]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}
        full_env.update(env or {})
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, preexec_fn=preexec_fn)
        self.port, self.grpc_port = self._bound_ports()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def _bound_ports(self, timeout: float = 60) -> tuple[int, int]:
        """The daemon's ports once it listens; (0, 0) when it exits first (a test of a failure)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.log_events():
                if event.get("event") == "inferd_listening":
                    return int(event["port"]), int(event["grpc_port"])
            if self.proc.poll() is not None:
                return 0, 0
            time.sleep(0.05)
        raise AssertionError(f"daemon did not listen within {timeout}s:\n{self.logs()}")

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


def shared_daemon(project: str | Path, factory: pytest.TempPathFactory,
                  env: dict[str, str] | None = None) -> Iterator[RunningDaemon]:
    """Body of a module-scoped fixture: one ready daemon for a whole test module; ``project``
    names one under tests/projects, or is a directory of its own (a copy a test may change)."""
    path = project if isinstance(project, Path) else PROJECTS / project
    running = RunningDaemon(path, factory.mktemp(path.name), env=env)
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


def raw_answers(daemon: RunningDaemon, data: bytes, close: bool = False) -> tuple[list[tuple[bytes, dict[str, str], bytes]], bool]:
    """``data`` written at once on one connection; the answers read back (status line, headers,
    body) until the server closes or ``data``'s requests are all answered; and whether it closed."""
    expected = data.count(b" HTTP/1.1\r\n")
    host, port = daemon.url.removeprefix("http://").split(":")
    answers: list[tuple[bytes, dict[str, str], bytes]] = []
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        buffer, closed = b"", False
        while len(answers) < expected or (close and not closed):
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            buffer += chunk
            while b"\r\n\r\n" in buffer:
                head, rest = buffer.split(b"\r\n\r\n", 1)
                status, *lines = head.split(b"\r\n")
                headers = {k.strip().lower(): v.strip() for k, v in (line.decode().split(":", 1) for line in lines)}
                length = int(headers.get("content-length", "0"))
                if len(rest) < length:
                    break
                answers.append((status, headers, rest[:length]))
                buffer = rest[length:]
    return answers, closed
