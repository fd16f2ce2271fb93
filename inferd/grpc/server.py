"""``GrpcServer``: the daemon's one grpc.aio server for every gRPC API, with reflection and health.

Routing goes through one generic handler reading a dict that is swapped whole, so APIs can be
added or replaced while the server runs; reflection and health follow the same table.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Mapping

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

from inferd.logs import get_logger
from inferd.protos import CompiledProto
from inferd.protos import descriptor_pool as proto_pool

log = get_logger()
HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"


class Router(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no types: its classes are Any
    def __init__(self) -> None:
        self.table: Mapping[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        # None makes grpc answer UNIMPLEMENTED, as for any unknown method
        return self.table.get(handler_call_details.method)


class LiveReflection(ReflectionServicer):  # type: ignore[misc]  # grpcio-reflection ships no types either
    """grpcio-reflection's servicer, with a service list and pool that follow reloads."""

    def update(self, service_names: Iterable[str], pool: descriptor_pool.DescriptorPool) -> None:
        # the base class reads exactly these two attributes on every request
        self._service_names = tuple(sorted(service_names))
        self._pool = pool


@functools.cache
def _builtin_files() -> tuple[bytes, ...]:
    files = []
    for module in (health_pb2, reflection_pb2):
        fdp = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(fdp)
        files.append(fdp.SerializeToString())
    return tuple(files)


def reflection_pool(protos: Mapping[str, CompiledProto]) -> descriptor_pool.DescriptorPool:
    """One pool describing every served service (each API's proto and its imports)."""
    return proto_pool(*protos.values(), base_files=_builtin_files())


def grpc_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GrpcServer:
    def __init__(self, host: str, port: int, max_message_size: int) -> None:
        self.address = grpc_address(host, port)
        self.router = Router()
        self.health = HealthServicer()
        self.reflection = LiveReflection([HEALTH_SERVICE, REFLECTION_SERVICE], reflection_pool({}))
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", max_message_size),
            ("grpc.max_send_message_length", max_message_size),
            ("grpc.so_reuseport", 0),  # a second daemon on the same port must fail, not share it
        ])
        self.server.add_generic_rpc_handlers((self.router,))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(self.reflection, self.server)
        self.services: dict[str, str] = {}  # service full name -> api
        self.port = port

    async def start(self) -> int:
        """The bound port (port 0 picks a free one); OSError when it cannot be bound."""
        try:
            self.port = self.server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {self.address}: {exc}") from None
        await self.server.start()
        return self.port

    def route(self, table: Mapping[str, grpc.RpcMethodHandler], protos: Mapping[str, CompiledProto]) -> None:
        self.router.table = dict(table)
        self.services = {compiled.service_name: api for api, compiled in protos.items()}
        self.reflection.update([*self.services, HEALTH_SERVICE, REFLECTION_SERVICE], reflection_pool(protos))

    async def set_health(self, ready: Mapping[str, bool]) -> None:
        """``ready``: api -> has a ready worker. The empty service name means 'everything'."""
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        for service, api in self.services.items():
            await self.health.set(service, serving if ready.get(api) else not_serving)
        await self.health.set("", serving if all(ready.values()) else not_serving)

    async def follow_health(self, readiness: Callable[[], Mapping[str, bool]], changed: asyncio.Event) -> None:
        """Mirror worker readiness into the health service on every ``changed``, until cancelled."""
        while True:
            changed.clear()
            try:
                await self.set_health(readiness())
            except Exception as exc:  # noqa: BLE001 - try again on the next change
                log.warning("health_update_failed", error=str(exc))
            await changed.wait()

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
