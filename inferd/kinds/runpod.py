"""RunPodAPI: an unchanged RunPod serverless worker file, its jobs queued in the job store and
served with RunPod's queue API under ``/v2/<api>`` (``inferd.http.runpod``); a
``RunPodDispatcher`` feeds them to the workers, which run the file with the direct runner
(imported into an inferd worker process) or, with ``handler.runner: sdk``, as the SDK's own job
loop against a platform inferd plays (``inferd.worker.sdk_worker``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inferd.http.routing import BaseRoute
from inferd.http.runpod import QueueSettings, RunPodEndpoint
from inferd.jobs.runpod_dispatch import RunPodDispatcher
from inferd.kinds.base import ApiRuntime, Front, Kind, KindContext, QueueConsumer, WorkerLaunch, endpoint_mount
from inferd.settings import Settings
from inferd.spec import ApiSpec, RunPodSpec
from inferd.store.runpod import STATUSES, RunPodJobStore
from inferd.worker.backend import BackendFactory, WorkerBackend
from inferd.worker.sdk_worker import SdkWorker

RUNNER = "inferd.worker.runners.runpod:RunPodRunner"


def queue_settings(api: ApiSpec, settings: Settings) -> QueueSettings:
    spec = api.runpod or RunPodSpec()
    # the API's own keys win; else the daemon's runpod_api_keys; none: any Authorization goes
    keys = tuple(spec.api_keys) or tuple(k.strip() for k in settings.runpod_api_keys.split(",") if k.strip())
    return QueueSettings(int(spec.execution_timeout * 1000), int(spec.ttl * 1000), spec.max_run_body,
                         spec.max_runsync_body, keys)


def job_store(runtime: ApiRuntime, context: KindContext) -> RunPodJobStore | None:
    if context.store is None:
        return None
    store = runtime.extra.get("jobs")
    if not isinstance(store, RunPodJobStore):
        spec = runtime.spec.runpod or RunPodSpec()
        store = runtime.extra["jobs"] = RunPodJobStore(context.store, spec.run_retention_delta, spec.runsync_retention_delta)
    return store


class RunPodKind(Kind):
    name = "RunPodAPI"
    needs_store = True

    def backend(self, runtime: ApiRuntime, context: KindContext, launch: WorkerLaunch) -> BackendFactory | None:
        """``handler.runner: sdk``: the file runs as its own process, the SDK's job loop
        against a platform inferd plays (``SdkWorker``); the direct runner is a WorkerProcess."""
        handler = runtime.spec.handler
        if handler is None or handler.runner != "sdk":
            return None

        def sdk_worker(slot: int) -> WorkerBackend:
            return SdkWorker(runtime.name, slot, launch.project_dir / handler.path, handler.args, launch.slots[slot].env,
                             launch.project_dir, launch.slots[slot].gpus, handler.log_level, launch.on_log)

        return sdk_worker

    def worker_concurrency(self, api: ApiSpec) -> int:
        return 1 << 16  # the dispatcher bounds jobs per worker by the handler's concurrency_modifier

    def runner(self, runtime: ApiRuntime, context: KindContext) -> tuple[str, dict[str, Any]]:
        handler = runtime.spec.handler
        return RUNNER, {"args": list(handler.args) if handler is not None else []}

    def consumer(self, runtime: ApiRuntime, context: KindContext) -> QueueConsumer | None:
        jobs = job_store(runtime, context)
        if runtime.pool is None or jobs is None:
            return None
        # built before the front (deployment order); front() connects the two
        return RunPodDispatcher(runtime.name, jobs, runtime.pool, context.metrics, lambda job: None)

    def front(self, runtime: ApiRuntime, context: KindContext, current: Front | None) -> Front | None:
        jobs = job_store(runtime, context)
        if runtime.pool is None or jobs is None:
            return None
        settings = queue_settings(runtime.spec, context.settings)
        front = current if isinstance(current, RunPodEndpoint) else RunPodEndpoint(runtime.name, jobs, settings,
                                                                                   context.metrics)
        dispatcher = runtime.consumer
        if isinstance(dispatcher, RunPodDispatcher):
            dispatcher.on_finished = front.job_finished
            front.switch(jobs, settings, dispatcher)
        return front

    def routes(self, runtime: ApiRuntime, front: Front) -> Sequence[BaseRoute]:
        if not isinstance(front, RunPodEndpoint):
            return ()
        return endpoint_mount(runtime, front)

    async def status(self, runtime: ApiRuntime, context: KindContext) -> dict[str, Any]:
        jobs = job_store(runtime, context)
        return {} if jobs is None else {"queue_length": await jobs.queue_length(runtime.name)}

    def describe(self, runtime: ApiRuntime) -> dict[str, Any]:
        dispatcher = runtime.consumer
        running = len(dispatcher.running) if isinstance(dispatcher, RunPodDispatcher) else 0
        # the queue length as of the last gauge refresh (describe cannot wait for the store)
        routes = [f"{runtime.spec.networking.endpoint}/{op}" for op in
                  ("run", "runsync", "status/<id>", "stream/<id>", "cancel/<id>", "retry/<id>", "health", "purge-queue")]
        return {"running_jobs": running, "queue_length": runtime.extra.get("queue_length", 0), "routes": routes}

    async def refresh_gauges(self, runtime: ApiRuntime, context: KindContext) -> None:
        jobs = job_store(runtime, context)
        if jobs is None:
            return
        counts = await jobs.counts_by_status(runtime.name)
        if isinstance(runtime.consumer, RunPodDispatcher):
            for status, unwritten in runtime.consumer.unwritten().items():
                counts[status] += unwritten
        for status in STATUSES:
            context.metrics.runpod_jobs.labels(runtime.name, status).set(counts.get(status, 0))
        runtime.extra["queue_length"] = counts.get("IN_QUEUE", 0)
        context.metrics.queue_length.labels(runtime.name).set(runtime.extra["queue_length"])
