"""Gauges that are read rather than counted: AsyncAPI queues and job counts, GPU usage."""

from __future__ import annotations

import asyncio

from inferd.deployment import Deployment
from inferd.gpu import read_usage
from inferd.metrics import Metrics
from inferd.store import STATUSES, AsyncJobStore


async def refresh_gauges(metrics: Metrics, deployment: Deployment, store: AsyncJobStore | None) -> None:
    for name, runtime in list(deployment.apis.items()):
        if runtime.spec.kind != "AsyncAPI" or store is None:
            continue
        counts = await store.counts_by_status(name)
        for status in STATUSES:
            metrics.jobs.labels(name, status).set(counts.get(status, 0))
        metrics.queue_length.labels(name).set(counts.get("in_queue", 0))
    if any(rt.spec.gpus_per_replica for rt in deployment.apis.values()):
        # NVML calls block for milliseconds: keep them off the event loop
        for usage in await asyncio.to_thread(read_usage):
            gpu = str(usage.index)
            metrics.gpu_utilization.labels(gpu).set(usage.utilization)
            metrics.gpu_memory_used.labels(gpu).set(usage.memory_used)
            metrics.gpu_memory_total.labels(gpu).set(usage.memory_total)
