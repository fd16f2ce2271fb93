"""RunPodAPI, worker side ("direct" runner): an unchanged RunPod serverless worker file, its jobs
run through the SDK's own ``run_job``/``run_job_generator``.

Loading runs the user's file as ``python -u handler.py`` would, after replacing two attributes
of the real ``runpod.serverless`` module: ``start`` records the config instead of starting the
SDK's job loop, and ``progress_update`` forwards progress to the daemon instead of POSTing it.
Patching the module attribute covers ``runpod.serverless.start(...)``, ``from runpod import
serverless; serverless.start(...)`` and ``from runpod.serverless import start`` (the file runs
after the patch, so the name it imports is ours); ``progress_update`` is patched in
``runpod.serverless`` and in ``runpod.serverless.modules.rp_progress``. Not covered: calling
``runpod.serverless.worker.main``/``run_worker`` directly (they would try to reach the platform).
Everything else the file uses from ``runpod`` is the real SDK.

Jobs, one streamed call each (the daemon side is written against exactly this):

- daemon -> worker ``Open(method="runpod.job", body=<job JSON>)``; the handler gets that dict.
- worker -> daemon ``Chunk`` ``{"stream": item}`` per generator item as it is produced, and
  ``{"progress": value}`` per ``progress_update(job, value)`` (from any thread; none after End).
- worker -> daemon ``End(has_reply=True)`` ``{"result": <the dict the SDK would POST to
  job-done, but its output>, "seconds": <time in the handler>, "concurrency":
  <concurrency_modifier(current)>}`` (``concurrency`` only when the config has a modifier and
  it answered), then, when there is an output, a newline and the output's JSON
  (``inferd.jobs.runpod_dispatch.split_reply``); or ``{"cancelled": true}`` once a cancelled job has
  stopped. Every ``Open`` gets exactly one ``End``; ``Credit`` is ignored (no window).

Async handlers run as tasks on the worker's loop, as many as the daemon sends. Sync handlers
and sync generators run one at a time, in the order sent (the daemon sends one, or a short
pipeline of short ones): in a dedicated thread with its own event loop, so the worker's loop
stays free for frames, or, once their jobs are known to take under INLINE_BELOW, on the worker's
loop itself, as the SDK runs them on its own (``RunPodRunner.runs_inline``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import json
import os
import platform
import runpy
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from inferd.worker import protocol
from inferd.worker.handler_class import HandlerLoadError
from inferd.worker.mailbox import Mailbox
from inferd.worker.runners.base import Runner

JOB_METHOD = "runpod.job"
SERIAL_KINDS = ("sync", "generator")  # handlers that run one at a time, as in the SDK
INLINE_BELOW = 0.002  # seconds: a sync handler's mean time per job under which it runs on the loop
NOT_STARTED = "did not call runpod.serverless.start(...)"
CANCELLED = json.dumps({"cancelled": True})

T = TypeVar("T")
Progress = Callable[[dict[str, Any], Any], None]


@functools.cache
def sdk() -> Any:
    """The real ``runpod`` package, with the modules this runner uses, imported on first use: it
    takes seconds to import, and other kinds of worker (and the daemon) must not pay for that."""
    with processor_name_from_proc():
        import runpod.serverless.modules.rp_job  # type: ignore[import-untyped]  # the SDK ships no types
        import runpod.serverless.modules.rp_progress  # type: ignore[import-untyped]
        import runpod.serverless.modules.worker_state  # type: ignore[import-untyped]
        import runpod.serverless.utils.rp_debugger  # type: ignore[import-untyped]

    return runpod


@contextlib.contextmanager
def processor_name_from_proc() -> Iterator[None]:
    """The SDK asks py-cpuinfo for the processor's name when it is imported (for --rp_debugger's
    report), which runs a helper process and costs ~2.5 s of CPU at every worker start. The same
    name, read from /proc/cpuinfo, is all the SDK uses."""
    try:
        import cpuinfo  # type: ignore[import-untyped]
    except ImportError:
        yield
        return
    original = cpuinfo.get_cpu_info
    cpuinfo.get_cpu_info = lambda: {"brand_raw": processor_name()}
    try:
        yield
    finally:
        cpuinfo.get_cpu_info = original


def processor_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "Unable to get processor info."


# -- loading the worker file -------------------------------------------------------------------

def run_worker_file(path: Path, args: list[str], progress_update: Progress) -> dict[str, Any]:
    """Run ``path`` as ``python -u path *args`` would and return the config it gave ``start``."""
    serverless = sdk().serverless
    configs: list[dict[str, Any]] = []
    modules: list[Any] = []

    def start(config: dict[str, Any]) -> None:
        """Stands in for the SDK's ``start``: what it does before its job loop, then returns (no
        SIGINT handler: the daemon alone stops its workers)."""
        print(f"--- Starting Serverless Worker |  Version {serverless.runpod_version} ---")
        if not configs:  # the real start never returns: a second call would never happen
            config["reference_counter_start"] = time.perf_counter()
            set_config_args = getattr(serverless, "_set_config_args", None)
            if set_config_args is not None:  # its own argv flags: rp_args, --rp_log_level, removed from argv
                set_config_args(config)
            configs.append(config)
            # runpy's temporary __main__, kept below: the file's module must outlive the run
            modules.append(sys.modules.get("__main__"))

    serverless.start = start
    serverless.progress_update = progress_update
    serverless.modules.rp_progress.progress_update = progress_update
    sys.argv = [str(path), *args]
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # as python puts the script's directory first
    runpy.run_path(str(path), run_name="__main__")
    if not configs:
        raise HandlerLoadError(f"{path.name} {NOT_STARTED}")
    if modules and modules[0] is not None:
        # runpy put the previous __main__ back; the handler's functions, pickle and
        # multiprocessing expect the file itself to be __main__, as under ``python handler.py``
        sys.modules["__main__"] = modules[0]
    return check_config(configs[0], path)


def check_config(config: Any, path: Path) -> dict[str, Any]:
    if not isinstance(config, dict) or not callable(config.get("handler")):
        raise HandlerLoadError(f"{path.name}: runpod.serverless.start() needs a config dict with a callable 'handler'")
    return config


def handler_kind(handler: Any) -> str:
    """As the SDK tells them apart: generators by the callable itself, async by what it returns
    (which we must know before calling it, so by its code or its ``__call__``'s)."""
    if inspect.isasyncgenfunction(handler):
        return "async_generator"
    if inspect.isgeneratorfunction(handler):
        return "generator"
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(type(handler).__call__):
        return "async"
    return "sync"


# -- results -----------------------------------------------------------------------------------

def error_json(exc: BaseException, message: str) -> str:
    """The SDK's error string for a failed job (``run_job``'s exception shape), for failures
    that happen around the handler rather than in it."""
    return json.dumps({
        "error_type": str(type(exc)),
        "error_message": message,
        "error_traceback": "".join(traceback.format_exception(exc)),
        "hostname": os.environ.get("RUNPOD_POD_HOSTNAME", "unknown"),
        "worker_id": os.environ.get("RUNPOD_POD_ID", "unknown"),
        "runpod_version": sdk().serverless.runpod_version,
    })


def not_json_result(exc: BaseException, what: str) -> dict[str, Any]:
    return {"error": error_json(exc, f"{what} is not JSON-serialisable: {type(exc).__name__}: {exc}")}


def encode_result(result: dict[str, Any]) -> tuple[str, str | None]:
    """The result as JSON without its output, and the output's own JSON (None: no output): the
    daemon stores and answers that as it is, never parsing and encoding it again. A result that
    cannot be encoded is a failed job naming why (the SDK would lose it)."""
    try:
        output = json.dumps(result["output"], separators=(",", ":")) if "output" in result else None
        return json.dumps({key: value for key, value in result.items() if key != "output"}), output
    except (TypeError, ValueError, RecursionError) as exc:
        failed = not_json_result(exc, "the handler's output")
        if result.get("stopPod"):
            failed["stopPod"] = True
        return json.dumps(failed), None


def with_debugger_output(config: dict[str, Any], result: dict[str, Any]) -> None:
    """``--rp_debugger``: what ``handle_job`` adds to a dict output (the SDK raises on any other
    output and loses the job; here such a result is left as it is)."""
    rp_debugger = sdk().serverless.utils.rp_debugger
    if config.get("rp_args", {}).get("rp_debugger") and isinstance(result.get("output"), dict):
        result["output"]["rp_debugger"] = rp_debugger.get_debugger_output()
        ready_delay = (config["reference_counter_start"] - sdk().serverless.modules.worker_state.REF_COUNT_ZERO) * 1000
        result["output"]["rp_debugger"]["ready_delay_ms"] = ready_delay
    else:
        rp_debugger.clear_debugger_output()


# -- running jobs ------------------------------------------------------------------------------

@dataclass
class RunningJob:
    """One job between its ``Open`` and its ``End``."""

    call_id: int
    rid: str
    job_id: str | None = None
    task: asyncio.Task[Any] | None = None       # the task running the handler, on ``loop``
    loop: asyncio.AbstractEventLoop | None = None
    cancel_requested: bool = False
    open: bool = True                           # False once its End is sent: nothing may follow
    seconds: float = 0.0                        # time in the handler (not waiting for its turn)

    def cancel(self) -> None:
        """Stop the handler at its next ``await`` (a sync one: when it returns or yields)."""
        self.cancel_requested = True
        if self.task is None or self.loop is None:
            return
        if self.loop is asyncio.get_running_loop():
            self.task.cancel()  # now: on the worker's loop, the task may go on to another job
        else:
            self.loop.call_soon_threadsafe(self.task.cancel)


class JobThread:
    """One thread with its own event loop for sync handlers and sync generators whose jobs take
    a while (see ``RunPodRunner.runs_inline``): they run there one at a time, as the SDK runs
    them on its loop, while the worker's loop answers frames and forwards progress that the
    handler's own threads report. Jobs go over and outcomes come back through mailboxes."""

    def __init__(self, back: Mailbox) -> None:
        self.loop = asyncio.new_event_loop()
        self.inbox = Mailbox(self.loop)
        self.back = back  # to the worker's loop
        self.thread = threading.Thread(target=self.loop.run_forever, name="runpod-jobs", daemon=True)
        self.thread.start()

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """``coroutine``'s outcome, run on the job thread's loop (not run_coroutine_threadsafe's
        concurrent future and the callbacks chaining it to ours); stopping a running job is
        RunningJob.cancel's part, on the job thread's loop."""
        outcome: asyncio.Future[T] = self.back.loop.create_future()

        def settle(task: asyncio.Task[T]) -> None:
            if outcome.done():
                return
            if task.cancelled():
                outcome.cancel()
            elif (error := task.exception()) is not None:
                outcome.set_exception(error)
            else:
                outcome.set_result(task.result())

        def start() -> None:
            task = self.loop.create_task(coroutine)
            task.add_done_callback(lambda done: self.back.post(settle, done))

        self.inbox.post(start)
        return await outcome

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class RunPodRunner(Runner):
    """Options: ``args``, the command-line arguments the file is run with."""

    config: dict[str, Any]

    def load_handler(self, init: protocol.Init, project: Path) -> Any:
        args = [str(arg) for arg in self.options.get("args", [])]
        self.config = run_worker_file(project / init.handler_path, args, self.progress_update)
        return self.config["handler"]

    def bind(self, handler: Any) -> dict[str, Any]:
        self.handler = handler
        self.kind = handler_kind(handler)
        self.loop_thread = threading.get_ident()
        self.calls: dict[int, RunningJob] = {}
        self.by_job_id: dict[str, RunningJob] = {}
        self.to_loop = Mailbox(self.context.loop)  # from the job thread and the handler's own threads
        self.job_thread = JobThread(self.to_loop) if self.kind in SERIAL_KINDS else None
        self.pace: float | None = None  # moving mean of a sync handler's seconds per job
        self.serial: deque[tuple[RunningJob, bytes]] = deque()  # sync handlers' jobs, waiting their turn
        self.serial_task: asyncio.Task[None] | None = None
        modifier = self.config.get("concurrency_modifier")
        self.concurrency = max(1, int(modifier(1))) if modifier else 1
        return {"handler_kind": self.kind, "concurrency": self.concurrency,
                "return_aggregate_stream": bool(self.config.get("return_aggregate_stream", False)),
                "refresh_worker": bool(self.config.get("refresh_worker", False))}

    def on_message(self, message: protocol.Message) -> None:
        if isinstance(message, protocol.Open):
            if message.method != JOB_METHOD:
                unknown = f"method {message.method} is not a RunPod job"
                self.context.send(protocol.End(message.id, protocol.UNIMPLEMENTED, unknown))
                return
            running = RunningJob(message.id, message.rid)
            self.calls[running.call_id] = running
            if self.kind not in SERIAL_KINDS:
                self.context.track(self.context.loop.create_task(self.serve(running, message.body)))
                return
            self.serial.append((running, message.body))
            if self.serial_task is None:
                self.serial_task = self.context.loop.create_task(self.serve_serially())
                self.context.track(self.serial_task)
        elif isinstance(message, protocol.Cancel):
            cancelled = self.calls.get(message.id)
            if cancelled is not None:
                cancelled.cancel()

    async def serve_serially(self) -> None:
        """Sync handlers' jobs, one after another in the order sent. Between two, the loop reads
        its frames first: a Cancel for the next job, sent while this one held the loop, is seen
        before that job starts."""
        try:
            while self.serial:
                await self.serve(*self.serial.popleft())
                await asyncio.sleep(0)
        finally:
            self.serial_task = None

    async def serve(self, running: RunningJob, body: bytes) -> None:
        """Exactly one End per job, whatever happens."""
        try:
            job = json.loads(body)
            running.job_id = str(job["id"])
            self.by_job_id[running.job_id] = running
            if self.job_thread is None or self.runs_inline():
                rest, output = await self.execute(running, job)
            else:
                rest, output = await self.job_thread.run(self.execute(running, job))
            reply = f'{{"result": {rest}, "seconds": {running.seconds:.6f}{self.concurrency_field()}}}'
            if output is not None:  # after the first newline (JSON text has none of its own)
                reply = f"{reply}\n{output}"
        except asyncio.CancelledError:
            if not running.cancel_requested:
                raise  # the worker is going away, not this job
            current = asyncio.current_task()
            if current is not None and running.task is current:
                current.uncancel()  # cancelled on this loop: the serial task goes on to the next job
            reply = CANCELLED
        except Exception as exc:  # noqa: BLE001 - ours, not the handler's (run_job catches those)
            self.log.error("runpod_job_failed", request_id=running.rid, exc_info=exc)
            failed = {"error": error_json(exc, f"{type(exc).__name__}: {exc}")}
            reply = json.dumps({"result": failed})
        finally:
            # what the handler's own threads posted while it held the loop (progress) goes first
            self.to_loop.deliver()
            self.calls.pop(running.call_id, None)
            if running.job_id is not None and self.by_job_id.get(running.job_id) is running:
                del self.by_job_id[running.job_id]
        if running.cancel_requested:  # even if it finished meanwhile: the daemon dropped it
            reply = CANCELLED
        running.open = False
        self.context.send(protocol.End(running.call_id, has_reply=True, body=reply.encode()))

    async def execute(self, running: RunningJob, job: dict[str, Any]) -> tuple[str, str | None]:
        """The job's result as ``encode_result``'s JSON texts (encoded where it ran: big outputs
        of a sync handler on the job thread stay off the worker's loop). Runs on the worker's
        loop or the job thread's."""
        running.task, running.loop = asyncio.current_task(), asyncio.get_running_loop()
        if running.cancel_requested:  # cancelled before its turn came
            raise asyncio.CancelledError
        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=running.rid):
            if self.kind in ("generator", "async_generator"):
                result = await self.stream(running, job)
            else:
                result = await sdk().serverless.modules.rp_job.run_job(self.handler, job)
            if self.config.get("refresh_worker", False):
                result["stopPod"] = True
            with_debugger_output(self.config, result)
        running.seconds = time.perf_counter() - started
        if self.job_thread is not None:
            self.pace = running.seconds if self.pace is None else 0.8 * self.pace + 0.2 * running.seconds
        return encode_result(result)

    def runs_inline(self) -> bool:
        """Whether a sync handler's next job runs on the worker's loop rather than the job
        thread: once its jobs are known to be short (INLINE_BELOW), where the two thread
        wake-ups would cost as much as the job. The SDK runs sync handlers on its loop's thread
        too; what is lost meanwhile is only the loop's attention: a Cancel or a progress report
        from the handler's own threads waits for the job's end (it still comes before the
        result), so handlers that take longer keep the job thread."""
        return self.pace is not None and self.pace < INLINE_BELOW

    async def stream(self, running: RunningJob, job: dict[str, Any]) -> dict[str, Any]:
        """``handle_job``'s streaming rules: each item to the daemon as it comes, an item that is
        a dict with a truthy ``error`` ends the job failed, the end is the aggregate or ``[]``."""
        aggregate = bool(self.config.get("return_aggregate_stream", False))
        result: dict[str, Any] = {"output": []}
        partials = sdk().serverless.modules.rp_job.run_job_generator(self.handler, job)
        try:
            async for partial in partials:
                output = partial.get("output")
                if isinstance(output, dict) and output.get("error"):
                    partial = {"error": str(output["error"])}
                if partial.get("error"):
                    return dict(partial)
                try:
                    chunk = json.dumps({"stream": output}).encode()
                except (TypeError, ValueError, RecursionError) as exc:
                    return not_json_result(exc, "a streamed item")
                if aggregate:
                    result["output"].append(output)
                self.post(running, chunk)
                await asyncio.sleep(0)  # where a Cancel stops a sync generator between items
        finally:
            await partials.aclose()  # runs the handler's own cleanup, on its loop
        return result

    def concurrency_field(self) -> str:
        """``concurrency_modifier(current)``, called after each job as the SDK calls it before
        each take; a modifier that fails leaves the daemon's limit as it was."""
        modifier = self.config.get("concurrency_modifier")
        if not modifier:
            return ""
        try:
            self.concurrency = max(1, int(modifier(self.concurrency)))
        except Exception as exc:  # noqa: BLE001 - user code; the job's result still goes out
            self.log.error("runpod_concurrency_modifier_failed", exc_info=exc)
            return ""
        return f', "concurrency": {self.concurrency}'

    # -- chunks towards the daemon, from any thread --------------------------------------------

    def post(self, running: RunningJob, body: bytes) -> None:
        if threading.get_ident() == self.loop_thread:
            self.send_chunk(running, body)
        else:
            self.to_loop.post(self.send_chunk, running, body)

    def send_chunk(self, running: RunningJob, body: bytes) -> None:
        if running.open:
            self.context.send(protocol.Chunk(running.call_id, body))

    def progress_update(self, job: dict[str, Any], progress: Any) -> None:
        """Stands in for ``runpod.serverless.progress_update``: called from the handler, any
        thread; a job that has ended (or is unknown) gets nothing, as late posts must not
        reopen a finished job."""
        job_id = str(job["id"])
        try:
            body = json.dumps({"progress": progress}).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            self.log.warning("runpod_progress_not_json", job_id=job_id, error=f"{type(exc).__name__}: {exc}")
            return
        if threading.get_ident() == self.loop_thread:
            self.send_progress(job_id, body)  # now: an async handler may return right after
            return
        try:
            self.to_loop.post(self.send_progress, job_id, body)
        except RuntimeError:
            pass  # the worker's loop is closed: the process is exiting

    def send_progress(self, job_id: str, body: bytes) -> None:
        running = self.by_job_id.get(job_id)
        if running is not None:
            self.send_chunk(running, body)
