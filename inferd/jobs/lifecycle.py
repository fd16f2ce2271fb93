"""The job store's lifetime around the daemon: opened with crash recovery, swept on a timer."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from inferd.logs import get_logger
from inferd.store import AsyncJobStore, BatchJobStore, RunPodJobStore

log = get_logger()


async def open_job_store(path: Path) -> AsyncJobStore:
    """The store at ``path``; jobs a crash left running go back to the queue (or fail, on
    their second interruption)."""
    store = await AsyncJobStore.open(path)
    requeued, failed = await store.recover()
    if requeued or failed:
        log.warning("async_jobs_recovered", requeued=requeued, failed=failed)
    requeued, failed = await RunPodJobStore(store).recover()
    if requeued or failed:
        log.warning("runpod_jobs_recovered", requeued=requeued, failed=failed)
    # BatchAPI/TaskAPI: batches in flight are queued again; each API's JobManager resumes its jobs
    unfinished = await BatchJobStore(store).recover()
    if unfinished:
        log.warning("batch_jobs_recovered", jobs=[job.id for job in unfinished])
    return store


async def sweep_forever(store: AsyncJobStore, retention_days: float, interval: float) -> None:
    """Delete jobs past their retention, every ``interval`` seconds, until cancelled."""
    retention = timedelta(days=retention_days)
    while True:
        try:
            deleted = await store.sweep(retention)
            deleted += await BatchJobStore(store).sweep(retention)  # jobs are kept as long as async results
        except Exception as exc:  # noqa: BLE001 - a failed sweep is retried next period
            log.error("async_sweep_failed", error=str(exc), exc_info=exc)
        else:
            if deleted:
                log.info("async_jobs_swept", deleted=deleted, retention_days=retention_days)
        await asyncio.sleep(interval)
