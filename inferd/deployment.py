"""``Deployment``: the running form of one ``ProjectSpec`` — a WorkerPool per servable API,
the GPU plan, and the HTTP routing table that points at them.

APIs this version cannot serve (or whose GPUs are missing) are kept with their error, so the
operator sees them in ``/-/apis`` and ``/-/ready`` instead of the daemon refusing to start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp

import grpc

from inferd.grpc.bridge import RpcBridge
from inferd.grpc.protos import CompiledProto
from inferd.gpu import GpuDevice, GpuRequest, assign_gpus
from inferd.http.asyncapi import AsyncEndpoint
from inferd.http.realtime import RealtimeEndpoint
from inferd.jobs.async_dispatch import AsyncDispatcher
from inferd.logs import get_logger
from inferd.metrics import Metrics
from inferd.settings import Settings
from inferd.spec import ApiSpec, ProjectSpec
from inferd.store import AsyncJobStore
from inferd.worker.launch import init_frame, worker_slots
from inferd.worker.pool import PoolConfig, WorkerPool

log = get_logger()


def proto_cache_dir(settings: Settings) -> Path:
    return settings.state_dir / "protos"


def grpc_init(compiled: CompiledProto, cache: Path) -> dict[str, Any]:
    """What a gRPC worker needs to load the same compiled module (a cache hit) and route RPCs."""
    return {"proto_path": str(compiled.proto_path), "cache_dir": str(cache),
            "service": compiled.service_name,
            "methods": [{"name": m.name, "client_streaming": m.client_streaming,
                         "server_streaming": m.server_streaming, "input_type": m.input_type,
                         "output_type": m.output_type} for m in compiled.methods]}


def unsupported_reason(api: ApiSpec) -> str | None:
    """Why this version of inferd cannot serve the API yet, or None when it can."""
    if api.kind not in ("RealtimeAPI", "AsyncAPI"):
        return f"{api.kind} is not supported by this version of inferd yet (RealtimeAPI and AsyncAPI are)"
    if api.pod is not None:
        return "APIs with pod.containers are not supported by this version of inferd yet"
    if api.handler is None:
        return "the API has no handler block"
    if api.handler.type != "python":
        return f"handler.type {api.handler.type} is not supported by inferd; use type: python"
    return None


@dataclass
class ApiRuntime:
    spec: ApiSpec
    pool: WorkerPool | None
    error: str | None = None
    service: str | None = None

    @property
    def endpoint(self) -> str:
        """gRPC APIs are reached at /<package>.<Service> on the gRPC port, as in Cortex."""
        return f"/{self.service}" if self.service else self.spec.networking.endpoint

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.spec.name, "kind": self.spec.kind,
                                "endpoint": self.endpoint,
                                "protocol": "grpc" if self.spec.is_grpc else "http",
                                "gpus_per_replica": self.spec.gpus_per_replica}
        if self.pool is None:
            return {**info, "state": "failed", "error": self.error, "desired_workers": 0,
                    "ready_workers": 0, "workers": []}
        return {**info, **self.pool.describe(), "error": self.error or self.pool.error}


class Deployment:
    def __init__(self, project: ProjectSpec, settings: Settings, environ: Mapping[str, str],
                 inventory: tuple[GpuDevice, ...], metrics: Metrics,
                 protos: Mapping[str, CompiledProto] | None = None,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.project = project
        self.protos = dict(protos or {})
        self.proto_cache = proto_cache_dir(settings)
        self.on_change = on_change
        self.dispatchers: dict[str, AsyncDispatcher] = {}
        self.apis: dict[str, ApiRuntime] = {}
        servable = [api for api in project.apis if unsupported_reason(api) is None]
        plan = assign_gpus(inventory, [GpuRequest(api.name, max(api.worker_count // api.processes_per_replica, 1),
                                                  api.processes_per_replica, api.gpus_per_replica)
                                       for api in servable])
        for warning in plan.warnings:
            log.warning("gpu_shared", detail=warning)
        for api in project.apis:
            error = unsupported_reason(api) or plan.errors.get(api.name)
            if error is not None:
                log.error("api_not_started", api=api.name, error=error)
                self.apis[api.name] = ApiRuntime(api, None, error)
                continue
            pool = WorkerPool(self._pool_config(api, settings, environ, plan.devices[api.name], metrics))
            compiled = self.protos.get(api.name)
            self.apis[api.name] = ApiRuntime(api, pool, service=compiled.service_name if compiled else None)

    def _pool_config(self, api: ApiSpec, settings: Settings, environ: Mapping[str, str],
                     devices: tuple[tuple[int, ...], ...], metrics: Metrics) -> PoolConfig:
        restarts = metrics.worker_restarts.labels(api.name)
        init = init_frame(self.project, api, settings.max_body_size)
        if api.name in self.protos:
            init["grpc"] = grpc_init(self.protos[api.name], self.proto_cache)
        return PoolConfig(
            api=api.name,
            init=init,
            cwd=str(self.project.project_dir),
            slots=worker_slots(environ, self.project, api, devices),
            max_concurrency=self._concurrency(api),
            ready_wait=settings.ready_wait,
            stop_timeout=settings.shutdown_grace_period,
            on_metric=lambda frame, name=api.name: metrics.record_user(name, frame),
            on_restart=restarts.inc,
            on_change=self.on_change,
        )

    @staticmethod
    def _concurrency(api: ApiSpec) -> int:
        if api.kind == "AsyncAPI":
            return 1  # one job at a time per worker, as Cortex ran one workload per replica
        return api.autoscaling.max_replica_concurrency if api.autoscaling else 1024

    def pools(self) -> list[WorkerPool]:
        return [runtime.pool for runtime in self.apis.values() if runtime.pool is not None]

    def start(self, store: AsyncJobStore | None = None) -> None:
        """Start every pool, and a dispatcher per AsyncAPI feeding it from ``store``."""
        for pool in self.pools():
            pool.start()
        for name, runtime in self.apis.items():
            if runtime.spec.kind == "AsyncAPI" and runtime.pool is not None and store is not None:
                slots = len(runtime.pool.config.slots)
                self.dispatchers[name] = AsyncDispatcher(name, store, runtime.pool, slots)
                self.dispatchers[name].start()

    async def stop(self, timeout: float) -> None:
        # dispatchers first: a job already handed to a worker gets to finish before its pool drains
        await asyncio.gather(*(d.stop(timeout) for d in self.dispatchers.values()))
        await asyncio.gather(*(pool.stop(timeout) for pool in self.pools()))

    def kill(self) -> None:
        for pool in self.pools():
            pool.kill()

    def routes(self, settings: Settings, metrics: Metrics,
               store: AsyncJobStore | None = None) -> tuple[dict[str, ASGIApp], dict[str, ASGIApp]]:
        """The HTTP routing tables (exact paths, and paths taking one more segment)."""
        routes: dict[str, ASGIApp] = {}
        subroutes: dict[str, ASGIApp] = {}
        for name, runtime in self.apis.items():
            endpoint = runtime.spec.networking.endpoint
            if runtime.pool is None or runtime.spec.is_grpc:
                continue
            if runtime.spec.kind == "AsyncAPI":
                if store is None:
                    continue
                dispatcher = self.dispatchers.get(name)
                app = AsyncEndpoint(name, endpoint, store, dispatcher.notify if dispatcher else lambda: None,
                                    settings.max_body_size, settings.async_max_queue_length)
                routes[endpoint] = subroutes[endpoint] = app
            else:
                routes[endpoint] = RealtimeEndpoint(name, runtime.pool, settings.max_body_size, metrics)
        return routes, subroutes

    def rpc_routes(self) -> dict[str, grpc.RpcMethodHandler]:
        """The gRPC routing table: method path -> handler, for every gRPC API with a pool."""
        table: dict[str, grpc.RpcMethodHandler] = {}
        for name, compiled in self.protos.items():
            pool = self.apis[name].pool
            if pool is not None:
                table.update(RpcBridge(name, pool, compiled.methods).handlers())
        return table

    def readiness(self) -> dict[str, bool]:
        return {name: runtime.pool is not None and runtime.pool.state == "ready"
                for name, runtime in self.apis.items()}

    def describe(self) -> list[dict[str, Any]]:
        return [runtime.describe() for runtime in self.apis.values()]
