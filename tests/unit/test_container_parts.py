"""Container APIs, piece by piece: $(VAR) expansion, the engine command line, what a container
is started with, probes, the upstream client, validation and what a host cannot run."""

from __future__ import annotations

import asyncio
import textwrap
import types
from pathlib import Path

import pytest

from inferd.containers.engine import Engine, EngineRun, exec_argv, find_engine, kill_argv, run_argv
from inferd.containers.expand import expand
from inferd.containers.launch import ReplicaPlace, plan_container, split_gpus
from inferd.containers.probes import ProbeTarget, attempt, timing
from inferd.containers.proxy import ContainerProxy, _answer_fields, _request_facts
from inferd.containers.replica import ContainerReplica
from inferd.containers.upstream import UpstreamGone, UpstreamPool
from inferd.kinds import unsupported_reason
from inferd.kinds.containers import base_url
from inferd.metrics import Metrics
from inferd.settings import Settings
from inferd.spec import SpecError, load_project
from inferd.spec.model import ComputeSpec, ContainerSpec, ProbeSpec

# -- $(VAR) expansion, as Kubernetes -----------------------------------------------------------

ENV = {"PORT": "9000", "NAME": "web", "EMPTY": ""}


@pytest.mark.parametrize(("text", "expanded"), [
    ("$(PORT)", "9000"),
    ("--port=$(PORT)", "--port=9000"),
    ("$(NAME)-$(PORT)", "web-9000"),
    ("$(EMPTY)x", "x"),
    ("$(MISSING)", "$(MISSING)"),          # undefined: left as written
    ("$$(PORT)", "$(PORT)"),               # escaped
    ("$$$(PORT)", "$9000"),
    ("$$", "$"),
    ("a$", "a$"),                          # a trailing $ is kept
    ("$PORT", "$PORT"),                    # no parentheses: not a reference
    ("$(PORT", "$(PORT"),                  # unclosed: kept
    ("${PORT}", "${PORT}"),
    ("$()", "$()"),
    ("no refs", "no refs"),
])
def test_expansion(text, expanded):
    assert expand(text, ENV) == expanded


# -- the engine's command line ----------------------------------------------------------------

def engine_run(**changes) -> EngineRun:
    fields = {"container_name": "inferd-web-0-api-abc", "image": "me/api:1", "command": ["serve", "--port", "9000"],
              "args": ["-v"], "env": {"SECRET": "s3cr3t", "CORTEX_PORT": "9000"}, "project_dir": Path("/srv/proj"),
              "scratch_dir": Path("/state/scratch/web-0-x"), "labels": {"inferd.api": "web"}}
    fields.update(changes)
    return EngineRun(**fields)


def test_docker_argv_overrides_entrypoint_and_cmd():
    argv = run_argv(Engine("docker", "/usr/bin/docker"), engine_run(gpus=(0, 2), shm="1Gi"))
    assert argv == [
        "/usr/bin/docker", "run", "--rm", "--init", "--name", "inferd-web-0-api-abc", "--network", "host",
        "--sig-proxy=true", "--volume", "/srv/proj:/srv/proj:ro", "--volume", "/state/scratch/web-0-x:/mnt:rw",
        "--label", "inferd.api=web", "--env", "CORTEX_PORT", "--env", "SECRET", "--gpus", '"device=0,2"',
        "--shm-size", "1Gi", "--entrypoint", "serve", "me/api:1", "--port", "9000", "-v",
    ]
    assert "s3cr3t" not in " ".join(argv)  # values come from the CLI's environment, never the process list


def test_podman_argv_args_only_keeps_the_entrypoint():
    argv = run_argv(Engine("podman", "podman"), engine_run(command=None, args=["--workers", "2"], gpus=(1,), labels=None))
    assert "--entrypoint" not in argv
    assert argv[argv.index("me/api:1"):] == ["me/api:1", "--workers", "2"]
    assert argv[argv.index("--device"):argv.index("--device") + 2] == ["--device", "nvidia.com/gpu=1"]
    assert exec_argv(Engine("podman", "podman"), "c", ["cat", "/x"]) == ["podman", "exec", "c", "cat", "/x"]
    assert kill_argv(Engine("docker", "docker"), "c") == ["docker", "rm", "--force", "c"]


