"""Gauges that are read rather than counted: what each kind reports (queues, job counts) and
GPU usage, refreshed on a timer."""

from __future__ import annotations

import asyncio

from inferd.deployment import Deployment
from inferd.gpu import read_usage
from inferd.logs import get_logger
from inferd.metrics import Metrics

log = get_logger()
REFRESH_INTERVAL = 2.0


async def refresh_gauges(metrics: Metrics, deployment: Deployment) -> None:
    await deployment.refresh_gauges()
    if any(rt.spec.gpus_per_replica for rt in deployment.apis.values()):
        # NVML calls block for milliseconds: keep them off the event loop
        for usage in await asyncio.to_thread(read_usage):
            gpu = str(usage.index)
            metrics.gpu_utilization.labels(gpu).set(usage.utilization)
            metrics.gpu_memory_used.labels(gpu).set(usage.memory_used)
            metrics.gpu_memory_total.labels(gpu).set(usage.memory_total)


async def follow_gauges(metrics: Metrics, deployment: Deployment) -> None:
    """Refresh every ``REFRESH_INTERVAL`` seconds until cancelled; a failed round is retried."""
    while True:
        try:
            await refresh_gauges(metrics, deployment)
        except Exception as exc:  # noqa: BLE001 - stale gauges beat no daemon
            log.warning("gauge_refresh_failed", error=str(exc))
        await asyncio.sleep(REFRESH_INTERVAL)
