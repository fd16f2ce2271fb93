"""gRPC calls inside the worker: protobuf bytes in, the Handler's RPC method, bytes out.

Each call runs on a handler thread. Client messages arrive as ``in`` frames into a bounded
queue (one credit back per message the handler consumed); a streamed reply is pulled from
the handler's iterator only while the daemon has granted credit, so a slow client slows the
generator rather than filling memory.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from inferd.worker.handler_class import BoundMethod, HandlerLoadError, check_params
from inferd.worker.stream import WINDOW

OK, CANCELLED, INTERNAL = 0, 1, 13
RPC_PARAMS = frozenset({"payload", "context"})
END_OF_INPUT = object()  # put on a call's input queue when the client stream ends

Send = Callable[[dict[str, Any], bytes], None]


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

    def __init__(self, meta: dict[str, Any], cancelled: threading.Event) -> None:
        self._metadata = tuple((k, v) for k, v in meta.get("md", ()))
        self._peer = meta.get("peer", "")
        deadline = meta.get("deadline")
        self._deadline = None if deadline is None else time.monotonic() + deadline
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
    bound = {}
    missing = [m["name"] for m in methods if not callable(getattr(handler, m["name"], None))]
    if missing:
        raise HandlerLoadError(f"Handler does not define the RPC method(s) {', '.join(missing)} of the service")
    for method in methods:
        func = getattr(handler, method["name"])
        names = check_params(f"Handler.{method['name']}", func, RPC_PARAMS)
        bound[method["name"]] = BoundMethod(func, tuple(names))
    return bound


class RpcCall:
    """Worker-side state of one gRPC call, shared by the loop thread and a handler thread."""

    def __init__(self, meta: dict[str, Any], send: Send) -> None:
        self.id = meta["id"]
        self.meta = meta
        self._send = send
        self.inputs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.out_credit = threading.Semaphore(WINDOW)
        self.cancelled = threading.Event()
        self.context = HandlerContext(meta, self.cancelled)

    # called on the loop thread
    def cancel(self) -> None:
        self.cancelled.set()
        self.inputs.put(END_OF_INPUT)
        self.out_credit.release(WINDOW)  # wake a producer waiting for credit

    def input_iterator(self, parse: Callable[[bytes], Any]) -> Iterator[Any]:
        while True:
            item = self.inputs.get()
            if item is END_OF_INPUT or self.cancelled.is_set():
                return
            self._send({"t": "credit", "id": self.id, "n": 1}, b"")
            yield parse(item)

    def send_message(self, message: Any) -> bool:
        """Block until the daemon can take another message; False if the call was cancelled."""
        self.out_credit.acquire()
        if self.cancelled.is_set():
            return False
        self._send({"t": "msg", "id": self.id}, message.SerializeToString())
        return True

    def finish(self, code: int, details: str = "", reply: bytes = b"") -> None:
        """The call's last frame; a unary reply rides in it (one frame, one wake-up, not two)."""
        self._send({"t": "end", "id": self.id, "code": code, "details": details, "reply": bool(reply)}, reply)


def _checked(message: Any, expected: str, method: str) -> Any:
    descriptor = getattr(message, "DESCRIPTOR", None)
    if getattr(descriptor, "full_name", None) != expected:
        raise TypeError(f"{method} returned {type(message).__name__}, expected a {expected} message")
    return message


def run_rpc(call: RpcCall, method: BoundMethod, rpc: dict[str, Any], input_cls: Any, body: bytes, log: Any) -> None:
    """Runs on a handler thread from the first request message to the final status frame."""
    try:
        if rpc["client_streaming"]:
            payload: Any = call.input_iterator(input_cls.FromString)
        else:
            payload = input_cls.FromString(body)
        result = method.func(**method.kwargs({"payload": payload, "context": call.context}))
        reply = b""
        if rpc["server_streaming"]:
            for message in result:
                if not call.send_message(_checked(message, rpc["output_type"], rpc["name"])):
                    break
        else:
            reply = _checked(result, rpc["output_type"], rpc["name"]).SerializeToString()
        if call.cancelled.is_set():
            call.finish(CANCELLED, "the client cancelled the call")
        else:
            call.finish(call.context.code or OK, call.context.details, reply)
    except AbortCall as abort:
        call.finish(abort.code, abort.details)
    except Exception as exc:  # noqa: BLE001 - the handler's error becomes the call's status
        log.error("handler_exception", rpc=rpc["name"], request_id=call.meta.get("rid"), exc_info=exc)
        call.finish(INTERNAL, f"{type(exc).__name__}: {exc}")
