"""The job store: the only part of inferd that speaks SQL (SQLite, WAL, group commit)."""

from .jobs import AsyncJobStore, Job, utc_now
from .queries import UnknownJob
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
    "Job",
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
