"""The BatchAPI and TaskAPI runners, worker side (tests/projects/batch and tests/projects/task):
``batch.run`` / ``batch.complete`` / ``task.run`` calls answered by one ``End`` each.

The main flows go through a real ``python -m inferd.worker`` over its socket pair, with the job
spec file named in ``CORTEX_JOB_SPEC``/``CORTEX_TASK_SPEC`` as the daemon does; the corner cases
drive the runner in this process, as the worker child does (a fake channel)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from inferd.worker import protocol
from inferd.worker.handler_class import HandlerLoadError, constructor_problem
from inferd.worker.process import WorkerProcess
from inferd.worker.protocol import INVALID_ARGUMENT, UNIMPLEMENTED
from inferd.worker.runners.base import Runner, WorkerContext
from inferd.worker.runners.batch import BatchRunner, deep_merge
from inferd.worker.runners.task import TaskRunner

PROJECTS = Path(__file__).resolve().parents[1] / "projects"
BATCH, TASK = PROJECTS / "batch", PROJECTS / "task"
BATCH_RUNNER = "inferd.worker.runners.batch:BatchRunner"
TASK_RUNNER = "inferd.worker.runners.task:TaskRunner"
JOB_ID = "69d6f4f2a1b3c0d5"


# -- deep_merge --------------------------------------------------------------------------------

def test_deep_merge_merges_nested_mappings_and_the_override_wins() -> None:
    base = {"a": 1, "nested": {"x": 1, "y": {"p": 1, "q": 1}}, "list": [1, 2], "gone": {"k": 1}}
    override = {"b": 2, "nested": {"y": {"q": 2}, "z": 3}, "list": [3], "gone": None}
    assert deep_merge(base, override) == {"a": 1, "b": 2, "nested": {"x": 1, "y": {"p": 1, "q": 2}, "z": 3},
                                          "list": [3], "gone": None}


def test_deep_merge_replaces_a_value_with_a_mapping_and_a_mapping_with_a_value() -> None:
    assert deep_merge({"k": "scalar"}, {"k": {"x": 1}}) == {"k": {"x": 1}}
    assert deep_merge({"k": {"x": 1}}, {"k": "scalar"}) == {"k": "scalar"}
    assert deep_merge({}, {}) == {} and deep_merge({"a": 1}, {}) == {"a": 1} and deep_merge({}, {"a": 1}) == {"a": 1}


def test_deep_merge_changes_neither_argument_and_shares_nothing_with_them() -> None:
    base = {"nested": {"x": [1]}, "only_base": {"y": 1}}
    override = {"nested": {"z": {"w": 1}}, "only_override": {"v": [2]}}
    before = json.dumps([base, override])
    merged = deep_merge(base, override)
    assert json.dumps([base, override]) == before
    merged["nested"]["x"].append(2)
    merged["nested"]["z"]["w"] = 9
    merged["only_base"]["y"] = 9
    merged["only_override"]["v"].append(3)
    assert json.dumps([base, override]) == before


# -- a real worker process ---------------------------------------------------------------------

def write_spec(tmp_path: Path, name: str = "batch.json", **fields: Any) -> Path:
    spec = {"job_id": JOB_ID, "api_name": "b", "kind": "BatchAPI", "workers": 1, "timeout": None,
            "sqs_dead_letter_queue": None, "api_id": "api-1", "sqs_url": "", "total_batch_count": 3,
            "start_time": "2024-01-01T00:00:00Z", **fields}
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return path


def start_worker(runner: str, project: Path, file: str, tmp_path: Path, config: dict[str, Any],
                 spec_env: dict[str, str], logs: list[dict[str, Any]]) -> WorkerProcess:
    init = protocol.Init("b", runner, str(project), file, config=config)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join(sys.path), **spec_env}
    return WorkerProcess("b", 0, init, env, str(tmp_path), (), lambda metric: None,
                         lambda line: logs.append(json.loads(line)))


async def call(worker: WorkerProcess, method: str, body: dict[str, Any] | None = None) -> tuple[protocol.End, Any]:
    stream = worker.open_stream(protocol.Open(0, "rid", method, body=b"" if body is None else json.dumps(body).encode()))
    reply = await asyncio.wait_for(stream.single(), 30)
    assert stream.end is not None
    return stream.end, None if reply is None else json.loads(reply)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_batch_worker_runs_each_batch_with_the_merged_config_and_job_spec_and_completes_once(tmp_path: Path) -> None:
    output, seen, marker = tmp_path / "items.jsonl", tmp_path / "seen.json", tmp_path / "complete"
    submitted = {"output": str(output), "seen": str(seen), "complete_marker": str(marker),
                 "fail_batches": ["b-2"], "nested": {"b": 2, "deep": {"y": 2}}}
    spec = write_spec(tmp_path, config=submitted)
    api_config = {"nested": {"a": 1, "b": 1, "deep": {"x": 1}}, "keep": "api", "output": "overridden"}
    logs: list[dict[str, Any]] = []

    async def scenario() -> None:
        worker = start_worker(BATCH_RUNNER, BATCH, "handler.py", tmp_path, api_config,
                              {"CORTEX_JOB_SPEC": str(spec)}, logs)
        await worker.start()
        assert await worker.wait_ready(), worker.error
        assert worker.info == {"job_id": JOB_ID, "handle_batch": ["payload", "batch_id"], "on_job_complete": True}

        end, body = await call(worker, "batch.run", {"batch_id": "b-1", "payload": [1, {"x": "y"}, "z"]})
        assert (end.code, end.details, sorted(body)) == (protocol.OK, "", ["seconds"])
        assert isinstance(body["seconds"], float) and body["seconds"] >= 0

        end, body = await call(worker, "batch.run", {"batch_id": "b-2", "payload": [4]})
        assert (end.code, end.details) == (protocol.INTERNAL, "ValueError: batch b-2 refused")
        assert body["error"] == "ValueError: batch b-2 refused" and body["seconds"] >= 0
        assert body["traceback"].startswith("Traceback (most recent call last):")
        assert 'raise ValueError(f"batch {batch_id} refused")' in body["traceback"]
        assert body["traceback"].rstrip().endswith("ValueError: batch b-2 refused")

        # the worker goes on; two batches sent at once run one after the other, in order
        (end3, _), (end4, _) = await asyncio.gather(
            call(worker, "batch.run", {"batch_id": "b-3", "payload": [{"sleep": 0.3}]}),
            call(worker, "batch.run", {"batch_id": "b-4", "payload": [5]}))
        assert end3.code == end4.code == protocol.OK

        end, body = await call(worker, "batch.complete")
        assert (end.code, body["ran"]) == (protocol.OK, True)
        await worker.stop(10)
        assert worker.error is None

    asyncio.run(scenario())
    assert json.loads(seen.read_text()) == {
        "config": {**submitted, "nested": {"a": 1, "b": 2, "deep": {"x": 1, "y": 2}}, "keep": "api"},
        "job_spec": json.loads(spec.read_text())}
    processed = lines(output)
    assert [(e["batch_id"], e["item"]) for e in processed if "item" in e] == [
        ("b-1", 1), ("b-1", {"x": "y"}), ("b-1", "z"), ("b-3", {"sleep": 0.3}), ("b-4", 5)]
    times = {(e["batch_id"], e["event"]): e["at"] for e in processed if "event" in e}
    assert times["b-3", "end"] <= times["b-4", "start"]
    assert marker.read_text() == f"{JOB_ID}\n"
    printed = [e for e in logs if e.get("event") == "worker_output" and e.get("line", "").startswith("handling")]
    assert [(e["line"], e["job_id"], e["batch_id"]) for e in printed] == [
        ("handling b-1", JOB_ID, "b-1"), ("handling b-3", JOB_ID, "b-3"), ("handling b-4", JOB_ID, "b-4")]
    failed = [e for e in logs if e.get("event") == "handle_batch_failed"]
    assert [(e["job_id"], e["batch_id"], e["error"]) for e in failed] == [(JOB_ID, "b-2", "ValueError: batch b-2 refused")]


def test_a_failing_on_job_complete_ends_with_its_traceback(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, config={"output": str(tmp_path / "out"), "complete_fails": True})
    logs: list[dict[str, Any]] = []

    async def scenario() -> tuple[protocol.End, Any]:
        worker = start_worker(BATCH_RUNNER, BATCH, "handler.py", tmp_path, {}, {"CORTEX_JOB_SPEC": str(spec)}, logs)
        await worker.start()
        assert await worker.wait_ready(), worker.error
        try:
            return await call(worker, "batch.complete")
        finally:
            await worker.stop(10)

    end, body = asyncio.run(scenario())
    assert (end.code, end.details) == (protocol.INTERNAL, f"RuntimeError: cannot finish {JOB_ID}")
    assert "in on_job_complete" in body["traceback"] and body["error"] == end.details
    assert [e["job_id"] for e in logs if e.get("event") == "on_job_complete_failed"] == [JOB_ID]


def test_a_constructor_parameter_batch_does_not_give_is_a_clear_load_error(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, config={})

    async def scenario() -> WorkerProcess:
        worker = start_worker(BATCH_RUNNER, BATCH, "tf_client.py", tmp_path, {}, {"CORTEX_JOB_SPEC": str(spec)}, [])
        await worker.start()
        assert not await worker.wait_ready()
        await worker.wait_exit()
        return worker

    worker = asyncio.run(scenario())
    assert worker.error == ("HandlerLoadError: Handler.__init__: unexpected parameter(s) tensorflow_client; "
                            "allowed: config, job_spec, metrics_client")
    assert worker.init_traceback is not None and "HandlerLoadError" in worker.init_traceback


def test_a_task_worker_runs_the_task_with_the_merged_config(tmp_path: Path) -> None:
    output = tmp_path / "task.json"
    spec = write_spec(tmp_path, "task.json", kind="TaskAPI", config={"output": str(output), "deep": {"b": 2}})
    logs: list[dict[str, Any]] = []

    async def scenario() -> tuple[protocol.End, Any]:
        worker = start_worker(TASK_RUNNER, TASK, "task.py", tmp_path, {"deep": {"a": 1, "b": 1}, "keep": 1},
                              {"CORTEX_TASK_SPEC": str(spec)}, logs)
        await worker.start()
        assert await worker.wait_ready(), worker.error
        assert worker.info == {"job_id": JOB_ID}
        try:
            return await call(worker, "task.run")
        finally:
            await worker.stop(10)

    end, body = asyncio.run(scenario())
    assert (end.code, sorted(body)) == (protocol.OK, ["seconds"])
    assert json.loads(output.read_text()) == {"output": str(output), "deep": {"a": 1, "b": 2}, "keep": 1}
    assert [e["job_id"] for e in logs if e.get("line") == "task ran"] == [JOB_ID]


def test_a_raising_task_ends_with_its_traceback_and_a_sleeping_one_can_be_killed(tmp_path: Path) -> None:
    raising = write_spec(tmp_path, "raise.json", kind="TaskAPI", config={"action": "raise"})
    sleeping = write_spec(tmp_path, "sleep.json", kind="TaskAPI", config={"action": "sleep", "seconds": 60})

    async def scenario() -> tuple[tuple[protocol.End, Any], protocol.End, int | None]:
        failing = start_worker(TASK_RUNNER, TASK, "task.py", tmp_path, {}, {"CORTEX_TASK_SPEC": str(raising)}, [])
        slow = start_worker(TASK_RUNNER, TASK, "task.py", tmp_path, {}, {"CORTEX_TASK_SPEC": str(sleeping)}, [])
        await asyncio.gather(failing.start(), slow.start())
        assert await failing.wait_ready() and await slow.wait_ready()
        failed = await call(failing, "task.run")
        await failing.stop(10)
        stream = slow.open_stream(protocol.Open(0, "rid", "task.run"))
        await asyncio.sleep(0.2)
        slow.kill()  # the daemon's timeout
        code = await slow.wait_exit()
        await asyncio.wait_for(stream.single(), 5)
        assert stream.end is not None
        return failed, stream.end, code

    (end, body), killed, code = asyncio.run(scenario())
    assert (end.code, end.details) == (protocol.INTERNAL, "ValueError: the task failed on purpose")
    assert 'raise ValueError("the task failed on purpose")' in body["traceback"]
    assert killed.code == protocol.UNAVAILABLE and code == -9


# -- in this process ---------------------------------------------------------------------------

class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def error(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    warning = info = debug = error


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Loading a handler registers its module; the spec variables are the test's own."""
    saved = sys.modules.get("handler")
    for name in ("CORTEX_JOB_SPEC", "CORTEX_TASK_SPEC"):
        monkeypatch.delenv(name, raising=False)
    yield
    if saved is None:
        sys.modules.pop("handler", None)
    else:
        sys.modules["handler"] = saved


