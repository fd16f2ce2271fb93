"""What a runner is given by the worker process, and the part every request/response runner shares."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from starlette.exceptions import HTTPException

from inferd.payload import PayloadError
from inferd.worker import protocol
from inferd.worker.handler_class import BoundMethod, construct, find_class, load_module
from inferd.worker.metrics_client import MetricsClient
from inferd.worker.render import JSON, Rendered, RenderError, error_body

Outcome = tuple[int, list[list[str]], bytes, Callable[[], Any] | None]


@dataclass(frozen=True)
class WorkerContext:
    api: str
    loop: asyncio.AbstractEventLoop
    send: Callable[[protocol.Message], None]             # from the loop thread
    send_threadsafe: Callable[[protocol.Message], None]  # from handler threads
    pool: ThreadPoolExecutor                             # handler.threads_per_process threads
    inline: bool                                         # one thread: run sync handlers on the loop
    max_body_size: int
    log: Any
    track: Callable[[asyncio.Future[Any]], None]         # the worker drains these before exiting
    on_callback: Callable[[int, Callable[[], Any], str | None], None]  # run after ``Sent``


class Runner(ABC):
    """One kind of worker: binds the Handler's methods and answers the calls sent to it."""

    def __init__(self, context: WorkerContext, options: dict[str, Any]) -> None:
        self.context = context
        self.options = options
        self.api = context.api
        self.log = context.log

    def load_handler(self, init: protocol.Init, project: Path) -> Any:
        """Run the user's file and return what ``bind`` serves: by default Cortex's ``Handler``
        class, constructed with the arguments it declares. Kinds whose files are not Cortex
        handlers (RunPod workers) load their own way."""
        cls = find_class(load_module(project / init.handler_path))
        # the init frame was decoded for this process alone: the config is already a private copy
        available = {"config": init.config, "metrics_client": MetricsClient(self.context.send_threadsafe),
                     **self.constructor_args()}
        return construct(cls, available)

    def constructor_args(self) -> dict[str, Any]:
        """Constructor arguments this kind offers beyond ``config`` and ``metrics_client``."""
        return {}

    @abstractmethod
    def bind(self, handler: Any) -> dict[str, Any]:
        """Resolve the handler's methods (raising ``HandlerLoadError`` for the operator);
        returns the ``Ready`` info the daemon's front needs."""

    @abstractmethod
    def on_message(self, message: protocol.Message) -> None:
        """A message for one of this runner's calls (Call, Open, Chunk, ...)."""


class CallRunner(Runner):
    """Runners answering ``Call`` with exactly one ``Reply``."""

    def on_message(self, message: protocol.Message) -> None:
        if isinstance(message, protocol.Call):
            self.context.track(self.context.loop.create_task(self.handle_call(message)))

    async def handle_call(self, call: protocol.Call) -> None:
        """Every call gets exactly one reply, whatever happens: a call without one would hang
        its client and hold a worker slot forever."""
        try:
            outcome = await self.outcome_of(call)
        except BaseException as exc:
            self.log.error("call_failed", verb=call.verb, request_id=call.rid, exc_info=exc)
            self.reply(call, (500, JSON, error_body(self.api, f"{type(exc).__name__}: {exc}"), None))
            if not isinstance(exc, Exception):
                raise
            return
        self.reply(call, outcome)

    @abstractmethod
    async def outcome_of(self, call: protocol.Call) -> Outcome:
        """What the handler made of ``call``: status, headers, body, callback."""

    def reply(self, call: protocol.Call, outcome: Outcome) -> None:
        status, headers, out, callback = outcome
        if callback is not None:
            self.context.on_callback(call.id, callback, call.rid)
        self.context.send(protocol.Reply(call.id, status, headers, callback is not None, out))

    async def invoke(self, method: BoundMethod, call: protocol.Call, values: dict[str, Any]) -> Outcome:
        """The handler method, on the loop (async, or inline) or on a handler thread."""
        if method.is_async:
            return await self.call_async(method, call, values)
        if self.context.inline:
            return self.call_sync(method, call, values)
        return await self.context.loop.run_in_executor(self.context.pool, self.call_sync, method, call, values)

    def call_sync(self, method: BoundMethod, call: protocol.Call, values: dict[str, Any]) -> Outcome:
        with structlog.contextvars.bound_contextvars(request_id=call.rid):
            try:
                result = method.func(**values)
            except Exception as exc:  # noqa: BLE001 - the handler's error becomes the response
                return self.failure(call, exc)
            return self.outcome(call, result)

    async def call_async(self, method: BoundMethod, call: protocol.Call, values: dict[str, Any]) -> Outcome:
        with structlog.contextvars.bound_contextvars(request_id=call.rid):
            try:
                result = await method.func(**values)
            except Exception as exc:  # noqa: BLE001
                return self.failure(call, exc)
            return self.outcome(call, result)

    @abstractmethod
    def outcome(self, call: protocol.Call, result: Any) -> Outcome:
        """The handler's return value as the call's outcome (each kind renders its own way)."""

    def rendered(self, call: protocol.Call, render: Callable[[Any], Rendered], value: Any,
                 callback: Callable[[], Any] | None) -> Outcome:
        """The handler's value as a response; one it cannot be turned into is a 500 naming why."""
        try:
            status, headers, out = render(value)
        except RenderError as exc:
            self.log.error("handler_result_invalid", error=str(exc), request_id=call.rid)
            return 500, JSON, error_body(self.api, str(exc)), None
        return status, headers, out, callback

    def failure(self, call: protocol.Call, exc: Exception) -> Outcome:
        if isinstance(exc, PayloadError):
            return 400, JSON, error_body(self.api, str(exc)), None
        if isinstance(exc, HTTPException):
            return exc.status_code, JSON, error_body(self.api, str(exc.detail)), None
        self.log.error("handler_exception", verb=call.verb, request_id=call.rid, exc_info=exc)
        return 500, JSON, error_body(self.api, f"{type(exc).__name__}: {exc}"), None
