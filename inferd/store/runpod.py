"""RunPodJobStore: jobs of RunPod's queue API (spec runpod.md §4) in the job store's SQLite file.

It borrows the AsyncJobStore's group-commit writer (every write is committed before it returns)
and its read-only connections, and speaks plain SQL on the raw sqlite3 connection, as the
AsyncAPI hot path does (queries.py).

A job is *gone* once it passed its ttl (counted from submission) before finishing, or finished
longer ago than its retention (/runsync: 1 min, /run: 30 min). Every query here sees live rows
only, and sweep() deletes exactly the gone ones: a sweep that has not run yet is never visible,
and a late report from a worker cannot bring an expired job back.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .ids import random_ids
from .jobs import AsyncJobStore, utc_now
from .queries import GIVE_UP, SWEEP_BATCH, UnknownJob, delete_in_rounds
from .queries import changed_rows as _changed
from .queries import fetch_all as _all
from .queries import fetch_first as _first
from .schema import EPOCH, from_micros, to_micros
from .writer import Raw, RawInsert

# RunPod's exact status strings (spec §4.3).
IN_QUEUE, IN_PROGRESS, COMPLETED = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"
FAILED, CANCELLED, TIMED_OUT = "FAILED", "CANCELLED", "TIMED_OUT"
STATUSES = (IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED, CANCELLED, TIMED_OUT)
FINAL_STATUSES = (COMPLETED, FAILED, CANCELLED, TIMED_OUT)
RETRYABLE_STATUSES = (FAILED, TIMED_OUT)  # /retry accepts only these (spec §4.4)

RUN_RETENTION = timedelta(minutes=30)
SYNC_RETENTION = timedelta(minutes=1)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class RunPodJob:
    id: str
    api: str
    status: str
    input: bytes  # JSON of the request's "input" value
    webhook: str | None
    execution_timeout_ms: int
    ttl_ms: int
    sync: bool  # submitted with /runsync
    output: bytes | None  # JSON: the last progress while IN_PROGRESS, then the final output
    error: str | None
    attempts: int  # times a worker claimed it (back to 0 on /retry)
    retried: int  # times /retry re-queued it
    worker_id: str | None
    created_at: datetime  # tz-aware UTC; reset by /retry
    started_at: datetime | None
    finished_at: datetime | None
    # The store's clock when this snapshot was read: "now" for the times of a job not finished.
    # Not compared: two snapshots of the same job state are equal.
    as_of: datetime = field(compare=False)

    @classmethod
    def from_row(cls, row: tuple[Any, ...], as_of: int) -> RunPodJob:
        """A row of COLUMNS, as sqlite3 returns it; ``as_of`` in µs."""
        (job_id, api, status, job_input, webhook, execution_timeout_ms, ttl_ms, sync, output, error,
         attempts, retried, worker_id, created, started, finished) = row
        return cls(
            job_id, api, status, job_input, webhook, execution_timeout_ms, ttl_ms, bool(sync), output, error,
            attempts, retried, worker_id,
            EPOCH + timedelta(microseconds=created), from_micros(started), from_micros(finished),
            EPOCH + timedelta(microseconds=as_of),
        )

    @property
    def delay_ms(self) -> int:
        """Milliseconds queued: until it started (or was finished without starting), else until now."""
        end = self.started_at or self.finished_at or self.as_of
        return _ms(end - self.created_at)

    @property
    def execution_ms(self) -> int:
        """Milliseconds running: until it finished, else until now; 0 if it never started."""
        if self.started_at is None:
            return 0
        return _ms((self.finished_at or self.as_of) - self.started_at)

    def to_status_json(self) -> dict[str, Any]:
        """RunPod's job object (spec §4.3), as /status answers it."""
        body: dict[str, Any] = {"id": self.id, "status": self.status, "delayTime": self.delay_ms,
                                "executionTime": self.execution_ms}
        if self.output is not None:
            body["output"] = json.loads(self.output)
        if self.error is not None:
            body["error"] = self.error
        if self.worker_id is not None:
            body["workerId"] = self.worker_id
        return body

    def status_body(self) -> bytes:
        """``to_status_json`` as compact JSON, in its order, the stored output spliced in as it
        is (an image's base64 is not parsed and encoded again per answer)."""
        head = (f'{{"id":{_text(self.id)},"status":{_text(self.status)},'
                f'"delayTime":{self.delay_ms},"executionTime":{self.execution_ms}')
        tail = "}"
        if self.worker_id is not None:
            tail = f',"workerId":{_text(self.worker_id)}}}'
        if self.error is not None:
            tail = f',"error":{_text(self.error)}{tail}'
        if self.output is None:
            return (head + tail).encode()
        return head.encode() + b',"output":' + self.output + tail.encode()