class InProcess:
    """A runner loaded as the worker child loads it, its frames collected."""

    def __init__(self, runner: type[Runner], project: Path, file: str, config: dict[str, Any] | None = None) -> None:
        self.sent: list[protocol.Message] = []
        self.log = Log()
        context = WorkerContext(api="b", loop=asyncio.get_running_loop(), send=self.sent.append,
                                send_threadsafe=self.sent.append, pool=ThreadPoolExecutor(1), inline=True,
                                max_body_size=1 << 20, log=self.log, track=lambda future: None,
                                on_callback=lambda *a: None)
        self.runner = runner(context, {})
        init = protocol.Init("b", "", str(project), file, config=config or {})
        self.info = self.runner.bind(self.runner.load_handler(init, project))

    def open(self, call_id: int, method: str, body: Any = None) -> None:
        data = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        self.runner.on_message(protocol.Open(call_id, "rid", method, body=data))

    async def end(self, call_id: int) -> tuple[protocol.End, Any]:
        for _ in range(2000):
            for message in self.sent:
                if isinstance(message, protocol.End) and message.id == call_id:
                    return message, json.loads(message.body) if message.has_reply else None
            await asyncio.sleep(0.005)
        raise AssertionError(f"no End for call {call_id}")

    def close(self) -> None:
        thread = getattr(self.runner, "thread", None)
        if thread is not None:
            thread.shutdown(wait=False)


