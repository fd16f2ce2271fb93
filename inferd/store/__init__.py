"""The job store: the only part of inferd that speaks SQL (SQLite, WAL, group commit).

AsyncAPI jobs: AsyncJobStore; RunPod queue-API jobs: RunPodJobStore (its status strings are in
``inferd.store.runpod``); BatchAPI/TaskAPI jobs: BatchJobStore (statuses in ``inferd.store.batch``);
all sharing the same file and writer."""

from .batch import Batch, BatchCounts, BatchJob, BatchJobStore, StopResult
from .jobs import AsyncJobStore, Job, utc_now
from .queries import UnknownJob
from .runpod import RunPodJob, RunPodJobStore
from .schema import (
    COMPLETED,
    CURRENT_VERSION,
    FAILED,
    IN_PROGRESS,
    IN_QUEUE,
    STATUSES,
    SchemaTooNew,
)
from .writer import StoreClosed, WriterStats

__all__ = [
    "AsyncJobStore",
    "Batch",
    "BatchCounts",
    "BatchJob",
    "BatchJobStore",
    "StopResult",
    "Job",
    "RunPodJob",
    "RunPodJobStore",
    "utc_now",
    "UnknownJob",
    "SchemaTooNew",
    "StoreClosed",
    "WriterStats",
    "CURRENT_VERSION",
    "STATUSES",
    "IN_QUEUE",
    "IN_PROGRESS",
    "COMPLETED",
    "FAILED",
]