# a string as json.dumps(..., ensure_ascii=False) writes it, the body's other values being numbers
_text = json.encoder.encode_basestring


def _ms(delta: timedelta) -> int:
    return max(0, delta // timedelta(milliseconds=1))


# --- SQL (named parameters; :now and the cutoffs come from RunPodJobStore._moments) ---

COLUMNS = (
    "id, api, status, input, webhook, execution_timeout_ms, ttl_ms, sync, output, error,"
    " attempts, retried, worker_id, created_at, started_at, finished_at"
)  # RunPodJob's fields, in order (as_of is not a column)


def _quoted(statuses: tuple[str, ...]) -> str:
    return ", ".join(f"'{status}'" for status in statuses)


_OPEN = f"status IN ('{IN_QUEUE}', '{IN_PROGRESS}')"
_FINAL = f"status IN ({_quoted(FINAL_STATUSES)})"
_BEFORE_TTL = "created_at + ttl_ms * 1000 > :now"
# :cutoff_max (the later cutoff) is implied by the per-row one; it gives the (status,
# finished_at) index a range to scan.
_GONE = (
    f"(({_OPEN} AND NOT {_BEFORE_TTL}) OR ({_FINAL} AND finished_at <= :cutoff_max"
    " AND finished_at <= CASE sync WHEN 1 THEN :sync_cutoff ELSE :run_cutoff END))"
)
_LIVE = f"NOT {_GONE}"

INSERT = (
    "INSERT INTO runpod_jobs (id, api, status, input, webhook, execution_timeout_ms, ttl_ms, sync,"
    f" attempts, retried, created_at) VALUES (?, ?, '{IN_QUEUE}', ?, ?, ?, ?, ?, 0, 0, ?)"
)  # positional: RawInserts of one batch run as one executemany
# A job run without queueing (/runsync with a worker free): its whole row in one statement, when it
# ends (already final) or when something needs it sooner (``RunPodJobStore.insert``).
INSERT_WHOLE = f"INSERT INTO runpod_jobs ({COLUMNS}) VALUES ({', '.join('?' * len(COLUMNS.split(',')))})"
BY_ID = f"SELECT {COLUMNS} FROM runpod_jobs WHERE id = :id AND {_LIVE}"
BY_ID_AND_API = f"{BY_ID} AND api = :api"
STATUS_OF = f"SELECT status FROM runpod_jobs WHERE id = :id AND {_LIVE}"
# Pick and move up to :n in one statement: no window in which two claims could take the same job.
CLAIM = (
    f"UPDATE runpod_jobs SET status = '{IN_PROGRESS}', attempts = attempts + 1, started_at = :now,"
    " worker_id = :worker_id, output = NULL"
    " WHERE seq IN (SELECT seq FROM runpod_jobs"
    f" WHERE api = :api AND status = '{IN_QUEUE}' AND {_BEFORE_TTL} ORDER BY seq LIMIT :n)"
    f" RETURNING {COLUMNS}"
)
# A claimed job its worker never started (the worker went away while the job waited behind
# another): back to the queue as it was, the attempt not counted.
PUT_BACK = (
    f"UPDATE runpod_jobs SET status = '{IN_QUEUE}', attempts = max(attempts - 1, 0), started_at = NULL,"
    f" worker_id = NULL WHERE id = :id AND status = '{IN_PROGRESS}' AND {_BEFORE_TTL}"
)
_RUNNING = f"id = :id AND status = '{IN_PROGRESS}' AND {_LIVE}"
SET_PROGRESS = f"UPDATE runpod_jobs SET output = :output WHERE {_RUNNING}"
APPEND_STREAM = (
    "INSERT INTO runpod_stream (job_id, chunk) SELECT :id, :chunk"
    f" WHERE EXISTS (SELECT 1 FROM runpod_jobs WHERE {_RUNNING})"
)
# Only from a non-final state: the first outcome wins (a late report must not overwrite it).
FINISH = (
    "UPDATE runpod_jobs SET status = :status, output = :output, error = :error, finished_at = :now"
    f" WHERE id = :id AND {_OPEN} AND {_LIVE} RETURNING {COLUMNS}"
)
CANCEL = (
    f"UPDATE runpod_jobs SET status = '{CANCELLED}', finished_at = :now"
    f" WHERE id = :id AND {_OPEN} AND {_LIVE} RETURNING {COLUMNS}"
)
# A retried job is a fresh submission of the same id and input: new seq (back of the queue) and
# new created_at (its ttl and delayTime start again; the old ones may be long past).
RETRY = (
    f"UPDATE runpod_jobs SET status = '{IN_QUEUE}', seq = (SELECT max(seq) + 1 FROM runpod_jobs),"
    " output = NULL, error = NULL, started_at = NULL, finished_at = NULL, worker_id = NULL,"
    " attempts = 0, retried = retried + 1, created_at = :now"
    f" WHERE id = :id AND status IN ({_quoted(RETRYABLE_STATUSES)}) AND {_LIVE} RETURNING {COLUMNS}"
)
DROP_STREAM = "DELETE FROM runpod_stream WHERE job_id = :id"
TAKE_STREAM = "DELETE FROM runpod_stream WHERE job_id = :id RETURNING seq, chunk"
PURGE_STREAM = (
    f"DELETE FROM runpod_stream WHERE job_id IN (SELECT id FROM runpod_jobs WHERE api = :api AND status = '{IN_QUEUE}')"
)
PURGE = f"DELETE FROM runpod_jobs WHERE api = :api AND status = '{IN_QUEUE}' RETURNING {_BEFORE_TTL}"
# Requeue or give up, per row, in one statement; RETURNING tells which happened to each.
# :reason NULL (recover) -> GIVE_UP with the row's attempts.
_GIVE_UP = "attempts >= :max_attempts"
_REQUEUE = (
    f"UPDATE runpod_jobs SET status = CASE WHEN {_GIVE_UP} THEN '{FAILED}' ELSE '{IN_QUEUE}' END,"
    f" error = CASE WHEN {_GIVE_UP} THEN coalesce(:reason, printf(:give_up, attempts)) ELSE error END,"
    f" finished_at = CASE WHEN {_GIVE_UP} THEN :now ELSE NULL END,"
    f" started_at = CASE WHEN {_GIVE_UP} THEN started_at ELSE NULL END,"
    f" worker_id = CASE WHEN {_GIVE_UP} THEN worker_id ELSE NULL END,"
    f" output = CASE WHEN {_GIVE_UP} THEN output ELSE NULL END"
    f" WHERE status = '{IN_PROGRESS}' AND {_LIVE}"
)
REQUEUE_ONE = f"{_REQUEUE} AND id = :id RETURNING status"
RECOVER_ALL = f"{_REQUEUE} RETURNING status"
RECOVER_API = f"{_REQUEUE} AND api = :api RETURNING status"
COUNTS = f"SELECT status, count(*), sum(retried) FROM runpod_jobs WHERE api = :api AND {_LIVE} GROUP BY status"
QUEUE_LENGTH = f"SELECT count(*) FROM runpod_jobs WHERE api = :api AND status = '{IN_QUEUE}' AND {_BEFORE_TTL}"
SWEEP = f"DELETE FROM runpod_jobs WHERE seq IN (SELECT seq FROM runpod_jobs WHERE {_GONE} LIMIT {SWEEP_BATCH}) RETURNING id"
# one API's: each RunPodAPI sets its own retention, so each sweeps only its own jobs
SWEEP_API = (f"DELETE FROM runpod_jobs WHERE seq IN (SELECT seq FROM runpod_jobs WHERE api = :api AND {_GONE} "
             f"LIMIT {SWEEP_BATCH}) RETURNING id")

Params = Mapping[str, Any]


# --- run in aiosqlite's thread with the raw sqlite3 connection (reads and Raw writes) ---


def _cancel(db: sqlite3.Connection, params: Params) -> tuple[Any, ...] | None:
    """The job after cancelling it; a final one as it was."""
    return _first(db, CANCEL, params) or _first(db, BY_ID, params)


def _retry(db: sqlite3.Connection, params: Params) -> tuple[Any, ...] | None:
    row = _first(db, RETRY, params)
    if row is not None:
        db.execute(DROP_STREAM, params)  # the old run's chunks are not the new run's output
    return row


def _take_stream(db: sqlite3.Connection, params: Params) -> list[bytes]:
    return [chunk for _, chunk in sorted(_all(db, TAKE_STREAM, params))]


def _purge(db: sqlite3.Connection, params: Params) -> int:
    db.execute(PURGE_STREAM, params)  # a requeued job keeps its chunks
    return sum(live for (live,) in _all(db, PURGE, params))  # ttl-expired rows were gone already


def _requeue(db: sqlite3.Connection, params: Params) -> str:
    """The job's status after; unknown (or gone) -> UnknownJob, raised before anything is written."""
    row = _first(db, REQUEUE_ONE, params) or _first(db, STATUS_OF, params)
    if row is None:
        raise UnknownJob(params["id"])
    status: str = row[0]
    return status


def _recover(db: sqlite3.Connection, sql: str, params: Params) -> tuple[int, int]:
    statuses = [status for (status,) in _all(db, sql, params)]
    failed = statuses.count(FAILED)
    return len(statuses) - failed, failed


def _sweep(db: sqlite3.Connection, params: Params) -> int:
    ids = _all(db, SWEEP_API if "api" in params else SWEEP, params)
    db.executemany("DELETE FROM runpod_stream WHERE job_id = ?", ids)
    return len(ids)


class RunPodJobStore:
    """RunPod jobs over an open AsyncJobStore (which the caller opens and closes)."""

    def __init__(
        self,
        jobs: AsyncJobStore,
        run_retention: timedelta = RUN_RETENTION,
        sync_retention: timedelta = SYNC_RETENTION,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._jobs = jobs
        self._run_retention = run_retention
        self._sync_retention = sync_retention
        self._clock = clock

    # --- writes (group commit: committed before they return) ---

    async def submit(
        self, api: str, job_input: bytes, webhook: str | None, execution_timeout_ms: int, ttl_ms: int, sync: bool
    ) -> RunPodJob:
        """A new IN_QUEUE job; ids look like RunPod's: ``sync-<uuid4>`` (/runsync), ``<uuid4>-u1`` (/run)."""
        if not isinstance(job_input, (bytes, bytearray, memoryview)):
            raise TypeError(f"job_input must be bytes, got {type(job_input).__name__}")
        job_id = f"sync-{random_ids.uuid4()}" if sync else f"{random_ids.uuid4()}-u1"
        now = self._now()
        row = (job_id, api, bytes(job_input), webhook, execution_timeout_ms, ttl_ms, int(sync), now)
        await self._jobs.write(RawInsert(INSERT, row))
        job = (job_id, api, IN_QUEUE, bytes(job_input), webhook, execution_timeout_ms, ttl_ms, int(sync),
               None, None, 0, 0, None, now, None, None)
        return RunPodJob.from_row(job, now)

    # An unqueued job (``RunPodDispatcher.run_unqueued``) lives in memory through the states a
    # queued one goes through in the store, until ``insert`` writes it as it then stands.

    def unqueued(self, api: str, job_input: bytes, webhook: str | None, execution_timeout_ms: int,
                 ttl_ms: int, worker_id: str | None = None) -> RunPodJob:
        """A /runsync job as ``submit`` would have queued it, or (given ``worker_id``) as a claim
        by that worker would have left it; not written."""
        now = self._clock()
        claimed = worker_id is not None
        return RunPodJob(f"sync-{random_ids.uuid4()}", api, IN_PROGRESS if claimed else IN_QUEUE, bytes(job_input),
                         webhook, execution_timeout_ms, ttl_ms, True, None, None, int(claimed), 0, worker_id,
                         now, now if claimed else None, None, now)

    def handed_over(self, job: RunPodJob, worker_id: str) -> RunPodJob:
        """An unwritten job as a claim by ``worker_id`` would have left it, now."""
        now = self._clock()
        return RunPodJob(job.id, job.api, IN_PROGRESS, job.input, job.webhook, job.execution_timeout_ms, job.ttl_ms,
                         job.sync, None, None, job.attempts + 1, job.retried, worker_id, job.created_at, now, None, now)

    def finished(self, job: RunPodJob, status: str, output: bytes | None, error: str | None) -> RunPodJob:
        """An unwritten job as ``finish`` would have left it, now."""
        now = self._clock()
        return RunPodJob(job.id, job.api, status, job.input, job.webhook, job.execution_timeout_ms, job.ttl_ms,
                         job.sync, output, error, job.attempts, job.retried, job.worker_id, job.created_at,
                         job.started_at, now, now)

    def insert(self, job: RunPodJob) -> asyncio.Future[None]:
        """Write an unqueued job's row as ``job`` stands; the future is done once committed."""
        row = (job.id, job.api, job.status, job.input, job.webhook, job.execution_timeout_ms, job.ttl_ms,
               int(job.sync), job.output, job.error, job.attempts, job.retried, job.worker_id,
               to_micros(job.created_at), *(None if moment is None else to_micros(moment)
                                            for moment in (job.started_at, job.finished_at)))
        return self._jobs.write_soon(RawInsert(INSERT_WHOLE, row))

    async def claim(self, api: str, worker_id: str) -> RunPodJob | None:
        """The oldest IN_QUEUE job of ``api`` within its ttl, now IN_PROGRESS on ``worker_id``."""
        jobs = await self.claim_many(api, worker_id, 1)
        return jobs[0] if jobs else None

    async def claim_many(self, api: str, worker_id: str, n: int) -> list[RunPodJob]:
        """Up to ``n`` of the oldest IN_QUEUE jobs of ``api`` within their ttl, in submission
        order, now IN_PROGRESS on ``worker_id`` (one write for all of them)."""
        moments = self._moments()
        rows = await self._jobs.write(Raw(_all, CLAIM, {**moments, "api": api, "worker_id": worker_id, "n": n}, quick=True))
        jobs = [RunPodJob.from_row(row, moments["now"]) for row in rows]
        return sorted(jobs, key=lambda job: job.created_at)

    async def put_back(self, job_id: str) -> bool:
        """A claimed job that never started (its worker went away first) back to the queue, its
        attempt not counted; False unless it was IN_PROGRESS."""
        changed: bool = await self._jobs.write(Raw(_changed, PUT_BACK, {**self._moments(), "id": job_id}, quick=True))
        return changed

    async def set_progress(self, job_id: str, output: bytes) -> bool:
        """Store ``output`` (JSON) as the job's progress; False unless it is IN_PROGRESS."""
        params = {**self._moments(), "id": job_id, "output": bytes(output)}
        changed: bool = await self._jobs.write(Raw(_changed, SET_PROGRESS, params, quick=True))
        return changed

    async def append_stream(self, job_id: str, chunk: bytes) -> bool:
        """Queue one stream chunk for /stream; False unless the job is IN_PROGRESS."""
        params = {**self._moments(), "id": job_id, "chunk": bytes(chunk)}
        changed: bool = await self._jobs.write(Raw(_changed, APPEND_STREAM, params, quick=True))
        return changed

    async def finish(self, job_id: str, status: str, output: bytes | None, error: str | None) -> RunPodJob | None:
        """IN_QUEUE/IN_PROGRESS -> ``status`` (final). None if the job already finished (its first
        outcome stays), is unknown or gone."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"finish() needs a final status ({', '.join(FINAL_STATUSES)}), got {status!r}")
        output = None if output is None else bytes(output)
        return await self._write_job(_first, FINISH, id=job_id, status=status, output=output, error=error)

    async def cancel(self, job_id: str) -> RunPodJob | None:
        """IN_QUEUE/IN_PROGRESS -> CANCELLED; a final job is left as it is. The job afterwards, or
        None when unknown or gone. Stopping its worker is the caller's part."""
        return await self._write_job(_cancel, id=job_id)

    async def retry(self, job_id: str) -> RunPodJob | None:
        """FAILED/TIMED_OUT -> IN_QUEUE at the back of the queue, its last run forgotten (output,
        error, times, attempts, stream chunks); None for any other job."""
        return await self._write_job(_retry, id=job_id)

    async def take_stream(self, job_id: str) -> list[bytes]:
        """The job's undelivered stream chunks, oldest first, deleted as they are handed out: each
        chunk goes to exactly one caller."""
        chunks: list[bytes] = await self._jobs.write(Raw(_take_stream, {"id": job_id}))
        return chunks

    async def purge(self, api: str) -> int:
        """Delete the IN_QUEUE jobs of ``api`` (/purge-queue); returns how many were live."""
        removed: int = await self._jobs.write(Raw(_purge, {**self._moments(), "api": api}))
        return removed

    async def requeue(self, job_id: str, reason: str, max_attempts: int = 2) -> str:
        """An IN_PROGRESS job whose worker died: back to IN_QUEUE while attempts < max_attempts,
        else FAILED with ``reason``. Its stream chunks stay. Returns the status afterwards
        (unchanged if it was not IN_PROGRESS); an unknown or gone id raises UnknownJob."""
        params = {**self._moments(), "id": job_id, "reason": reason, "max_attempts": max_attempts, "give_up": GIVE_UP}
        status: str = await self._jobs.write(Raw(_requeue, params, quick=True))
        return status

    async def recover(self, api: str | None = None, max_attempts: int = 2) -> tuple[int, int]:
        """At daemon start: every IN_PROGRESS job (of ``api``, or all) was interrupted and goes
        through requeue(). Returns (requeued, failed)."""
        params = {**self._moments(), "reason": None, "max_attempts": max_attempts, "give_up": GIVE_UP}
        if api is not None:
            params["api"] = api
        counts: tuple[int, int] = await self._jobs.write(Raw(_recover, RECOVER_ALL if api is None else RECOVER_API, params))
        return counts

    async def sweep(self, api: str | None = None) -> int:
        """Delete the gone jobs (past ttl before finishing, or finished past retention) and their
        stream chunks, of one API or all; SWEEP_BATCH per transaction, so other writes interleave.
        Returns jobs deleted."""
        params = self._moments() if api is None else {**self._moments(), "api": api}
        return await delete_in_rounds(lambda: self._jobs.write(Raw(_sweep, params)), SWEEP_BATCH)

    # --- reads (read-only connections, in parallel with the writer) ---

    async def get(self, job_id: str, api: str | None = None) -> RunPodJob | None:
        """None when unknown, gone, or (with ``api``) another API's job."""
        moments = self._moments()
        if api is None:
            row = await self._jobs.read(_first, BY_ID, {**moments, "id": job_id})
        else:
            row = await self._jobs.read(_first, BY_ID_AND_API, {**moments, "id": job_id, "api": api})
        return None if row is None else RunPodJob.from_row(row, moments["now"])

    async def counts(self, api: str) -> dict[str, int]:
        """The ``jobs`` block of /health (spec §4.6). failed counts FAILED and TIMED_OUT; retried
        is the number of /retry calls over the live jobs."""
        rows = await self._counts(api)
        by_status = {status: n for status, n, _ in rows}
        return {
            "completed": by_status.get(COMPLETED, 0),
            "failed": by_status.get(FAILED, 0) + by_status.get(TIMED_OUT, 0),
            "inProgress": by_status.get(IN_PROGRESS, 0),
            "inQueue": by_status.get(IN_QUEUE, 0),
            "retried": sum(retried or 0 for _, _, retried in rows),
        }

    async def counts_by_status(self, api: str) -> dict[str, int]:
        """Live jobs of ``api`` per RunPod status, zeros included (for metrics)."""
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: n for status, n, _ in await self._counts(api)})
        return counts

    async def queue_length(self, api: str) -> int:
        """Live IN_QUEUE jobs of ``api``."""
        row = await self._jobs.read(_first, QUEUE_LENGTH, {**self._moments(), "api": api})
        assert row is not None  # count(*) answers one row, always
        length: int = row[0]
        return length

    # --- helpers ---

    async def _counts(self, api: str) -> list[tuple[Any, ...]]:
        """(status, jobs, sum of retried) per status of ``api``'s live jobs."""
        return await self._jobs.read(_all, COUNTS, {**self._moments(), "api": api})

    async def _write_job(self, fn: Callable[..., tuple[Any, ...] | None], *sql: str, **params: Any) -> RunPodJob | None:
        moments = self._moments()
        row = await self._jobs.write(Raw(fn, *sql, {**moments, **params}, quick=True))
        return None if row is None else RunPodJob.from_row(row, moments["now"])

    def _now(self) -> int:
        return to_micros(self._clock())

    def _moments(self, moment: datetime | None = None) -> dict[str, int]:
        """:now and the retention cutoffs, in µs, for the liveness test every query makes."""
        now = to_micros(self._clock() if moment is None else moment)
        sync_cutoff = now - self._sync_retention // _MICROSECOND
        run_cutoff = now - self._run_retention // _MICROSECOND
        return {"now": now, "sync_cutoff": sync_cutoff, "run_cutoff": run_cutoff, "cutoff_max": max(sync_cutoff, run_cutoff)}
