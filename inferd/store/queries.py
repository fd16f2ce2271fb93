"""SQL for the job store, built once with SQLAlchemy Core (compiled-statement cache hits on
every call), and the write operations the group-commit writer runs.

Every write operation is a single statement wherever possible: SQLite makes one statement
atomic on its own, so an operation that fails leaves its batch-mates' writes intact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Row, bindparam, case, delete, func, insert, null, select, update

from .schema import COMPLETED, FAILED, IN_PROGRESS, IN_QUEUE, jobs

SWEEP_BATCH = 1000
GIVE_UP = "the job was interrupted %d times (worker or daemon died while running it); giving up"


class UnknownJob(LookupError):
    """No job has this id (never submitted, or swept after its retention)."""


INSERT = insert(jobs)
BY_ID = select(jobs).where(jobs.c.id == bindparam("p_id"))
BY_ID_AND_API = BY_ID.where(jobs.c.api == bindparam("p_api"))
STATUS_OF = select(jobs.c.status).where(jobs.c.id == bindparam("p_id"))

_oldest_queued = (
    select(jobs.c.seq)
    .where(jobs.c.api == bindparam("p_api"), jobs.c.status == IN_QUEUE)
    .order_by(jobs.c.seq)
    .limit(1)
    .scalar_subquery()
)
# Pick and move in one statement: no window in which two claims could take the same job.
CLAIM = (
    update(jobs)
    .where(jobs.c.seq == _oldest_queued)
    .values(status=IN_PROGRESS, started_at=bindparam("p_now"), attempts=jobs.c.attempts + 1)
    .returning(*jobs.c)
)

_unfinished = jobs.c.status.in_([IN_QUEUE, IN_PROGRESS])
# A job that already finished keeps its first outcome (a late report from a worker believed
# dead, after its job was requeued and finished elsewhere, must not overwrite it).
COMPLETE = (
    update(jobs)
    .where(jobs.c.id == bindparam("p_id"), _unfinished)
    .values(status=COMPLETED, finished_at=bindparam("p_now"), result=bindparam("p_result"), payload=null())
)
FAIL = (
    update(jobs)
    .where(jobs.c.id == bindparam("p_id"), _unfinished)
    .values(status=FAILED, finished_at=bindparam("p_now"), error=bindparam("p_error"), payload=null())
)

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


def count_statement(api: str | None, status: str | None) -> Any:
    query = select(func.count()).select_from(jobs)
    if api is not None:
        query = query.where(jobs.c.api == api)
    if status is not None:
        query = query.where(jobs.c.status == status)
    return query


COUNTS_BY_STATUS = (
    select(jobs.c.status, func.count()).where(jobs.c.api == bindparam("p_api")).group_by(jobs.c.status)
)

# --- write operations: fn(conn) run by the writer inside its batch transaction ---

WriteOp = Callable[[Connection], Any]


def claim_op(api: str, now: int) -> WriteOp:
    def run(conn: Connection) -> Row | None:
        return conn.execute(CLAIM, {"p_api": api, "p_now": now}).first()

    return run


def finish_op(statement: Any, params: dict[str, Any]) -> WriteOp:
    """COMPLETE or FAIL. Unknown id -> UnknownJob (nothing was written); already finished ->
    a no-op (first outcome wins)."""

    def run(conn: Connection) -> None:
        if conn.execute(statement, params).rowcount == 0 and _status(conn, params["p_id"]) is None:
            raise UnknownJob(params["p_id"])

    return run


def recover_op(api: str | None, max_attempts: int, now: int) -> WriteOp:
    def run(conn: Connection) -> tuple[int, int]:
        params: dict[str, Any] = {"p_max": max_attempts, "p_now": now}
        if api is not None:
            params["p_api"] = api
        statuses = conn.execute(RECOVER_ALL if api is None else RECOVER_API, params).scalars().all()
        failed = statuses.count(FAILED)
        return len(statuses) - failed, failed

    return run


def requeue_op(job_id: str, max_attempts: int, now: int) -> WriteOp:
    """One in_progress job whose worker died. A job in another state is left alone (its
    current status is returned); unknown id -> UnknownJob."""

    def run(conn: Connection) -> str:
        params = {"p_id": job_id, "p_max": max_attempts, "p_now": now}
        status = conn.execute(REQUEUE_ONE, params).scalar_one_or_none() or _status(conn, job_id)
        if status is None:
            raise UnknownJob(job_id)
        return status

    return run


def sweep_op(cutoff: int, api: str | None) -> WriteOp:
    def run(conn: Connection) -> int:
        if api is None:
            return conn.execute(SWEEP_ALL, {"p_cutoff": cutoff}).rowcount
        return conn.execute(SWEEP_API, {"p_cutoff": cutoff, "p_api": api}).rowcount

    return run


def _status(conn: Connection, job_id: str) -> str | None:
    return conn.execute(STATUS_OF, {"p_id": job_id}).scalar_one_or_none()
