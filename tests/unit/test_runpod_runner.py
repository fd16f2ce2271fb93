"""The RunPod "direct" runner, worker side: unchanged RunPod worker files (tests/projects/runpod)
answering ``runpod.job`` calls with exactly the result the SDK would POST to job-done.

Most tests drive the runner in this process, as the worker child does (a fake channel, the real
SDK); the last ones go through a real ``python -m inferd.worker`` over its socket pair."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import runpod.serverless
from runpod.serverless.modules import rp_progress
from runpod.serverless.modules.rp_logger import RunPodLogger

from inferd.jobs.runpod_dispatch import reply_message
from inferd.worker import protocol
from inferd.worker.handler_class import HandlerLoadError
from inferd.worker.process import WorkerProcess
from inferd.worker.runners.base import WorkerContext
from inferd.worker.runners.runpod import RunPodRunner

PROJECT = Path(__file__).resolve().parents[1] / "projects" / "runpod"
RUNNER = "inferd.worker.runners.runpod:RunPodRunner"
ERROR_KEYS = ["error_type", "error_message", "error_traceback", "hostname", "worker_id", "runpod_version"]


class Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def error(self, event: str, **kw: Any) -> None:
        self.events.append(event)

    warning = info = debug = error


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What running a worker file changes in a process, put back after each test."""
    monkeypatch.chdir(PROJECT)  # the worker child sets the cwd before loading
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])
    monkeypatch.setattr(runpod.serverless, "start", runpod.serverless.start)
    monkeypatch.setattr(runpod.serverless, "progress_update", runpod.serverless.progress_update)
    monkeypatch.setattr(rp_progress, "progress_update", rp_progress.progress_update)
    monkeypatch.setattr(RunPodLogger(), "level", RunPodLogger().level)  # --rp_log_level sets it
    for name in ("RUNPOD_POD_HOSTNAME", "RUNPOD_POD_ID"):
        monkeypatch.delenv(name, raising=False)
    yield


class InProcess:
    """A RunPodRunner loaded as the worker child loads it, its frames collected."""

    def __init__(self, file: str, args: list[str] | None = None) -> None:
        self.sent: list[protocol.Message] = []
        self.tasks: list[asyncio.Future[Any]] = []
        self.log = Log()
        context = WorkerContext(api="rp", loop=asyncio.get_running_loop(), send=self.sent.append,
                                send_threadsafe=self.sent.append, pool=ThreadPoolExecutor(1), inline=True,
                                max_body_size=1 << 20, log=self.log, track=self.tasks.append,
                                on_callback=lambda *a: None)
        self.runner = RunPodRunner(context, {"args": args or []})
        init = protocol.Init("rp", RUNNER, str(PROJECT), file)
        self.info = self.runner.bind(self.runner.load_handler(init, PROJECT))

    def open(self, call_id: int, job: dict[str, Any]) -> None:
        body = json.dumps(job).encode()
        self.runner.on_message(protocol.Open(call_id, str(job.get("id")), "runpod.job", body=body))

    async def end(self, call_id: int) -> dict[str, Any]:
        for _ in range(1000):
            for message in self.sent:
                if isinstance(message, protocol.End) and message.id == call_id:
                    assert message.has_reply and message.code == protocol.OK
                    return without_seconds(reply_message(message.body))
            await asyncio.sleep(0.005)
        raise AssertionError(f"no End for call {call_id}")

    def chunks(self, call_id: int) -> list[dict[str, Any]]:
        return [json.loads(m.body) for m in self.sent if isinstance(m, protocol.Chunk) and m.id == call_id]

    def close(self) -> None:
        if self.runner.job_thread is not None:
            self.runner.job_thread.stop()


def without_seconds(body: dict[str, Any]) -> dict[str, Any]:
    """An End body without its ``seconds`` (time in the handler; absent when inferd itself failed the job)."""
    seconds = body.pop("seconds", 0.0)
    assert isinstance(seconds, float) and seconds >= 0
    return body


def jobs(file: str, *inputs: Any, args: list[str] | None = None) -> tuple[dict[str, Any], list[tuple[list[Any], Any]]]:
    """Load ``file``, run one job per input one after the other: (Ready info, [(chunks, End body)])."""
    async def scenario() -> tuple[dict[str, Any], list[tuple[list[Any], Any]]]:
        worker = InProcess(file, args)
        try:
            answers = []
            for n, job_input in enumerate(inputs, 1):
                worker.open(n, {"id": f"job-{n}", "input": job_input})
                end = await worker.end(n)
                answers.append((worker.chunks(n), end))
            return worker.info, answers
        finally:
            worker.close()
    return asyncio.run(scenario())


