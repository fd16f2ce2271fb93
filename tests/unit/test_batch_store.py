"""inferd.store.batch: BatchAPI/TaskAPI jobs and their batches in the job store's SQLite file.

Async code runs through ``asyncio.run`` inside plain test functions (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError

from inferd.store import CURRENT_VERSION, BatchJob, BatchJobStore, StopResult
from inferd.store import batch as batch_module
from inferd.store.batch import (
    BATCH_FAILED,
    BATCH_QUEUED,
    COMPLETED_WITH_FAILURES,
    ON_COMPLETE_CLAIMED,
    ON_COMPLETE_FAILED,
    ON_COMPLETE_SUCCEEDED,
    PENDING,
    RUNNING,
    STOPPED,
    SUCCEEDED,
    TIMED_OUT,
    WORKER_ERROR,
)
from inferd.store.schema import MIGRATIONS, batch_jobs, job_batches, migrate
from tests.unit.store_support import Clock, run_on_store

T = TypeVar("T")
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
_MAX_INT64 = 2**63 - 1


def with_store(path: Path, body: Callable[[BatchJobStore], Awaitable[T]], clock: Clock | None = None) -> T:
    clock = clock or Clock(T0)
    return run_on_store(path, clock, lambda jobs: body(BatchJobStore(jobs, clock=clock)))


def job_id_at(moment: datetime) -> str:
    """Cortex's id for a job submitted at ``moment``."""
    nanos = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    return f"{_MAX_INT64 - nanos:x}"


def spec_of(job_id: str, api: str = "a", kind: str = "BatchAPI", workers: int = 2, **extra: Any) -> dict[str, Any]:
    return {"job_id": job_id, "api_name": api, "kind": kind, "workers": workers, "sqs_dead_letter_queue": None,
            "config": {"k": "v"}, "timeout": None, "api_id": "x", "sqs_url": "", "start_time": "2024-05-01T12:00:00Z",
            **extra}


def payloads(n: int) -> list[bytes]:
    return [json.dumps([index]).encode() for index in range(n)]


async def running_job(store: BatchJobStore, job_id: str = "j1", batches: int = 3, **kwargs: Any) -> BatchJob:
    await store.create(spec_of(job_id), payloads(batches), **kwargs)
    assert await store.set_status(job_id, RUNNING)
    job = await store.get(job_id)
    assert job is not None
    return job


def test_create_stores_the_job_and_every_batch(tmp_path: Path) -> None:
    async def body(store: BatchJobStore) -> None:
        spec = spec_of("j1", timeout=60)
        job = await store.create(spec, payloads(3))
        assert (job.id, job.api, job.kind, job.status, job.workers, job.timeout) == ("j1", "a", "BatchAPI", PENDING, 2, 60)
        assert job.spec == spec and job.config == {"k": "v"} and job.total_batches == 3 and job.max_receive_count == 2
        assert job.created_at == T0 and job.started_at is None and job.finished_at is None and job.error is None
        assert (job.counts.queued, job.counts.running, job.counts.succeeded, job.counts.failed) == (3, 0, 0, 0)
        assert job.counts.average_time_per_batch is None and job.in_progress
        assert await store.get("j1", api="b") is None and await store.get("nope") is None
        task = await store.create(spec_of("t1", kind="TaskAPI", workers=1, config=None), [])
        assert task.kind == "TaskAPI" and task.total_batches == 0 and task.config is None
        with pytest.raises(TypeError, match="bytes"):
            await store.create(spec_of("j2"), ["[1]"])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="in progress"):
            await store.create(spec_of("j2"), [], status=SUCCEEDED)
        with pytest.raises(DBAPIError):
            await store.create(spec_of("j1"), payloads(1))  # duplicate id

    with_store(tmp_path / "jobs.db", body)


def test_a_failing_batch_insert_leaves_no_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # attempts NULL breaks NOT NULL after the job row was inserted: the whole transaction must go
    broken = batch_module.INSERT_BATCH.replace("?, 0)", "?, NULL)")
    monkeypatch.setattr(batch_module, "INSERT_BATCH", broken)

    async def body(store: BatchJobStore) -> None:
        with pytest.raises(DBAPIError, match="NOT NULL"):
            await store.create(spec_of("j1"), payloads(5))
        assert await store.get("j1") is None

    with_store(tmp_path / "jobs.db", body)
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        assert conn.execute("SELECT count(*) FROM job_batches").fetchone() == (0,)