def run_in_process(runner: type[Runner], project: Path, file: str, calls: list[tuple[str, Any]],
                   config: dict[str, Any] | None = None) -> list[tuple[protocol.End, Any]]:
    """Load ``file``, make each call after the previous one ended: [(End, its body)]."""
    async def scenario() -> list[tuple[protocol.End, Any]]:
        worker = InProcess(runner, project, file, config)
        try:
            ends = []
            for n, (method, body) in enumerate(calls, 1):
                worker.open(n, method, body)
                ends.append(await worker.end(n))
            return ends
        finally:
            worker.close()
    return asyncio.run(scenario())


def test_sys_exit_in_handle_batch_fails_the_batch_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORTEX_JOB_SPEC", str(write_spec(tmp_path, config={"output": str(tmp_path / "out")})))
    [(exited, body), (after, _)] = run_in_process(BatchRunner, BATCH, "handler.py", [
        ("batch.run", {"batch_id": "b-1", "payload": [1, {"exit": 3}]}),
        ("batch.run", {"batch_id": "b-2", "payload": [2]})])
    assert (exited.code, exited.details) == (protocol.INTERNAL, "SystemExit: handle_batch called sys.exit(3)")
    assert body["traceback"].rstrip().endswith("SystemExit: 3")
    assert after.code == protocol.OK