def test_no_engine_when_told_so(monkeypatch):
    assert find_engine("none") is None
    assert find_engine("surely-not-a-container-engine-here") is None


# -- what a container is started with ------------------------------------------------------------

def place(tmp_path: Path) -> ReplicaPlace:
    return ReplicaPlace("web", 41234, "http://127.0.0.1:8888", tmp_path, tmp_path / "scratch",
                        {"PATH": "/usr/bin", "CORTEX_PORT": "stale", "APP": "base"})


def test_local_process_launch(tmp_path):
    container = ContainerSpec(name="api", image="me/api:1", command=("python", "server.py", "$(CORTEX_PORT)"),
                              args=("--app=$(APP)", "--home=$(PATH)"), env={"APP": "spec"})
    launch = plan_container(container, place(tmp_path), (3,), None, 0, "n")
    assert launch.argv == ["python", "server.py", "41234", "--app=spec", "--home=$(PATH)"]  # declared env only
    assert launch.image_unused and launch.engine_name is None and launch.cwd == tmp_path
    env = launch.env
    assert (env["PATH"], env["APP"], env["CORTEX_PORT"], env["CORTEX_VERSION"]) == ("/usr/bin", "spec", "41234", "0.42.0")
    assert env["CORTEX_API_BASE_URL"] == "http://127.0.0.1:8888"
    assert env["CORTEX_SCRATCH_DIR"] == str(tmp_path / "scratch")
    assert env["CUDA_VISIBLE_DEVICES"] == "3"


def test_image_without_command_needs_an_engine(tmp_path):
    container = ContainerSpec(name="api", image="me/api:1")
    with pytest.raises(ValueError, match="no container engine"):
        plan_container(container, place(tmp_path), (), None, 0, "n")
    launch = plan_container(container, place(tmp_path), (), Engine("docker", "docker"), 2, "n")
    assert launch.engine_name == "inferd-web-2-api-n"
    assert launch.argv[-1] == "me/api:1" and "--entrypoint" not in launch.argv
    assert launch.env["CORTEX_SCRATCH_DIR"] == "/mnt" and launch.env["CORTEX_PORT"] == "41234"
    assert launch.exec_argv(Engine("docker", "docker"), ["true"]) == ["docker", "exec", "inferd-web-2-api-n", "true"]


def test_gpus_are_dealt_to_containers_in_order():
    containers = [ContainerSpec(name=n, image="", compute=ComputeSpec(gpu=g)) for n, g in (("a", 1), ("b", 0), ("c", 2))]
    assert split_gpus((4, 5, 6), containers) == [(4,), (), (5, 6)]


@pytest.mark.parametrize(("host", "url"), [("127.0.0.1", "http://127.0.0.1:8888"), ("0.0.0.0", "http://127.0.0.1:8888"),
                                           ("::", "http://[::1]:8888"), ("::1", "http://[::1]:8888"),
                                           ("localhost", "http://127.0.0.1:8888"), ("10.0.0.5", "http://10.0.0.5:8888")])
def test_chaining_base_url(host, url):
    assert base_url(Settings(host=host, port=8888)) == url


# -- probes ------------------------------------------------------------------------------------

def test_zero_timing_fields_take_kubernetes_defaults():
    assert timing(ProbeSpec(tcp_socket={"port": 1}, timeout_seconds=0, period_seconds=0, success_threshold=0,
                            failure_threshold=0)) == timing(ProbeSpec(tcp_socket={"port": 1}))
    assert timing(ProbeSpec(tcp_socket={"port": 1})).period == 10.0