def test_a_thousand_batches_commit_in_one_write(tmp_path: Path) -> None:
    async def body(store: BatchJobStore) -> None:
        stats = store._jobs.stats
        commits = stats.commits
        big = [json.dumps(list(range(index, index + 100))).encode() for index in range(0, 100_000, 100)]
        started = time.perf_counter()
        job = await store.create(spec_of("j1"), big)
        elapsed = time.perf_counter() - started
        assert stats.commits == commits + 1 and job.total_batches == job.counts.queued == 1000
        assert elapsed < 5.0, f"1,000 batches took {elapsed:.2f} s to commit"

    with_store(tmp_path / "jobs.db", body)


def test_claim_hands_out_batches_in_order_once_and_only_while_running(tmp_path: Path) -> None:
    async def body(store: BatchJobStore) -> None:
        await store.create(spec_of("j1"), payloads(5))
        assert await store.claim("j1", "w1", 2) == []  # pending: no worker may take batches yet
        await store.set_status("j1", RUNNING)
        first = await store.claim("j1", "w1", 2)
        assert [(b.index, b.payload, b.attempts) for b in first] == [(0, b"[0]", 1), (1, b"[1]", 1)]
        assert first[0].id == "j1-0"
        claims = await asyncio.gather(*(store.claim("j1", f"w{n}", 1) for n in range(5)))
        taken = sorted(b.index for claimed in claims for b in claimed)
        assert taken == [2, 3, 4]  # concurrent claims never share a batch
        counts = await store.counts("j1")
        assert (counts.queued, counts.running) == (0, 5)

    with_store(tmp_path / "jobs.db", body)


def test_retry_limit_default_one_retry(tmp_path: Path) -> None:
    async def body(store: BatchJobStore) -> None:
        await running_job(store, batches=1)
        (batch,) = await store.claim("j1", "w1")
        assert await store.fail_batch("j1", batch.index, "boom 1") == BATCH_QUEUED  # retried once
        (again,) = await store.claim("j1", "w1")
        assert again.attempts == 2
        assert await store.fail_batch("j1", again.index, "boom 2") == BATCH_FAILED
        assert await store.fail_batch("j1", again.index, "late") is None  # no longer running
        assert await store.claim("j1", "w1") == []
        counts = await store.counts("j1")
        assert (counts.queued, counts.failed) == (0, 1)

    with_store(tmp_path / "jobs.db", body)


@pytest.mark.parametrize("max_receive_count", [1, 3])
def test_retry_limit_from_max_receive_count(tmp_path: Path, max_receive_count: int) -> None:
    async def body(store: BatchJobStore) -> None:
        await running_job(store, batches=1, max_receive_count=max_receive_count)
        outcomes = []
        while batches := await store.claim("j1", "w1"):
            outcomes.append(await store.fail_batch("j1", batches[0].index, "boom"))
        assert outcomes == [BATCH_QUEUED] * (max_receive_count - 1) + [BATCH_FAILED]

    with_store(tmp_path / "jobs.db", body)


def test_succeed_put_back_and_average_time(tmp_path: Path) -> None:
    clock = Clock(T0)

    async def body(store: BatchJobStore) -> None:
        await running_job(store, batches=3)
        a, b = await store.claim("j1", "w1", 2)
        clock.advance(timedelta(seconds=2))
        assert await store.succeed_batch("j1", a.index)
        assert not await store.succeed_batch("j1", a.index)  # once
        assert await store.put_back_batch("j1", b.index)  # its worker went away before starting it
        (again,) = await store.claim("j1", "w2", 1)
        assert again.index == b.index and again.attempts == 1
        clock.advance(timedelta(seconds=1))
        assert await store.succeed_batch("j1", b.index)
        counts = await store.counts("j1")
        assert (counts.queued, counts.succeeded, counts.finished) == (1, 2, 2)
        assert counts.average_time_per_batch == pytest.approx(1.5)

    with_store(tmp_path / "jobs.db", body, clock)


def test_complete_succeeded_or_with_failures_once_nothing_is_open(tmp_path: Path) -> None:
    async def body(store: BatchJobStore) -> None:
        await running_job(store, "good", batches=1)
        (batch,) = await store.claim("good", "w1")
        assert await store.complete("good") is None  # a batch is still running
        await store.succeed_batch("good", batch.index)
        assert await store.complete("good") == SUCCEEDED
        assert await store.complete("good") is None  # once
        done = await store.get("good")
        assert done is not None and done.finished_at == T0 and not done.in_progress

        await running_job(store, "bad", batches=1, max_receive_count=1)
        (batch,) = await store.claim("bad", "w1")
        await store.fail_batch("bad", batch.index, "boom")
        assert await store.complete("bad") == COMPLETED_WITH_FAILURES

        await store.create(spec_of("task", kind="TaskAPI", workers=1), [])
        await store.set_status("task", RUNNING)
        assert await store.complete("task") == SUCCEEDED  # a task has no batches

    with_store(tmp_path / "jobs.db", body)


