"""The worker process: loads one API's Handler through its kind's runner and serves frames.

This module owns what every kind of worker shares: the channel, the ``Init`` handshake (cwd,
``sys.path``, logging, the handler threads), callbacks that run only after the daemon reports
the response sent, and draining on ``Stop``. How the user's file is loaded (a Cortex Handler
class, a RunPod worker file) and what a call *means* (an HTTP verb, an async job, an RPC, a
RunPod job) is the runner's business; the runner is named by import string in the ``Init``
frame, chosen by the API's kind in the daemon.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import socket
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from inferd import heap
from inferd.compat import SHIM_PATH
from inferd.logs import configure_logging, get_logger
from inferd.worker import protocol
from inferd.worker.ipc import FrameProtocol
from inferd.worker.output import PrintCapture
from inferd.worker.runners.base import Runner, WorkerContext

EXIT_INIT_FAILED = 3
RUNNER_PACKAGE = "inferd.worker.runners."


def load_runner(import_string: str) -> type[Runner]:
    """Only inferd's own runners: the daemon names one, nothing else may be imported here."""
    module_name, _, attr = import_string.partition(":")
    if not module_name.startswith(RUNNER_PACKAGE) or not attr:
        raise ValueError(f"not an inferd worker runner: {import_string!r}")
    runner: type[Runner] = getattr(importlib.import_module(module_name), attr)
    return runner


class WorkerChild:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.log = get_logger()
        self.runner: Runner | None = None
        self.callbacks: dict[int, tuple[Callable[[], Any], str | None]] = {}
        self.tasks: set[asyncio.Future[Any]] = set()
        self.stopping = False

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[int] = self.loop.create_future()
        self.init: asyncio.Future[protocol.Init] = self.loop.create_future()
        sock = socket.socket(fileno=self.fd)
        _, self.channel = await self.loop.connect_accepted_socket(
            lambda: FrameProtocol(self.on_frame, self.on_close), sock
        )
        try:
            init = await self.init
        except asyncio.CancelledError:  # the daemon went away or stopped us before init
            return 0
        try:
            info = self.load(init)
        except BaseException as exc:  # noqa: BLE001 - anything the user's import or __init__ raised
            # not logged here: the daemon logs it once, with the exit status, and not on every retry
            text = "".join(traceback.format_exception(exc))
            self.send(protocol.InitFailed(f"{type(exc).__name__}: {exc}", text))
            await asyncio.sleep(0)  # let the frame reach the transport buffer
            return EXIT_INIT_FAILED
        heap.settle()  # the handler and its model, loaded: never walked by a collection again
        self.send(protocol.Ready(os.getpid(), info))
        self.log.info("worker_ready", **info)
        return await self.done

    def load(self, init: protocol.Init) -> dict[str, Any]:
        configure_logging(init.log_level, json_output=True, api=init.api, worker=os.getpid())
        self.log = get_logger()
        # the logging handler kept the real stdout; prints become events with the request id
        sys.stdout, sys.stderr = PrintCapture("stdout"), PrintCapture("stderr")
        project = Path(init.project_dir)
        os.chdir(project)
        for entry in (init.python_path, str(project)):
            if entry and entry not in sys.path:
                sys.path.insert(0, entry)
        sys.path.append(SHIM_PATH)  # last: a project's own module of the same name wins
        context = WorkerContext(
            api=init.api, loop=self.loop, send=self.send, send_threadsafe=self.send_threadsafe,
            pool=ThreadPoolExecutor(max_workers=init.threads, thread_name_prefix="handler"),
            # One handler thread means one call at a time anyway: running it on the loop thread
            # saves two thread switches per request. Frames meanwhile wait in the socket buffer.
            inline=init.threads == 1, max_body_size=init.max_body_size, log=self.log,
            track=self.track, on_callback=self.keep_callback,
        )
        self.runner = load_runner(init.runner)(context, init.options)
        return self.runner.bind(self.runner.load_handler(init, project))

    # -- the channel -------------------------------------------------------------------------

    def send(self, message: protocol.Message) -> None:
        self.channel.send(*message.encode())

    def send_threadsafe(self, message: protocol.Message) -> None:
        self.channel.send_threadsafe(*message.encode())

    def on_frame(self, meta: dict[str, Any], body: bytes) -> None:
        message = protocol.decode(meta, body)
        if isinstance(message, protocol.Sent):
            self.run_callback(message.id)
        elif isinstance(message, protocol.Init):
            if not self.init.done():
                self.init.set_result(message)
        elif isinstance(message, protocol.Stop):
            self.drain()
        elif self.runner is not None:
            self.runner.on_message(message)

    def on_close(self, exc: Exception | None) -> None:
        # The daemon is gone (or closed us): nobody can receive our answers any more.
        if not self.init.done():
            self.init.cancel()
        if not self.done.done():
            self.done.set_result(0)

    # -- lifetime ----------------------------------------------------------------------------

    def drain(self) -> None:
        """Finish what is in flight, then exit (the daemon's stop frame)."""
        self.stopping = True
        if not self.init.done():
            self.init.cancel()
        self.maybe_finish()

    def track(self, future: asyncio.Future[Any]) -> None:
        self.tasks.add(future)
        future.add_done_callback(self._untrack)

    def _untrack(self, future: asyncio.Future[Any]) -> None:
        self.tasks.discard(future)
        self.maybe_finish()

    def maybe_finish(self) -> None:
        if self.stopping and not self.tasks and not self.callbacks and not self.done.done():
            self.done.set_result(0)

    # -- callbacks ---------------------------------------------------------------------------

    def keep_callback(self, call_id: int, callback: Callable[[], Any], request_id: str | None) -> None:
        self.callbacks[call_id] = (callback, request_id)

    def run_callback(self, call_id: int) -> None:
        kept = self.callbacks.pop(call_id, None)
        if kept is not None and self.runner is not None:
            self.track(self.loop.run_in_executor(self.runner.context.pool, self._callback, *kept))

    def _callback(self, callback: Callable[[], Any], request_id: str | None) -> None:
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - a callback never reaches the client
                self.log.error("callback_exception", exc_info=exc)
