"""AsyncAPI: ``POST /<endpoint>`` queues a job in the job store, ``GET /<endpoint>/<id>``
reports it; an ``AsyncDispatcher`` feeds the queue to ``handle_async`` one job per worker, or,
with ``pod.containers``, to the user's web server (``POST /``, ``pod.max_concurrency`` jobs per
replica, the reply checked by ``inferd.containers.jobs``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inferd.containers.jobs import async_reply_problem
from inferd.http.asyncapi import AsyncEndpoint
from inferd.http.routing import BaseRoute
from inferd.jobs.async_dispatch import AsyncDispatcher
from inferd.kinds.base import ApiRuntime, Front, Kind, KindContext, QueueConsumer, WorkerLaunch, endpoint_mount
from inferd.kinds.containers import container_backend, unrunnable
from inferd.spec import ApiSpec
from inferd.store import STATUSES
from inferd.worker.backend import BackendFactory

RUNNER = "inferd.worker.runners.asyncjob:AsyncJobRunner"


class AsyncKind(Kind):
    name = "AsyncAPI"
    needs_store = True

    def unsupported(self, api: ApiSpec) -> str | None:
        if api.pod is not None:
            return unrunnable(api)
        return super().unsupported(api)

    def worker_concurrency(self, api: ApiSpec) -> int:
        if api.pod is not None:
            return api.pod.max_concurrency
        return 1  # one job at a time per worker, as Cortex ran one workload per replica

    def backend(self, runtime: ApiRuntime, context: KindContext, launch: WorkerLaunch) -> BackendFactory | None:
        return container_backend(runtime, context, launch) if runtime.spec.pod is not None else None

    def runner(self, runtime: ApiRuntime, context: KindContext) -> tuple[str, dict[str, Any]]:
        return RUNNER, {}

    def consumer(self, runtime: ApiRuntime, context: KindContext) -> QueueConsumer | None:
        if runtime.pool is None or context.store is None:
            return None
        slots, pod = len(runtime.pool.config.slots), runtime.spec.pod
        if pod is not None:
            return AsyncDispatcher(runtime.name, context.store, runtime.pool, slots, pod.max_concurrency,
                                   async_reply_problem)
        return AsyncDispatcher(runtime.name, context.store, runtime.pool, slots)

    def front(self, runtime: ApiRuntime, context: KindContext, current: Front | None) -> Front | None:
        if runtime.pool is None or context.store is None:
            return None
        endpoint = runtime.spec.networking.endpoint
        notify = runtime.consumer.notify if isinstance(runtime.consumer, AsyncDispatcher) else (lambda: None)
        if isinstance(current, AsyncEndpoint):
            current.switch(endpoint, notify)
            return current
        settings = context.settings
        return AsyncEndpoint(runtime.name, endpoint, context.store, notify, settings.max_body_size,
                             settings.async_max_queue_length, context.metrics)

    def routes(self, runtime: ApiRuntime, front: Front) -> Sequence[BaseRoute]:
        if not isinstance(front, AsyncEndpoint):
            return ()
        return endpoint_mount(runtime, front)

    async def status(self, runtime: ApiRuntime, context: KindContext) -> dict[str, Any]:
        if context.store is None:
            return {}
        return {"queue_length": await context.store.queue_length(runtime.name)}

    async def refresh_gauges(self, runtime: ApiRuntime, context: KindContext) -> None:
        if context.store is None:
            return
        counts = await context.store.counts_by_status(runtime.name)
        for status in STATUSES:
            context.metrics.jobs.labels(runtime.name, status).set(counts.get(status, 0))
        context.metrics.queue_length.labels(runtime.name).set(counts.get("in_queue", 0))
