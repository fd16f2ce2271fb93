"""The pure parts of container AsyncAPI, BatchAPI and TaskAPI: what makes an async reply no
result, where a job's replicas find the job spec, and which workers each kind's jobs start."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

import pytest

from inferd.containers.engine import Engine
from inferd.containers.jobs import ContainerJobWorkers, async_reply_problem
from inferd.containers.launch import JobFiles, ReplicaPlace, plan_container
from inferd.containers.replica import ContainerReplica
from inferd.jobs.batch_launch import PythonJobWorkers
from inferd.kinds import get_kind
from inferd.kinds.base import ApiRuntime, KindContext
from inferd.kinds.batch import BatchKind
from inferd.metrics import Metrics
from inferd.settings import Settings
from inferd.spec import load_project
from inferd.spec.model import ContainerSpec, PodSpec
from inferd.worker.backend import Response


def reply(status: int, content_type: str | None, body: bytes) -> Response:
    return Response(status, [["Content-Type", content_type]] if content_type else [], body, None)


@pytest.mark.parametrize(("answer", "problem"), [
    (reply(200, "application/json", b'{"a": 1}'), None),
    (reply(200, "Application/JSON; charset=utf-8", b"[1]"), None),
    (reply(201, "application/json", b"{}"), "status 201, not 200"),
    (reply(200, "text/plain", b"hi"), "Content-Type text/plain, not application/json: 'hi'"),
    (reply(200, None, b"{}"), "Content-Type none, not application/json"),
    (reply(200, "application/jsonp", b"{}"), "Content-Type application/jsonp"),
    (reply(200, "application/json", b"{nope"), "not valid JSON (Expecting property name"),
])
def test_an_async_reply_is_a_result_only_as_200_json(answer: Response, problem: str | None) -> None:
    found = async_reply_problem(answer)
    assert found == problem if problem is None else problem in (found or "")


def test_a_job_replica_finds_the_job_spec_in_its_variables_and_in_the_engine(tmp_path: Path) -> None:
    spec_file = tmp_path / "jobs" / "j1" / "spec.json"
    place = ReplicaPlace("task", 41000, "http://127.0.0.1:8888", tmp_path, tmp_path / "scratch", {},
                         JobFiles(spec_file, ("CORTEX_TASK_SPEC", "CORTEX_JOB_SPEC")))
    local = plan_container(ContainerSpec(name="run", image="", command=("run",)), place, (), None, 0, "n")
    assert local.env["CORTEX_TASK_SPEC"] == local.env["CORTEX_JOB_SPEC"] == str(spec_file)
    engine = plan_container(ContainerSpec(name="run", image="me/task:1", command=("run",)), place, (),
                            Engine("podman", "podman"), 0, "n")
    assert engine.env["CORTEX_JOB_SPEC"] == "/cortex/spec/job.json"
    mounts = [engine.argv[i + 1] for i, arg in enumerate(engine.argv) if arg == "--volume"]
    assert f"{spec_file}:/cortex/spec/job.json:ro" in mounts


JOBS = """\
    - name: python
      kind: BatchAPI
      handler:
        type: python
        path: handler.py
    - name: batches
      kind: BatchAPI
      pod:
        containers:
          - name: api
            command: [python, server.py, $(CORTEX_PORT)]
    - name: task
      kind: TaskAPI
      pod:
        containers:
          - name: run
            command: [python, task.py]
    """


def test_each_generation_of_job_api_starts_its_own_workers(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text("class Handler:\n    def handle_batch(self, payload): pass\n")
    (tmp_path / "cortex.yaml").write_text(textwrap.dedent(JOBS))
    project = load_project(tmp_path)
    settings = Settings(project=tmp_path, state_dir=tmp_path / "state", port=9123)
    context = KindContext(settings, Metrics(), None, tmp_path / "protos")

    def workers(name: str) -> object:
        api = project.api(name)
        kind = get_kind(api.kind)
        assert isinstance(kind, BatchKind) and kind.unsupported(api) is None
        return kind.launch(ApiRuntime(api, "0" * 64, kind, None), context).workers

    python = workers("python")
    assert isinstance(python, PythonJobWorkers)
    assert python.env["CORTEX_API_BASE_URL"] == "http://127.0.0.1:9123"  # the chaining URL, as for every worker
    batches, task = workers("batches"), workers("task")
    assert isinstance(batches, ContainerJobWorkers) and not batches.one_shot
    assert batches.spec_envs == ("CORTEX_JOB_SPEC",)
    assert isinstance(task, ContainerJobWorkers) and task.one_shot
    assert task.spec_envs == ("CORTEX_TASK_SPEC", "CORTEX_JOB_SPEC")


# a one-shot replica's second container: slow to stop (2 s after SIGTERM), it records its pid first
SLOW_TO_STOP = ("import os, signal, sys, threading, time; open(sys.argv[1], 'w').write(str(os.getpid())); "
                "signal.signal(signal.SIGTERM, lambda *_: threading.Timer(2, os._exit, (0,)).start()); time.sleep(60)")


def test_a_replica_stopped_while_its_exit_watch_is_cancelled_mid_teardown_stops_every_container(tmp_path: Path) -> None:
    # a job's run cancels the replica's exit watch (its consumer ends) while one container's exit
    # is tearing the replica down; the teardown must go on, and ``stop`` must wait for it
    pid_file = tmp_path / "slow.pid"
    pod = PodSpec(containers=(
        ContainerSpec(name="quits", image="", command=(sys.executable, "-c", "import time; time.sleep(0.5); exit(1)")),
        ContainerSpec(name="slow", image="", command=(sys.executable, "-c", SLOW_TO_STOP, str(pid_file))),
    ))

    async def scenario() -> None:
        replica = ContainerReplica("job", 0, pod, dict(os.environ), (), tmp_path, "http://127.0.0.1:1", tmp_path / "scratch",
                                   None, job=JobFiles(tmp_path / "spec.json", ("CORTEX_TASK_SPEC",)), one_shot=True)
        await replica.start()
        exited = asyncio.get_running_loop().create_task(replica.wait_exit())
        while replica.state != "exited":  # "quits" exited: the teardown is SIGTERMing "slow"
            await asyncio.sleep(0.02)
        exited.cancel()
        await asyncio.gather(exited, return_exceptions=True)
        await replica.stop(5.0)
        pid = int(pid_file.read_text())
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
        assert list((tmp_path / "scratch").iterdir()) == []

    asyncio.run(scenario())
