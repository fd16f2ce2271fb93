"""BatchJobStore: BatchAPI and TaskAPI jobs (spec cortex.md §4.3-§4.6) in the job store's SQLite file.

A job is one ``batch_jobs`` row and its ``job_batches`` rows (a TaskAPI job has none), written
in one transaction before create() returns: an acknowledged submission is a durable one. Batches
are handed out in index order by claim(); a failed one goes back to the queue until it has been
claimed ``max_receive_count`` times (Cortex's dead-letter-queue setting; default 2 = one retry).

It borrows the AsyncJobStore's group-commit writer and read-only connections, and speaks plain
SQL on the raw sqlite3 connection, as store/runpod.py does.

Job ids are Cortex's (hex of 2^63-1 minus unix nanoseconds, made by the submission side): a newer
job has a smaller id, so "newest first" is ``ORDER BY id``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from .jobs import AsyncJobStore, utc_now
from .queries import changed_rows as _changed
from .queries import delete_in_rounds
from .queries import fetch_all as _all
from .queries import fetch_first as _first
from .schema import from_micros, to_micros
from .writer import Raw

# Cortex v0.35's job status strings (spec §4.4).
PENDING, ENQUEUING, RUNNING = "pending", "enqueuing", "running"
ENQUEUE_FAILED, COMPLETED_WITH_FAILURES, SUCCEEDED = "enqueue_failed", "completed_with_failures", "succeeded"
UNEXPECTED_ERROR, WORKER_ERROR, WORKER_OOM = "unexpected_error", "worker_error", "worker_oom"
TIMED_OUT, STOPPED = "timed_out", "stopped"
IN_PROGRESS_STATUSES = (PENDING, ENQUEUING, RUNNING)  # "unknown" is Cortex's, never stored here
FINAL_STATUSES = (
    ENQUEUE_FAILED, COMPLETED_WITH_FAILURES, SUCCEEDED, UNEXPECTED_ERROR, WORKER_ERROR, WORKER_OOM, TIMED_OUT, STOPPED,
)
STATUSES = IN_PROGRESS_STATUSES + FINAL_STATUSES

# A batch's own states.
BATCH_QUEUED, BATCH_RUNNING, BATCH_SUCCEEDED, BATCH_FAILED = "queued", "running", "succeeded", "failed"
BATCH_STATUSES = (BATCH_QUEUED, BATCH_RUNNING, BATCH_SUCCEEDED, BATCH_FAILED)

# on_job_complete's record: NULL (not run), then CLAIMED by exactly one caller, then its outcome.
ON_COMPLETE_CLAIMED, ON_COMPLETE_SUCCEEDED, ON_COMPLETE_FAILED = "claimed", "succeeded", "failed"

DEFAULT_MAX_RECEIVE_COUNT = 2  # no dead letter queue: a failed batch is retried once
JOB_SWEEP_BATCH = 50  # jobs per sweep transaction: each may carry thousands of batches
_MICROSECOND = timedelta(microseconds=1)


class StopResult(Enum):
    """What stop() found; the front answers Cortex's error kind for each of the last three."""

    STOPPED = "stopped"
    ALREADY_STOPPED = "already_stopped"  # job.job_has_already_been_stopped
    NOT_IN_PROGRESS = "not_in_progress"  # job.job_is_not_in_progress: it finished otherwise
    UNKNOWN = "unknown"  # job.not_found


@dataclass(frozen=True)
class BatchCounts:
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    average_time_per_batch: float | None = None  # seconds, over succeeded batches; None before the first

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[Any, ...]]) -> BatchCounts:
        """Rows of (status, count, sum of run µs) for one job."""
        by_status = {status: (count, micros) for status, count, micros in rows}
        succeeded, succeeded_micros = by_status.get(BATCH_SUCCEEDED, (0, None))
        average = None if not succeeded or succeeded_micros is None else succeeded_micros / succeeded / 1e6
        return cls(
            queued=by_status.get(BATCH_QUEUED, (0, None))[0],
            running=by_status.get(BATCH_RUNNING, (0, None))[0],
            succeeded=succeeded,
            failed=by_status.get(BATCH_FAILED, (0, None))[0],
            average_time_per_batch=average,
        )


