"""RealtimeAPI over gRPC, worker side: protobuf bytes in, the Handler's RPC method, bytes out.

Each call runs on a handler thread from ``Open`` to ``End``. Client messages arrive as
``Chunk`` frames into a queue (one ``Credit`` back per message the handler consumed); a
streamed reply is pulled from the handler's iterator only while the daemon has granted credit,
so a slow client slows the generator rather than filling memory.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from inferd.protos import compile_proto, load_pb2
from inferd.worker import protocol
from inferd.worker.handler_class import BoundMethod, HandlerLoadError, check_params
from inferd.worker.models.errors import ModelError
from inferd.worker.models.runtime import ModelRuntime, model_runtime
from inferd.worker.runners.base import Runner

RPC_PARAMS = frozenset({"payload", "context"})
END_OF_INPUT = object()  # put on a call's input queue when the client stream ends

Send = Callable[[protocol.Message], None]


class AbortCall(Exception):
    """Raised by ``context.abort``: ends the call with the given status."""

    def __init__(self, code: int, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def status_value(code: Any) -> int:
    """Accept a ``grpc.StatusCode`` or its integer value."""
    value = getattr(code, "value", code)
    return int(value[0] if isinstance(value, tuple) else value)


class HandlerContext:
    """The part of ``grpc.ServicerContext`` a handler uses, backed by the daemon's real call."""

    def __init__(self, opened: protocol.Open, cancelled: threading.Event) -> None:
        self._metadata = tuple((k, v) for k, v in opened.metadata)
        self._peer = opened.peer
        self._deadline = None if opened.deadline is None else time.monotonic() + opened.deadline
        self._cancelled = cancelled
        self.code: int | None = None
        self.details = ""

    def abort(self, code: Any, details: str = "") -> None:
        raise AbortCall(status_value(code), details)

    def set_code(self, code: Any) -> None:
        self.code = status_value(code)

    def set_details(self, details: str) -> None:
        self.details = details

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def is_active(self) -> bool:
        return not self._cancelled.is_set()

    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())


def rpc_methods(handler: Any, methods: list[dict[str, Any]]) -> dict[str, BoundMethod]:
    """Every RPC of the service must be a Handler method of the same name (Cortex's rule)."""
    missing = [m["name"] for m in methods if not callable(getattr(handler, m["name"], None))]
    if missing:
        raise HandlerLoadError(f"Handler does not define the RPC method(s) {', '.join(missing)} of the service")
    bound = {}
    for method in methods:
        func = getattr(handler, method["name"])
        names = check_params(f"Handler.{method['name']}", func, RPC_PARAMS)
        bound[method["name"]] = BoundMethod(func, tuple(names))
    return bound


class RpcCall:
    """Worker-side state of one gRPC call, shared by the loop thread and a handler thread."""

    def __init__(self, opened: protocol.Open, send: Send) -> None:
        self.id = opened.id
        self.rid = opened.rid
        self._send = send
        self.inputs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.out_credit = threading.Semaphore(protocol.WINDOW)
        self.cancelled = threading.Event()
        self.context = HandlerContext(opened, self.cancelled)

    # called on the loop thread
    def cancel(self) -> None:
        self.cancelled.set()
        self.inputs.put(END_OF_INPUT)
        self.out_credit.release(protocol.WINDOW)  # wake a producer waiting for credit

    def input_iterator(self, parse: Callable[[bytes], Any]) -> Iterator[Any]:
        while True:
            item = self.inputs.get()
            if item is END_OF_INPUT or self.cancelled.is_set():
                return
            self._send(protocol.Credit(self.id, 1))
            yield parse(item)

    def send_message(self, message: Any) -> bool:
        """Block until the daemon can take another message; False if the call was cancelled."""
        self.out_credit.acquire()
        if self.cancelled.is_set():
            return False
        self._send(protocol.Chunk(self.id, message.SerializeToString()))
        return True

    def finish(self, code: int, details: str = "", reply: bytes = b"") -> None:
        """The call's last frame; a unary reply rides in it (one frame, one wake-up, not two)."""
        self._send(protocol.End(self.id, code, details, bool(reply), reply))


def _checked(message: Any, expected: str, method: str) -> Any:
    descriptor = getattr(message, "DESCRIPTOR", None)
    if getattr(descriptor, "full_name", None) != expected:
        raise TypeError(f"{method} returned {type(message).__name__}, expected a {expected} message")
    return message


