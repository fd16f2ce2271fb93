"""BatchAPI, worker side: one job's Cortex ``Handler``, fed its batches one at a time.

A BatchAPI worker process is started for one job. The daemon writes the job spec document
(spec §4.6) to a file and names it in ``CORTEX_JOB_SPEC``; the Handler is constructed with
``config`` = ``handler.config`` deep-merged with the job's submission ``config`` (the job's
values win) and, when it asks for them, ``job_spec`` and ``metrics_client`` (spec §3.2, §3.7).

Calls, one streamed call each (the daemon side is written against exactly this):

- ``Open(method="batch.run", body={"batch_id": str, "payload": [...]})``: ``handle_batch`` with
  the arguments it declares.
- ``Open(method="batch.complete", body=b"")``: ``on_job_complete()`` when the Handler has one.

Each gets exactly one ``End`` with ``has_reply`` and a JSON body:

- ``End(code=OK)`` ``{"seconds": <time in the handler>}`` (``batch.complete`` adds ``"ran": bool``,
  false when the Handler has no ``on_job_complete``);
- ``End(code=INTERNAL, details=<error>)`` ``{"error": "<Type>: <message>", "traceback": <text>,
  "seconds": ...}`` when the method raised (any ``BaseException``; ``sys.exit(n)`` reads
  ``SystemExit: handle_batch called sys.exit(n)``);
- ``End(code=INVALID_ARGUMENT, details=<error>)`` ``{"error": ..., "traceback": ""}`` for a body
  that is not what the method takes;
- ``End(code=CANCELLED)`` ``{"cancelled": true}`` after a ``Cancel`` that came before the batch
  started, or (async handlers) stopped it at an ``await``; a sync method already running cannot be
  interrupted, so it ends with its real outcome;
- ``End(code=UNIMPLEMENTED)`` without a body for any other method.

Calls run one at a time, in arrival order (Cortex ran one batch per worker at a time); sync
methods run in one dedicated thread so the worker's loop keeps answering frames meanwhile.
Log events from the handler carry ``job_id`` and ``batch_id``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import time
import traceback
from abc import abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from inferd.worker import protocol
from inferd.worker.handler_class import (
    CONSTRUCTOR_PARAMS_BY_KIND,
    BoundMethod,
    HandlerLoadError,
    check_params,
    construct,
    find_class,
    load_module,
)
from inferd.worker.metrics_client import MetricsClient
from inferd.worker.runners.base import Runner

RUN_METHOD = "batch.run"
COMPLETE_METHOD = "batch.complete"
JOB_SPEC_ENV = "CORTEX_JOB_SPEC"
BATCH_PARAMS = frozenset({"payload", "batch_id"})


# -- pure helpers, shared with the TaskAPI runner ----------------------------------------------

def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override``'s values on top; where both hold a mapping under one key, the two
    merge the same way. Neither argument is changed and the result shares nothing with them (the
    handler may mutate its config)."""
    merged = {key: copy.deepcopy(value) for key, value in base.items()}
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_job_spec(env_names: tuple[str, ...]) -> dict[str, Any]:
    """The job spec document from the file the first of ``env_names`` that is set names."""
    name = next((n for n in env_names if os.environ.get(n)), None)
    if name is None:
        raise HandlerLoadError(f"{' or '.join(env_names)} is not set: this worker runs for one job, "
                               "whose spec file the daemon names there")
    path = Path(os.environ[name])
    try:
        spec = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise HandlerLoadError(f"cannot read the job spec {path} ({name}): {exc}") from None
    if not isinstance(spec, dict):
        raise HandlerLoadError(f"the job spec {path} ({name}) is not a JSON object")
    return spec


