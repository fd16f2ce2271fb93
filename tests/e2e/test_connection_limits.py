"""Slow, idle, oversized and too many HTTP connections: each is answered or closed by the
connection protocol (inferd/http/protocol.py) while normal requests keep being served."""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import PROJECTS, RunningDaemon
from tests.e2e.test_liveness import wait_new_ready_worker, worker_pid

LIMITS = {"INFERD_HEADER_TIMEOUT": "1", "INFERD_BODY_TIMEOUT": "1", "INFERD_KEEPALIVE_TIMEOUT": "1"}


def connect(daemon: RunningDaemon) -> socket.socket:
    return socket.create_connection(("127.0.0.1", daemon.port), timeout=10)


def read_answer(sock: socket.socket) -> tuple[int, dict, bytes]:
    """Status, JSON body and the raw bytes, reading until the server closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, (json.loads(body) if body else {}), head


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    running = RunningDaemon(PROJECTS / "realtime", tmp_path_factory.mktemp("limits"),
                            env={**LIMITS, "INFERD_MAX_BODY_SIZE": str(1024 * 1024)})
    running.wait_ready(["echo"])
    yield running
    running.stop()
    assert "Exception in ASGI application" not in running.logs()


def test_silent_connection_is_closed_after_header_timeout(daemon: RunningDaemon) -> None:
    with connect(daemon) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server, with nothing to answer
        assert time.monotonic() - started < 8


def test_slow_headers_get_408(daemon: RunningDaemon) -> None:
    with connect(daemon) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\n")
        status, body, _ = read_answer(sock)
    assert status == 408
    assert "headers not received within 1s" in body["error"]


def test_trickled_headers_do_not_extend_the_header_timeout(daemon: RunningDaemon) -> None:
    """slowloris: one byte every 0.3s keeps the connection busy, never under the 1s bound."""
    sent = 0
    with connect(daemon) as sock:
        for byte in b"GET /-/healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 30:
            if select.select([sock], [], [], 0.3)[0]:
                break  # the server answered
            sock.send(bytes([byte]))
            sent += 1
        status, body, _ = read_answer(sock)
    assert status == 408
    assert sent < 15  # about 1s worth of bytes, not the whole trickle


def test_stalled_body_gets_408(daemon: RunningDaemon) -> None:
    with connect(daemon) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"a\":")
        status, body, _ = read_answer(sock)
    assert status == 408
    assert "body stalled" in body["error"]
    assert daemon.client.post("/echo", json={"a": 1}).status_code == 200


def test_idle_keepalive_connection_is_closed(daemon: RunningDaemon) -> None:
    with connect(daemon) as sock:
        sock.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        time.sleep(0.3)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.settimeout(4)  # uvicorn's own default would keep it 5s
        assert sock.recv(100) == b""  # keepalive_timeout (1s) later


def test_huge_header_gets_431_without_buffering_it(daemon: RunningDaemon) -> None:
    before = rss_kib(daemon.proc.pid)
    answers: list[int] = []

    def send_huge_header() -> None:
        with connect(daemon) as sock:
            try:
                sock.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Big: ")
                for _ in range(64):
                    sock.sendall(b"a" * (1024 * 1024))
            except OSError:
                pass  # the server stopped reading after its answer and the linger time
            answers.append(read_answer(sock)[0])

    threads = [threading.Thread(target=send_huge_header) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == [431] * 4
    # four 64 MiB headers; without the bound the daemon held them all (81 MB -> 758 MB)
    assert rss_kib(daemon.proc.pid) - before < 64 * 1024
    response = daemon.client.get("/echo", headers={"x-big": "a" * 70_000})
    assert response.status_code == 431
    assert "65536" in response.json()["error"]


def test_oversized_body_413_reaches_a_client_that_sends_it_all(daemon: RunningDaemon) -> None:
    """urllib (like requests) sends the whole body before reading: it must see the JSON 413."""
    request = urllib.request.Request(f"{daemon.url}/echo", data=b"x" * (32 * 1024 * 1024), method="POST",
                                     headers={"content-type": "application/octet-stream"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 413
    assert "1048576" in json.loads(caught.value.read())["error"]


def test_malformed_request_gets_json_400(daemon: RunningDaemon) -> None:
    with connect(daemon) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n")
        status, body, head = read_answer(sock)
    assert status == 400
    assert b"application/json" in head
    assert "malformed HTTP request" in body["error"]


def _low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_more_idle_connections_than_the_bound(start_daemon) -> None:
    """300 idle connections against a 256-file limit and a bound of 50: requests are still
    served and a killed worker is still restarted (before: "Too many open files")."""
    daemon = start_daemon(PROJECTS / "realtime", env={"INFERD_MAX_CONNECTIONS": "50"}, preexec_fn=_low_file_limit)
    daemon.wait_ready(["echo"])
    idle = [connect(daemon) for _ in range(300)]
    try:
        time.sleep(1)
        assert daemon.client.post("/echo", json={"n": 1}).status_code == 200
        old = worker_pid(daemon, "echo")
        os.kill(old, signal.SIGKILL)
        wait_new_ready_worker(daemon, "echo", old)
        assert daemon.client.post("/echo", json={"n": 2}).status_code == 200
        open_fds = len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))
        assert open_fds < 256
    finally:
        for sock in idle:
            sock.close()
    assert "Too many open files" not in daemon.logs()


def test_busy_connections_beyond_the_bound_get_503(start_daemon) -> None:
    daemon = start_daemon(PROJECTS / "realtime", env={"INFERD_MAX_CONNECTIONS": "10"})
    daemon.wait_ready(["echo"])
    busy = []
    try:
        for _ in range(10):  # each mid-request, so none can be displaced
            sock = connect(daemon)
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: localhost\r\n")
            busy.append(sock)
        time.sleep(0.5)
        with connect(daemon) as extra:
            extra.sendall(b"GET /-/healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, body, _ = read_answer(extra)
        assert status == 503
        assert "limit of 10 open connections" in body["error"]
    finally:
        for sock in busy:
            sock.close()
    time.sleep(0.5)
    assert daemon.client.get("/-/healthz").status_code == 200