@dataclass(frozen=True)
class BatchJob:
    id: str
    api: str
    kind: str  # BatchAPI | TaskAPI
    status: str
    spec: dict[str, Any]  # the job spec document (spec §4.6)
    workers: int
    timeout: int | None  # seconds from submission
    config: dict[str, Any] | None  # the submission's config
    max_receive_count: int
    total_batches: int
    reason: str | None
    error: str | None
    on_complete: str | None
    created_at: datetime  # tz-aware UTC
    started_at: datetime | None
    finished_at: datetime | None
    counts: BatchCounts

    @property
    def in_progress(self) -> bool:
        return self.status in IN_PROGRESS_STATUSES

    @classmethod
    def from_row(cls, row: tuple[Any, ...], counts: BatchCounts) -> BatchJob:
        """A row of COLUMNS, as sqlite3 returns it."""
        (job_id, api, kind, status, spec, workers, timeout, config, max_receive_count, total_batches,
         reason, error, on_complete, created, started, finished) = row
        return cls(
            job_id, api, kind, status, json.loads(spec), workers, timeout,
            None if config is None else json.loads(config), max_receive_count, total_batches,
            reason, error, on_complete,
            from_micros(created), from_micros(started), from_micros(finished),  # type: ignore[arg-type]  # NOT NULL
            counts,
        )


@dataclass(frozen=True)
class Batch:
    job_id: str
    index: int
    payload: bytes  # a JSON array of items
    attempts: int  # this claim included

    @property
    def id(self) -> str:
        """The batch_id a handler receives: unique across jobs."""
        return f"{self.job_id}-{self.index}"


# --- SQL (named parameters) ---

COLUMNS = (
    "id, api, kind, status, spec, workers, timeout_s, config, max_receive_count, total_batches,"
    " reason, error, on_complete, created_at, started_at, finished_at"
)


def _quoted(statuses: Sequence[str]) -> str:
    return ", ".join(f"'{status}'" for status in statuses)


_IN_PROGRESS = f"status IN ({_quoted(IN_PROGRESS_STATUSES)})"
_OPEN_BATCH = f"status IN ('{BATCH_QUEUED}', '{BATCH_RUNNING}')"

INSERT_JOB = (
    "INSERT INTO batch_jobs (id, api, kind, status, spec, workers, timeout_s, config, max_receive_count,"
    " total_batches, created_at) VALUES (:id, :api, :kind, :status, :spec, :workers, :timeout, :config,"
    " :max_receive_count, :total_batches, :now)"
)
# positional: one executemany for all of a job's batches
INSERT_BATCH = f"INSERT INTO job_batches (job_id, idx, status, payload, attempts) VALUES (?, ?, '{BATCH_QUEUED}', ?, 0)"
BY_ID = f"SELECT {COLUMNS} FROM batch_jobs WHERE id = :id"
BY_ID_AND_API = f"{BY_ID} AND api = :api"
RECENT = f"SELECT {COLUMNS} FROM batch_jobs WHERE api = :api ORDER BY id LIMIT :limit"
UNFINISHED = f"SELECT {COLUMNS} FROM batch_jobs WHERE {_IN_PROGRESS} ORDER BY id DESC"  # oldest first
UNFINISHED_API = f"SELECT {COLUMNS} FROM batch_jobs WHERE {_IN_PROGRESS} AND api = :api ORDER BY id DESC"
COUNTS = "SELECT status, count(*), sum(finished_at - started_at) FROM job_batches WHERE job_id = :id GROUP BY status"
JOBS_BY_STATUS = "SELECT status, count(*) FROM batch_jobs WHERE api = :api GROUP BY status"

