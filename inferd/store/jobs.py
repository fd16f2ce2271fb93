"""AsyncJobStore: AsyncAPI jobs in SQLite (submit, claim, finish, recover, sweep).

Writes go through the group-commit writer (acknowledged only once committed); reads use their
own pool of connections and never wait for the writer.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import queries
from .engine import prepare_file, reader_engine, writer_engine
from .queries import UnknownJob
from .schema import COMPLETED, FAILED, IN_PROGRESS, IN_QUEUE, STATUSES, from_micros, migrate, to_micros
from .writer import Bulk, GroupCommitWriter, StoreClosed, WriterStats

__all__ = ["AsyncJobStore", "Job", "UnknownJob", "utc_now", "IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED"]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


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
    def from_row(cls, row: Row) -> Job:
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


class AsyncJobStore:
    """Open with ``await AsyncJobStore.open(path)``; always ``await store.close()``."""

    def __init__(
        self,
        clock: Callable[[], datetime],
        engines: tuple[AsyncEngine, AsyncEngine],
        writer_conn: AsyncConnection,
    ) -> None:
        self._clock = clock
        self._writer_engine, self._readers = engines
        self._writer_conn = writer_conn
        self._writer = GroupCommitWriter(writer_conn)
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
            except BaseException:
                await conn.close()
                raise
        except BaseException:
            await writer.dispose()
            raise
        return cls(clock, (writer, reader_engine(path)), conn)

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
            await self._readers.dispose()

    @property
    def stats(self) -> WriterStats:
        return self._writer.stats

    # --- writes (group commit) ---

    async def submit(self, api: str, payload: bytes, content_type: str, headers: Mapping[str, str]) -> str:
        """Store a new in_queue job; the id is returned only after its transaction committed."""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        job_id = uuid.uuid4().hex  # unguessable; order comes from the seq column
        row = {
            "id": job_id,
            "api": api,
            "status": IN_QUEUE,
            "content_type": content_type,
            "headers": json.dumps(dict(headers), separators=(",", ":")),
            "payload": bytes(payload),
            "result": None,
            "error": None,
            "attempts": 0,
            "created_at": self._now(),
            "started_at": None,
            "finished_at": None,
        }
        await self._writer.execute(Bulk(queries.INSERT, row))
        return job_id

    async def claim_next(self, api: str) -> Job | None:
        """The oldest in_queue job of ``api``, now in_progress (attempts + 1), or None."""
        row = await self._writer.execute(queries.claim_op(api, self._now()))
        return None if row is None else Job.from_row(row)

    async def complete(self, job_id: str, result: bytes) -> None:
        """-> completed; result stored as given, payload dropped. A job that already finished is
        left as it is (first outcome wins); an unknown id raises UnknownJob."""
        params = {"p_id": job_id, "p_now": self._now(), "p_result": bytes(result)}
        await self._writer.execute(queries.finish_op(queries.COMPLETE, params))

    async def fail(self, job_id: str, error: str) -> None:
        """-> failed with ``error``, payload dropped. Same rules as complete()."""
        params = {"p_id": job_id, "p_now": self._now(), "p_error": error}
        await self._writer.execute(queries.finish_op(queries.FAIL, params))

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
        deleted = 0
        while True:
            count = await self._writer.execute(queries.sweep_op(cutoff, api))
            deleted += count
            if count < queries.SWEEP_BATCH:
                return deleted

    # --- reads (own connection pool, in parallel with the writer) ---

    async def get(self, job_id: str, api: str | None = None) -> Job | None:
        """None for an unknown id, or for an id that belongs to another api."""
        if api is None:
            row = await self._read_one(queries.BY_ID, {"p_id": job_id})
        else:
            row = await self._read_one(queries.BY_ID_AND_API, {"p_id": job_id, "p_api": api})
        return None if row is None else Job.from_row(row)

    async def count(self, api: str | None = None, status: str | None = None) -> int:
        return (await self._read_one(queries.count_statement(api, status), {}))[0]

    async def queue_length(self, api: str) -> int:
        return await self.count(api, IN_QUEUE)  # answered from the (api, status, seq) index

    async def counts_by_status(self, api: str) -> dict[str, int]:
        """Every Cortex status, zeros included."""
        self._check_open()
        async with self._readers.connect() as conn:
            rows = (await conn.execute(queries.COUNTS_BY_STATUS, {"p_api": api})).all()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: n for status, n in rows})
        return counts

    async def _read_one(self, statement: Any, params: dict[str, Any]) -> Row | None:
        self._check_open()
        async with self._readers.connect() as conn:
            return (await conn.execute(statement, params)).first()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed("the job store is closed")

    def _now(self) -> int:
        return to_micros(self._clock())
