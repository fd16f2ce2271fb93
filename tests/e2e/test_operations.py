"""Living with inferd: reload under load, the control CLI, sd_notify, logs, install-service."""

from __future__ import annotations

import json
import queue
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PROJECTS, RunningDaemon, pid_alive


@pytest.fixture
def project(tmp_path: Path) -> Path:
    target = tmp_path / "project"
    shutil.copytree(PROJECTS / "ops", target)
    return target


def cli(daemon: RunningDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferd", *args, "--state-dir", str(daemon.state_dir)],
                          capture_output=True, text=True, timeout=120)


def bump_version(project: Path, version: int) -> None:
    handler = project / "main.py"
    handler.write_text(handler.read_text().replace("VERSION = 1", f"VERSION = {version}"))


class Load:
    """A client loop hammering one API until stopped; records every outcome."""

    def __init__(self, daemon: RunningDaemon, path: str = "/main") -> None:
        self.outcomes: list[tuple[int, int | None]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(daemon.url, path)) for _ in range(4)]
        for thread in self._threads:
            thread.start()

    def _run(self, url: str, path: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    reply = client.post(path, json={"n": 1})
                    self.outcomes.append((reply.status_code, reply.json().get("version")))
                except (httpx.HTTPError, ValueError) as exc:
                    self.errors.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def test_reload_under_load_drops_nothing_and_switches_version(project: Path, start_daemon) -> None:
    daemon = start_daemon(project)
    daemon.wait_ready()
    old_pid = daemon.api("main")["workers"][0]["pid"]
    other_pid = daemon.api("other")["workers"][0]["pid"]
    load = Load(daemon)
    try:
        time.sleep(0.5)
        bump_version(project, 2)
        result = cli(daemon, "reload")
        time.sleep(0.5)
    finally:
        load.stop()
    assert result.returncode == 0, result.stderr
    assert "replaced main" in result.stdout and "kept other" in result.stdout
    assert load.errors == []
    assert {status for status, _ in load.outcomes} == {200}
    versions = [version for _, version in load.outcomes]
    assert versions[0] == 1 and versions[-1] == 2
    assert daemon.api("other")["workers"][0]["pid"] == other_pid  # untouched API kept its worker
    deadline = time.monotonic() + 30
    while pid_alive(old_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(old_pid)  # the old version drained and exited


def test_invalid_reload_keeps_serving_and_fails_the_command(project: Path, start_daemon) -> None:
    daemon = start_daemon(project)
    daemon.wait_ready()
    config = project / "cortex.yaml"
    config.write_text(config.read_text() + "  compute:\n    gpu: two\n")
    bump_version(project, 3)
    result = cli(daemon, "reload")
    assert result.returncode == 1
    assert 'apis[1].compute.gpu: must be an integer >= 0, got "two"' in result.stderr
    assert daemon.client.post("/main", json={}).json()["version"] == 1
    assert any(e.get("event") == "reload_finished" and e.get("ok") is False for e in daemon.log_events())


def test_failing_constructor_on_reload_keeps_old_version(project: Path, start_daemon) -> None:
    daemon = start_daemon(project)
    daemon.wait_ready()
    handler = project / "main.py"
    handler.write_text(handler.read_text().replace("        pass", "        raise RuntimeError('new model is broken')", 1))
    result = cli(daemon, "reload")
    assert result.returncode == 1
    assert "new model is broken" in result.stderr
    assert daemon.client.post("/main", json={}).json()["version"] == 1
    assert "reload failed, still serving the previous version" in daemon.api("main")["error"]


def test_sighup_reload_adds_and_removes_apis(project: Path, start_daemon) -> None:
    daemon = start_daemon(project)
    daemon.wait_ready()
    other_pid = daemon.api("other")["workers"][0]["pid"]
    config = project / "cortex.yaml"
    text = config.read_text().replace("- name: other", "- name: added")
    config.write_text(text)
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        names = {a["name"]: a["state"] for a in daemon.client.get("/-/apis").json()["apis"]}
        if names == {"main": "ready", "added": "ready"}:
            break
        time.sleep(0.1)
    assert names == {"main": "ready", "added": "ready"}
    assert daemon.client.get("/added").status_code == 200
    assert daemon.client.get("/other").status_code == 404
    while pid_alive(other_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(other_pid)


def test_sd_notify_messages(project: Path, start_daemon, tmp_path: Path) -> None:
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(30)

    def next_message() -> str:
        return listener.recv(4096).decode()

    daemon = start_daemon(project, env={"NOTIFY_SOCKET": address})
    ready = next_message()
    assert ready.startswith("READY=1") and "STATUS=2/2 APIs ready" in ready
    assert daemon.client.get("/-/ready").status_code == 200  # READY=1 only once everything serves
    daemon.proc.send_signal(signal.SIGHUP)
    reloading = next_message()
    assert reloading.startswith("RELOADING=1") and "MONOTONIC_USEC=" in reloading
    assert next_message().startswith("READY=1")
    daemon.proc.send_signal(signal.SIGTERM)
    assert next_message().startswith("STOPPING=1")
    assert daemon.proc.wait(30) == 0
    listener.close()


def test_control_socket_and_status(project: Path, start_daemon) -> None:
    daemon = start_daemon(project)
    daemon.wait_ready()
    sock = daemon.state_dir / "run" / "control.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o660
    for _ in range(5):
        daemon.client.post("/main", json={})
    table = cli(daemon, "status")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:4] == ["API", "KIND", "ENDPOINT", "WORKERS"]
    main = next(row for row in rows if row.startswith("main "))
    assert "RealtimeAPI" in main and "/main" in main and "1/1" in main and "ready" in main
    detail = cli(daemon, "status", "main")
    assert "main (RealtimeAPI) at /main: ready" in detail.stdout
    as_json = json.loads(cli(daemon, "status", "--json").stdout)
    assert {a["name"] for a in as_json} == {"main", "other"}
    assert daemon.stop() == 0
    assert not sock.exists()  # no stray socket file after stop
    gone = cli(daemon, "status")
    assert gone.returncode == 3 and "inferd is not running" in gone.stderr


def test_cortex_logger_prints_and_inferd_logs(project: Path, start_daemon) -> None:
    daemon = start_daemon(project)
    daemon.wait_ready()
    reply = daemon.client.post("/main", json={"text": "hello"})
    request_id = reply.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = daemon.log_events()
        cortex = [e for e in events if e.get("message") == "received payload"]
        printed = [e for e in events if e.get("event") == "worker_output" and e.get("line") == "handled version 1"]
        if cortex and printed:
            break
        time.sleep(0.1)
    line = cortex[0]
    assert line["levelname"] == "INFO" and line["payload"] == {"text": "hello"} and line["version"] == 1
    assert line["request_id"] == request_id and line["api"] == "main" and isinstance(line["process"], int)
    assert "asctime" in line
    assert printed[0]["request_id"] == request_id and printed[0]["api"] == "main"
    reminder = [e for e in daemon.log_events() if e.get("event") == "requirements_not_installed"]
    assert len(reminder) == 1 and reminder[0]["file"].endswith("requirements.txt")
    logs = cli(daemon, "logs", "main", "--tail", "50")
    assert logs.returncode == 0
    assert any(json.loads(line).get("message") == "received payload" for line in logs.stdout.splitlines())


def test_install_service_writes_a_unit_systemd_accepts(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "inferd", "install-service", "--prefix", str(tmp_path),
                             "--project", "/srv/my-project"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    unit = tmp_path / "etc/systemd/system/inferd.service"
    assert "Type=notify" in unit.read_text() and "ExecReload=" in unit.read_text()
    assert "project: /srv/my-project" in (tmp_path / "etc/inferd/inferd.yaml").read_text()
    assert (tmp_path / "etc/default/inferd").exists()
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stderr


def test_watch_reloads_on_file_change(project: Path, start_daemon) -> None:
    daemon = start_daemon(project, extra_args=["--watch"])
    daemon.wait_ready()
    assert daemon.client.post("/main", json={}).json()["version"] == 1
    bump_version(project, 4)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and daemon.client.post("/main", json={}).json()["version"] != 4:
        time.sleep(0.2)
    assert daemon.client.post("/main", json={}).json()["version"] == 4


def test_logs_follow_streams_new_lines(project: Path, start_daemon) -> None:
    daemon = start_daemon(project)
    daemon.wait_ready()
    follower = subprocess.Popen([sys.executable, "-m", "inferd", "logs", "main", "-f", "--tail", "0",
                                 "--state-dir", str(daemon.state_dir)], stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout], daemon=True).start()
    try:
        # keep sending until one request's lines show up: the follower subscribes in its own time
        deadline = time.monotonic() + 30
        found = False
        while not found and time.monotonic() < deadline:
            request_id = daemon.client.post("/main", json={"follow": 1}).headers["x-request-id"]
            try:
                while True:
                    if request_id in lines.get(timeout=1.0):
                        found = True
                        break
            except queue.Empty:
                pass
        assert found, "inferd logs -f printed no line of a request made while it was following"
    finally:
        follower.terminate()
        follower.wait(10)


def test_ready_per_api_keeps_healthy_apis_in_rotation_beside_a_crashed_one(start_daemon) -> None:
    daemon = start_daemon(PROJECTS / "broken")
    daemon.wait_ready(["healthy"])
    deadline = time.monotonic() + 30
    while not daemon.api("broken")["error"] and time.monotonic() < deadline:  # its constructor has raised
        time.sleep(0.1)
    assert daemon.client.get("/-/ready").status_code == 503  # the whole project is not ready...
    healthy = daemon.client.get("/-/ready/healthy")
    assert healthy.status_code == 200  # ...but a balancer in front of `healthy` keeps it
    assert healthy.json() == {"api": "healthy", "ready": True, "state": "ready"}
    broken = daemon.client.get("/-/ready/broken")
    assert broken.status_code == 503
    assert broken.json()["api"] == "broken" and broken.json()["ready"] is False
    assert broken.json()["state"] != "ready" and "model weights not found" in broken.json()["error"]
    unknown = daemon.client.get("/-/ready/nosuch")
    assert unknown.status_code == 404 and unknown.json() == {"error": "no api named 'nosuch'"}
