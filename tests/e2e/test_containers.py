"""Container RealtimeAPIs (Cortex's container generation) with real processes: the user's own
web server (tests/projects/containers/server.py) run as local processes behind inferd's proxy."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import INTERNAL_FAULTS, PROJECTS, RunningDaemon, pid_alive, raw_answers
from tests.e2e.test_hostile_requests import BODIES, HEADER_NAMES, HEADER_VALUES, METHODS, exchange


class Daemon(RunningDaemon):
    early_statuses: list[int]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("containers")
    project = tmp / "project"
    shutil.copytree(PROJECTS / "containers", project)
    # what a daemon killed with SIGKILL leaves: a replica's scratch directory, swept at the next start
    stale = tmp / "d" / "state" / "scratch" / "web-0-killed"
    stale.mkdir(parents=True)
    (stale / "model.bin").write_bytes(b"x" * 1024)
    running = Daemon(project, tmp / "d", env={"INFERD_CONTAINER_ENGINE": "none"})
    # requests sent while the replicas start: they wait for readiness, none reaches a server early
    early: list[int] = []
    with httpx.Client(base_url=running.url, timeout=30) as client:
        for _ in range(3):
            try:
                early.append(client.get("/web/early").status_code)
            except httpx.TransportError:
                time.sleep(0.05)
    running.early_statuses = early
    pids: list[int] = []
    try:
        running.wait_ready()
        yield running
        pids = [c["pid"] for a in running.client.get("/-/apis").json()["apis"] for w in a["workers"]
                for c in w.get("containers", [])]
    finally:
        running.stop()
    faults = [e for e in running.log_events() if e.get("event") in INTERNAL_FAULTS or "Traceback" in json.dumps(e)]
    assert not faults, faults[:3]
    # nothing is left behind: no process, no scratch directory (pre_stop's markers sit beside them)
    assert pids and not [pid for pid in pids if pid_alive(pid)]
    scratch = running.state_dir / "scratch"
    assert [p.name for p in scratch.iterdir() if p.is_dir()] == []


def call(daemon: Daemon, method: str, path: str, **kwargs: object) -> httpx.Response:
    return daemon.client.request(method, path, **kwargs)  # type: ignore[arg-type]


def workers(daemon: Daemon, api: str) -> list[dict]:
    return daemon.api(api)["workers"]


def test_scratch_left_by_a_killed_daemon_is_swept_at_start(daemon: Daemon) -> None:
    assert not (daemon.state_dir / "scratch" / "web-0-killed").exists()
    (swept,) = [e for e in daemon.log_events() if e.get("event") == "scratch_swept"]
    assert swept["count"] == 1


def test_requests_before_readiness_wait_for_it(daemon: Daemon) -> None:
    assert daemon.early_statuses and set(daemon.early_statuses) == {200}
    reply = call(daemon, "GET", "/web/x").json()
    assert reply["early"] == 0  # the server saw no request before its /healthz passed


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_verb_sub_path_and_query(daemon: Daemon, method: str) -> None:
    body = b"" if method in ("GET", "OPTIONS") else b"payload"
    reply = call(daemon, method, "/web/a/b/?x=1&y=%20z", content=body,
                 headers={"X-Request-ID": "req-1", "Connection": "keep-alive, X-Drop", "X-Drop": "1", "TE": "trailers",
                          "X-Keep": "kept"})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-from-container"] == "yes"
    data = reply.json()
    assert (data["method"], data["path"], data["query"], data["body"]) == (method, "/a/b/", "x=1&y=%20z", body.decode())
    assert data["headers"]["x-cortex-request-id"] == "req-1"
    assert data["headers"]["x-keep"] == "kept"
    assert "x-drop" not in data["headers"] and "te" not in data["headers"]


def test_endpoint_itself_is_root_and_head_has_no_body(daemon: Daemon) -> None:
    data = call(daemon, "GET", "/web").json()
    assert data["path"] == "/" and len(data["headers"]["x-cortex-request-id"]) == 32
    head = call(daemon, "HEAD", "/web/h")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0


def test_environment_and_command_expansion(daemon: Daemon) -> None:
    data = call(daemon, "GET", "/web/env").json()
    assert data["argv"] == [str(data["port"]), "--name=web", "--escaped=$(APP_NAME)", "--missing=$(NOPE)"]
    env = data["env"]
    assert env["CORTEX_PORT"] == str(data["port"]) and env["CORTEX_VERSION"] == "0.42.0"
    assert env["CORTEX_API_BASE_URL"] == daemon.url and env["APP_NAME"] == "web"
    assert Path(env["CORTEX_SCRATCH_DIR"]).parent == daemon.state_dir / "scratch"
    assert data["cwd"] == str(daemon.project)
    # the pod's second container shares the replica's scratch directory
    assert (Path(env["CORTEX_SCRATCH_DIR"]) / "sidecar").is_file()


def test_two_replicas_on_their_own_ports(daemon: Daemon) -> None:
    ports = {w["port"] for w in workers(daemon, "web")}
    assert len(ports) == 2 and 8080 not in ports
    seen = {call(daemon, "GET", "/web/who").json()["port"] for _ in range(6)}
    assert seen == ports


def test_streamed_response_and_request(daemon: Daemon) -> None:
    started = time.monotonic()
    arrivals = []
    with daemon.client.stream("GET", "/web/stream?n=5") as reply:
        assert reply.status_code == 200 and "content-length" not in reply.headers
        for line in reply.iter_lines():
            if line:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 5
    assert arrivals[0] < 0.6 and arrivals[-1] > 0.7  # pieces pass as the container writes them

    def pieces() -> Iterator[bytes]:
        for i in range(50):
            yield f"piece {i};".encode()

    echoed = call(daemon, "POST", "/web/echo", content=pieces(), headers={"Content-Type": "text/plain"})
    assert echoed.status_code == 200 and echoed.text == "".join(f"piece {i};" for i in range(50))
    big = os.urandom(3 << 20)
    assert call(daemon, "PUT", "/web/echo", content=big).content == big


def test_pipelined_requests_are_answered_in_order_and_close_is_kept(daemon: Daemon) -> None:
    host = daemon.url.removeprefix("http://")
    requests = b"".join(f"{verb} /web/p{i} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n{extra}\r\nn{i}".encode()
                        for i, (verb, extra) in enumerate([("POST", ""), ("PUT", ""), ("POST", "Connection: close\r\n")]))
    answers, closed = raw_answers(daemon, requests, close=True)
    assert [(status, json.loads(body)["path"], json.loads(body)["body"]) for status, _, body in answers] == [
        (b"HTTP/1.1 200 OK", f"/p{i}", f"n{i}") for i in range(3)]
    for _, headers, body in answers:
        assert headers["content-length"] == str(len(body)) and "date" in headers and "x-request-id" not in headers
        assert re.fullmatch(r"[0-9a-f]{32}", json.loads(body)["headers"]["x-cortex-request-id"])
    assert closed  # after the answer to the request that asked for it, not the first


def test_a_chunked_answer_that_arrives_whole_gets_a_length(daemon: Daemon) -> None:
    reply = call(daemon, "GET", "/web/chunked")
    assert reply.status_code == 200 and reply.json() == {"chunked": True}
    assert reply.headers["content-length"] == str(len(reply.content)) and "transfer-encoding" not in reply.headers


def test_an_answer_whose_head_and_body_come_apart_is_sent_whole(daemon: Daemon) -> None:
    reply = call(daemon, "GET", "/web/split")
    assert reply.status_code == 200 and reply.json() == {"split": True, "filler": "x" * 200}
    assert reply.headers["content-length"] == str(len(reply.content))
    cut = call(daemon, "GET", "/web/split?cut=1")  # the container hangs up halfway through the body
    assert cut.status_code == 502 and cut.json()["api"] == "web", cut.text
    assert "before it answered in full" in cut.json()["error"]
    assert call(daemon, "GET", "/web/after-cut").status_code == 200


def test_a_client_gone_before_the_answer_frees_its_place(daemon: Daemon) -> None:
    host, port = daemon.url.removeprefix("http://").split(":")
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"GET /web/slow?s=0.3 HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    assert wait_for(lambda: sum(w["in_flight"] for w in workers(daemon, "web")) == 0)
    before = metric_count(daemon, "web", "200")
    assert [call(daemon, "GET", "/web/after").status_code for _ in range(4)] == [200] * 4
    assert metric_count(daemon, "web", "200") >= before + 4  # direct answers are counted as every other


CONTAINER_PATHS = st.sampled_from([b"/web", b"/web/", b"/web/a/b?x=1&x=2", b"/web/%ff%2e%2e", b"/web/echo",
                                   b"/web/chunked", b"/web//x", b"/tcp/echo"])


@st.composite
def proxied_requests(draw: st.DrawFn) -> bytes:
    headers = [(b"Host", b"localhost")] + draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6))
    head = draw(METHODS) + b" " + draw(CONTAINER_PATHS) + b" HTTP/1.1\r\n"
    return head + b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n" + draw(BODIES)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=proxied_requests())
def test_hostile_requests_to_a_container_get_a_well_formed_answer(daemon: Daemon, raw: bytes) -> None:
    """Whatever a client sends through the proxy: an answer that is HTTP, below 500 unless the
    container itself failed it (502 naming the API), and the replicas are still the same."""
    before = sorted(w["pid"] for w in workers(daemon, "web"))
    answer = exchange(daemon, raw)
    if answer:
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b"\r\n", 1)[0].split(b" ")[1])
        assert status < 500 or (status == 502 and json.loads(body)["api"] in ("web", "tcp")), answer[:500]
    assert sorted(w["pid"] for w in workers(daemon, "web")) == before


def metric_count(daemon: Daemon, api: str, code: str) -> float:
    text = daemon.client.get("/-/metrics").text
    found = re.search(rf'^inferd_requests_total{{api="{api}",code="{code}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def test_tcp_socket_probe_and_an_unused_image(daemon: Daemon) -> None:
    assert call(daemon, "GET", "/tcp/x").json()["path"] == "/x"
    notes = [e for e in daemon.log_events() if e.get("event") == "container_image_not_used"]
    assert len(notes) == 1 and notes[0]["image"] == "python:3.11-slim"


def test_exec_probe_and_admission(daemon: Daemon) -> None:
    assert call(daemon, "GET", "/exec/x").json()["early"] == 0
    # max_concurrency 1 + max_queue_length 1: a third request at once is refused
    statuses: list[int] = []

    def slow() -> None:
        statuses.append(httpx.get(f"{daemon.url}/exec/slow?s=1.5", timeout=30).status_code)

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    refused = call(daemon, "GET", "/exec/slow?s=0")
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 200]
    assert refused.status_code == 503 and refused.json()["api"] == "exec" and "at capacity" in refused.json()["error"]


def wait_for(check, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_liveness_failure_restarts_the_replica(daemon: Daemon) -> None:
    before = workers(daemon, "live")[0]["pid"]
    assert call(daemon, "GET", "/live/sick").status_code == 200
    api = wait_for(lambda: (a := daemon.api("live"))["restarts"] >= 1 and a["state"] == "ready" and a)
    assert "liveness probe of container api failed 2 times" in api["last_error"]
    assert api["workers"][0]["pid"] != before and not pid_alive(before)
    assert call(daemon, "GET", "/live/x").status_code == 200


def test_container_killed_mid_request(daemon: Daemon) -> None:
    (before,) = workers(daemon, "tcp")
    pid = before["pid"]
    result: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: result.append(httpx.get(f"{daemon.url}/tcp/slow?s=10", timeout=30)))
    thread.start()
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    thread.join()
    assert result[0].status_code == 502
    assert result[0].json()["api"] == "tcp" and "tcp" in result[0].json()["error"]
    # the container is restarted in place: a request meanwhile waits for it instead of failing
    assert call(daemon, "GET", "/tcp/again").status_code == 200
    api = wait_for(lambda: (a := daemon.api("tcp"))["state"] == "ready" and a["workers"][0]["pid"] != pid and a)
    assert "killed by SIGKILL" in api["last_error"]
    (after,) = api["workers"]
    assert after["port"] == before["port"] and after["containers"][0]["restarts"] == 1


def test_a_sidecar_that_exits_is_restarted_alone(daemon: Daemon) -> None:
    replica = workers(daemon, "web")[0]
    api, sidecar = replica["containers"]
    os.kill(sidecar["pid"], signal.SIGKILL)

    def restarted() -> dict | None:
        now = next(w for w in workers(daemon, "web") if w["slot"] == replica["slot"])
        return now if now["state"] == "ready" and now["containers"][1]["restarts"] == 1 else None

    now = wait_for(restarted)
    assert now["port"] == replica["port"] and now["containers"][0]["pid"] == api["pid"]  # the server kept running
    assert now["containers"][1]["pid"] != sidecar["pid"] and now["containers"][0]["restarts"] == 0
    assert {call(daemon, "GET", "/web/who").status_code for _ in range(4)} == {200}


def test_reload_under_load_drops_nothing(daemon: Daemon) -> None:
    old_ports = {w["port"] for w in workers(daemon, "web")}
    stop = threading.Event()
    failures: list[str] = []
    names: set[str] = set()

    def load() -> None:
        with httpx.Client(base_url=daemon.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    reply = client.post("/web/load", content=b"x")
                    if reply.status_code != 200:
                        failures.append(f"{reply.status_code} {reply.text}")
                    else:
                        names.add(reply.json()["argv"][1])
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    config = daemon.project / "cortex.yaml"
    config.write_text(config.read_text().replace("APP_NAME: web", "APP_NAME: web2", 1))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: {w["port"] for w in workers(daemon, "web")}.isdisjoint(old_ports)
             and daemon.api("web")["ready_workers"] == 2, timeout=30)
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == []
    assert names == {"--name=web", "--name=web2"}
    # the old replicas ran pre_stop, and their scratch directories are gone
    scratch = daemon.state_dir / "scratch"
    assert all((scratch / f"prestop-{port}").exists() for port in old_ports)
    dirs = [p for p in scratch.iterdir() if p.is_dir() and p.name.startswith("web-")]
    assert len(dirs) == 2