def error_info(error: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(error)
    assert list(info) == ERROR_KEYS
    assert (info["hostname"], info["worker_id"], info["runpod_version"]) == ("unknown", "unknown", "1.12.0")
    return info


# -- results -----------------------------------------------------------------------------------

def test_a_sync_handler_gets_the_job_unchanged_in_its_own_thread_with_the_file_as_main() -> None:
    job = {"id": "job-7", "input": {"prompt": "hi"}, "webhook": "https://example.invalid/hook"}

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        worker = InProcess("sync.py", ["--greeting", "hello", "--rp_log_level", "ERROR"])
        try:
            worker.open(1, job)
            return worker.info, await worker.end(1)
        finally:
            worker.close()
    info, end = asyncio.run(scenario())
    assert info == {"handler_kind": "sync", "concurrency": 1, "return_aggregate_stream": False, "refresh_worker": False}
    # the SDK's own flags are taken out of argv by start(), the file's own stay
    assert end == {"result": {"output": {"id": "job-7", "keys": ["id", "input", "webhook"], "input": {"prompt": "hi"},
                                         "argv": ["--greeting", "hello"], "cwd": "runpod", "main": "sync.py is __main__",
                                         "thread": "runpod-jobs"}}}


@pytest.mark.parametrize(("returned", "result"), [
    ("text", {"output": "text"}),
    ([1, 2], {"output": [1, 2]}),
    (None, {"output": None}),
    (False, {"output": False}),
    ({}, {}),
    ({"refresh_worker": True, "kept": 1}, {"output": {"kept": 1}, "stopPod": True}),
    ({"refresh_worker": True}, {"stopPod": True}),
])
def test_return_values_become_the_sdk_job_done_result(returned: Any, result: dict[str, Any]) -> None:
    _, [(chunks, end)] = jobs("sync.py", {"return": returned})
    assert chunks == [] and end == {"result": result}


def test_a_returned_error_fails_the_job_and_the_rest_is_output() -> None:
    _, answers = jobs("error_dict.py", {}, {"only_error": True}, {"ok": True})
    assert [end for _, end in answers] == [
        {"result": {"output": {"hint": "send 0.7"}, "error": "temperature must be a float"}},
        {"result": {"error": "nothing to do"}},
        {"result": {"output": {"fine": True}}},
    ]


def test_an_exception_is_the_sdk_error_json() -> None:
    _, [(_, end)] = jobs("raises.py", {"name": "cats"})
    assert list(end["result"]) == ["error"]
    info = error_info(end["result"]["error"])
    assert info["error_type"] == "<class 'ValueError'>" and info["error_message"] == "cannot handle cats"
    assert "raises.py" in info["error_traceback"] and "ValueError: cannot handle cats" in info["error_traceback"]


def test_refresh_worker_in_the_config_stops_the_pod_after_every_job_even_failed() -> None:
    info, answers = jobs("refresh.py", {}, {"fail": True})
    assert info["refresh_worker"] is True
    assert answers[0][1] == {"result": {"output": "done", "stopPod": True}}
    failed = answers[1][1]["result"]
    assert failed["stopPod"] is True and error_info(failed["error"])["error_message"] == "failed once"


def test_an_output_that_is_not_json_fails_the_job_naming_why() -> None:
    _, [(_, end)] = jobs("sync.py", {"not_json": True})
    info = error_info(end["result"]["error"])
    assert info["error_message"] == ("the handler's output is not JSON-serialisable: TypeError: "
                                     "Object of type object is not JSON serializable")


# -- streams -----------------------------------------------------------------------------------

def test_generator_items_stream_as_they_come_and_the_result_is_empty_without_aggregation() -> None:
    info, [(chunks, end)] = jobs("generator.py", {"count": 3})
    assert info["handler_kind"] == "generator" and info["return_aggregate_stream"] is False
    assert chunks == [{"stream": "item 0"}, {"stream": "item 1"}, {"stream": "item 2"}]
    assert end == {"result": {"output": []}}


def test_aggregation_returns_every_item_too() -> None:
    info, [(chunks, end)] = jobs("aggregate.py", {"text": "a b c"})
    assert info == {"handler_kind": "generator", "concurrency": 1, "return_aggregate_stream": True, "refresh_worker": False}
    assert chunks == [{"stream": "A"}, {"stream": "B"}, {"stream": "C"}]
    assert end == {"result": {"output": ["A", "B", "C"]}}


def test_a_raising_generator_and_an_error_item_end_the_stream_failed() -> None:
    _, [(raised_chunks, raised), (error_chunks, errored), (bad_chunks, bad)] = jobs(
        "generator.py", {"raise_at": 1}, {"error_at": 2}, {"not_json_at": 1})
    assert raised_chunks == [{"stream": "item 0"}]
    error = raised["result"]["error"]
    assert list(raised["result"]) == ["error"] and error.startswith("handler: generator broke \ntraceback: Traceback")
    assert "RuntimeError: generator broke" in error
    assert error_chunks == [{"stream": "item 0"}, {"stream": "item 1"}]
    assert errored == {"result": {"error": "{'message': 'bad item', 'code': 7}"}}
    assert bad_chunks == [{"stream": "item 0"}]
    assert error_info(bad["result"]["error"])["error_message"].startswith("a streamed item is not JSON-serialisable")


def test_an_async_generator_streams_on_the_worker_loop() -> None:
    info, [(chunks, end), (raised_chunks, raised)] = jobs("async_generator.py", {"count": 2}, {"count": 1, "raise": True})
    assert info["handler_kind"] == "async_generator"
    assert chunks == [{"stream": {"token": 0}}, {"stream": {"token": 1}}] and end == {"result": {"output": []}}
    assert raised_chunks == [{"stream": {"token": 0}}]
    assert raised["result"]["error"].startswith("handler: 'missing' \ntraceback: ")


# -- progress, concurrency, cancel ------------------------------------------------------------

def test_progress_updates_from_the_handler_and_its_threads_are_chunks_before_the_end() -> None:
    _, [(chunks, end)] = jobs("progress.py", {"name": "Ada", "steps": 2})
    assert chunks == [{"progress": "Update 1/2"}, {"progress": "Update 2/2"}, {"progress": {"from": "thread"}}]
    assert end == {"result": {"output": "Hello, Ada!"}}


def test_a_sync_handler_whose_jobs_are_short_runs_on_the_loop_and_its_threads_progress_still_comes_first() -> None:
    warm = [{"steps": 0}] * 3  # short jobs: the first on the job thread, then the mean is known
    _, answers = jobs("progress.py", *warm, {"name": "Ada", "steps": 2})
    chunks, end = answers[-1]
    assert chunks == [{"progress": "Update 1/2"}, {"progress": "Update 2/2"}, {"progress": {"from": "thread"}}]
    assert end == {"result": {"output": "Hello, Ada!"}}


def test_sync_jobs_run_on_the_job_thread_until_known_short_then_on_the_loop_until_one_is_long() -> None:
    quick = {"echo": True}
    _, answers = jobs("sync.py", quick, quick, quick, {"sleep": 0.05}, quick, quick)
    threads = [end["result"]["output"]["thread"] for _, end in answers]
    # unknown first; short, so the loop's; the 50 ms job still there, which makes the mean long again
    assert threads == ["runpod-jobs", "MainThread", "MainThread", "MainThread", "runpod-jobs", "runpod-jobs"]


def test_on_the_loop_a_cancel_for_the_job_behind_arrives_before_that_job_starts() -> None:
    """A sync job holding the loop; the daemon's Cancel for the job queued behind it, arriving
    meanwhile (from another thread here, from the socket there), is read between the two."""
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        worker = InProcess("sync.py")
        try:
            for n in (1, 2):  # known short: the next jobs run on the loop
                worker.open(n, {"id": f"warm-{n}", "input": {}})
                await worker.end(n)
            loop = asyncio.get_running_loop()
            cancel = threading.Timer(0.05, loop.call_soon_threadsafe, (worker.runner.on_message, protocol.Cancel(4)))
            cancel.start()
            worker.open(3, {"id": "busy", "input": {"sleep": 0.3}})
            worker.open(4, {"id": "queued", "input": {"return": "ran"}})
            worker.open(5, {"id": "next", "input": {"return": "ran"}})
            return await worker.end(3), await worker.end(4), await worker.end(5)
        finally:
            worker.close()
    busy, queued, following = asyncio.run(scenario())
    assert busy["result"]["output"]["thread"] == "MainThread"
    assert queued == {"cancelled": True}
    assert following == {"result": {"output": "ran"}}


def test_progress_for_a_job_that_is_not_running_goes_nowhere() -> None:
    async def scenario() -> list[protocol.Message]:
        worker = InProcess("async_handler.py")
        runpod.serverless.progress_update({"id": "nobody"}, "lost")
        worker.open(1, {"id": "job-1", "input": {"progress": "half"}})
        await worker.end(1)
        runpod.serverless.progress_update({"id": "job-1"}, "late")
        await asyncio.sleep(0.01)
        return worker.sent
    sent = asyncio.run(scenario())
    assert [(type(m).__name__, without_seconds(reply_message(m.body))) for m in sent if isinstance(m, protocol.Chunk | protocol.End)] == [
        ("Chunk", {"progress": "half"}), ("End", {"result": {"output": {"id": "job-1", "running_with": 1,
                                                                         "thread": "MainThread"}}})]


def test_concurrency_modifier_answers_at_ready_and_after_each_job_with_the_file_args() -> None:
    info, answers = jobs("concurrency.py", {}, {}, {}, args=["--max_concurrency", "3"])
    assert info == {"handler_kind": "async", "concurrency": 2, "return_aggregate_stream": False, "refresh_worker": False}
    assert [end for _, end in answers] == [{"result": {"output": {"max": 3}}, "concurrency": 3},
                                          {"result": {"output": {"max": 3}}, "concurrency": 3},
                                          {"result": {"output": {"max": 3}}, "concurrency": 3}]


def test_async_jobs_run_together_and_a_cancelled_one_ends_cancelled_at_once() -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
        worker = InProcess("async_handler.py")
        slow = {"id": "slow", "input": {"sleep": 30}}
        worker.open(1, slow)
        worker.open(2, {"id": "quick", "input": {"sleep": 0.05}})
        quick = await worker.end(2)
        worker.runner.on_message(protocol.Credit(1, 1))  # no window: ignored
        worker.runner.on_message(protocol.Cancel(1))
        cancelled = await worker.end(1)
        worker.runner.on_message(protocol.Cancel(1))  # already ended: nothing more
        await asyncio.gather(*worker.tasks)
        return quick, cancelled, [m for m in worker.sent if m.id == 1]  # type: ignore[union-attr]
    quick, cancelled, frames = asyncio.run(scenario())
    assert quick == {"result": {"output": {"id": "quick", "running_with": 2, "thread": "MainThread"}}}
    assert cancelled == {"cancelled": True} and len(frames) == 1


def test_a_cancelled_sync_generator_stops_between_items() -> None:
    async def scenario() -> tuple[list[Any], dict[str, Any]]:
        worker = InProcess("generator.py")
        try:
            worker.open(1, {"id": "long", "input": {"count": 1000, "pause": 0.02}})
            while not worker.chunks(1):
                await asyncio.sleep(0.005)
            worker.runner.on_message(protocol.Cancel(1))
            end = await worker.end(1)
            await asyncio.sleep(0.05)
            return worker.chunks(1), end
        finally:
            worker.close()
    chunks, end = asyncio.run(scenario())
    assert end == {"cancelled": True} and 1 <= len(chunks) < 10


def test_a_cancelled_sync_handler_ends_cancelled_when_it_returns_and_so_does_a_queued_job() -> None:
    async def scenario() -> tuple[list[int], dict[str, Any], dict[str, Any], dict[str, Any]]:
        worker = InProcess("sync.py")
        try:
            worker.open(1, {"id": "busy", "input": {"sleep": 0.3}})
            worker.open(2, {"id": "queued", "input": {"return": "ran"}})
            worker.open(3, {"id": "next", "input": {"return": "ran"}})
            await asyncio.sleep(0.05)
            worker.runner.on_message(protocol.Cancel(1))
            worker.runner.on_message(protocol.Cancel(2))
            await asyncio.sleep(0.05)
            ended_early = [m.id for m in worker.sent if isinstance(m, protocol.End)]
            return ended_early, await worker.end(1), await worker.end(2), await worker.end(3)
        finally:
            worker.close()
    ended_early, busy, queued, following = asyncio.run(scenario())
    assert ended_early == []  # a sync handler cannot be interrupted: the daemon replaces such a worker
    assert busy == queued == {"cancelled": True}
    assert following == {"result": {"output": "ran"}}


def test_a_call_that_is_not_a_runpod_job_is_refused() -> None:
    async def scenario() -> list[protocol.Message]:
        worker = InProcess("async_handler.py")
        worker.runner.on_message(protocol.Open(4, "r", "Predictor/Predict", body=b"{}"))
        worker.runner.on_message(protocol.Open(5, "r", "runpod.job", body=b"not json"))
        await worker.end(5)
        return worker.sent
    refused, failed = asyncio.run(scenario())
    assert isinstance(refused, protocol.End) and (refused.id, refused.code, refused.has_reply) == (4, 12, False)
    assert isinstance(failed, protocol.End)
    assert error_info(json.loads(failed.body)["result"]["error"])["error_type"] == "<class 'json.decoder.JSONDecodeError'>"


# -- loading -----------------------------------------------------------------------------------

def test_a_file_that_never_calls_start_cannot_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "handler.py").write_text("import runpod\n\ndef handler(job):\n    return 1\n")
    monkeypatch.chdir(tmp_path)

    async def scenario() -> None:
        context = WorkerContext(api="rp", loop=asyncio.get_running_loop(), send=print, send_threadsafe=print,
                                pool=ThreadPoolExecutor(1), inline=True, max_body_size=1, log=Log(),
                                track=print, on_callback=lambda *a: None)
        runner = RunPodRunner(context, {})
        runner.load_handler(protocol.Init("rp", RUNNER, str(tmp_path), "handler.py"), tmp_path)
    with pytest.raises(HandlerLoadError, match=r"handler.py did not call runpod.serverless.start\(...\)"):
        asyncio.run(scenario())