def test_status_transitions_and_error_text(tmp_path: Path) -> None:
    clock = Clock(T0)

    async def body(store: BatchJobStore) -> None:
        await store.create(spec_of("j1"), payloads(1))
        assert await store.set_status("j1", PENDING, "waiting for 2 free GPUs")
        job = await store.get("j1")
        assert job is not None and job.reason == "waiting for 2 free GPUs" and job.started_at is None
        clock.advance(timedelta(seconds=5))
        assert await store.set_status("j1", RUNNING)
        job = await store.get("j1")
        assert job is not None and job.status == RUNNING and job.started_at == T0 + timedelta(seconds=5)
        assert await store.finish("j1", WORKER_ERROR, "Traceback ...\nValueError: x")
        assert not await store.finish("j1", TIMED_OUT)  # first outcome wins
        assert not await store.set_status("j1", RUNNING)
        job = await store.get("j1")
        assert job is not None and (job.status, job.error) == (WORKER_ERROR, "Traceback ...\nValueError: x")
        with pytest.raises(ValueError, match="final"):
            await store.finish("j1", RUNNING)
        with pytest.raises(ValueError, match="in-progress"):
            await store.set_status("j1", STOPPED)

    with_store(tmp_path / "jobs.db", body, clock)


def test_stop_only_an_in_progress_job(tmp_path: Path) -> None:
    async def body(store: BatchJobStore) -> None:
        await running_job(store, "j1", batches=2)
        await store.claim("j1", "w1")
        assert await store.stop("j1") == StopResult.STOPPED
        assert await store.claim("j1", "w1") == []  # a stopped job hands out nothing more
        assert await store.stop("j1") == StopResult.ALREADY_STOPPED
        await running_job(store, "j2", batches=0)
        assert await store.complete("j2") == SUCCEEDED
        assert await store.stop("j2") == StopResult.NOT_IN_PROGRESS
        assert (await store.get("j2")).status == SUCCEEDED  # type: ignore[union-attr]
        assert await store.stop("nope") == StopResult.UNKNOWN

    with_store(tmp_path / "jobs.db", body)


def test_on_job_complete_runs_exactly_once(tmp_path: Path) -> None:
    async def body(store: BatchJobStore) -> None:
        await running_job(store, batches=1)
        assert not await store.claim_on_job_complete("j1")  # a batch is still queued
        (batch,) = await store.claim("j1", "w1")
        await store.succeed_batch("j1", batch.index)
        assert not await store.record_on_job_complete("j1")  # nobody claimed it
        winners = await asyncio.gather(*(store.claim_on_job_complete("j1") for _ in range(10)))
        assert winners.count(True) == 1
        assert (await store.get("j1")).on_complete == ON_COMPLETE_CLAIMED  # type: ignore[union-attr]
        assert await store.record_on_job_complete("j1", "Traceback ...")
        assert not await store.record_on_job_complete("j1")  # once
        assert not await store.claim_on_job_complete("j1")
        job = await store.get("j1")
        assert job is not None and (job.on_complete, job.error) == (ON_COMPLETE_FAILED, "Traceback ...")

        await running_job(store, "j2", batches=0)
        assert await store.claim_on_job_complete("j2") and await store.record_on_job_complete("j2")
        assert (await store.get("j2")).on_complete == ON_COMPLETE_SUCCEEDED  # type: ignore[union-attr]

    with_store(tmp_path / "jobs.db", body)