async def serve(status: bytes) -> tuple[asyncio.AbstractServer, int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_probe_actions(tmp_path):
    async def scenario() -> None:
        ok, ok_port = await serve(b"302 Found")
        bad, bad_port = await serve(b"500 Oops")
        target = ProbeTarget(8080, ok_port, [], {"PATH": "/usr/bin:/bin"}, tmp_path)
        assert await attempt({"http_get": {"path": "/h", "port": 8080}}, target, 1) is None  # pod.port: the replica's
        assert "answered 500" in (await attempt({"http_get": {"path": "/h", "port": bad_port}}, target, 1) or "")
        assert await attempt({"tcp_socket": {"port": 8080}}, target, 1) is None
        ok.close()
        bad.close()
        await ok.wait_closed()
        assert await attempt({"tcp_socket": {"port": ok_port}}, target, 1) is not None
        assert await attempt({"exec": {"command": ["true"]}}, target, 1) is None
        failed = await attempt({"exec": {"command": ["sh", "-c", "echo nope; exit 4"]}}, target, 1)
        assert failed is not None and "exited with code 4: nope" in failed
        slow = await attempt({"exec": {"command": ["sleep", "5"]}}, target, 0.2)
        assert slow is not None and "still running after 0.2s" in slow

    asyncio.run(scenario())


# -- the upstream client -----------------------------------------------------------------------

def test_upstream_reads_close_delimited_chunked_and_head_answers():
    answers = [b"HTTP/1.0 200 OK\r\nx-a: 1\r\n\r\nuntil close",
               b"HTTP/1.1 200 OK\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
               b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n"]

    async def scenario() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answers.pop(0))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        pool = UpstreamPool(server.sockets[0].getsockname()[1])
        bodies = []
        for head_only in (False, False, True):
            conn = await pool.connect(head_only)
            conn.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            await conn.head
            parts = []
            while (piece := await conn.read_body()) is not None:
                parts.append(piece)
            bodies.append((conn.status, b"".join(parts)))
            pool.release(conn)
        assert bodies == [(200, b"until close"), (200, b"abcde"), (200, b"")]
        server.close()
        await server.wait_closed()
        with pytest.raises(UpstreamGone, match="cannot connect"):
            await pool.connect()

    asyncio.run(scenario())


# -- validation, and what this host cannot run ----------------------------------------------------

def load(tmp_path: Path, text: str):
    (tmp_path / "cortex.yaml").write_text(textwrap.dedent(text))
    return load_project(tmp_path)


def spec_errors(tmp_path: Path, text: str) -> str:
    with pytest.raises(SpecError) as caught:
        load(tmp_path, text)
    return str(caught.value)


def test_a_container_needs_an_image_or_a_command(tmp_path):
    text = spec_errors(tmp_path, """\
        - name: web
          kind: RealtimeAPI
          pod:
            containers:
              - name: api
                env: {A: b}
              - name: other
                image: ""
                command: [x]
              - name: probed
                command: [x]
                readiness_probe:
                  tcp_socket: {port: 15000}
                env: {CORTEX_PORT: "1"}
        """)
    assert "cortex.yaml:5: apis[0].pod.containers[0]: needs an image or a command" in text
    assert "cortex.yaml:8: apis[0].pod.containers[1].image: must be an image reference" in text
    assert "cortex.yaml:13: apis[0].pod.containers[2].readiness_probe.tcp_socket.port: must not be 15000" in text
    assert "cortex.yaml:14: apis[0].pod.containers[2].env.CORTEX_PORT: names starting with CORTEX_" in text


def test_no_image_with_a_command_is_a_local_process(tmp_path):
    api = load(tmp_path, """\
        - name: web
          kind: RealtimeAPI
          pod:
            containers:
              - name: api
                command: [python, server.py]
        """).api("web")
    assert api.pod.containers[0].image == "" and unsupported_reason(api) is None


def test_image_without_command_is_refused_without_an_engine(tmp_path, monkeypatch):
    project = load(tmp_path, """\
        - name: web
          kind: RealtimeAPI
          pod:
            containers:
              - name: api
                image: me/api:1
        - name: jobs
          kind: BatchAPI
          pod:
            containers:
              - name: api
                command: [run]
        """)
    monkeypatch.setattr("inferd.kinds.containers.find_engine", lambda: None)
    assert "image me/api:1 has no command, and no container engine" in (unsupported_reason(project.api("web")) or "")
    assert unsupported_reason(project.api("jobs")) is None  # a command: a local process, engine or not
    monkeypatch.setattr("inferd.kinds.containers.find_engine", lambda: Engine("podman", "podman"))
    assert unsupported_reason(project.api("web")) is None


# -- the proxy's header handling and replica choice ----------------------------------------------

def test_answer_fields_drop_hop_by_hop_date_and_what_connection_names():
    headers = [(b"content-type", b"application/json"), (b"date", b"then"), (b"connection", b"keep-alive, x-hop"),
               (b"x-hop", b"1"), (b"keep-alive", b"timeout=5"), (b"x-kept", b"yes"), (b"content-length", b"2")]
    assert b"".join(_answer_fields(headers, 200, 2)) == \
        b"content-type: application/json\r\nx-kept: yes\r\ncontent-length: 2\r\n"


@pytest.mark.parametrize(("status", "added"), [(200, b"content-length: 5\r\n"), (204, b""), (304, b"")])
def test_an_answer_that_came_chunked_gets_a_length_where_it_may_have_a_body(status, added):
    headers = [(b"transfer-encoding", b"chunked"), (b"x-a", b"1")]
    assert b"".join(_answer_fields(headers, status, 5)) == b"x-a: 1\r\n" + added


def test_request_facts_keep_the_headers_a_container_may_see():
    headers = [(b"host", b"h"), (b"x-request-id", b"req-1"), (b"content-length", b"2"), (b"expect", b"100-continue"),
               (b"connection", b"keep-alive, X-Drop"), (b"x-drop", b"1"), (b"te", b"trailers"),
               (b"x-cortex-request-id", b"forged"), (b"x-keep", b"kept")]
    rid, length, chunked, fields = _request_facts(headers)
    assert (rid, length, chunked) == (b"req-1", b"2", False)
    assert fields == b"host: h\r\nx-keep: kept\r\n"
    assert _request_facts([(b"x-request-id", b"bad id!"), (b"transfer-encoding", b"gzip, Chunked")])[:3] == \
        (None, None, True)


def test_the_proxy_chooses_the_least_busy_ready_replica_and_takes_turns_on_ties():
    async def scenario() -> None:
        replicas = [_replica(slot) for slot in range(3)]
        pool = type("Pool", (), {"workers": [None, *replicas]})()
        proxy = ContainerProxy("web", "/web", pool, 1024, Metrics())  # type: ignore[arg-type]
        assert {proxy._choose().slot for _ in range(6)} == {0, 1, 2}  # type: ignore[union-attr]
        replicas[0].in_flight = replicas[2].in_flight = 1
        assert {proxy._choose().slot for _ in range(6)} == {1}  # type: ignore[union-attr]
        replicas[1].state = "unready"
        assert {proxy._choose().slot for _ in range(6)} == {0, 2}  # type: ignore[union-attr]
        assert replicas[0].take_place() and replicas[0].in_flight == 2
        replicas[2].in_flight = replicas[2].capacity
        assert not replicas[2].take_place() and not replicas[1].take_place()  # full; not ready

    asyncio.run(scenario())


def _replica(slot: int) -> ContainerReplica:
    pod = types.SimpleNamespace(max_concurrency=2, max_queue_length=1, containers=[])
    replica = ContainerReplica("web", slot, pod, {}, (), Path("."), "", Path("."), None)  # type: ignore[arg-type]
    replica.state = "ready"
    return replica
