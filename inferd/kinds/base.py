"""What a kind of API declares, and what it is given.

The deployment asks a ``Kind`` everything kind-specific: whether it can serve an API, how many
calls a worker takes, which worker runner runs the handler and with what options, the front
that answers requests (built once, switched to new workers on reload), its routes, its queue
consumer, and what it adds to ``/-/apis``, ``inferd status`` and metrics. Nothing outside a
kind's own module compares kind names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
from starlette.types import ASGIApp

from inferd.http.cors import with_cors
from inferd.http.routing import BaseRoute, Mount, RouteTable
from inferd.metrics import Metrics
from inferd.protos import CompiledProto
from inferd.settings import Settings
from inferd.spec import ApiSpec
from inferd.store import AsyncJobStore
from inferd.worker.backend import BackendFactory
from inferd.worker.pool import WorkerPool, WorkerSlot


class Front(Protocol):
    """What answers an API's requests; it outlives reloads, pointed at each new pool in turn."""


class QueueConsumer(Protocol):
    """Feeds queued work (async jobs, batches) to one pool's workers."""

    def start(self) -> None: ...

    async def stop(self, timeout: float) -> None: ...


class Peers(Protocol):
    """The deployment's other APIs, for a kind that forwards to them (TrafficSplitter)."""

    def runtime(self, name: str) -> ApiRuntime | None:
        """The served version of API ``name``, if there is one."""
        ...

    def own_routes(self, name: str) -> RouteTable | None:
        """API ``name``'s own routes as of the last routing swap; None while it has none."""
        ...


@dataclass(frozen=True)
class KindContext:
    """What the daemon lends every kind."""

    settings: Settings
    metrics: Metrics
    store: AsyncJobStore | None
    proto_cache: Path
    peers: Peers | None = None  # set by the Deployment that asks the kind
    # an API's log book (`inferd logs <api>`), for kinds that start workers themselves (jobs)
    on_log: Callable[[str, str], None] = field(default=lambda api, line: None)


@dataclass(frozen=True)
class WorkerLaunch:
    """What the deployment computed for one API's workers (environments, GPUs, where its log
    lines go), for a kind that starts them its own way (``Kind.backend``)."""

    project_dir: Path
    slots: Sequence[WorkerSlot]
    on_log: Callable[[str], None]


@dataclass
class ApiRuntime:
    """One version of one API: its spec, its kind, its pool (None when it cannot run)."""

    spec: ApiSpec
    digest: str
    kind: Kind | None
    pool: WorkerPool | None
    error: str | None = None
    compiled: CompiledProto | None = None
    consumer: QueueConsumer | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def workerless(self) -> bool:
        """A servable API of a kind with no workers of its own (a TrafficSplitter): no pool is
        no failure for it."""
        return self.error is None and self.kind is not None and not self.kind.has_workers

    @property
    def endpoint(self) -> str:
        """gRPC APIs are reached at /<package>.<Service> on the gRPC port, as in Cortex."""
        return f"/{self.compiled.service_name}" if self.compiled else self.spec.networking.endpoint

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.spec.name, "kind": self.spec.kind, "endpoint": self.endpoint,
                                "protocol": "grpc" if self.compiled is not None else "http",
                                "gpus_per_replica": self.spec.gpus_per_replica}
        if "gpu_note" in self.extra:
            info["gpu_note"] = self.extra["gpu_note"]
        if self.kind is not None:
            info.update(self.kind.describe(self))
        if self.pool is None:
            idle = {"desired_workers": 0, "ready_workers": 0, "restarts": 0, "workers": []}
            if self.workerless:  # ready unless its kind's describe says otherwise (a splitter whose APIs are not)
                return {**info, "state": info.get("state", "ready"), "error": info.get("error"), **idle}
            return {**info, "state": "failed", "error": self.error, **idle}
        return {**info, **self.pool.describe(), "error": self.error or self.pool.error}


def endpoint_mount(runtime: ApiRuntime, app: ASGIApp) -> tuple[BaseRoute]:
    """``app`` at the API's endpoint and every path below it, with the API's CORS policy."""
    networking = runtime.spec.networking
    return (Mount(networking.endpoint, with_cors(app, networking.allow_origins, runtime.name)),)


def pods_refused(api: ApiSpec) -> str:
    """What a kind that cannot run containers yet says of an API with ``pod.containers``."""
    return (f"{api.kind} APIs with pod.containers are not supported by inferd "
            "(container RealtimeAPI, AsyncAPI, BatchAPI and TaskAPI are)")


class Kind(ABC):
    """Defaults shared by the handler-generation kinds; each kind must say how it runs
    (``runner``) and what answers its requests (``front``), and overrides what else differs."""

    name: str = ""
    needs_store: bool = False
    has_workers: bool = True  # False: no pool of its own (a TrafficSplitter forwards to other APIs)

    def unsupported(self, api: ApiSpec) -> str | None:
        """Why this version of inferd cannot serve the API, or None when it can."""
        if api.pod is not None:
            return pods_refused(api)
        if api.handler is None:
            return "the API has no handler block"
        if api.handler.type != "python":
            return f"handler.type {api.handler.type} is not supported by inferd; use type: python"
        return None

    def worker_concurrency(self, api: ApiSpec) -> int:
        """Calls one worker takes at once before the pool answers 503."""
        return api.autoscaling.max_replica_concurrency if api.autoscaling else 1024

    def runner(self, runtime: ApiRuntime, context: KindContext) -> tuple[str, dict[str, Any]] | None:
        """The worker-side runner (an import string under ``inferd.worker.runners``) and its
        options; None for a kind without workers of its own (``has_workers`` False)."""
        return None

    @abstractmethod
    def front(self, runtime: ApiRuntime, context: KindContext, current: Front | None) -> Front | None:
        """The front for ``runtime``: ``current`` switched to its pool when it is this kind's,
        else a new one; None when the API cannot take requests."""

    def backend(self, runtime: ApiRuntime, context: KindContext, launch: WorkerLaunch) -> BackendFactory | None:
        """What runs each of the API's workers, when it is not inferd's own worker process
        (``WorkerProcess`` with this kind's ``runner``); None: it is."""
        return None

    def consumer(self, runtime: ApiRuntime, context: KindContext) -> QueueConsumer | None:
        return None

    def routes(self, runtime: ApiRuntime, front: Front) -> Sequence[BaseRoute]:
        return ()

    def rpc_routes(self, front: Front) -> dict[str, grpc.RpcMethodHandler]:
        return {}

    def describe(self, runtime: ApiRuntime) -> dict[str, Any]:
        """Fields this kind adds to the API's ``/-/apis`` entry (and ``inferd status <api>``)."""
        return {}

    async def status(self, runtime: ApiRuntime, context: KindContext) -> dict[str, Any]:
        """Fields this kind adds to ``inferd status`` (e.g. ``queue_length``)."""
        return {}

    async def refresh_gauges(self, runtime: ApiRuntime, context: KindContext) -> None:  # noqa: B027 - optional
        """Set the gauges this kind reports (read, not counted: queue lengths, job counts);
        a kind with no such gauges keeps this default, which sets none."""

    async def jobs(self, runtime: ApiRuntime, job_id: str, limit: int) -> dict[str, Any] | None:
        """For ``inferd jobs``: ``{"jobs": [...]}`` (recent, newest first) or, with ``job_id``,
        ``{"job": {...}}`` (None when unknown); kinds without jobs raise LookupError."""
        raise LookupError(f"api {runtime.name} ({runtime.spec.kind}) has no jobs")
