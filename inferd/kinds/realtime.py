"""RealtimeAPI: ``handle_<verb>`` over HTTP at ``/<endpoint>``, or the RPCs of its
``protobuf_path`` over gRPC (then reached at ``/<package>.<Service>`` on the gRPC port)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from starlette.types import Receive, Scope, Send

from inferd.containers.proxy import ContainerProxy
from inferd.grpc.bridge import RpcBridge
from inferd.http.cors import with_cors
from inferd.http.realtime import RealtimeEndpoint
from inferd.http.responses import send_json
from inferd.http.routing import BaseRoute, Route
from inferd.kinds.base import ApiRuntime, Front, Kind, KindContext, WorkerLaunch, endpoint_mount
from inferd.kinds.containers import container_backend, unrunnable
from inferd.protos import CompiledProto
from inferd.spec import ApiSpec, HandlerSpec, plain
from inferd.worker.backend import BackendFactory

HTTP_RUNNER = "inferd.worker.runners.http:HttpRunner"
GRPC_RUNNER = "inferd.worker.runners.grpc:GrpcRunner"


async def model_info(scope: Scope, receive: Receive, send: Send) -> None:
    """Cortex's model metadata at ``/<endpoint>/info``: none for APIs without models."""
    await send_json(send, 200, {})


def grpc_options(compiled: CompiledProto, context: KindContext) -> dict[str, Any]:
    """What a gRPC worker needs to load the same compiled module (a cache hit) and route RPCs."""
    return {"proto_path": str(compiled.proto_path), "cache_dir": str(context.proto_cache),
            "service": compiled.service_name,
            "methods": [{"name": m.name, "client_streaming": m.client_streaming,
                         "server_streaming": m.server_streaming, "input_type": m.input_type,
                         "output_type": m.output_type} for m in compiled.methods]}


def model_options(handler: HandlerSpec | None, context: KindContext) -> dict[str, Any]:
    """multi_model_reloading for the worker, and where remote models are downloaded."""
    if handler is None or handler.multi_model_reloading is None:
        return {}
    return {"models": plain(handler.multi_model_reloading),
            "model_cache_dir": str(context.settings.state_dir / "models")}


class RealtimeKind(Kind):
    """The handler generation (``handle_<verb>`` in inferd's workers, over HTTP or gRPC) and the
    container generation (``pod.containers``: the user's web server, behind ``ContainerProxy``)."""

    name = "RealtimeAPI"

    def unsupported(self, api: ApiSpec) -> str | None:
        if api.pod is not None:
            return unrunnable(api)
        return super().unsupported(api)

    def worker_concurrency(self, api: ApiSpec) -> int:
        if api.pod is not None:  # admission is the proxy's (ContainerReplica.admit)
            return api.pod.max_concurrency + api.pod.max_queue_length
        return super().worker_concurrency(api)

    def backend(self, runtime: ApiRuntime, context: KindContext, launch: WorkerLaunch) -> BackendFactory | None:
        return container_backend(runtime, context, launch) if runtime.spec.pod is not None else None

    def runner(self, runtime: ApiRuntime, context: KindContext) -> tuple[str, dict[str, Any]]:
        handler = runtime.spec.handler
        models = model_options(handler, context)
        if runtime.compiled is not None:
            return GRPC_RUNNER, {**grpc_options(runtime.compiled, context), **models}
        batching = handler.server_side_batching if handler is not None else None
        options = {"batching": {"max_batch_size": batching.max_batch_size,
                                "batch_interval": batching.batch_interval}} if batching else {}
        return HTTP_RUNNER, {**options, **models}

    def front(self, runtime: ApiRuntime, context: KindContext, current: Front | None) -> Front | None:
        pool = runtime.pool
        if pool is None:
            return None
        if runtime.spec.pod is not None:
            endpoint = runtime.spec.networking.endpoint
            if isinstance(current, ContainerProxy):
                current.switch(pool, endpoint)
                return current
            return ContainerProxy(runtime.name, endpoint, pool, context.settings.max_body_size, context.metrics)
        if runtime.compiled is not None:
            if isinstance(current, RpcBridge):
                current.switch(pool, runtime.compiled.methods)
                return current
            return RpcBridge(runtime.name, pool, runtime.compiled.methods, context.metrics.recorder(runtime.name))
        if isinstance(current, RealtimeEndpoint):
            current.switch(pool)
            return current
        settings = context.settings
        return RealtimeEndpoint(runtime.name, pool, settings.max_body_size, context.metrics, settings.max_header_size)

    def describe(self, runtime: ApiRuntime) -> dict[str, Any]:
        """What the API answers: its RPCs, or the HTTP verbs its Handler defines (once a worker
        has reported them)."""
        if runtime.compiled is not None:
            return {"rpcs": [method.name for method in runtime.compiled.methods]}
        if runtime.spec.pod is not None:  # the container answers whatever it answers
            pod = runtime.spec.pod
            return {"verbs": ["*"], "pod": {"port": pod.port, "max_concurrency": pod.max_concurrency,
                                            "max_queue_length": pod.max_queue_length,
                                            "containers": [c.name for c in pod.containers]}}
        info = runtime.pool.info if runtime.pool is not None else None
        return {"verbs": [verb.upper() for verb in info["verbs"]]} if info else {}

    def routes(self, runtime: ApiRuntime, front: Front) -> Sequence[BaseRoute]:
        if isinstance(front, ContainerProxy):  # every sub-path is the container's
            return endpoint_mount(runtime, front)
        endpoint, origins = runtime.spec.networking.endpoint, runtime.spec.networking.allow_origins
        if not isinstance(front, RealtimeEndpoint):
            return ()
        return (Route(endpoint, with_cors(front, origins, runtime.name)),
                Route(f"{endpoint}/info", with_cors(model_info, origins, runtime.name)))

    def rpc_routes(self, front: Front) -> dict[str, grpc.RpcMethodHandler]:
        return front.handlers() if isinstance(front, RpcBridge) else {}