def test_a_cancel_stops_a_batch_not_yet_started_but_a_running_sync_one_ends_with_its_outcome(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "out"
    monkeypatch.setenv("CORTEX_JOB_SPEC", str(write_spec(tmp_path, config={"output": str(output)})))

    async def scenario() -> list[tuple[protocol.End, Any]]:
        worker = InProcess(BatchRunner, BATCH, "handler.py")
        try:
            worker.open(1, "batch.run", {"batch_id": "b-1", "payload": [{"sleep": 0.3}]})
            worker.open(2, "batch.run", {"batch_id": "b-2", "payload": [2]})
            await asyncio.sleep(0.05)
            for call_id in (1, 2):
                worker.runner.on_message(protocol.Cancel(call_id))
            return [await worker.end(1), await worker.end(2)]
        finally:
            worker.close()

    [(running, _), (queued, body)] = asyncio.run(scenario())
    assert running.code == protocol.OK
    assert (queued.code, body) == (protocol.CANCELLED, {"cancelled": True})
    assert [e["batch_id"] for e in lines(output) if "item" in e] == ["b-1"]


def test_an_async_handle_batch_runs_on_the_loop_and_stops_at_an_await_when_cancelled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "out"
    monkeypatch.setenv("CORTEX_JOB_SPEC", str(write_spec(tmp_path, config={"output": str(output)})))

    async def scenario() -> list[tuple[protocol.End, Any]]:
        worker = InProcess(BatchRunner, BATCH, "async_handler.py")
        try:
            worker.open(1, "batch.run", {"batch_id": "b-1", "payload": [1]})
            first = await worker.end(1)
            worker.open(2, "batch.run", {"batch_id": "b-2", "payload": [{"sleep": 30}, 2]})
            await asyncio.sleep(0.05)
            worker.runner.on_message(protocol.Cancel(2))
            return [first, await worker.end(2)]
        finally:
            worker.close()

    [(done, _), (cancelled, body)] = asyncio.run(scenario())
    assert done.code == protocol.OK and (cancelled.code, body) == (protocol.CANCELLED, {"cancelled": True})
    assert [(e["batch_id"], e["item"]) for e in lines(output)] == [("b-1", 1)]


@pytest.mark.parametrize("body, error", [
    (b"{not json", "batch.run: the body is not JSON: "),
    ({"batch_id": "b-1"}, 'batch.run: the body must be {"batch_id": <string>, "payload": <list>}'),
    ({"batch_id": 7, "payload": []}, 'batch.run: the body must be {"batch_id": <string>, "payload": <list>}'),
    ({"batch_id": "b-1", "payload": {"a": 1}}, 'batch.run: the body must be {"batch_id": <string>, "payload": <list>}'),
])
def test_a_malformed_batch_body_is_an_invalid_argument_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           body: Any, error: str) -> None:
    monkeypatch.setenv("CORTEX_JOB_SPEC", str(write_spec(tmp_path, config={"output": str(tmp_path / "out")})))
    [(end, reply)] = run_in_process(BatchRunner, BATCH, "handler.py", [("batch.run", body)])
    assert end.code == INVALID_ARGUMENT and end.details.startswith(error)
    assert reply == {"error": end.details, "traceback": ""}
    assert not (tmp_path / "out").exists()


