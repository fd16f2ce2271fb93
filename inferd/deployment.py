"""``Deployment``: the running APIs — a WorkerPool per servable API, its dispatcher, and the
HTTP and gRPC front objects that point at it.

It lives as long as the daemon: a reload builds runtimes for new or changed APIs and swaps
them in (``install``), and the front objects of an API persist across swaps, reading their
pool at call time, so a request never reaches a pool that is already draining.
APIs this version cannot serve (or whose GPUs are missing) are kept with their error, so the
operator sees them in ``/-/apis`` and ``/-/ready`` instead of the daemon refusing to start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from starlette.types import ASGIApp

from inferd.gpu import GpuDevice, GpuRequest, assign_gpus
from inferd.grpc.bridge import RpcBridge
from inferd.grpc.protos import CompiledProto
from inferd.http.asyncapi import AsyncEndpoint
from inferd.http.realtime import RealtimeEndpoint
from inferd.http.responses import send_json
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


async def model_info(scope: Any, receive: Any, send: Any) -> None:
    await send_json(send, 200, {})


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
    digest: str
    pool: WorkerPool | None
    error: str | None = None
    compiled: CompiledProto | None = None
    dispatcher: AsyncDispatcher | None = None

    @property
    def endpoint(self) -> str:
        """gRPC APIs are reached at /<package>.<Service> on the gRPC port, as in Cortex."""
        return f"/{self.compiled.service_name}" if self.compiled else self.spec.networking.endpoint

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.spec.name, "kind": self.spec.kind,
                                "endpoint": self.endpoint,
                                "protocol": "grpc" if self.spec.is_grpc else "http",
                                "gpus_per_replica": self.spec.gpus_per_replica}
        if self.pool is None:
            return {**info, "state": "failed", "error": self.error, "desired_workers": 0,
                    "ready_workers": 0, "restarts": 0, "workers": []}
        return {**info, **self.pool.describe(), "error": self.error or self.pool.error}


class Deployment:
    def __init__(self, settings: Settings, environ: Mapping[str, str], metrics: Metrics,
                 store: AsyncJobStore | None = None, on_change: Callable[[], None] = lambda: None,
                 on_log: Callable[[str, str], None] = lambda api, line: None) -> None:
        self.settings = settings
        self.environ = environ
        self.metrics = metrics
        self.store = store
        self.on_change = on_change
        self.on_log = on_log
        self.proto_cache = proto_cache_dir(settings)
        self.apis: dict[str, ApiRuntime] = {}
        self.fronts: dict[str, RealtimeEndpoint | AsyncEndpoint | RpcBridge] = {}

    # -- building ----------------------------------------------------------------------------

    def build(self, project: ProjectSpec, protos: Mapping[str, CompiledProto], inventory: tuple[GpuDevice, ...],
              digests: Mapping[str, str], names: Iterable[str]) -> dict[str, ApiRuntime]:
        """Runtimes (pools not started) for the named APIs of ``project``."""
        wanted = set(names)
        servable = [api for api in project.apis if unsupported_reason(api) is None and api.name in wanted]
        requests = [GpuRequest(api.name, api.replicas, api.processes_per_replica, api.gpus_per_replica)
                    for api in servable]
        plan = assign_gpus(inventory, requests, self._placed(exclude=wanted))
        for warning in plan.warnings:
            log.warning("gpu_shared", detail=warning)
        built = {}
        for api in project.apis:
            if api.name not in wanted:
                continue
            error = unsupported_reason(api) or plan.errors.get(api.name)
            if error is not None:
                log.error("api_not_started", api=api.name, error=error)
                built[api.name] = ApiRuntime(api, digests[api.name], None, error)
                continue
            compiled = protos.get(api.name)
            pool = WorkerPool(self._pool_config(project, api, compiled, plan.devices[api.name]))
            built[api.name] = ApiRuntime(api, digests[api.name], pool, compiled=compiled)
        return built

    def _placed(self, exclude: set[str]) -> dict[str, list[tuple[int, ...]]]:
        """Devices of the replicas that keep running (a reload builds only what changed)."""
        placed = {}
        for name, runtime in self.apis.items():
            if name in exclude or runtime.pool is None:
                continue
            step = runtime.spec.processes_per_replica
            placed[name] = [slot.gpus for slot in runtime.pool.config.slots[::step] if slot.gpus]
        return placed

    def _pool_config(self, project: ProjectSpec, api: ApiSpec, compiled: CompiledProto | None,
                     devices: tuple[tuple[int, ...], ...]) -> PoolConfig:
        init = init_frame(project, api, self.settings.max_body_size)
        if compiled is not None:
            init["grpc"] = grpc_init(compiled, self.proto_cache)
        return PoolConfig(
            api=api.name,
            init=init,
            cwd=str(project.project_dir),
            slots=worker_slots(self.environ, project, api, devices),
            max_concurrency=self._concurrency(api),
            ready_wait=self.settings.ready_wait,
            stop_timeout=self.settings.shutdown_grace_period,
            on_metric=lambda frame, name=api.name: self.metrics.record_user(name, frame),
            on_restart=self.metrics.worker_restarts.labels(api.name).inc,
            on_change=self.on_change,
            on_log=lambda line, name=api.name: self.on_log(name, line),
        )

    @staticmethod
    def _concurrency(api: ApiSpec) -> int:
        if api.kind == "AsyncAPI":
            return 1  # one job at a time per worker, as Cortex ran one workload per replica
        return api.autoscaling.max_replica_concurrency if api.autoscaling else 1024

    # -- running -----------------------------------------------------------------------------

    def install(self, runtime: ApiRuntime) -> ApiRuntime | None:
        """Make ``runtime`` the served version of its API (its pool started, its front objects
        pointed at it); returns the runtime it replaced, for the caller to ``retire``."""
        name = runtime.spec.name
        previous = self.apis.get(name)
        if runtime.pool is not None:
            if not runtime.pool.started:
                runtime.pool.start()
            if runtime.spec.kind == "AsyncAPI" and self.store is not None:
                runtime.dispatcher = AsyncDispatcher(name, self.store, runtime.pool, len(runtime.pool.config.slots))
                runtime.dispatcher.start()
        self.apis[name] = runtime
        self._point_front(runtime)
        return previous

    def _point_front(self, runtime: ApiRuntime) -> None:
        name = runtime.spec.name
        if runtime.pool is None or (runtime.spec.kind == "AsyncAPI" and self.store is None):
            self.fronts.pop(name, None)
            return
        kind = RpcBridge if runtime.compiled else AsyncEndpoint if runtime.spec.kind == "AsyncAPI" else RealtimeEndpoint
        front = self.fronts.get(name)
        if not isinstance(front, kind):  # new API, or it changed protocol: a new front door
            front = self.fronts[name] = self._new_front(kind, runtime)
        front.repoint(runtime)

    def _new_front(self, kind: type, runtime: ApiRuntime) -> RealtimeEndpoint | AsyncEndpoint | RpcBridge:
        name = runtime.spec.name
        if kind is RpcBridge:
            return RpcBridge(name, runtime.pool, runtime.compiled.methods, self.metrics.recorder(name))
        if kind is AsyncEndpoint:
            return AsyncEndpoint(name, runtime.spec.networking.endpoint, self.store, lambda: None,
                                 self.settings.max_body_size, self.settings.async_max_queue_length)
        return RealtimeEndpoint(name, runtime.pool, self.settings.max_body_size, self.metrics)

    async def retire(self, runtime: ApiRuntime, timeout: float) -> None:
        """Drain a runtime that no longer receives calls: running jobs and requests finish."""
        if runtime.dispatcher is not None:
            await runtime.dispatcher.stop(timeout)
        if runtime.pool is not None:
            await runtime.pool.stop(timeout)

    def remove(self, name: str) -> ApiRuntime | None:
        self.fronts.pop(name, None)
        return self.apis.pop(name, None)

    async def stop(self, timeout: float) -> None:
        await asyncio.gather(*(self.retire(runtime, timeout) for runtime in self.apis.values()))

    def kill(self) -> None:
        for runtime in self.apis.values():
            if runtime.pool is not None:
                runtime.pool.kill()

    # -- what the front doors and the operator see --------------------------------------------

    def routes(self) -> tuple[dict[str, ASGIApp], dict[str, ASGIApp]]:
        """The HTTP routing tables (exact paths, and paths taking one more segment)."""
        routes: dict[str, ASGIApp] = {}
        subroutes: dict[str, ASGIApp] = {}
        for name, front in self.fronts.items():
            endpoint = self.apis[name].spec.networking.endpoint
            if isinstance(front, AsyncEndpoint):
                routes[endpoint] = subroutes[endpoint] = front
            elif isinstance(front, RealtimeEndpoint):
                routes[endpoint] = front
                routes[f"{endpoint}/info"] = model_info  # Cortex's model metadata: none without models
        return routes, subroutes

    def rpc_routes(self) -> dict[str, grpc.RpcMethodHandler]:
        """The gRPC routing table: method path -> handler, for every gRPC API with a pool."""
        table: dict[str, grpc.RpcMethodHandler] = {}
        for front in self.fronts.values():
            if isinstance(front, RpcBridge):
                table.update(front.handlers())
        return table

    def protos(self) -> dict[str, CompiledProto]:
        return {name: rt.compiled for name, rt in self.apis.items() if rt.compiled is not None and rt.pool is not None}

    def readiness(self) -> dict[str, bool]:
        return {name: runtime.pool is not None and runtime.pool.state == "ready"
                for name, runtime in self.apis.items()}

    def describe(self) -> list[dict[str, Any]]:
        return [runtime.describe() for runtime in self.apis.values()]
