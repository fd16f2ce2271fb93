"""RealtimeAPI over HTTP against a real daemon, real workers, real sockets (httpx and curl)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import (
    PROJECTS,
    RunningDaemon,
    metrics_once,
    pid_alive,
    shared_daemon,
)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    yield from shared_daemon("realtime", tmp_path_factory)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-s", "-S", *args], capture_output=True, text=True, timeout=30)


# -- verbs and payloads --------------------------------------------------------------------------

def test_post_json_reaches_handler_with_config_query_and_headers(daemon: RunningDaemon) -> None:
    response = daemon.client.post("/echo?lang=en", json={"text": "hi"}, headers={"x-test-header": "v1"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"payload": {"type": "dict", "value": {"text": "hi"}}, "query": {"lang": "en"},
                               "header": "v1", "greeting": "hello"}
    assert response.headers["x-request-id"]


def test_post_with_curl(daemon: RunningDaemon) -> None:
    result = curl("-X", "POST", f"{daemon.url}/echo", "-H", "Content-Type: application/json", "-d", '{"n": 1}')
    assert json.loads(result.stdout)["payload"] == {"type": "dict", "value": {"n": 1}}


def test_every_verb(daemon: RunningDaemon) -> None:
    assert daemon.client.put("/echo", content=b"raw").json() == {"verb": "put", "payload": {"type": "bytes", "size": 3, "head": "726177"}}
    assert daemon.client.patch("/echo", json=[1, 2]).json() == {"verb": "patch", "payload": {"type": "list", "value": [1, 2]}}
    assert daemon.client.delete("/echo").json() == {"verb": "delete"}
    assert daemon.client.get("/echo?a=1").json()["query"] == {"a": "1"}


def test_text_payload_honours_charset(daemon: RunningDaemon) -> None:
    body = "café".encode("latin-1")
    response = daemon.client.post("/echo", content=body, headers={"content-type": "text/plain; charset=latin-1"})
    assert response.json()["payload"] == {"type": "str", "value": "café"}
    utf8 = daemon.client.post("/echo", content="naïve".encode(), headers={"content-type": "text/plain"})
    assert utf8.json()["payload"] == {"type": "str", "value": "naïve"}


def test_octet_stream_payload_is_bytes(daemon: RunningDaemon) -> None:
    response = daemon.client.post("/echo", content=bytes(range(10)), headers={"content-type": "application/octet-stream"})
    assert response.json()["payload"] == {"type": "bytes", "size": 10, "head": bytes(range(10)).hex()}


def test_multipart_file_upload_with_curl(daemon: RunningDaemon, tmp_path: Path) -> None:
    upload = tmp_path / "image.bin"
    upload.write_bytes(b"\x89PNG fake image" + bytes(5000))
    result = curl("-X", "POST", f"{daemon.url}/echo", "-F", f"file=@{upload}", "-F", "label=cat")
    payload = json.loads(result.stdout)["payload"]
    assert payload["type"] == "form"
    assert payload["fields"]["label"] == "cat"
    assert payload["fields"]["file"]["filename"] == "image.bin"
    assert payload["fields"]["file"]["size"] == upload.stat().st_size


def test_urlencoded_form(daemon: RunningDaemon) -> None:
    response = daemon.client.post("/echo", data={"a": "1", "b": "two"})
    assert response.json()["payload"] == {"type": "form", "fields": {"a": "1", "b": "two"}}


# -- responses -----------------------------------------------------------------------------------

def test_str_bytes_and_response_results(daemon: RunningDaemon) -> None:
    text = daemon.client.post("/echo?mode=str", json={})
    assert (text.status_code, text.headers["content-type"], text.text) == (200, "text/plain; charset=utf-8", "plain text")
    raw = daemon.client.post("/echo?mode=bytes", json={})
    assert (raw.headers["content-type"], raw.content) == ("application/octet-stream", b"\x00\x01\x02")
    custom = daemon.client.post("/echo?mode=response", json={})
    assert custom.status_code == 201
    assert custom.headers["x-custom"] == "yes"
    assert custom.headers["content-type"].startswith("text/csv")
    assert custom.text == "custom"


def test_handler_exception_is_500_json_and_worker_keeps_serving(daemon: RunningDaemon) -> None:
    pid_before = daemon.client.get("/echo").json()["pid"]
    response = daemon.client.post("/echo?mode=raise", json={})
    assert response.status_code == 500
    assert response.json() == {"error": "ValueError: handler was asked to fail", "api": "echo"}
    assert daemon.client.get("/echo").json()["pid"] == pid_before
    events = [e for e in daemon.log_events() if e.get("event") == "handler_exception"]
    assert events and "ValueError" in events[-1]["exception"] and events[-1]["api"] == "echo"
    assert events[-1]["request_id"] == response.headers["x-request-id"]


def test_http_exception_keeps_its_status(daemon: RunningDaemon) -> None:
    response = daemon.client.post("/echo?mode=http_error", json={})
    assert response.status_code == 418
    assert response.json()["error"] == "short and stout"


def test_unserialisable_result_is_500_naming_the_problem(daemon: RunningDaemon) -> None:
    response = daemon.client.post("/echo?mode=unserialisable", json={})
    assert response.status_code == 500
    assert "not JSON-serialisable" in response.json()["error"]


def test_callback_runs_after_response(daemon: RunningDaemon, tmp_path: Path) -> None:
    marker = tmp_path / "callback.txt"
    response = daemon.client.post("/echo", params={"mode": "callback", "file": str(marker)}, json={})
    assert response.json() == {"callback": "scheduled"}
    assert not marker.exists()  # the callback only starts once the response has gone out
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.read_text() == "callback ran"


def test_callback_exception_is_logged_not_returned(daemon: RunningDaemon) -> None:
    response = daemon.client.post("/echo?mode=bad_callback", json={})
    assert response.status_code == 200 and response.json() == {"ok": True}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(e.get("event") == "callback_exception" for e in daemon.log_events()):
            break
        time.sleep(0.05)
    event = next(e for e in daemon.log_events() if e.get("event") == "callback_exception")
    assert "callback exploded" in event["exception"]


# -- client errors -------------------------------------------------------------------------------

def test_malformed_json_is_400_naming_the_parse_error(daemon: RunningDaemon) -> None:
    response = daemon.client.post("/echo", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["api"] == "echo"
    assert "malformed JSON body" in response.json()["error"]


def test_unknown_path_is_404(daemon: RunningDaemon) -> None:
    response = daemon.client.post("/nope", json={})
    assert response.status_code == 404
    assert "/nope" in response.json()["error"]


def test_missing_verb_is_405_with_allow(daemon: RunningDaemon) -> None:
    response = daemon.client.delete("/v1/pair")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST, GET"


def test_body_over_limit_is_413(tmp_path: Path, start_daemon) -> None:
    small = start_daemon(PROJECTS / "realtime", env={"INFERD_MAX_BODY_SIZE": "1024"})
    small.wait_ready(["echo"])
    response = small.client.post("/echo", content=b"x" * 2048, headers={"content-type": "application/octet-stream"})
    assert response.status_code == 413
    assert "1024" in response.json()["error"]
    # chunked upload without Content-Length is cut off while streaming
    chunked = small.client.post("/echo", content=iter([b"y" * 600, b"y" * 600]))
    assert chunked.status_code == 413
    assert small.client.post("/echo", content=b"x" * 1000).status_code == 200


def test_options_lists_the_verbs_and_no_cors(daemon: RunningDaemon) -> None:
    response = daemon.client.options("/echo", headers={"origin": "https://any.example"})
    assert response.status_code == 204
    assert response.headers["allow"] == "POST, GET, PUT, PATCH, DELETE"
    assert not [name for name in response.headers if name.startswith("access-control-")]


# -- configuration reaching the worker --------------------------------------------------------------

def test_dotenv_and_gpu_hiding_visible_in_handler(daemon: RunningDaemon) -> None:
    env = daemon.client.get("/echo").json()["env"]
    assert env == {"SECRET_WORD": "swordfish", "QUOTED": "two words", "CUDA_VISIBLE_DEVICES": "",
                   "NVIDIA_VISIBLE_DEVICES": "void", "CORTEX_KIND": "RealtimeAPI",
                   "CORTEX_API_BASE_URL": daemon.url}  # http://127.0.0.1:<the port it bound>: chaining


def test_worker_cwd_is_the_project(daemon: RunningDaemon) -> None:
    assert daemon.client.get("/echo").json()["cwd"] == str(PROJECTS / "realtime")


def test_processes_per_replica_gives_separate_workers(daemon: RunningDaemon) -> None:
    info = daemon.api("pair")
    assert info["desired_workers"] == 2 and info["ready_workers"] == 2
    pids = {w["pid"] for w in info["workers"]}
    assert len(pids) == 2
    assert all(pid_alive(pid) for pid in pids)
    with ThreadPoolExecutor(4) as pool:
        seen = set(pool.map(lambda _: daemon.client.post("/v1/pair", json={"seconds": 0.3}).json()["pid"], range(4)))
    assert seen == pids


# -- admission and batching ------------------------------------------------------------------------

def test_over_max_replica_concurrency_is_503(daemon: RunningDaemon) -> None:
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(daemon.client.post, "/narrow", json={"seconds": 1.5})
        time.sleep(0.4)
        rejected = daemon.client.post("/narrow", json={})
        assert slow.result().status_code == 200
    assert rejected.status_code == 503
    assert rejected.json()["api"] == "narrow"
    assert "max_replica_concurrency" in rejected.json()["error"]
    assert daemon.client.post("/narrow", json={}).status_code == 200


def test_server_side_batching_gathers_concurrent_requests(daemon: RunningDaemon) -> None:
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda i: daemon.client.post("/batched", json={"i": i}).json(), range(4)))
    assert [r["echo"] for r in replies] == [{"i": i} for i in range(4)]
    assert {r["batch_size"] for r in replies} == {4}
    assert len({r["batch"] for r in replies}) == 1


def test_lone_request_is_sent_after_batch_interval(daemon: RunningDaemon) -> None:
    started = time.monotonic()
    reply = daemon.client.post("/batched", json={"alone": True}).json()
    assert reply["batch_size"] == 1
    assert time.monotonic() - started >= 0.25


def test_wrong_length_batch_fails_every_request(daemon: RunningDaemon) -> None:
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda i: daemon.client.post("/batched", json={"wrong_length": i == 0}), range(4)))
    assert {r.status_code for r in replies} == {500}
    assert all("batch of" in r.json()["error"] for r in replies)


# -- metrics and daemon routes -----------------------------------------------------------------------

def test_daemon_routes(daemon: RunningDaemon) -> None:
    assert daemon.client.get("/-/healthz").json() == {"status": "ok"}
    assert daemon.client.get("/-/ready").json() == {"ready": True}
    apis = {a["name"]: a for a in daemon.client.get("/-/apis").json()["apis"]}
    assert set(apis) == {"echo", "batched", "narrow", "pair", "libuser"}
    assert apis["pair"]["endpoint"] == "/v1/pair"
    assert apis["echo"]["workers"][0]["gpus"] == []
    assert apis["echo"]["kind"] == "RealtimeAPI"


def test_metrics_after_traffic(daemon: RunningDaemon) -> None:
    daemon.client.post("/echo?mode=metric", json={})
    text = metrics_once(daemon, "echo_calls_total")
    assert 'inferd_requests_total{api="echo",code="200"}' in text
    assert 'echo_calls_total{api_name="echo",mode="metric"} 1.0' in text
    assert 'echo_gauge{api_name="echo"} 4.5' in text


# -- worker death ------------------------------------------------------------------------------------

def test_killed_worker_fails_its_request_with_503_and_is_replaced(daemon: RunningDaemon) -> None:
    old_pid = daemon.client.get("/echo").json()["pid"]
    response = daemon.client.post("/echo?mode=exit", json={})
    assert response.status_code == 503
    assert response.json()["api"] == "echo"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = daemon.client.get("/echo")
        if reply.status_code == 200:
            break
        time.sleep(0.1)
    assert reply.status_code == 200
    assert reply.json()["pid"] != old_pid
    assert not pid_alive(old_pid)
    assert daemon.api("echo")["restarts"] >= 1


def test_sigkill_of_worker_is_replaced(daemon: RunningDaemon) -> None:
    pid = daemon.client.get("/v1/pair").json()["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = {w["pid"] for w in daemon.api("pair")["workers"] if w["state"] == "ready"}
        if len(pids) == 2 and pid not in pids:
            break
        time.sleep(0.1)
    assert len(pids) == 2 and pid not in pids
    assert daemon.client.post("/v1/pair", json={}).status_code == 200
    exited = [e for e in daemon.log_events() if e.get("event") == "worker_exited" and e.get("pid") == pid]
    assert exited and "killed by SIGKILL (out of memory?)" in exited[0]["error"], exited


def test_python_path_is_importable(daemon: RunningDaemon) -> None:
    assert daemon.client.get("/libuser").json() == {"word": "from python_path"}


def test_huge_print_lines_and_bad_metrics_do_not_hurt_the_worker(daemon: RunningDaemon) -> None:
    pid = daemon.client.get("/echo").json()["pid"]
    for _ in range(5):  # enough to fill a pipe nobody reads
        assert daemon.client.post("/echo?mode=long_print", json={}, timeout=10).json() == {"printed": True}
    assert daemon.client.post("/echo?mode=bad_metric", json={}).status_code == 200
    assert daemon.client.post("/echo?mode=bad_metric", json={}).status_code == 200
    assert daemon.client.get("/echo").json()["pid"] == pid
    assert any(e.get("event") == "user_metric_rejected" for e in daemon.log_events())
    assert any("[line cut]" in e.get("line", "") for e in daemon.log_events())


def test_cortex_info_route(daemon: RunningDaemon) -> None:
    assert daemon.client.get("/echo/info").json() == {}


def test_oversized_headers_get_431_and_never_reach_the_worker(daemon: RunningDaemon) -> None:
    """A 1 MiB Content-Type once overflowed the worker protocol's metadata cap and killed the
    worker with everything in flight on it; the daemon now refuses it first."""
    before = daemon.api("echo")
    huge = "application/json; x=" + "a" * (1 << 20)
    for headers in ({"content-type": huge}, {"x-filler": "b" * (70 << 10)}):
        response = daemon.client.post("/echo", content=b"{}", headers=headers)
        assert response.status_code == 431
        assert "max_header_size" in response.json()["error"]
    # the query string travels in the same frame: httpx refuses such a URL itself, curl sends it
    result = curl("-X", "POST", "-w", "\n%{http_code}", f"{daemon.url}/echo?q={'c' * (40 << 10)}",
                  "-H", "Content-Type: application/json", "-H", f"x-filler: {'d' * (30 << 10)}", "-d", "{}")
    body, status = result.stdout.rsplit("\n", 1)
    assert status == "431" and "max_header_size" in json.loads(body)["error"]
    after = daemon.api("echo")
    assert after["restarts"] == before["restarts"]
    assert [w["pid"] for w in after["workers"]] == [w["pid"] for w in before["workers"]]
    assert daemon.client.post("/echo", json={"n": 1}).status_code == 200


def test_apis_lists_what_each_api_answers(daemon: RunningDaemon) -> None:
    assert daemon.api("echo")["verbs"] == ["POST", "GET", "PUT", "PATCH", "DELETE"]
    assert daemon.api("batched")["verbs"] == ["POST"]