def test_an_unknown_method_is_unimplemented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORTEX_JOB_SPEC", str(write_spec(tmp_path, config={"output": str(tmp_path / "out")})))
    [(end, reply)] = run_in_process(BatchRunner, BATCH, "handler.py", [("task.run", None)])
    assert (end.code, end.details, reply) == (UNIMPLEMENTED, "method task.run is not one of batch.run, batch.complete", None)


def test_a_minimal_handler_gets_only_the_payload_and_completes_without_on_job_complete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "out"
    monkeypatch.setenv("CORTEX_JOB_SPEC", str(write_spec(tmp_path, config=None)))
    [(ran, _), (complete, body)] = run_in_process(BatchRunner, BATCH, "minimal.py", [
        ("batch.run", {"batch_id": "b-1", "payload": [1, 2]}), ("batch.complete", None)],
        config={"output": str(output)})
    assert ran.code == complete.code == protocol.OK and body["ran"] is False
    assert output.read_text() == "[1, 2]\n"


@pytest.mark.parametrize("file, error", [
    ("no_handle_batch.py", "Handler does not define handle_batch, which a BatchAPI requires"),
    ("tf_client.py", "Handler.__init__: unexpected parameter(s) tensorflow_client; allowed: config, job_spec, metrics_client"),
])
def test_handlers_batch_cannot_serve_fail_to_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  file: str, error: str) -> None:
    monkeypatch.setenv("CORTEX_JOB_SPEC", str(write_spec(tmp_path, config={})))
    with pytest.raises(HandlerLoadError) as raised:
        run_in_process(BatchRunner, BATCH, file, [])
    assert str(raised.value) == error


