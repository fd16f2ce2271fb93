"""SQL for the job store and the write operations the group-commit writer runs.

The hot path (submit, get, claim_next, complete, fail, counts) is plain SQL run on the raw
sqlite3 connection in aiosqlite's thread, one hop per read or per write batch: SQLAlchemy's
execution path costs more than the query itself for these one-row statements. Everything else
is built once with SQLAlchemy Core. ``test_store.py`` checks that the two agree with the
schema (``jobs``); a migration that changes a column must update both.

Every write operation is a single statement wherever possible: SQLite makes one statement
atomic on its own, so an operation that fails leaves its batch-mates' writes intact.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    bindparam,
    case,
    delete,
    func,
    insert,
    null,
    select,
    update,
)

from .schema import COMPLETED, FAILED, IN_PROGRESS, IN_QUEUE, jobs

SWEEP_BATCH = 1000
GIVE_UP = "the job was interrupted %d times (worker or daemon died while running it); giving up"


class UnknownJob(LookupError):
    """No job has this id (never submitted, or swept after its retention)."""


INSERT = insert(jobs)  # the Bulk counterpart of RAW_INSERT (bench/store_bench.py's baseline)
STATUS_OF = select(jobs.c.status).where(jobs.c.id == bindparam("p_id"))

_give_up = jobs.c.attempts >= bindparam("p_max")
# Requeue or give up, per row, in one statement; RETURNING tells which happened to each.
_RECOVER = (
    update(jobs)
    .values(
        status=case((_give_up, FAILED), else_=IN_QUEUE),
        error=case((_give_up, func.printf(GIVE_UP, jobs.c.attempts)), else_=jobs.c.error),
        finished_at=case((_give_up, bindparam("p_now")), else_=null()),
        payload=case((_give_up, null()), else_=jobs.c.payload),
        started_at=case((_give_up, jobs.c.started_at), else_=null()),
    )
    .returning(jobs.c.status)
)
RECOVER_ALL = _RECOVER.where(jobs.c.status == IN_PROGRESS)
RECOVER_API = RECOVER_ALL.where(jobs.c.api == bindparam("p_api"))
REQUEUE_ONE = RECOVER_ALL.where(jobs.c.id == bindparam("p_id"))


def _sweep_statement(for_api: bool) -> Any:
    old = select(jobs.c.seq).where(jobs.c.created_at < bindparam("p_cutoff"))
    if for_api:
        old = old.where(jobs.c.api == bindparam("p_api"))
    return delete(jobs).where(jobs.c.seq.in_(old.limit(SWEEP_BATCH).scalar_subquery()))


SWEEP_ALL, SWEEP_API = _sweep_statement(False), _sweep_statement(True)


# --- write operations: fn(conn) run by the writer inside its batch transaction ---

_T = TypeVar("_T")
WriteOp = Callable[[Connection], _T]  # the writer answers its caller with what it returns


def recover_op(api: str | None, max_attempts: int, now: int) -> WriteOp[tuple[int, int]]:
    def run(conn: Connection) -> tuple[int, int]:
        params: dict[str, Any] = {"p_max": max_attempts, "p_now": now}
        if api is not None:
            params["p_api"] = api
        statuses = conn.execute(RECOVER_ALL if api is None else RECOVER_API, params).scalars().all()
        failed = statuses.count(FAILED)
        return len(statuses) - failed, failed

    return run


def requeue_op(job_id: str, max_attempts: int, now: int) -> WriteOp[str]:
    """One in_progress job whose worker died. A job in another state is left alone (its
    current status is returned); unknown id -> UnknownJob."""

    def run(conn: Connection) -> str:
        params = {"p_id": job_id, "p_max": max_attempts, "p_now": now}
        status = conn.execute(REQUEUE_ONE, params).scalar_one_or_none() or _status(conn, job_id)
        if status is None:
            raise UnknownJob(job_id)
        return status

    return run


async def delete_in_rounds(delete: Callable[[], Awaitable[int]], per_round: int) -> int:
    """Run a bounded DELETE (``delete``: one transaction deleting at most ``per_round`` rows)
    until a round comes back short, so other writes interleave with a long sweep; rows deleted."""
    deleted = 0
    while True:
        count = await delete()
        deleted += count
        if count < per_round:
            return deleted


def sweep_op(cutoff: int, api: str | None) -> WriteOp[int]:
    def run(conn: Connection) -> int:
        if api is None:
            return conn.execute(SWEEP_ALL, {"p_cutoff": cutoff}).rowcount
        return conn.execute(SWEEP_API, {"p_cutoff": cutoff, "p_api": api}).rowcount

    return run


def _status(conn: Connection, job_id: str) -> str | None:
    return conn.execute(STATUS_OF, {"p_id": job_id}).scalar_one_or_none()


# --- the hot path, as plain SQL (qmark parameters) ---

# Job's fields, in order.
JOB_COLUMNS = (
    "id, api, status, content_type, headers, payload, result, error, attempts, created_at, started_at, finished_at"
)
RAW_INSERT = (
    "INSERT INTO jobs (id, api, status, content_type, headers, payload, attempts, created_at)"
    f" VALUES (?, ?, '{IN_QUEUE}', ?, ?, ?, 0, ?)"
)  # params: id, api, content_type, headers, payload, created_at
RAW_BY_ID = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"
RAW_BY_ID_AND_API = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ? AND api = ?"
RAW_STATUS_OF = "SELECT status FROM jobs WHERE id = ?"
# Pick and move in one statement: no window in which two claims could take the same job.
RAW_CLAIM = (
    f"UPDATE jobs SET status = '{IN_PROGRESS}', started_at = ?, attempts = attempts + 1"
    f" WHERE seq = (SELECT seq FROM jobs WHERE api = ? AND status = '{IN_QUEUE}' ORDER BY seq LIMIT 1)"
    f" RETURNING {JOB_COLUMNS}"
)  # params: now, api
# A job that already finished keeps its first outcome (a late report from a worker believed
# dead, after its job was requeued and finished elsewhere, must not overwrite it).
_RAW_UNFINISHED = f"status IN ('{IN_QUEUE}', '{IN_PROGRESS}')"
RAW_COMPLETE = (
    f"UPDATE jobs SET status = '{COMPLETED}', finished_at = ?, result = ?, payload = NULL"
    f" WHERE id = ? AND {_RAW_UNFINISHED}"
)  # params: now, result, id
RAW_FAIL = (
    f"UPDATE jobs SET status = '{FAILED}', finished_at = ?, error = ?, payload = NULL"
    f" WHERE id = ? AND {_RAW_UNFINISHED}"
)  # params: now, error, id
# Index-only: answered from jobs_api_status_seq without touching the table.
RAW_COUNT = {
    (False, False): "SELECT count(*) FROM jobs",
    (True, False): "SELECT count(*) FROM jobs WHERE api = ?",
    (False, True): "SELECT count(*) FROM jobs WHERE status = ?",
    (True, True): "SELECT count(*) FROM jobs WHERE api = ? AND status = ?",
}
RAW_COUNTS_BY_STATUS = "SELECT status, count(*) FROM jobs WHERE api = ? GROUP BY status"


# Run in aiosqlite's thread with the raw sqlite3 connection (reads: Readers.run; writes: Raw).


def fetch_one(db: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = db.execute(sql, params).fetchone()
    return row


SqlParams = tuple[Any, ...] | Mapping[str, Any]  # positional (?) or named (:name) parameters


def fetch_all(db: sqlite3.Connection, sql: str, params: SqlParams) -> list[tuple[Any, ...]]:
    return db.execute(sql, params).fetchall()  # drained: no statement left running


def fetch_first(db: sqlite3.Connection, sql: str, params: SqlParams) -> tuple[Any, ...] | None:
    rows = fetch_all(db, sql, params)
    return rows[0] if rows else None


def changed_rows(db: sqlite3.Connection, sql: str, params: SqlParams) -> bool:
    """Whether the statement changed any row."""
    return db.execute(sql, params).rowcount > 0


def raw_claim(db: sqlite3.Connection, now: int, api: str) -> tuple[Any, ...] | None:
    rows = db.execute(RAW_CLAIM, (now, api)).fetchall()  # drained: no statement left running
    return rows[0] if rows else None


def raw_finish(db: sqlite3.Connection, sql: str, params: tuple[Any, Any, str]) -> None:
    """RAW_COMPLETE or RAW_FAIL. Unknown id -> UnknownJob (nothing was written); already
    finished -> a no-op (first outcome wins)."""
    if db.execute(sql, params).rowcount == 0 and db.execute(RAW_STATUS_OF, (params[2],)).fetchone() is None:
        raise UnknownJob(params[2])