def run_rpc(call: RpcCall, method: BoundMethod, rpc: dict[str, Any], input_cls: Any, body: bytes, log: Any) -> None:
    """Runs on a handler thread from the first request message to the final status frame."""
    try:
        payload: Any = call.input_iterator(input_cls.FromString) if rpc["client_streaming"] else input_cls.FromString(body)
        result = method.func(**method.kwargs({"payload": payload, "context": call.context}))
        reply = b""
        if rpc["server_streaming"]:
            for message in result:
                if not call.send_message(_checked(message, rpc["output_type"], rpc["name"])):
                    break
        else:
            reply = _checked(result, rpc["output_type"], rpc["name"]).SerializeToString()
        if call.cancelled.is_set():
            call.finish(protocol.CANCELLED, "the client cancelled the call")
        else:
            call.finish(call.context.code or protocol.OK, call.context.details, reply)
    except AbortCall as abort:
        call.finish(abort.code, abort.details)
    except ModelError as exc:  # model_client: an unknown model or version (NOT_FOUND), none loads
        call.finish(exc.grpc_code, str(exc.detail))
    except Exception as exc:  # noqa: BLE001 - the handler's error becomes the call's status
        log.error("handler_exception", rpc=rpc["name"], request_id=call.rid, exc_info=exc)
        call.finish(protocol.INTERNAL, f"{type(exc).__name__}: {exc}")


class GrpcRunner(Runner):
    """Options: ``proto_path``, ``cache_dir`` (the daemon compiled it: this is a cache hit),
    ``methods`` (name, client_streaming, server_streaming, input_type, output_type), and with
    multi_model_reloading ``models`` and ``model_cache_dir``."""

    models: ModelRuntime | None = None

    def constructor_args(self) -> dict[str, Any]:
        # imported here so HTTP-only workers do not pay for protobuf at start
        from google.protobuf import descriptor_pool, message_factory

        compiled = compile_proto(Path(self.options["proto_path"]), Path(self.options["cache_dir"]))
        module = load_pb2(compiled)
        pool = descriptor_pool.Default()
        self.rpcs: dict[str, dict[str, Any]] = {m["name"]: m for m in self.options["methods"]}
        self.input_classes = {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(m["input_type"]))
                              for name, m in self.rpcs.items()}
        self.calls: dict[int, RpcCall] = {}
        self.models = model_runtime(self.options, self.context.send_threadsafe, self.log)
        models = self.models.constructor_args() if self.models is not None else {}
        # Cortex's validator wants proto_module_pb2; its docs wrote module_proto_pb2: accept both
        return {"proto_module_pb2": module, "module_proto_pb2": module, **models}

    def bind(self, handler: Any) -> dict[str, Any]:
        self.rpc_methods = rpc_methods(handler, self.options["methods"])
        if self.models is not None:
            self.models.start(handler)
        return {}

    def on_message(self, message: protocol.Message) -> None:
        if isinstance(message, protocol.Open):
            self.start(message)
            return
        call = self.calls.get(getattr(message, "id", -1))
        if call is None:
            return
        if isinstance(message, protocol.Chunk):
            call.inputs.put(message.body)
        elif isinstance(message, protocol.InputEnd):
            call.inputs.put(END_OF_INPUT)
        elif isinstance(message, protocol.Credit):
            call.out_credit.release(message.n)
        elif isinstance(message, protocol.Cancel):
            call.cancel()

    def start(self, opened: protocol.Open) -> None:
        rpc = self.rpcs.get(opened.method)
        if rpc is None:  # a reload changed the proto after the daemon routed the call
            self.context.send(protocol.End(opened.id, 12, f"method {opened.method} is not implemented"))
            return
        args = (self.rpc_methods[opened.method], rpc, self.input_classes[opened.method], opened.body, self.log)
        context = self.context
        if context.inline and not (rpc["client_streaming"] or rpc["server_streaming"]):
            # one thread and one message each way: nothing can block on credit, run it here
            run_rpc(RpcCall(opened, context.send), *args)
            return
        call = RpcCall(opened, context.send_threadsafe)
        self.calls[call.id] = call
        future = context.loop.run_in_executor(context.pool, run_rpc, call, *args)
        future.add_done_callback(lambda _: self.calls.pop(call.id, None))
        context.track(future)