def test_a_missing_or_unreadable_job_spec_fails_to_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def load_error() -> str:
        with pytest.raises(HandlerLoadError) as raised:
            run_in_process(BatchRunner, BATCH, "minimal.py", [], config={"output": "x"})
        return str(raised.value)

    assert load_error().startswith("CORTEX_JOB_SPEC is not set: this worker runs for one job")
    monkeypatch.setenv("CORTEX_JOB_SPEC", str(tmp_path / "absent.json"))
    assert load_error().startswith(f"cannot read the job spec {tmp_path / 'absent.json'} (CORTEX_JOB_SPEC): ")
    (tmp_path / "list.json").write_text("[]")
    monkeypatch.setenv("CORTEX_JOB_SPEC", str(tmp_path / "list.json"))
    assert load_error() == f"the job spec {tmp_path / 'list.json'} (CORTEX_JOB_SPEC) is not a JSON object"
    monkeypatch.setenv("CORTEX_JOB_SPEC", str(write_spec(tmp_path, config=[1])))
    assert load_error() == "the job spec's config is not a JSON object"


def test_validate_allows_job_spec_for_batch_handlers_only() -> None:
    assert constructor_problem(BATCH / "handler.py", "BatchAPI") is None
    assert constructor_problem(BATCH / "handler.py") == (
        "Handler.__init__ asks for job_spec; inferd passes only config, metrics_client, model_client, module_proto_pb2, proto_module_pb2")
    assert constructor_problem(BATCH / "tf_client.py", "BatchAPI") == (
        "Handler.__init__ asks for tensorflow_client; inferd passes only config, job_spec, metrics_client")


@pytest.mark.parametrize("config, code, error", [
    ({"action": "exit", "code": 0}, protocol.OK, ""),
    ({"action": "exit", "code": None}, protocol.OK, ""),
    ({"action": "exit", "code": 3}, protocol.INTERNAL, "SystemExit: Task called sys.exit(3)"),
    ({"action": "exit", "code": "bye"}, protocol.INTERNAL, "SystemExit: Task called sys.exit('bye')"),
    ({"action": "interrupt"}, protocol.INTERNAL, "KeyboardInterrupt"),
])
def test_a_task_that_exits_or_raises_a_base_exception_reports_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 config: dict[str, Any], code: int, error: str) -> None:
    monkeypatch.setenv("CORTEX_TASK_SPEC", str(write_spec(tmp_path, kind="TaskAPI", config=config)))
    [(end, body)] = run_in_process(TaskRunner, TASK, "task.py", [("task.run", None)])
    assert (end.code, end.details) == (code, error)
    if code == protocol.OK:
        assert sorted(body) == ["seconds"]
    else:
        assert body["error"] == error and "in __call__" in body["traceback"]


def test_an_async_task_with_metrics_client_runs_and_the_task_spec_variable_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "out.json"
    monkeypatch.setenv("CORTEX_TASK_SPEC", str(write_spec(tmp_path, "task.json", kind="TaskAPI",
                                                          config={"output": str(output)})))
    monkeypatch.setenv("CORTEX_JOB_SPEC", str(tmp_path / "absent.json"))

    async def scenario() -> tuple[protocol.End, list[protocol.Message]]:
        worker = InProcess(TaskRunner, TASK, "metrics_task.py")
        try:
            worker.open(1, "task.run")
            end, _ = await worker.end(1)
            return end, worker.sent
        finally:
            worker.close()

    end, sent = asyncio.run(scenario())
    assert end.code == protocol.OK and json.loads(output.read_text()) == {"async": True}
    assert [m.name for m in sent if isinstance(m, protocol.Metric)] == ["task_runs"]


@pytest.mark.parametrize("file, error", [
    ("no_config.py", "Task.__call__ must take config: def __call__(self, config)"),
    ("no_task.py", "task/no_task.py: class Task is not defined"),
])
def test_definitions_a_task_cannot_run_fail_to_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    file: str, error: str) -> None:
    monkeypatch.setenv("CORTEX_TASK_SPEC", str(write_spec(tmp_path, kind="TaskAPI", config={})))
    with pytest.raises(HandlerLoadError) as raised:
        run_in_process(TaskRunner, TASK, file, [])
    assert str(raised.value).endswith(error)
