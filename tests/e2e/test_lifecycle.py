"""Daemon lifecycle: failing handlers, invalid configs, signals, no orphan processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import PROJECTS, children_of, pid_alive


def test_failing_constructor_marks_api_failed_and_others_serve(start_daemon) -> None:
    daemon = start_daemon(PROJECTS / "broken")
    daemon.wait_ready(["healthy"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        broken = daemon.api("broken")
        if broken["state"] == "failed":
            break
        time.sleep(0.1)
    assert broken["state"] == "failed"
    assert "model weights not found" in broken["error"]
    assert daemon.client.post("/healthy", json={}).json() == {"healthy": True}
    response = daemon.client.post("/broken", json={})
    assert response.status_code == 503
    assert "model weights not found" in response.json()["error"]
    ready = daemon.client.get("/-/ready")
    assert ready.status_code == 503
    assert set(ready.json()["not_ready"]) == {"broken", "later"}
    assert "not supported" in daemon.api("later")["error"]
    # the traceback is in the log, and the daemon keeps retrying with backoff
    events = [e for e in daemon.log_events() if e.get("event") == "handler_init_failed"]
    assert any("RuntimeError: model weights not found" in e.get("traceback", "") for e in events)
    time.sleep(1.6)
    assert daemon.api("broken")["restarts"] >= 2


def test_sigterm_finishes_in_flight_and_leaves_no_child(start_daemon) -> None:
    daemon = start_daemon(PROJECTS / "realtime")
    daemon.wait_ready()
    workers = children_of(daemon.proc.pid)
    assert len(workers) == 6  # echo, batched, narrow, pair x2, libuser
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(daemon.client.post, "/narrow", json={"seconds": 1.0})
        time.sleep(0.3)
        daemon.proc.send_signal(signal.SIGTERM)
        assert slow.result().status_code == 200
    assert daemon.proc.wait(30) == 0
    assert not any(pid_alive(pid) for pid in workers)
    events = [e.get("event") for e in daemon.log_events()]
    assert "inferd_stopping" in events and "inferd_stopped" in events


def test_a_request_past_the_grace_period_is_answered_503(start_daemon) -> None:
    daemon = start_daemon(PROJECTS / "realtime", env={"INFERD_SHUTDOWN_GRACE_PERIOD": "1"})
    daemon.wait_ready()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(daemon.client.post, "/narrow", json={"seconds": 5.0})
        time.sleep(0.3)
        daemon.proc.send_signal(signal.SIGTERM)
        answer = slow.result()
    assert answer.status_code == 503, answer.text
    assert answer.json() == {"error": "inferd is shutting down and this request did not finish within its "
                                      "shutdown_grace_period"}
    assert daemon.proc.wait(30) == 0
    assert [e["path"] for e in daemon.log_events() if e.get("event") == "request_cut_by_shutdown"] == ["/narrow"]
    assert "Exception in ASGI application" not in daemon.logs()


def test_second_signal_forces_exit(start_daemon) -> None:
    daemon = start_daemon(PROJECTS / "realtime")
    daemon.wait_ready()
    workers = children_of(daemon.proc.pid)
    with ThreadPoolExecutor(1) as pool:
        pool.submit(daemon.client.post, "/narrow", json={"seconds": 20})
        time.sleep(0.3)
        daemon.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        daemon.proc.send_signal(signal.SIGINT)
        assert daemon.proc.wait(10) == 1
    assert not any(pid_alive(pid) for pid in workers)


def test_sigkill_of_daemon_takes_workers_down(start_daemon) -> None:
    daemon = start_daemon(PROJECTS / "realtime")
    daemon.wait_ready()
    workers = children_of(daemon.proc.pid)
    daemon.proc.kill()
    daemon.proc.wait()
    deadline = time.monotonic() + 10
    while any(pid_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(pid) for pid in workers)


def test_invalid_config_refuses_to_start_naming_line(start_daemon) -> None:
    daemon = start_daemon(PROJECTS / "invalid")
    assert daemon.proc.wait(30) == 2
    assert "cortex.yaml:13: apis[1].compute.gpu" in daemon.logs()


def test_validate_prints_errors_with_line_numbers() -> None:
    result = subprocess.run([sys.executable, "-m", "inferd", "validate", "--project", str(PROJECTS / "invalid")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "cortex.yaml:13: apis[1].compute.gpu: must be an integer >= 0, got \"two\"" in result.stderr


def test_validate_accepts_a_good_project() -> None:
    result = subprocess.run([sys.executable, "-m", "inferd", "validate", "--project", str(PROJECTS / "realtime")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "5 api(s) valid" in result.stdout


def test_busy_port_is_a_clear_error(start_daemon) -> None:
    first = start_daemon(PROJECTS / "realtime")
    first.wait_ready()
    second = start_daemon(PROJECTS / "realtime", extra_args=["--port", str(first.port)])
    assert second.proc.wait(30) == 1
    assert "listen_failed" in second.logs()


def test_validate_quotes_protoc_with_file_and_line() -> None:
    result = subprocess.run([sys.executable, "-m", "inferd", "validate", "--project", str(PROJECTS / "badproto")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "cortex.yaml:1: apis[0].handler.protobuf_path:" in result.stderr
    assert "broken.proto:6:" in result.stderr and '"Missing" is not defined' in result.stderr


def test_daemon_refuses_a_proto_that_does_not_compile(start_daemon) -> None:
    daemon = start_daemon(PROJECTS / "badproto")
    assert daemon.proc.wait(30) == 2
    assert "broken.proto:6:" in daemon.logs()