def test_recover_requeues_in_flight_batches_and_never_reruns_finished_ones(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"

    async def before_crash(store: BatchJobStore) -> None:
        await running_job(store, "j1", batches=4)
        done, failed_once, in_flight = await store.claim("j1", "w1", 3)
        await store.succeed_batch("j1", done.index)
        await store.fail_batch("j1", failed_once.index, "boom")  # queued again, attempt counted
        await running_job(store, "old", batches=0)
        await store.finish("old", STOPPED)

    async def after_restart(store: BatchJobStore) -> None:
        resumable = await store.recover()
        assert [job.id for job in resumable] == ["j1"]
        counts = resumable[0].counts
        assert (counts.queued, counts.running, counts.succeeded) == (3, 0, 1)
        claimed = await store.claim("j1", "w2", 10)
        assert [(b.index, b.attempts) for b in claimed] == [(1, 2), (2, 2), (3, 1)]  # batch 0 never again

    with_store(path, before_crash)
    with_store(path, after_restart)


def test_an_in_flight_batch_at_its_limit_still_runs_once_more_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"

    async def before_crash(store: BatchJobStore) -> None:
        await running_job(store, batches=1, max_receive_count=1)
        await store.claim("j1", "w1")

    async def after_restart(store: BatchJobStore) -> None:
        await store.recover()
        (batch,) = await store.claim("j1", "w1")
        assert batch.attempts == 2
        assert await store.fail_batch("j1", batch.index, "boom") == BATCH_FAILED

    with_store(path, before_crash)
    with_store(path, after_restart)


def test_recent_lists_newest_first_with_a_limit(tmp_path: Path) -> None:
    async def body(store: BatchJobStore) -> None:
        moments = [T0 + timedelta(seconds=n) for n in range(5)]
        for moment in moments:
            await store.create(spec_of(job_id_at(moment)), payloads(1))
        other = job_id_at(T0 + timedelta(seconds=10))  # the newest, but another API's
        await store.create(spec_of(other, api="b"), [])
        listed = await store.recent("a", limit=3)
        assert [job.id for job in listed] == [job_id_at(m) for m in reversed(moments)][:3]
        assert all(job.counts.queued == 1 for job in listed)
        assert [job.id for job in await store.recent("b")] == [other]

    with_store(tmp_path / "jobs.db", body)


def test_sweep_deletes_only_finished_jobs_past_retention(tmp_path: Path) -> None:
    clock = Clock(T0)

    async def body(store: BatchJobStore) -> None:
        await running_job(store, "old", batches=3)
        await store.finish("old", STOPPED)
        await running_job(store, "live", batches=2)  # old too, but still running
        clock.advance(timedelta(days=6))
        await running_job(store, "recent", batches=0)
        await store.complete("recent")
        await store.create(spec_of("other", api="b"), [])
        await store.finish("other", STOPPED)
        clock.advance(timedelta(days=2))
        assert await store.sweep(timedelta(days=7), api="b") == 0  # b's job finished 2 days ago
        assert await store.sweep(timedelta(days=7)) == 1
        assert await store.get("old") is None
        assert {job.id for job in await store.recent("a")} == {"live", "recent"}

    with_store(tmp_path / "jobs.db", body, clock)
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        assert conn.execute("SELECT count(*) FROM job_batches WHERE job_id = 'old'").fetchone() == (0,)


def test_counts_by_status_and_unfinished(tmp_path: Path) -> None:
    async def body(store: BatchJobStore) -> None:
        await store.create(spec_of("j1"), [])
        await running_job(store, "j2", batches=0)
        await store.complete("j2")
        counts = await store.counts_by_status("a")
        assert counts[PENDING] == 1 and counts[SUCCEEDED] == 1 and counts[RUNNING] == 0
        assert [job.id for job in await store.unfinished("a")] == ["j1"]
        assert await store.unfinished("b") == []

    with_store(tmp_path / "jobs.db", body)


# --- the schema ---


def test_v2_file_migrates_to_v3_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert migrate(conn, MIGRATIONS[:2]) == 0
    engine.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO jobs (id, api, status, content_type, headers, payload, attempts, created_at)"
                     " VALUES ('async1', 'a', 'in_queue', 'application/json', '{}', x'7b7d', 0, 0)")

    async def body(store: BatchJobStore) -> None:
        assert (await store._jobs.get("async1")) is not None
        await store.create(spec_of("j1"), payloads(2))
        assert (await store.get("j1")).total_batches == 2  # type: ignore[union-attr]

    with_store(path, body)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (CURRENT_VERSION,)
    assert CURRENT_VERSION == 3


def test_tables_match_the_migrations_and_the_queries_use_the_indexes(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with_store(path, lambda store: store.create(spec_of("j1"), payloads(1)))
    with sqlite3.connect(path) as conn:
        for table in (batch_jobs, job_batches):
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table.name})")]
            indexes = {row[1] for row in conn.execute(f"PRAGMA index_list({table.name})")}
            assert columns == [column.name for column in table.columns]
            assert {index.name for index in table.indexes} <= indexes
        assert [c.strip() for c in batch_module.COLUMNS.split(",")] == [
            "id", "api", "kind", "status", "spec", "workers", "timeout_s", "config", "max_receive_count",
            "total_batches", "reason", "error", "on_complete", "created_at", "started_at", "finished_at"]

        def plan(sql: str, params: dict[str, Any]) -> str:
            return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))

        assert "job_batches_job_status_idx (job_id=? AND status=?)" in plan(batch_module.CLAIM, {"id": "j1", "worker_id": "w", "n": 2, "now": 0})
        assert "batch_jobs_api_id (api=?)" in plan(batch_module.RECENT, {"api": "a", "limit": 5})
        assert "job_batches_status (status=?)" in plan(batch_module.RECOVER_BATCHES, {})
        assert "batch_jobs_status_finished_at" in plan(batch_module.SWEEP, {"cutoff": 0})
