"""The worker process: loads one API's Handler and answers the daemon's call frames.

Sync handler methods run on ``threads_per_process`` threads, async ones on the loop. A
callback returned with a result runs only when the daemon reports that the response has
left (the ``sent`` frame), so it can never race the client.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog
from starlette.datastructures import Headers, QueryParams
from starlette.exceptions import HTTPException

from inferd.compat import SHIM_PATH
from inferd.logs import configure_logging, get_logger
from inferd.worker.batching import Batcher
from inferd.worker.handler_class import (
    BoundMethod,
    async_methods,
    construct,
    find_class,
    http_methods,
    load_module,
)
from inferd.worker.ipc import FrameProtocol
from inferd.worker.metrics_client import MetricsClient
from inferd.worker.output import PrintCapture
from inferd.worker.payload import PayloadError, is_form, parse_form, parse_payload
from inferd.worker.render import (
    JSON,
    RenderError,
    error_body,
    render,
    render_json,
    split_callback,
)
from inferd.worker.rpc import END_OF_INPUT, RpcCall, rpc_methods, run_rpc

Outcome = tuple[int, list[list[str]], bytes, Callable[[], Any] | None]

EXIT_INIT_FAILED = 3


class WorkerRuntime:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.api = "?"
        self.log = get_logger()
        self.methods: dict[str, BoundMethod] = {}
        self.batcher: Batcher | None = None
        self.callbacks: dict[int, Callable[[], Any]] = {}
        self.tasks: set[asyncio.Future[Any]] = set()
        self.stopping = False
        self.inline = False
        self.calls: dict[int, RpcCall] = {}
        self.max_part_size = 20 << 20

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.done: asyncio.Future[int] = self.loop.create_future()
        self.init: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        sock = socket.socket(fileno=self.fd)
        _, self.channel = await self.loop.connect_accepted_socket(
            lambda: FrameProtocol(self.on_frame, self.on_close), sock
        )
        try:
            init = await self.init
        except asyncio.CancelledError:  # the daemon went away or stopped us before init
            return 0
        try:
            self.load(init)
        except BaseException as exc:  # noqa: BLE001 - anything the user's import or __init__ raised
            text = "".join(traceback.format_exception(exc))
            self.log.error("handler_init_failed", error=str(exc), traceback=text)
            self.channel.send({"t": "init_failed", "error": f"{type(exc).__name__}: {exc}", "traceback": text})
            await asyncio.sleep(0)  # let the frame reach the transport buffer
            return EXIT_INIT_FAILED
        verbs = {verb: list(method.wants) for verb, method in self.methods.items()}
        self.channel.send({"t": "ready", "pid": os.getpid(), "verbs": verbs})
        self.log.info("worker_ready", verbs=sorted(self.methods))
        return await self.done

    def load(self, init: dict[str, Any]) -> None:
        self.api = init["api"]
        configure_logging(init.get("log_level", "info"), json_output=True, api=self.api, worker=os.getpid())
        self.log = get_logger()
        # the logging handler kept the real stdout; prints become events with the request id
        sys.stdout, sys.stderr = PrintCapture("stdout"), PrintCapture("stderr")
        project = Path(init["project_dir"])
        os.chdir(project)
        for entry in (init.get("python_path"), str(project)):
            if entry and entry not in sys.path:
                sys.path.insert(0, entry)
        sys.path.append(SHIM_PATH)  # last: a project's own module of the same name wins
        self.max_part_size = init.get("max_body_size", self.max_part_size)
        threads = init.get("threads", 1)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="handler")
        # One handler thread means one call at a time anyway: running it on the loop thread
        # saves two thread switches per request. Frames meanwhile wait in the socket buffer.
        self.inline = threads == 1
        module = load_module(project / init["handler_path"])
        cls = find_class(module)
        # the init frame was decoded for this process alone: the config is already a private copy
        available = {"config": init.get("config") or {},
                     "metrics_client": MetricsClient(self.channel.send_threadsafe)}
        grpc = init.get("grpc")
        if grpc:
            available.update(self.load_proto(grpc))
        handler = construct(cls, available)
        if grpc:
            self.rpcs = {m["name"]: m for m in grpc["methods"]}
            self.rpc_methods = rpc_methods(handler, grpc["methods"])
            return
        if init.get("kind") == "AsyncAPI":
            self.methods = async_methods(handler)
            return
        self.methods = http_methods(handler)
        batching = init.get("batching")
        if batching and "post" in self.methods:
            self.batcher = Batcher(batching["max_batch_size"], batching["batch_interval"], self.run_batch)

    def load_proto(self, grpc: dict[str, Any]) -> dict[str, Any]:
        """The daemon compiled the proto already: this is a cache hit that imports ``<stem>_pb2``."""
        # imported here so HTTP-only workers do not pay for protobuf at start
        from google.protobuf import descriptor_pool, message_factory

        from inferd.grpc.protos import compile_proto, load_pb2

        compiled = compile_proto(Path(grpc["proto_path"]), Path(grpc["cache_dir"]))
        module = load_pb2(compiled)
        pool = descriptor_pool.Default()
        self.input_classes = {m["name"]: message_factory.GetMessageClass(pool.FindMessageTypeByName(m["input_type"]))
                              for m in grpc["methods"]}
        # Cortex's validator wants proto_module_pb2; its docs wrote module_proto_pb2: accept both
        return {"proto_module_pb2": module, "module_proto_pb2": module}

    # -- frames from the daemon -------------------------------------------------------------

    def on_frame(self, meta: dict[str, Any], body: bytes) -> None:
        kind = meta["t"]
        if kind == "call":
            self.track(self.loop.create_task(self.handle_call(meta, body)))
        elif kind == "rpc":
            self.start_rpc(meta, body)
        elif kind in ("in", "in_end", "credit", "cancel"):
            self.rpc_frame(kind, meta, body)
        elif kind == "sent":
            callback = self.callbacks.pop(meta["id"], None)
            if callback is not None:
                self.track(self.loop.run_in_executor(self.pool, self.run_callback, callback, meta.get("rid")))
        elif kind == "init" and not self.init.done():
            self.init.set_result(meta)
        elif kind == "stop":
            self.drain()

    def drain(self) -> None:
        """Finish what is in flight, then exit (the daemon's stop frame)."""
        self.stopping = True
        if not self.init.done():
            self.init.cancel()
        self.maybe_finish()

    def on_close(self, exc: Exception | None) -> None:
        # The daemon is gone (or closed us): nobody can receive our answers any more.
        if not self.init.done():
            self.init.cancel()
        if not self.done.done():
            self.done.set_result(0)

    def track(self, future: asyncio.Future[Any]) -> None:
        self.tasks.add(future)
        future.add_done_callback(self._untrack)

    def _untrack(self, future: asyncio.Future[Any]) -> None:
        self.tasks.discard(future)
        self.maybe_finish()

    def maybe_finish(self) -> None:
        if self.stopping and not self.tasks and not self.callbacks and not self.done.done():
            self.done.set_result(0)

    # -- one request -----------------------------------------------------------------------

    async def handle_call(self, meta: dict[str, Any], body: bytes) -> None:
        """Every call gets exactly one reply, whatever happens: a call without one would hang
        its client and hold a worker slot forever."""
        try:
            outcome = await self.outcome_of(meta, body)
        except BaseException as exc:
            self.log.error("call_failed", verb=meta.get("verb"), request_id=meta.get("rid"), exc_info=exc)
            self.reply(meta, (500, JSON, error_body(self.api, f"{type(exc).__name__}: {exc}"), None))
            if not isinstance(exc, Exception):
                raise
            return
        self.reply(meta, outcome)

    async def outcome_of(self, meta: dict[str, Any], body: bytes) -> Outcome:
        method = self.methods.get(meta["verb"])
        if method is None:  # e.g. a reload removed the verb after the daemon checked it
            allowed = ", ".join(v.upper() for v in self.methods)
            return 405, JSON, error_body(self.api, f"method {meta['verb'].upper()} is not implemented "
                                                   f"(allowed: {allowed})"), None
        try:
            if self.batcher is not None and meta["verb"] == "post":
                outcome = await self.batched_call(method, meta, body)
            else:
                form = await self.form_payload(method, meta, body)
                if method.is_async:
                    outcome = await self.call_async(method, meta, body, form)
                elif self.inline:
                    outcome = self.call_sync(method, meta, body, form)
                else:
                    outcome = await self.loop.run_in_executor(self.pool, self.call_sync, method, meta, body, form)
        except PayloadError as exc:
            outcome = 400, JSON, error_body(self.api, str(exc)), None
        return outcome

    def reply(self, meta: dict[str, Any], outcome: Outcome) -> None:
        status, headers, out, callback = outcome
        if callback is not None:
            self.callbacks[meta["id"]] = callback
        self.channel.send({"t": "reply", "id": meta["id"], "status": status, "h": headers,
                           "cb": callback is not None}, out)

    async def form_payload(self, method: BoundMethod, meta: dict[str, Any], body: bytes) -> Any:
        # AsyncAPI payloads are never form-parsed (Cortex hands them over as bytes)
        if "payload" in method.wants and meta["verb"] != "async" and is_form(meta.get("ct", "")):
            return await parse_form(meta["ct"], body, self.max_part_size)
        return None

    def arguments(self, method: BoundMethod, meta: dict[str, Any], body: bytes, form: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if "payload" in method.wants:
            values["payload"] = form if form is not None else parse_payload(meta.get("ct", ""), body)
        if "request_id" in method.wants:
            values["request_id"] = meta["rid"]
        if "query_params" in method.wants:
            values["query_params"] = QueryParams(meta.get("q", ""))
        if "headers" in method.wants:
            values["headers"] = Headers(raw=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in meta["h"]])
        return values

    def call_sync(self, method: BoundMethod, meta: dict[str, Any], body: bytes, form: Any) -> Outcome:
        with structlog.contextvars.bound_contextvars(request_id=meta.get("rid")):
            try:
                result = method.func(**self.arguments(method, meta, body, form))
            except Exception as exc:  # noqa: BLE001 - the handler's error becomes the response
                return self.failure(meta, exc)
            return self.outcome(meta, result)

    async def call_async(self, method: BoundMethod, meta: dict[str, Any], body: bytes, form: Any) -> Outcome:
        with structlog.contextvars.bound_contextvars(request_id=meta.get("rid")):
            try:
                result = await method.func(**self.arguments(method, meta, body, form))
            except Exception as exc:  # noqa: BLE001
                return self.failure(meta, exc)
            return self.outcome(meta, result)

    def outcome(self, meta: dict[str, Any], result: Any) -> Outcome:
        value, callback = split_callback(result) if meta["verb"] != "async" else (result, None)
        try:
            status, headers, out = render_json(value) if meta["verb"] == "async" else render(value)
        except RenderError as exc:
            self.log.error("handler_result_invalid", error=str(exc), request_id=meta.get("rid"))
            return 500, JSON, error_body(self.api, str(exc)), None
        return status, headers, out, callback

    def failure(self, meta: dict[str, Any], exc: Exception) -> Outcome:
        if isinstance(exc, PayloadError):
            return 400, JSON, error_body(self.api, str(exc)), None
        if isinstance(exc, HTTPException):
            return exc.status_code, JSON, error_body(self.api, str(exc.detail)), None
        self.log.error("handler_exception", verb=meta["verb"], request_id=meta.get("rid"),
                       exc_info=exc)
        return 500, JSON, error_body(self.api, f"{type(exc).__name__}: {exc}"), None

    # -- gRPC -------------------------------------------------------------------------------

    def start_rpc(self, meta: dict[str, Any], body: bytes) -> None:
        name = meta["m"]
        rpc = self.rpcs[name]
        args = (self.rpc_methods[name], rpc, self.input_classes[name], body, self.log)
        if self.inline and not (rpc["client_streaming"] or rpc["server_streaming"]):
            # one thread and one message each way: nothing can block on credit, run it here
            run_rpc(RpcCall(meta, self.channel.send), *args)
            return
        call = RpcCall(meta, self.channel.send_threadsafe)
        self.calls[call.id] = call
        future = self.loop.run_in_executor(self.pool, run_rpc, call, *args)
        future.add_done_callback(lambda _: self.calls.pop(call.id, None))
        self.track(future)

    def rpc_frame(self, kind: str, meta: dict[str, Any], body: bytes) -> None:
        call = self.calls.get(meta["id"])
        if call is None:
            return
        if kind == "in":
            call.inputs.put(body)
        elif kind == "in_end":
            call.inputs.put(END_OF_INPUT)
        elif kind == "credit":
            call.out_credit.release(meta["n"])
        else:
            call.cancel()

    # -- server-side batching ----------------------------------------------------------------

    async def batched_call(self, method: BoundMethod, meta: dict[str, Any], body: bytes) -> Outcome:
        form = await self.form_payload(method, meta, body)
        values = self.arguments(method, meta, body, form)
        return await self.batcher.submit({"meta": meta, "values": values})  # type: ignore[union-attr]

    async def run_batch(self, items: list[dict[str, Any]]) -> list[Outcome]:
        method = self.methods["post"]
        kwargs = {name: [item["values"][name] for item in items] for name in method.wants}
        return await self.loop.run_in_executor(self.pool, self.call_batch, method, kwargs, items)

    def call_batch(self, method: BoundMethod, kwargs: dict[str, list[Any]], items: list[dict[str, Any]]) -> list[Outcome]:
        first = items[0]["meta"]
        try:
            results = method.func(**kwargs)
        except Exception as exc:  # noqa: BLE001
            return [self.failure(first, exc)] * len(items)
        if not isinstance(results, list) or len(results) != len(items):
            got = f"{len(results)} results" if isinstance(results, list) else f"a {type(results).__name__}"
            message = (f"handle_post returned {got} for a batch of {len(items)} requests; "
                       "with server_side_batching it must return a list of the same length")
            self.log.error("batch_result_invalid", error=message)
            return [(500, JSON, error_body(self.api, message), None)] * len(items)
        return [self.outcome(item["meta"], result) for item, result in zip(items, results)]

    # -- callbacks ---------------------------------------------------------------------------

    def run_callback(self, callback: Callable[[], Any], request_id: str | None) -> None:
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - a callback never reaches the client
                self.log.error("callback_exception", exc_info=exc)