# -- a real worker process ---------------------------------------------------------------------

def start_worker(file: str, tmp_path: Path, project: Path = PROJECT) -> WorkerProcess:
    init = protocol.Init("rp", RUNNER, str(project), file, options={"args": ["--rp_log_level", "ERROR"]})
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join(sys.path)}
    return WorkerProcess("rp", 0, init, env, str(tmp_path), (), lambda metric: None)


async def collect(worker: WorkerProcess, call_id: int, job: dict[str, Any]) -> list[Any]:
    stream = worker.open_stream(protocol.Open(call_id, job["id"], "runpod.job", body=json.dumps(job).encode()))
    return [without_seconds(reply_message(body)) async for body in stream.messages()]


def test_a_worker_process_serves_a_sync_handler_with_progress_and_cancels_an_async_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        progress, asynchronous = start_worker("progress.py", tmp_path), start_worker("async_handler.py", tmp_path)
        await asyncio.gather(progress.start(), asynchronous.start())
        assert await progress.wait_ready() and await asynchronous.wait_ready()
        assert progress.info["handler_kind"] == "sync" and asynchronous.info["handler_kind"] == "async"
        assert await collect(progress, 0, {"id": "p-1", "input": {"name": "Ada", "steps": 1}}) == [
            {"progress": "Update 1/1"}, {"progress": {"from": "thread"}}, {"result": {"output": "Hello, Ada!"}}]
        stream = asynchronous.open_stream(protocol.Open(0, "a-1", "runpod.job",
                                                        body=json.dumps({"id": "a-1", "input": {"sleep": 30}}).encode()))
        await asyncio.sleep(0.1)
        stream.cancel()
        assert await asyncio.wait_for(stream.single(), 5) == b'{"cancelled": true}'
        for worker in (progress, asynchronous):
            await worker.stop(10)
            assert worker.error is None
    asyncio.run(scenario())


def test_a_worker_process_reports_a_file_without_start_as_init_failed(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "handler.py").write_text("import runpod\n\ndef handler(job):\n    return 1\n")

    async def scenario() -> None:
        worker = start_worker("handler.py", tmp_path, project)
        await worker.start()
        assert not await worker.wait_ready()
        assert worker.error == "HandlerLoadError: handler.py did not call runpod.serverless.start(...)"
        await worker.wait_exit()
    asyncio.run(scenario())
