"""``RpcBridge``: one API's RPCs served by forwarding each call to its WorkerPool.

Requests and replies stay serialized bytes end to end (no deserializer on this side): the
daemon never needs the user's message classes, only the method shapes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from inferd.http.realtime import new_request_id
from inferd.logs import get_logger
from inferd.metrics import RequestRecorder
from inferd.protos import RpcMethod
from inferd.worker import protocol
from inferd.worker.pool import ApiUnavailable, CallTimedOut, WorkerPool
from inferd.worker.stream import StreamCall

log = get_logger()
STATUS = {code.value[0]: code for code in grpc.StatusCode}
_FACTORIES: dict[str, Callable[..., grpc.RpcMethodHandler]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


class RpcBridge:
    def __init__(self, api: str, pool: WorkerPool, methods: tuple[RpcMethod, ...],
                 recorder: RequestRecorder | None = None) -> None:
        self.api = api
        self.pool = pool
        self.methods = methods
        self.recorder = recorder

    def switch(self, pool: WorkerPool, methods: tuple[RpcMethod, ...]) -> None:
        """A reload replaced the API's workers (and maybe its proto): new calls go to them."""
        self.pool = pool
        self.methods = methods

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """gRPC method path -> handler, for the daemon's routing table."""
        table = {}
        for method in self.methods:
            behaviour = getattr(self, f"_{method.shape}")(method)
            table[method.full_path] = _FACTORIES[method.shape](behaviour)
        return table

    async def _open(self, method: RpcMethod, context: grpc.aio.ServicerContext, body: bytes) -> StreamCall:
        metadata = [(k, v) for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)]
        rid = next((v for k, v in metadata if k == "x-request-id"), None) or new_request_id()
        opened = protocol.Open(0, rid, method.name, [[k, v] for k, v in metadata], context.time_remaining(),
                               context.peer(), body)
        try:
            return await self.pool.open_stream(opened)
        except ApiUnavailable as exc:
            log.warning("rpc_unavailable", api=self.api, rpc=method.name, request_id=rid, error=str(exc))
            if self.recorder is not None:
                self.recorder.observe("UNAVAILABLE", 0.0)
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise  # abort raises; this line only satisfies the type checker

    async def _close(self, call: StreamCall, context: grpc.aio.ServicerContext) -> None:
        code, details = (call.end.code, call.end.details) if call.end is not None else (0, "")
        status = STATUS.get(code, grpc.StatusCode.UNKNOWN)
        if self.recorder is not None:
            self.recorder.observe(status.name, time.perf_counter() - call.started)
        if code != 0:
            await context.abort(status, details)

    async def _single(self, call: StreamCall, context: grpc.aio.ServicerContext, method: RpcMethod) -> bytes | None:
        """A unary call's reply, bounded by handler.request_timeout like every other call: past
        it the client gets DEADLINE_EXCEEDED and the stuck worker is replaced."""
        try:
            return await self.pool.bounded(call.single(), call.abort_worker, f"RPC {method.name}")
        except CallTimedOut as exc:
            if self.recorder is not None:
                self.recorder.observe("DEADLINE_EXCEEDED", time.perf_counter() - call.started)
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
            raise  # abort raises; this line only satisfies the type checker

    async def _feed(self, call: StreamCall, requests: AsyncIterator[bytes]) -> None:
        async for body in requests:
            if not await call.send_input(body):
                return
        call.end_input()

    def _unary_unary(self, method: RpcMethod) -> Callable[..., Any]:
        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes | None:
            call = await self._open(method, context, request)
            try:
                reply = await self._single(call, context, method)
            finally:
                call.cancel()  # no-op once finished; on a deadline or disconnect it stops the worker
            await self._close(call, context)
            return reply
        return handle

    def _unary_stream(self, method: RpcMethod) -> Callable[..., Any]:
        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            call = await self._open(method, context, request)
            try:
                async for body in call.messages():
                    yield body
            finally:
                call.cancel()
            await self._close(call, context)
        return handle

    def _stream_unary(self, method: RpcMethod) -> Callable[..., Any]:
        async def handle(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes | None:
            call = await self._open(method, context, b"")
            feeder = asyncio.get_running_loop().create_task(self._feed(call, requests))
            try:
                reply = await call.single()  # untimed: the client's upload time is not the handler's
            finally:
                feeder.cancel()
                call.cancel()
            await self._close(call, context)
            return reply
        return handle

    def _stream_stream(self, method: RpcMethod) -> Callable[..., Any]:
        async def handle(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            call = await self._open(method, context, b"")
            feeder = asyncio.get_running_loop().create_task(self._feed(call, requests))
            try:
                async for body in call.messages():
                    yield body
            finally:
                feeder.cancel()
                call.cancel()
            await self._close(call, context)
        return handle