# Pick and mark up to :n in one statement: no window in which two claims could take the same batch.
# Only a running job's batches are handed out: a stopped or timed-out job's leftovers stay put.
CLAIM = (
    f"UPDATE job_batches SET status = '{BATCH_RUNNING}', attempts = attempts + 1, started_at = :now,"
    " finished_at = NULL, worker_id = :worker_id"
    " WHERE job_id = :id AND idx IN (SELECT idx FROM job_batches"
    f" WHERE job_id = :id AND status = '{BATCH_QUEUED}' ORDER BY idx LIMIT :n)"
    f" AND EXISTS (SELECT 1 FROM batch_jobs WHERE id = :id AND status = '{RUNNING}')"
    " RETURNING idx, payload, attempts"
)
# Only a running batch can finish: a late report (after recover() or a retry) changes nothing.
_THIS_RUNNING_BATCH = f"job_id = :id AND idx = :idx AND status = '{BATCH_RUNNING}'"
SUCCEED_BATCH = (
    f"UPDATE job_batches SET status = '{BATCH_SUCCEEDED}', finished_at = :now, error = NULL"
    f" WHERE {_THIS_RUNNING_BATCH} RETURNING status"
)
_GIVE_UP = "attempts >= (SELECT max_receive_count FROM batch_jobs WHERE id = :id)"
FAIL_BATCH = (
    f"UPDATE job_batches SET status = CASE WHEN {_GIVE_UP} THEN '{BATCH_FAILED}' ELSE '{BATCH_QUEUED}' END,"
    f" finished_at = CASE WHEN {_GIVE_UP} THEN :now ELSE NULL END, error = :error"
    f" WHERE {_THIS_RUNNING_BATCH} RETURNING status"
)
# A batch its worker never started (the worker went away first): back, the claim not counted.
PUT_BACK_BATCH = (
    f"UPDATE job_batches SET status = '{BATCH_QUEUED}', attempts = max(attempts - 1, 0), started_at = NULL,"
    f" worker_id = NULL WHERE {_THIS_RUNNING_BATCH}"
)
# At start: whatever was in flight runs again (its attempt stays counted); finished ones never do.
RECOVER_BATCHES = (
    f"UPDATE job_batches SET status = '{BATCH_QUEUED}', started_at = NULL, worker_id = NULL"
    f" WHERE status = '{BATCH_RUNNING}'"
)
SET_STATUS = (
    "UPDATE batch_jobs SET status = :status, reason = :reason,"
    f" started_at = CASE WHEN :status = '{RUNNING}' THEN coalesce(started_at, :now) ELSE started_at END"
    f" WHERE id = :id AND {_IN_PROGRESS}"
)
FINISH = (
    "UPDATE batch_jobs SET status = :status, error = coalesce(:error, error), finished_at = :now"
    f" WHERE id = :id AND {_IN_PROGRESS}"
)
# The job's natural end: succeeded, or completed_with_failures if any batch failed; only once
# nothing is queued or running.
COMPLETE = (
    "UPDATE batch_jobs SET finished_at = :now, status = CASE WHEN EXISTS (SELECT 1 FROM job_batches"
    f" WHERE job_id = :id AND status = '{BATCH_FAILED}') THEN '{COMPLETED_WITH_FAILURES}' ELSE '{SUCCEEDED}' END"
    f" WHERE id = :id AND status = '{RUNNING}'"
    f" AND NOT EXISTS (SELECT 1 FROM job_batches WHERE job_id = :id AND {_OPEN_BATCH})"
    " RETURNING status"
)
STOP = f"UPDATE batch_jobs SET status = '{STOPPED}', finished_at = :now WHERE id = :id AND {_IN_PROGRESS}"
STATUS_OF = "SELECT status FROM batch_jobs WHERE id = :id"
# Compare-and-set: exactly one caller gets True, and only once every batch has finished.
CLAIM_ON_COMPLETE = (
    f"UPDATE batch_jobs SET on_complete = '{ON_COMPLETE_CLAIMED}'"
    f" WHERE id = :id AND on_complete IS NULL AND status = '{RUNNING}'"
    f" AND NOT EXISTS (SELECT 1 FROM job_batches WHERE job_id = :id AND {_OPEN_BATCH})"
)
RECORD_ON_COMPLETE = (
    "UPDATE batch_jobs SET on_complete = :outcome, error = coalesce(:error, error)"
    f" WHERE id = :id AND on_complete = '{ON_COMPLETE_CLAIMED}'"
)
_SWEEPABLE = (
    f"SELECT id FROM batch_jobs WHERE status IN ({_quoted(FINAL_STATUSES)}) AND finished_at <= :cutoff"
)
SWEEP = f"DELETE FROM batch_jobs WHERE id IN ({_SWEEPABLE} LIMIT {JOB_SWEEP_BATCH}) RETURNING id"
SWEEP_API = f"DELETE FROM batch_jobs WHERE id IN ({_SWEEPABLE} AND api = :api LIMIT {JOB_SWEEP_BATCH}) RETURNING id"
DELETE_BATCHES = "DELETE FROM job_batches WHERE job_id = ?"

