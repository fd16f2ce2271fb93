"""The gRPC baseline: a bare grpc.aio server calling the same no-op Handler in-process."""

import asyncio
import importlib
import sys

import grpc

stubs, port = sys.argv[1], int(sys.argv[2])
sys.path[:0] = [stubs, sys.argv[3]]
pb2 = importlib.import_module("noop_pb2")
pb2_grpc = importlib.import_module("noop_pb2_grpc")
from noop_grpc_handler import Handler  # noqa: E402

handler = Handler(config={}, proto_module_pb2=pb2)


class Servicer(pb2_grpc.NoopServicer):
    async def Predict(self, request, context):
        return handler.Predict(request)


async def main() -> None:
    server = grpc.aio.server()
    pb2_grpc.add_NoopServicer_to_server(Servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


asyncio.run(main())
