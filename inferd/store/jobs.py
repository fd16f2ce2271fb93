"""AsyncJobStore: AsyncAPI jobs in SQLite (submit, claim, finish, recover, sweep).

Writes go through the group-commit writer (acknowledged only once committed); reads use their
own pool of connections and never wait for the writer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import queries
from .engine import Readers, driver_connection, prepare_file, writer_engine
from .ids import random_ids
from .queries import UnknownJob
from .schema import (
    COMPLETED,
    EPOCH,
    FAILED,
    IN_PROGRESS,
    IN_QUEUE,
    STATUSES,
    from_micros,
    migrate,
    to_micros,
)
from .writer import GroupCommitWriter, Raw, RawInsert, StoreClosed, WriterStats

__all__ = ["AsyncJobStore", "Job", "UnknownJob", "utc_now", "IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED"]


T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Job:
    id: str
    api: str
    status: str
    content_type: str
    headers: dict[str, str]
    payload: bytes | None  # None once the job finished (Cortex deletes the payload)
    result: bytes | None  # JSON bytes exactly as given to complete()
    error: str | None
    attempts: int  # times it was claimed
    created_at: datetime  # tz-aware UTC
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Row[Any]) -> Job:
        return cls(
            id=row.id,
            api=row.api,
            status=row.status,
            content_type=row.content_type,
            headers=json.loads(row.headers),
            payload=row.payload,
            result=row.result,
            error=row.error,
            attempts=row.attempts,
            created_at=from_micros(row.created_at),  # type: ignore[arg-type]  # NOT NULL column
            started_at=from_micros(row.started_at),
            finished_at=from_micros(row.finished_at),
        )

    @classmethod
    def from_tuple(cls, row: tuple[Any, ...]) -> Job:
        """A row of queries.JOB_COLUMNS, as sqlite3 returns it."""
        job_id, api, status, content_type, headers, payload, result, error, attempts, created, started, finished = row
        return cls(
            job_id,
            api,
            status,
            content_type,
            json.loads(headers),
            payload,
            result,
            error,
            attempts,
            EPOCH + timedelta(microseconds=created),
            None if started is None else EPOCH + timedelta(microseconds=started),
            None if finished is None else EPOCH + timedelta(microseconds=finished),
        )


class _Recount:
    """One shared queue_length() count: callers join it until it starts."""

    __slots__ = ("started", "task")

    def __init__(self) -> None:
        self.started = False
        self.task: asyncio.Task[int]


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # every caller may have gone: no "exception was never retrieved"


class AsyncJobStore:
    """Open with ``await AsyncJobStore.open(path)``; always ``await store.close()``."""

    def __init__(
        self,
        clock: Callable[[], datetime],
        writer_engine: AsyncEngine,
        writer_conn: AsyncConnection,
        writer_driver: aiosqlite.Connection,
        readers: Readers,
        path: Path | None = None,
    ) -> None:
        self._clock = clock
        self._writer_engine = writer_engine
        self._readers = readers
        self._writer_conn = writer_conn
        self._writer = GroupCommitWriter(writer_conn, writer_driver, checkpoints=path)
        self._recounts: dict[str, _Recount] = {}
        self._closed = False

    @classmethod
    async def open(cls, path: Path, clock: Callable[[], datetime] = utc_now) -> AsyncJobStore:
        """Create or migrate the database at ``path`` (raises SchemaTooNew for a file written by
        a newer inferd) and start the writer."""
        path = Path(path)
        prepare_file(path)
        writer = writer_engine(path)
        try:
            conn = await writer.connect()
            try:
                await conn.run_sync(migrate)
                driver = await driver_connection(conn)
                readers = await Readers.open(path)
            except BaseException:
                await conn.close()
                raise
        except BaseException:
            await writer.dispose()
            raise
        return cls(clock, writer, conn, driver, readers, path)

    async def close(self) -> None:
        """Commit and answer everything already submitted, then release the file."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._writer.close()  # re-raises what killed the writer, if anything did
        finally:
            await self._writer_conn.close()
            await self._writer_engine.dispose()
            await self._readers.close()

    @property
    def stats(self) -> WriterStats:
        return self._writer.stats

    # --- writes (group commit) ---

    async def submit(self, api: str, payload: bytes, content_type: str, headers: Mapping[str, str]) -> str:
        """Store a new in_queue job; the id is returned only after its transaction committed."""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        job_id = random_ids.uuid4().hex  # unguessable; order comes from the seq column
        headers_json = json.dumps(dict(headers), separators=(",", ":"))
        params = (job_id, api, content_type, headers_json, bytes(payload), self._now())
        await self._writer.execute(RawInsert(queries.RAW_INSERT, params))
        return job_id

    async def claim_next(self, api: str) -> Job | None:
        """The oldest in_queue job of ``api``, now in_progress (attempts + 1), or None."""
        row = await self._writer.execute(Raw(queries.raw_claim, self._now(), api, quick=True))
        return None if row is None else Job.from_tuple(row)

    async def complete(self, job_id: str, result: bytes) -> None:
        """-> completed; result stored as given, payload dropped. A job that already finished is
        left as it is (first outcome wins); an unknown id raises UnknownJob."""
        params = (self._now(), bytes(result), job_id)
        await self._writer.execute(Raw(queries.raw_finish, queries.RAW_COMPLETE, params, quick=True))

    async def fail(self, job_id: str, error: str) -> None:
        """-> failed with ``error``, payload dropped. Same rules as complete()."""
        params = (self._now(), error, job_id)
        await self._writer.execute(Raw(queries.raw_finish, queries.RAW_FAIL, params, quick=True))

    async def recover(self, api: str | None = None, max_attempts: int = 2) -> tuple[int, int]:
        """Every in_progress job (of ``api``, or all) was interrupted: back to in_queue while
        attempts < max_attempts, else failed with the reason. Returns (requeued, failed)."""
        return await self._writer.execute(queries.recover_op(api, max_attempts, self._now()))

    async def requeue(self, job_id: str, max_attempts: int = 2) -> str:
        """recover() for one in_progress job whose worker died; returns its status afterwards
        (unchanged if it was not in_progress). Unknown id raises UnknownJob."""
        return await self._writer.execute(queries.requeue_op(job_id, max_attempts, self._now()))

    async def sweep(self, retention: timedelta, api: str | None = None) -> int:
        """Delete jobs (any status) created before clock() - retention; returns rows deleted.
        One transaction per SWEEP_BATCH rows, so other writes interleave with a long sweep."""
        cutoff = self._now() - retention // timedelta(microseconds=1)
        return await queries.delete_in_rounds(lambda: self._writer.execute(queries.sweep_op(cutoff, api)),
                                              queries.SWEEP_BATCH)

    # --- reads (own connections, in parallel with the writer) ---

    async def get(self, job_id: str, api: str | None = None) -> Job | None:
        """None for an unknown id, or for an id that belongs to another api."""
        if api is None:
            row = await self._read(queries.fetch_one, queries.RAW_BY_ID, (job_id,))
        else:
            row = await self._read(queries.fetch_one, queries.RAW_BY_ID_AND_API, (job_id, api))
        return None if row is None else Job.from_tuple(row)

    async def count(self, api: str | None = None, status: str | None = None) -> int:
        """Rows matching; with an api, answered from the (api, status, seq) index alone."""
        sql = queries.RAW_COUNT[api is not None, status is not None]
        params = tuple(value for value in (api, status) if value is not None)
        row = await self._read(queries.fetch_one, sql, params)
        assert row is not None  # count(*) answers one row, always
        count: int = row[0]
        return count

    async def queue_length(self, api: str) -> int:
        """In-queue jobs of ``api``: an index-only count (jobs_api_status_seq), counted after
        this call began. Concurrent callers share counts: while one runs, everyone who arrives
        waits for the single next one, so a burst of callers (every POST of a busy API) costs at
        most two counts in flight, not one per caller."""
        self._check_open()
        recount = self._recounts.get(api)
        if recount is None or recount.started:
            previous = None if recount is None else recount.task
            recount = _Recount()
            recount.task = asyncio.create_task(self._recount(recount, previous, api))
            recount.task.add_done_callback(_retrieve)
            self._recounts[api] = recount
        return await asyncio.shield(recount.task)

    async def _recount(self, recount: _Recount, previous: asyncio.Task[int] | None, api: str) -> int:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        recount.started = True  # from here on, a new caller needs a count of its own
        return await self.count(api, IN_QUEUE)

    async def counts_by_status(self, api: str) -> dict[str, int]:
        """Every Cortex status, zeros included."""
        rows = await self._read(queries.fetch_all, queries.RAW_COUNTS_BY_STATUS, (api,))
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: n for status, n in rows})
        return counts

    # --- for the other job tables in the same file (store/runpod.py): one writer, one pool ---

    async def write(self, operation: Raw | RawInsert) -> Any:
        """Run ``operation`` in the writer's next group commit; returns once it is committed."""
        return await self._writer.execute(operation)

    def write_soon(self, operation: Raw | RawInsert) -> asyncio.Future[Any]:
        """``write`` as a future, queued in order at once (no task in between)."""
        return self._writer.submit(operation)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(sqlite3_connection, *args)`` on one of the read-only connections."""
        self._check_open()
        return await self._readers.run(fn, *args)

    async def _read(self, fn: Callable[..., T], sql: str, params: tuple[Any, ...]) -> T:
        if self._closed:
            raise StoreClosed("the job store is closed")
        return await self._readers.run(fn, sql, params)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the job store is closed")

    def _now(self) -> int:
        return to_micros(self._clock())