Params = Mapping[str, Any]


# --- run in aiosqlite's thread with the raw sqlite3 connection (reads and Raw writes) ---


def _create(db: sqlite3.Connection, job: Params, payloads: Sequence[bytes]) -> None:
    """The job and every batch, inside the writer's transaction: all of it or, on error, none."""
    db.execute(INSERT_JOB, job)
    db.executemany(INSERT_BATCH, ((job["id"], index, payload) for index, payload in enumerate(payloads)))


def _job_with_counts(db: sqlite3.Connection, sql: str, params: Params) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]] | None:
    row = _first(db, sql, params)
    return None if row is None else (row, _all(db, COUNTS, {"id": row[0]}))


def _jobs_with_counts(db: sqlite3.Connection, sql: str, params: Params) -> list[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
    return [(row, _all(db, COUNTS, {"id": row[0]})) for row in _all(db, sql, params)]


def _stop(db: sqlite3.Connection, params: Params) -> StopResult:
    if _changed(db, STOP, params):
        return StopResult.STOPPED
    row = _first(db, STATUS_OF, params)
    if row is None:
        return StopResult.UNKNOWN
    return StopResult.ALREADY_STOPPED if row[0] == STOPPED else StopResult.NOT_IN_PROGRESS


def _first_value(db: sqlite3.Connection, sql: str, params: Params) -> Any:
    row = _first(db, sql, params)
    return None if row is None else row[0]


def _sweep(db: sqlite3.Connection, params: Params) -> int:
    ids = _all(db, SWEEP_API if "api" in params else SWEEP, params)
    db.executemany(DELETE_BATCHES, ids)
    return len(ids)


def _job(pair: tuple[tuple[Any, ...], list[tuple[Any, ...]]]) -> BatchJob:
    row, counts = pair
    return BatchJob.from_row(row, BatchCounts.from_rows(counts))


class BatchJobStore:
    """BatchAPI/TaskAPI jobs over an open AsyncJobStore (which the caller opens and closes)."""

    def __init__(self, jobs: AsyncJobStore, clock: Callable[[], datetime] = utc_now) -> None:
        self._jobs = jobs
        self._clock = clock

    # --- writes (group commit: committed before they return) ---

    async def create(
        self,
        spec: Mapping[str, Any],
        payloads: Sequence[bytes],
        *,
        max_receive_count: int = DEFAULT_MAX_RECEIVE_COUNT,
        status: str = PENDING,
    ) -> BatchJob:
        """Store the job whose spec document (spec §4.3/§4.5) is ``spec`` and its batches (each a
        JSON array), in one transaction. ``spec`` gives job_id, api_name, kind, workers, timeout
        and config. A duplicate id raises the database's IntegrityError (as a DBAPIError)."""
        if status not in IN_PROGRESS_STATUSES:
            raise ValueError(f"a new job starts in progress ({', '.join(IN_PROGRESS_STATUSES)}), got {status!r}")
        if max_receive_count < 1:
            raise ValueError(f"max_receive_count must be >= 1, got {max_receive_count}")
        payloads = [_as_bytes(payload) for payload in payloads]
        config = spec.get("config")
        row = {
            "id": spec["job_id"], "api": spec["api_name"], "kind": spec["kind"], "status": status,
            "spec": json.dumps(spec, separators=(",", ":")), "workers": spec["workers"], "timeout": spec.get("timeout"),
            "config": None if config is None else json.dumps(config, separators=(",", ":")),
            "max_receive_count": max_receive_count, "total_batches": len(payloads), "now": self._now(),
        }
        await self._jobs.write(Raw(_create, row, payloads))
        job = await self.get(spec["job_id"])
        assert job is not None  # committed just above; nothing deletes an in-progress job
        return job

    async def claim(self, job_id: str, worker_id: str, n: int = 1) -> list[Batch]:
        """Up to ``n`` queued batches of a running job, lowest index first, now running on
        ``worker_id`` with one more attempt counted (one statement for all of them)."""
        params = {"id": job_id, "worker_id": worker_id, "n": n, "now": self._now()}
        rows = await self._jobs.write(Raw(_all, CLAIM, params))
        return sorted((Batch(job_id, index, payload, attempts) for index, payload, attempts in rows), key=lambda b: b.index)

    async def succeed_batch(self, job_id: str, index: int) -> bool:
        """running -> succeeded; False (nothing changed) unless the batch was running."""
        status = await self._jobs.write(Raw(_first_value, SUCCEED_BATCH, {"id": job_id, "idx": index, "now": self._now()}))
        return status is not None

    async def fail_batch(self, job_id: str, index: int, error: str) -> str | None:
        """A running batch failed: back to queued while it has been claimed fewer than the job's
        max_receive_count times, else failed. Returns the batch's new status, or None when it was
        not running (a late report changes nothing)."""
        params = {"id": job_id, "idx": index, "error": error, "now": self._now()}
        status: str | None = await self._jobs.write(Raw(_first_value, FAIL_BATCH, params))
        return status

    async def put_back_batch(self, job_id: str, index: int) -> bool:
        """A claimed batch its worker never started: queued again, the claim not counted."""
        changed: bool = await self._jobs.write(Raw(_changed, PUT_BACK_BATCH, {"id": job_id, "idx": index}))
        return changed

    async def set_status(self, job_id: str, status: str, reason: str | None = None) -> bool:
        """Move an in-progress job to another in-progress status (pending, enqueuing, running),
        with the reason shown for it; running stamps started_at once. False if it has finished."""
        if status not in IN_PROGRESS_STATUSES:
            raise ValueError(f"set_status() takes an in-progress status ({', '.join(IN_PROGRESS_STATUSES)}), got {status!r}")
        params = {"id": job_id, "status": status, "reason": reason, "now": self._now()}
        changed: bool = await self._jobs.write(Raw(_changed, SET_STATUS, params))
        return changed

    async def finish(self, job_id: str, status: str, error: str | None = None) -> bool:
        """An in-progress job -> final ``status`` (worker_error, timed_out, ...), keeping
        ``error`` (a traceback) when given. False if it had already finished: first outcome wins."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"finish() needs a final status ({', '.join(FINAL_STATUSES)}), got {status!r}")
        params = {"id": job_id, "status": status, "error": error, "now": self._now()}
        changed: bool = await self._jobs.write(Raw(_changed, FINISH, params))
        return changed

    async def complete(self, job_id: str) -> str | None:
        """A running job with no batch queued or running -> succeeded, or completed_with_failures
        when any batch failed. Returns that status, or None when the job is not there yet."""
        status: str | None = await self._jobs.write(Raw(_first_value, COMPLETE, {"id": job_id, "now": self._now()}))
        return status

    async def stop(self, job_id: str) -> StopResult:
        """An in-progress job -> stopped (its workers are the caller's to stop). A finished job is
        left as it is, and the result says why nothing changed."""
        result: StopResult = await self._jobs.write(Raw(_stop, {"id": job_id, "now": self._now()}))
        return result

    async def claim_on_job_complete(self, job_id: str) -> bool:
        """True for exactly one caller, ever, and only while the job runs with every batch
        finished: that caller runs on_job_complete, then record_on_job_complete()."""
        claimed: bool = await self._jobs.write(Raw(_changed, CLAIM_ON_COMPLETE, {"id": job_id}))
        return claimed

    async def record_on_job_complete(self, job_id: str, error: str | None = None) -> bool:
        """on_job_complete's outcome (``error``: its traceback, kept as the job's error); only
        after claim_on_job_complete() and only once."""
        outcome = ON_COMPLETE_SUCCEEDED if error is None else ON_COMPLETE_FAILED
        params = {"id": job_id, "outcome": outcome, "error": error}
        changed: bool = await self._jobs.write(Raw(_changed, RECORD_ON_COMPLETE, params))
        return changed

    async def recover(self) -> list[BatchJob]:
        """At daemon start: every running batch was interrupted and is queued again (its attempt
        stays counted, it runs once more even past the limit); finished batches stay finished.
        Returns the in-progress jobs, oldest first, for the caller to resume."""
        await self._jobs.write(Raw(_changed, RECOVER_BATCHES, {}))
        return await self.unfinished()

    async def sweep(self, retention: timedelta, api: str | None = None) -> int:
        """Delete finished jobs (and their batches) that finished more than ``retention`` ago, of
        one API or all; an in-progress job is never swept. Returns jobs deleted."""
        params: dict[str, Any] = {"cutoff": self._now() - retention // _MICROSECOND}
        if api is not None:
            params["api"] = api
        return await delete_in_rounds(lambda: self._jobs.write(Raw(_sweep, params)), JOB_SWEEP_BATCH)

    # --- reads (read-only connections, in parallel with the writer) ---

    async def get(self, job_id: str, api: str | None = None) -> BatchJob | None:
        """The job with its batch counts; None when unknown or (with ``api``) another API's."""
        sql, params = (BY_ID, {"id": job_id}) if api is None else (BY_ID_AND_API, {"id": job_id, "api": api})
        pair = await self._jobs.read(_job_with_counts, sql, params)
        return None if pair is None else _job(pair)

    async def recent(self, api: str, limit: int = 20) -> list[BatchJob]:
        """The ``limit`` newest jobs of ``api``, newest first."""
        pairs = await self._jobs.read(_jobs_with_counts, RECENT, {"api": api, "limit": limit})
        return [_job(pair) for pair in pairs]

    async def unfinished(self, api: str | None = None) -> list[BatchJob]:
        """In-progress jobs (pending, enqueuing, running), oldest first."""
        sql, params = (UNFINISHED, {}) if api is None else (UNFINISHED_API, {"api": api})
        pairs = await self._jobs.read(_jobs_with_counts, sql, params)
        return [_job(pair) for pair in pairs]

    async def counts(self, job_id: str) -> BatchCounts:
        """The job's batches per state, and the average run time of its succeeded ones."""
        return BatchCounts.from_rows(await self._jobs.read(_all, COUNTS, {"id": job_id}))

    async def counts_by_status(self, api: str) -> dict[str, int]:
        """Jobs of ``api`` per Cortex status, zeros included (for metrics)."""
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: n for status, n in await self._jobs.read(_all, JOBS_BY_STATUS, {"api": api})})
        return counts

    def _now(self) -> int:
        return to_micros(self._clock())


def _as_bytes(payload: Any) -> bytes:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"batch payloads must be bytes (a JSON array), got {type(payload).__name__}")
    return bytes(payload)