def job_config(base: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    """The API's config deep-merged with the submission's (the spec's ``config``; null is none)."""
    submitted = spec.get("config") or {}
    if not isinstance(submitted, Mapping):
        raise HandlerLoadError("the job spec's config is not a JSON object")
    return deep_merge(base, submitted)


def error_text(exc: BaseException, what: str) -> str:
    """One line naming what went wrong; ``sys.exit`` is named as such, since ``SystemExit: 2``
    alone does not say who exited."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: {what} called sys.exit({exc.code!r})"
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# -- running one call at a time ----------------------------------------------------------------

class BadCall(Exception):
    """The call's body is not what its method takes."""


@dataclass
class Work:
    """One method call to make: what ``prepare`` made of an ``Open``."""

    method: BoundMethod
    kwargs: dict[str, Any]
    what: str                                   # e.g. "handle_batch", for messages
    fields: dict[str, Any]                      # bound to the log context while it runs
    reply: dict[str, Any] = field(default_factory=dict)  # extra keys of a successful End body
    exit_ok: bool = False                       # sys.exit(0) counts as success (a Task's process)


@dataclass
class Running:
    """One call between its ``Open`` and its ``End``."""

    call_id: int
    task: asyncio.Task[None] | None = None
    in_thread: bool = False                     # a sync method has started: it cannot be stopped
    cancel_requested: bool = False

    def cancel(self) -> None:
        self.cancel_requested = True
        if self.task is not None and not self.in_thread:
            self.task.cancel()


Result = tuple[int, str, dict[str, Any]]  # End code, details, body


class JobRunner(Runner):
    """A runner whose calls are job steps: one at a time, sync ones on a dedicated thread, each
    ending with one ``End`` (shapes in this module's docstring)."""

    job_id = ""

    def start_calls(self) -> None:
        self.turn = asyncio.Lock()
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job")
        self.calls: dict[int, Running] = {}

    @abstractmethod
    def preparers(self) -> dict[str, Callable[[bytes], Work]]:
        """Open method -> what turns its body into the call to make (raising ``BadCall``)."""

    def on_message(self, message: protocol.Message) -> None:
        if isinstance(message, protocol.Open):
            prepare = self.preparers().get(message.method)
            if prepare is None:
                self.context.send(protocol.End(message.id, protocol.UNIMPLEMENTED,
                                               f"method {message.method} is not one of {', '.join(self.preparers())}"))
                return
            running = Running(message.id)
            self.calls[message.id] = running
            running.task = self.context.loop.create_task(self.serve(running, prepare, message.body))
            self.context.track(running.task)
        elif isinstance(message, protocol.Cancel):
            cancelled = self.calls.get(message.id)
            if cancelled is not None:
                cancelled.cancel()

    async def serve(self, running: Running, prepare: Callable[[bytes], Work], body: bytes) -> None:
        """Exactly one End per call, whatever happens."""
        try:
            result = await self.result(running, prepare, body)
        except asyncio.CancelledError:
            if not running.cancel_requested:
                raise  # the worker is going away, not this call
            result = protocol.CANCELLED, "cancelled", {"cancelled": True}
        finally:
            self.calls.pop(running.call_id, None)
        code, details, reply = result
        self.context.send(protocol.End(running.call_id, code, details, True, json.dumps(reply).encode()))

    async def result(self, running: Running, prepare: Callable[[bytes], Work], body: bytes) -> Result:
        try:
            work = prepare(body)
        except BadCall as exc:
            self.log.error("job_call_invalid", job_id=self.job_id, error=str(exc))
            return protocol.INVALID_ARGUMENT, str(exc), {"error": str(exc), "traceback": ""}
        async with self.turn:
            if work.method.is_async:
                return await self.run_async(work)
            running.in_thread = True
            return await self.context.loop.run_in_executor(self.thread, self.run_sync, work)

    def run_sync(self, work: Work) -> Result:
        with structlog.contextvars.bound_contextvars(**work.fields):
            started = time.perf_counter()
            try:
                work.method.func(**work.kwargs)
            except BaseException as exc:  # noqa: BLE001 - the handler's, sys.exit included: it becomes the End
                return self.failure(work, exc, time.perf_counter() - started)
            return protocol.OK, "", {"seconds": time.perf_counter() - started, **work.reply}

    async def run_async(self, work: Work) -> Result:
        with structlog.contextvars.bound_contextvars(**work.fields):
            started = time.perf_counter()
            try:
                await work.method.func(**work.kwargs)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # ours (a Cancel, or the worker going away), not the handler's
                return self.failure(work, exc, time.perf_counter() - started)
            except BaseException as exc:  # noqa: BLE001
                return self.failure(work, exc, time.perf_counter() - started)
            return protocol.OK, "", {"seconds": time.perf_counter() - started, **work.reply}

    def failure(self, work: Work, exc: BaseException, seconds: float) -> Result:
        if work.exit_ok and isinstance(exc, SystemExit) and exc.code in (None, 0):
            self.log.info(f"{work.what.lower()}_exited", code=exc.code)
            return protocol.OK, "", {"seconds": seconds, **work.reply}
        error = error_text(exc, work.what)
        self.log.error(f"{work.what.lower()}_failed", error=error, exc_info=exc)
        text = "".join(traceback.format_exception(exc))
        return protocol.INTERNAL, error, {"error": error, "traceback": text, "seconds": seconds}


# -- the BatchAPI runner -----------------------------------------------------------------------

class BatchRunner(JobRunner):
    handle_batch: BoundMethod
    on_job_complete: BoundMethod | None

    def load_handler(self, init: protocol.Init, project: Path) -> Any:
        spec = read_job_spec((JOB_SPEC_ENV,))
        self.job_id = str(spec.get("job_id", ""))
        cls = find_class(load_module(project / init.handler_path))
        available = {"config": job_config(init.config, spec), "job_spec": spec,
                     "metrics_client": MetricsClient(self.context.send_threadsafe)}
        with structlog.contextvars.bound_contextvars(job_id=self.job_id):
            return construct(cls, available, CONSTRUCTOR_PARAMS_BY_KIND["BatchAPI"])

    def bind(self, handler: Any) -> dict[str, Any]:
        func = getattr(handler, "handle_batch", None)
        if not callable(func):
            raise HandlerLoadError("Handler does not define handle_batch, which a BatchAPI requires")
        self.handle_batch = BoundMethod(func, tuple(check_params("Handler.handle_batch", func, BATCH_PARAMS)))
        complete = getattr(handler, "on_job_complete", None)
        self.on_job_complete = None
        if complete is not None:
            if not callable(complete):
                raise HandlerLoadError("Handler.on_job_complete is not a method")
            check_params("Handler.on_job_complete", complete, frozenset())
            self.on_job_complete = BoundMethod(complete, ())
        self.start_calls()
        return {"job_id": self.job_id, "handle_batch": list(self.handle_batch.wants),
                "on_job_complete": self.on_job_complete is not None}

    def preparers(self) -> dict[str, Callable[[bytes], Work]]:
        return {RUN_METHOD: self.batch_work, COMPLETE_METHOD: self.complete_work}

    def batch_work(self, body: bytes) -> Work:
        try:
            request = json.loads(body)
        except ValueError as exc:
            raise BadCall(f"{RUN_METHOD}: the body is not JSON: {exc}") from None
        if not isinstance(request, dict) or not isinstance(request.get("batch_id"), str) \
                or not isinstance(request.get("payload"), list):
            raise BadCall(f'{RUN_METHOD}: the body must be {{"batch_id": <string>, "payload": <list>}}')
        batch_id = request["batch_id"]
        values = {"payload": request["payload"], "batch_id": batch_id}
        return Work(self.handle_batch, self.handle_batch.kwargs(values), "handle_batch",
                    {"job_id": self.job_id, "batch_id": batch_id})

    def complete_work(self, body: bytes) -> Work:
        if self.on_job_complete is None:
            return Work(BoundMethod(lambda: None, ()), {}, "on_job_complete", {"job_id": self.job_id}, {"ran": False})
        return Work(self.on_job_complete, {}, "on_job_complete", {"job_id": self.job_id}, {"ran": True})
