"""``Deployment``: the running APIs — a WorkerPool per servable API, its queue consumer, and
the front objects (HTTP, gRPC) that point at it.

It lives as long as the daemon: a reload builds runtimes for new or changed APIs and swaps
them in (``install``), and the front objects of an API persist across swaps, switched to each
new pool, so a request never reaches a pool that is already draining. Everything that depends
on the API's kind is asked of its ``Kind`` (``inferd.kinds``).
APIs this version cannot serve (or whose GPUs are missing) are kept with their error, so the
operator sees them in ``/-/apis`` and ``/-/ready`` instead of the daemon refusing to start.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc

from inferd.containers.launch import BASE_URL_ENV
from inferd.gpu import GpuDevice, assign_gpus, gpu_request
from inferd.http.routing import BaseRoute, RouteTable
from inferd.kinds import get_kind, has_workers, unsupported_reason
from inferd.kinds.base import ApiRuntime, Front, Kind, KindContext, WorkerLaunch
from inferd.kinds.containers import base_url
from inferd.logs import get_logger
from inferd.protos import CompiledProto
from inferd.spec import ProjectSpec
from inferd.worker.backend import WorkerBackend
from inferd.worker.launch import container_slots, init_message, worker_slots
from inferd.worker.pool import PoolConfig, WorkerPool
from inferd.worker.process import WorkerProcess

log = get_logger()


class Deployment:
    def __init__(self, context: KindContext, environ: Mapping[str, str],
                 on_change: Callable[[], None] = lambda: None,
                 on_log: Callable[[str, str], None] = lambda api, line: None) -> None:
        self.context = dataclasses.replace(context, peers=self)
        self.settings = context.settings
        self.environ = environ
        self.on_change = on_change
        self.on_log = on_log
        self.apis: dict[str, ApiRuntime] = {}
        self.fronts: dict[str, Front] = {}
        self.tables: dict[str, RouteTable] = {}  # each API's own routes, for the kinds that forward to it

    # -- building ----------------------------------------------------------------------------

    def build(self, project: ProjectSpec, protos: Mapping[str, CompiledProto], inventory: tuple[GpuDevice, ...],
              digests: Mapping[str, str], names: Iterable[str]) -> dict[str, ApiRuntime]:
        """Runtimes (pools not started) for the named APIs of ``project``."""
        wanted = set(names)
        servable = [api for api in project.apis if unsupported_reason(api) is None and api.name in wanted
                    and has_workers(api.kind)]
        notes = {}
        requests = []
        for api in servable:
            request, note = gpu_request(api, len(inventory))
            if note is not None:
                notes[api.name] = note
                log.warning("gpu_hint_reduced", api=api.name, detail=note)
            requests.append(request)
        plan = assign_gpus(inventory, requests, self._placed(exclude=wanted))
        for warning in plan.warnings:
            log.warning("gpu_shared", detail=warning)
        built = {}
        for api in project.apis:
            if api.name not in wanted:
                continue
            kind = get_kind(api.kind)
            error = unsupported_reason(api) or plan.errors.get(api.name)
            if error is not None or kind is None:
                log.error("api_not_started", api=api.name, error=error)
                built[api.name] = ApiRuntime(api, digests[api.name], kind, None, error)
                continue
            runtime = ApiRuntime(api, digests[api.name], kind, None, compiled=protos.get(api.name))
            if api.name in notes:
                runtime.extra["gpu_note"] = notes[api.name]
            if kind.has_workers:
                runtime.pool = WorkerPool(self._pool_config(project, runtime, kind, plan.devices[api.name]))
            built[api.name] = runtime
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

    def _pool_config(self, project: ProjectSpec, runtime: ApiRuntime, kind: Kind,
                     devices: tuple[tuple[int, ...], ...]) -> PoolConfig:
        api = runtime.spec
        metrics = self.context.metrics

        def log_line(line: str) -> None:
            self.on_log(api.name, line)

        if api.pod is not None:  # the user's own containers: the kind's backend runs them
            slots = container_slots(self.environ, project, devices)
            launch = WorkerLaunch(project.project_dir, slots, log_line)
            backend = kind.backend(runtime, self.context, launch)
            if backend is None:
                raise ValueError(f"{api.kind} {api.name}: its kind has no backend for pod.containers")
        else:
            planned = kind.runner(runtime, self.context)
            if planned is None:
                raise ValueError(f"{api.kind} {api.name}: its kind has no worker runner")
            runner, options = planned
            init = init_message(project, api, runner, options, self.settings.max_body_size)
            # the chaining URL (Cortex's http://api-<name>) in every worker, as in every container
            chaining = {BASE_URL_ENV: base_url(self.settings)}
            slots = worker_slots({**self.environ, **chaining}, project, api, devices)

            def worker_process(slot: int) -> WorkerBackend:
                return WorkerProcess(api.name, slot, init, slots[slot].env, str(project.project_dir), slots[slot].gpus,
                                     lambda frame: metrics.record_user(api.name, frame), log_line)

            launch = WorkerLaunch(project.project_dir, slots, log_line)
            backend = kind.backend(runtime, self.context, launch) or worker_process
        return PoolConfig(
            api=api.name,
            slots=slots,
            backend=backend,
            max_concurrency=kind.worker_concurrency(api),
            ready_wait=self.settings.ready_wait,
            stop_timeout=self.settings.shutdown_grace_period,
            liveness_timeout=self.settings.worker_liveness_timeout,
            request_timeout=api.handler.request_timeout if api.handler is not None else None,
            on_restart=metrics.worker_restarts.labels(api.name).inc,
            on_change=self.on_change,
            on_log=log_line,
        )

    # -- running -----------------------------------------------------------------------------

    def install(self, runtime: ApiRuntime) -> ApiRuntime | None:
        """Make ``runtime`` the served version of its API (its pool started, its consumer
        running, its front switched to it); returns the runtime it replaced, to ``retire``."""
        name = runtime.spec.name
        previous = self.apis.get(name)
        kind = runtime.kind
        if runtime.pool is not None and kind is not None:
            if not runtime.pool.started:
                runtime.pool.start()
            runtime.consumer = kind.consumer(runtime, self.context)
            if runtime.consumer is not None:
                runtime.consumer.start()
        self.apis[name] = runtime
        front = kind.front(runtime, self.context, self.fronts.get(name)) if kind is not None else None
        if front is None:
            self.fronts.pop(name, None)
        else:
            self.fronts[name] = front
        return previous

    async def retire(self, runtime: ApiRuntime, timeout: float) -> None:
        """Drain a runtime that no longer receives calls: running jobs and requests finish."""
        if runtime.consumer is not None:
            await runtime.consumer.stop(timeout)
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

    def _fronted(self) -> Iterable[tuple[ApiRuntime, Kind, Front]]:
        for name, front in self.fronts.items():
            runtime = self.apis[name]
            if runtime.kind is not None:
                yield runtime, runtime.kind, front

    def routes(self) -> RouteTable:
        """The HTTP routing table, from every served API's kind; each API's own part is kept
        too (``own_routes``), so a splitter forwards by the same table the daemon serves."""
        routes: list[BaseRoute] = []
        tables = {}
        for runtime, kind, front in self._fronted():
            own = kind.routes(runtime, front)
            tables[runtime.name] = RouteTable(own)
            routes.extend(own)
        table = RouteTable(routes)  # raises on a clash before anything is swapped
        self.tables = tables
        return table

    def runtime(self, name: str) -> ApiRuntime | None:
        return self.apis.get(name)

    def own_routes(self, name: str) -> RouteTable | None:
        return self.tables.get(name)

    def rpc_routes(self) -> dict[str, grpc.RpcMethodHandler]:
        """The gRPC routing table: method path -> handler, for every gRPC API with a pool."""
        table: dict[str, grpc.RpcMethodHandler] = {}
        for _, kind, front in self._fronted():
            table.update(kind.rpc_routes(front))
        return table

    def protos(self) -> dict[str, CompiledProto]:
        return {name: rt.compiled for name, rt in self.apis.items() if rt.compiled is not None and rt.pool is not None}

    def readiness(self) -> dict[str, bool]:
        return {name: is_ready(runtime) for name, runtime in self.apis.items()}

    def pools(self) -> list[WorkerPool]:
        return [rt.pool for rt in self.apis.values() if rt.pool is not None]

    def describe(self) -> list[dict[str, Any]]:
        return [runtime.describe() for runtime in self.apis.values()]

    async def status(self, name: str) -> dict[str, Any]:
        """What the API's kind adds to ``inferd status`` (e.g. its queue length)."""
        runtime = self.apis.get(name)
        if runtime is None or runtime.kind is None:
            return {}
        return await runtime.kind.status(runtime, self.context)

    async def refresh_gauges(self) -> None:
        for runtime in list(self.apis.values()):
            if runtime.kind is not None:
                await runtime.kind.refresh_gauges(runtime, self.context)

    def set_context(self, context: KindContext) -> None:
        """A reload opened the job store (the first API that needs one arrived)."""
        self.context = dataclasses.replace(context, peers=self)


def is_ready(runtime: ApiRuntime) -> bool:
    if runtime.pool is not None:
        return runtime.pool.state == "ready"
    # a kind without workers (a splitter) is ready when what it forwards to is; its describe says
    return runtime.workerless and runtime.describe()["state"] == "ready"
