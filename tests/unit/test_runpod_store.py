"""inferd.store.runpod: RunPod queue-API jobs in the job store's SQLite file.

Async code runs through ``asyncio.run`` inside plain test functions (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from inferd.store import CURRENT_VERSION, AsyncJobStore, RunPodJob, RunPodJobStore, StoreClosed, UnknownJob, queries
from inferd.store import IN_QUEUE as ASYNC_IN_QUEUE
from inferd.store.runpod import (
    CANCELLED,
    COLUMNS,
    COMPLETED,
    FAILED,
    IN_PROGRESS,
    IN_QUEUE,
    STATUSES,
    TIMED_OUT,
)
from inferd.store.schema import MIGRATIONS, migrate, runpod_jobs, runpod_stream
from tests.unit.store_support import Clock, run_on_store

T = TypeVar("T")
T0 = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
DAY_MS = 86_400_000


def with_store(path: Path, body: Callable[[RunPodJobStore], Awaitable[T]], clock: Clock | None = None) -> T:
    clock = clock or Clock(T0)
    return run_on_store(path, clock, lambda jobs: body(RunPodJobStore(jobs, clock=clock)))


async def submit(store: RunPodJobStore, api: str = "a", *, sync: bool = False, ttl_ms: int = DAY_MS,
                 execution_timeout_ms: int = 600_000) -> RunPodJob:
    return await store.submit(api, b'{"prompt": "hi"}', "http://hook", execution_timeout_ms, ttl_ms, sync)


async def running(store: RunPodJobStore, api: str = "a", **kwargs: Any) -> RunPodJob:
    """A job submitted and claimed by worker w1."""
    job = await submit(store, api, **kwargs)
    claimed = await store.claim(api, "w1")
    assert claimed is not None and claimed.id == job.id
    return claimed


def test_submit_then_get(tmp_path: Path) -> None:
    clock = Clock(T0)

    async def body(store: RunPodJobStore) -> None:
        job = await submit(store)
        assert job.id.endswith("-u1") and uuid.UUID(job.id.removesuffix("-u1")).version == 4
        got = await store.get(job.id)
        assert got == job
        assert (job.api, job.status, job.input, job.webhook) == ("a", IN_QUEUE, b'{"prompt": "hi"}', "http://hook")
        assert (job.execution_timeout_ms, job.ttl_ms, job.sync, job.attempts, job.retried) == (600_000, DAY_MS, False, 0, 0)
        assert job.created_at == T0 and job.started_at is None and job.finished_at is None
        assert job.output is None and job.error is None and job.worker_id is None
        sync_job = await submit(store, sync=True)
        assert sync_job.id.startswith("sync-") and uuid.UUID(sync_job.id.removeprefix("sync-")).version == 4
        assert sync_job.sync and (await store.get(sync_job.id)) == sync_job
        assert await store.get("no-such-id") is None
        assert await store.get(job.id, api="a") == got and await store.get(job.id, api="b") is None
        with pytest.raises(TypeError, match="bytes"):
            await store.submit("a", {"x": 1}, None, 1, 1, False)  # type: ignore[arg-type]

    with_store(tmp_path / "jobs.db", body, clock)


def test_status_json_and_times(tmp_path: Path) -> None:
    clock = Clock(T0)

    async def body(store: RunPodJobStore) -> None:
        job = await submit(store)
        clock.advance(timedelta(milliseconds=1500))
        queued = await store.get(job.id)
        assert queued is not None
        assert queued.to_status_json() == {"id": job.id, "status": IN_QUEUE, "delayTime": 1500, "executionTime": 0}
        await store.claim("a", "w1")
        clock.advance(timedelta(milliseconds=250))
        assert await store.set_progress(job.id, b'{"step": 1}')
        live = await store.get(job.id)
        assert live is not None and (live.delay_ms, live.execution_ms) == (1500, 250)
        assert live.to_status_json() == {"id": job.id, "status": IN_PROGRESS, "delayTime": 1500,
                                         "executionTime": 250, "output": {"step": 1}, "workerId": "w1"}
        clock.advance(timedelta(milliseconds=750))
        await store.finish(job.id, FAILED, None, "ValueError: nope")
        clock.advance(timedelta(minutes=5))  # finished: the times no longer grow
        failed = await store.get(job.id)
        assert failed is not None
        assert failed.to_status_json() == {"id": job.id, "status": FAILED, "delayTime": 1500,
                                           "executionTime": 1000, "error": "ValueError: nope", "workerId": "w1"}
        cancelled = await store.cancel((await submit(store)).id)
        assert cancelled is not None and (cancelled.delay_ms, cancelled.execution_ms) == (0, 0)

    with_store(tmp_path / "jobs.db", body, clock)


def test_claim_follows_submission_order_per_api(tmp_path: Path) -> None:
    clock = Clock(T0)

    async def body(store: RunPodJobStore) -> None:
        a1, b1, a2, a3 = [await submit(store, api) for api in ("a", "b", "a", "a")]
        clock.advance(timedelta(seconds=5))
        claimed = [await store.claim("a", f"w{n}") for n in range(4)]
        assert [job.id if job else None for job in claimed] == [a1.id, a2.id, a3.id, None]
        first = claimed[0]
        assert first is not None and (first.status, first.attempts, first.worker_id) == (IN_PROGRESS, 1, "w0")
        assert first.started_at == T0 + timedelta(seconds=5) and first.input == b'{"prompt": "hi"}'
        assert (await store.get(b1.id)).status == IN_QUEUE  # type: ignore[union-attr]

    with_store(tmp_path / "jobs.db", body, clock)


def test_concurrent_claims_never_share_a_job(tmp_path: Path) -> None:
    async def body(store: RunPodJobStore) -> None:
        ids = {job.id for job in await asyncio.gather(*[submit(store) for _ in range(50)])}
        claimed = await asyncio.gather(*[store.claim("a", f"w{n}") for n in range(60)])
        assert sorted(job.id for job in claimed if job) == sorted(ids) and claimed.count(None) == 10

    with_store(tmp_path / "jobs.db", body)


def test_progress_only_while_in_progress_and_never_after_the_result(tmp_path: Path) -> None:
    async def body(store: RunPodJobStore) -> None:
        queued = await submit(store, "b")
        assert not await store.set_progress(queued.id, b"1")
        job = await running(store)
        assert await store.set_progress(job.id, b'"half"')
        assert (await store.get(job.id)).output == b'"half"'  # type: ignore[union-attr]
        done = await store.finish(job.id, COMPLETED, b'{"text": "done"}', None)
        assert done is not None and (done.status, done.output) == (COMPLETED, b'{"text": "done"}')
        assert not await store.set_progress(job.id, b'"late"')  # a late progress post
        assert await store.finish(job.id, FAILED, None, "late failure") is None  # first outcome wins
        final = await store.get(job.id)
        assert final is not None and (final.status, final.output, final.error) == (COMPLETED, b'{"text": "done"}', None)
        assert not await store.set_progress("no-such-id", b"1")
        assert await store.finish("no-such-id", COMPLETED, b"1", None) is None
        with pytest.raises(ValueError, match="final status"):
            await store.finish(job.id, IN_PROGRESS, None, None)

    with_store(tmp_path / "jobs.db", body)


def test_finish_from_the_queue_and_output_replaces_progress(tmp_path: Path) -> None:
    async def body(store: RunPodJobStore) -> None:
        queued = await submit(store)
        timed_out = await store.finish(queued.id, TIMED_OUT, None, "expired before pickup")
        assert timed_out is not None and timed_out.status == TIMED_OUT and timed_out.started_at is None
        job = await running(store)
        await store.set_progress(job.id, b'"half"')
        failed = await store.finish(job.id, FAILED, None, "boom")
        assert failed is not None and (failed.output, failed.error) == (None, "boom")

    with_store(tmp_path / "jobs.db", body)


def test_stream_chunks_are_handed_out_once_in_order(tmp_path: Path) -> None:
    async def body(store: RunPodJobStore) -> None:
        queued = await submit(store, "b")
        assert not await store.append_stream(queued.id, b"0")
        job = await running(store)
        other = await running(store)
        for n in range(5):
            assert await store.append_stream(job.id, f'"{n}"'.encode())
        await store.append_stream(other.id, b'"other"')
        assert await store.take_stream(job.id) == [b'"0"', b'"1"', b'"2"', b'"3"', b'"4"']
        assert await store.take_stream(job.id) == []

        async def produce() -> None:
            for n in range(200):
                await store.append_stream(job.id, str(n).encode())

        async def consume(out: list[bytes]) -> None:
            for _ in range(50):
                out.extend(await store.take_stream(job.id))
                await asyncio.sleep(0)

        takers: list[list[bytes]] = [[], [], []]
        await asyncio.gather(produce(), *[consume(out) for out in takers])
        rest = await store.take_stream(job.id)
        every = [chunk for out in takers for chunk in out] + rest
        assert sorted(every, key=int) == [str(n).encode() for n in range(200)]  # each exactly once
        for out in (*takers, rest):
            assert out == sorted(out, key=int)  # each caller sees them in order

        await store.append_stream(job.id, b'"last"')
        await store.finish(job.id, COMPLETED, b"[]", None)
        assert not await store.append_stream(job.id, b'"after"')
        assert await store.take_stream(job.id) == [b'"last"']  # still delivered after the result
        assert await store.take_stream(other.id) == [b'"other"']

    with_store(tmp_path / "jobs.db", body)


def test_cancel(tmp_path: Path) -> None:
    clock = Clock(T0)

    async def body(store: RunPodJobStore) -> None:
        job = await running(store)
        queued = await submit(store)
        clock.advance(timedelta(seconds=1))
        cancelled = await store.cancel(queued.id)
        assert cancelled is not None and cancelled.status == CANCELLED and cancelled.finished_at == clock.now
        stopped = await store.cancel(job.id)
        assert stopped is not None and stopped.status == CANCELLED and stopped.worker_id == "w1"
        assert await store.claim("a", "w2") is None
        assert not await store.set_progress(job.id, b"1")
        assert await store.finish(job.id, COMPLETED, b"1", None) is None  # the worker's late result
        done = await running(store)
        await store.finish(done.id, COMPLETED, b"1", None)
        assert (await store.cancel(done.id)).status == COMPLETED  # type: ignore[union-attr]
        assert (await store.cancel(job.id)) == await store.get(job.id)
        assert await store.cancel("no-such-id") is None

    with_store(tmp_path / "jobs.db", body, clock)


def test_retry_only_failed_or_timed_out_to_the_back_of_the_queue(tmp_path: Path) -> None:
    clock = Clock(T0)

    async def body(store: RunPodJobStore) -> None:
        job = await running(store)
        await store.append_stream(job.id, b'"old chunk"')
        await store.set_progress(job.id, b'"old"')
        assert await store.retry(job.id) is None  # IN_PROGRESS
        await store.finish(job.id, FAILED, b'"partial"', "boom")
        waiting = await submit(store)
        clock.advance(timedelta(seconds=3))
        retried = await store.retry(job.id)
        assert retried is not None and retried.id == job.id and retried.status == IN_QUEUE
        assert (retried.output, retried.error, retried.started_at, retried.finished_at, retried.worker_id) == (None,) * 5
        assert (retried.attempts, retried.retried, retried.input) == (0, 1, job.input)
        assert retried.created_at == clock.now  # ttl and delayTime start again
        assert await store.take_stream(job.id) == []  # the old run's chunks are gone
        assert await store.retry(job.id) is None  # IN_QUEUE
        assert (await store.claim("a", "w2")).id == waiting.id  # type: ignore[union-attr]
        again = await store.claim("a", "w2")
        assert again is not None and again.id == job.id and again.attempts == 1
        await store.finish(job.id, TIMED_OUT, None, "execution timeout")
        assert (await store.retry(job.id)).retried == 2  # type: ignore[union-attr]
        for status in (COMPLETED, CANCELLED):
            other = await submit(store, "b")
            await store.finish(other.id, status, None, None)
            assert await store.retry(other.id) is None
            assert (await store.get(other.id)).status == status  # type: ignore[union-attr]
        assert await store.retry("no-such-id") is None

    with_store(tmp_path / "jobs.db", body, clock)


def test_purge_deletes_only_queued_jobs_of_the_api(tmp_path: Path) -> None:
    async def body(store: RunPodJobStore) -> None:
        job = await running(store)
        await store.append_stream(job.id, b"1")
        await store.requeue(job.id, "worker died")  # queued again, its chunk kept
        queued = [await submit(store) for _ in range(3)]
        other = await submit(store, "b")
        assert await store.purge("a") == 4
        assert all([await store.get(j.id) is None for j in (job, *queued)])
        assert await store.take_stream(job.id) == []
        assert await store.get(other.id) is not None and await store.purge("a") == 0

    with_store(tmp_path / "jobs.db", body)


def test_requeue_keeps_stream_then_fails_with_the_reason(tmp_path: Path) -> None:
    clock = Clock(T0)

    async def body(store: RunPodJobStore) -> None:
        job = await running(store)
        await store.set_progress(job.id, b'"half"')
        await store.append_stream(job.id, b'"kept"')
        assert await store.requeue(job.id, "worker w1 died") == IN_QUEUE
        requeued = await store.get(job.id)
        assert requeued is not None and (requeued.output, requeued.started_at, requeued.worker_id) == (None, None, None)
        assert requeued.attempts == 1
        again = await store.claim("a", "w2")
        assert again is not None and again.id == job.id and again.attempts == 2
        clock.advance(timedelta(seconds=1))
        assert await store.requeue(job.id, "worker w2 died") == FAILED
        failed = await store.get(job.id)
        assert failed is not None and (failed.error, failed.finished_at, failed.worker_id) == ("worker w2 died", clock.now, "w2")
        assert await store.requeue(job.id, "again") == FAILED  # not IN_PROGRESS: left alone
        assert await store.take_stream(job.id) == [b'"kept"']
        queued = await submit(store)
        assert await store.requeue(queued.id, "x") == IN_QUEUE
        with pytest.raises(UnknownJob):
            await store.requeue("no-such-id", "x")

    with_store(tmp_path / "jobs.db", body, clock)


def test_recover_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"

    async def main() -> None:
        crashed_jobs = await AsyncJobStore.open(path)
        crashed = RunPodJobStore(crashed_jobs)
        a, b = await running(crashed, "a"), await running(crashed, "b")
        await submit(crashed, "a")
        restarted_jobs = await AsyncJobStore.open(path)  # the first one "died" without closing
        restarted = RunPodJobStore(restarted_jobs)
        try:
            assert await restarted.recover("a") == (1, 0)
            assert (await restarted.get(a.id)).status == IN_QUEUE  # type: ignore[union-attr]
            assert (await restarted.get(b.id)).status == IN_PROGRESS  # type: ignore[union-attr]
            assert (await restarted.claim("a", "w9")).id == a.id  # type: ignore[union-attr]  # first in line still
            assert await restarted.recover() == (1, 1)  # b requeued (1st), a failed (2nd)
            failed = await restarted.get(a.id)
            assert failed is not None and failed.status == FAILED
            assert failed.error == queries.GIVE_UP % 2
            assert await restarted.recover() == (0, 0)
        finally:
            await restarted_jobs.close()
            await crashed_jobs.close()

    asyncio.run(main())


def test_counts_and_queue_length(tmp_path: Path) -> None:
    async def body(store: RunPodJobStore) -> None:
        assert await store.counts("a") == {"completed": 0, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0}
        for status in (COMPLETED, FAILED, TIMED_OUT, CANCELLED):
            job = await running(store)
            await store.finish(job.id, status, None, None)
        await running(store)
        failed = await submit(store)
        await store.finish(failed.id, FAILED, None, "x")
        await store.retry(failed.id)  # back in the queue, retried once
        await submit(store)
        await submit(store, "b")
        assert await store.counts("a") == {"completed": 1, "failed": 2, "inProgress": 1, "inQueue": 2, "retried": 1}
        assert await store.counts_by_status("a") == {IN_QUEUE: 2, IN_PROGRESS: 1, COMPLETED: 1, FAILED: 1,
                                                     CANCELLED: 1, TIMED_OUT: 1}
        assert await store.counts_by_status("zzz") == dict.fromkeys(STATUSES, 0)
        assert await store.queue_length("a") == 2 and await store.queue_length("b") == 1
        assert await store.queue_length("zzz") == 0

    with_store(tmp_path / "jobs.db", body)


def test_retention_after_finishing(tmp_path: Path) -> None:
    clock = Clock(T0)

    async def main() -> None:
        jobs = await AsyncJobStore.open(tmp_path / "jobs.db", clock)
        store = RunPodJobStore(jobs, run_retention=timedelta(minutes=30), sync_retention=timedelta(minutes=1), clock=clock)
        try:
            run_job, sync_job = await running(store), await running(store, sync=True)
            await store.append_stream(run_job.id, b"1")
            await store.append_stream(sync_job.id, b"1")
            await store.finish(run_job.id, COMPLETED, b"1", None)
            await store.finish(sync_job.id, COMPLETED, b"1", None)
            clock.advance(timedelta(seconds=59))
            assert await store.get(sync_job.id) is not None and await store.sweep() == 0
            clock.advance(timedelta(seconds=1))
            assert await store.get(sync_job.id) is None and await store.get(run_job.id) is not None
            assert await store.cancel(sync_job.id) is None and await store.retry(sync_job.id) is None
            assert await store.counts("a") == {"completed": 1, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0}
            other = await running(store, api="b", sync=True)
            await store.finish(other.id, COMPLETED, b"1", None)
            clock.advance(timedelta(minutes=1))
            assert await store.sweep("b") == 1  # one API sweeps only its own jobs
            assert await store.sweep() == 1
            clock.advance(timedelta(minutes=28))
            assert await store.get(run_job.id) is None and await store.sweep() == 1
            with sqlite3.connect(tmp_path / "jobs.db") as conn:
                assert conn.execute("SELECT count(*) FROM runpod_jobs").fetchone() == (0,)
                assert conn.execute("SELECT count(*) FROM runpod_stream").fetchone() == (0,)  # chunks went too
        finally:
            await jobs.close()

    asyncio.run(main())


def test_ttl_counts_from_submission_while_not_finished(tmp_path: Path) -> None:
    clock = Clock(T0)

    async def body(store: RunPodJobStore) -> None:
        job = await running(store, "a", ttl_ms=10_000)
        expiring = await submit(store, "b", ttl_ms=10_000)
        finished = await submit(store, "c", ttl_ms=10_000)
        await store.finish(finished.id, COMPLETED, b"1", None)
        long_lived = await submit(store, "b")
        clock.advance(timedelta(seconds=10))
        # The running job and the queued one are gone (even mid-run); the finished one stays for
        # its retention, whatever its ttl.
        assert await store.get(job.id) is None and await store.get(expiring.id) is None
        assert await store.get(finished.id) is not None
        assert (await store.claim("b", "w2")).id == long_lived.id  # type: ignore[union-attr]
        assert not await store.set_progress(job.id, b"1") and not await store.append_stream(job.id, b"1")
        assert await store.finish(job.id, COMPLETED, b"1", None) is None  # a late result cannot revive it
        assert await store.cancel(job.id) is None
        with pytest.raises(UnknownJob):
            await store.requeue(job.id, "worker died")
        assert await store.queue_length("b") == 0 and await store.counts("a") == dict.fromkeys(
            ("completed", "failed", "inProgress", "inQueue", "retried"), 0)
        assert await store.sweep() == 2
        assert await store.get(finished.id) is not None and await store.get(long_lived.id) is not None


def test_claim_skips_jobs_past_their_ttl(tmp_path: Path) -> None:
    clock = Clock(T0)

    async def body(store: RunPodJobStore) -> None:
        await submit(store, ttl_ms=10_000)
        fresh = await submit(store)
        clock.advance(timedelta(seconds=11))
        assert await store.queue_length("a") == 1
        assert (await store.claim("a", "w1")).id == fresh.id  # type: ignore[union-attr]
        assert await store.claim("a", "w1") is None

    with_store(tmp_path / "jobs.db", body, clock)


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    async def main() -> None:
        jobs = await AsyncJobStore.open(tmp_path / "jobs.db")
        store = RunPodJobStore(jobs)
        job = await submit(store)
        await jobs.close()
        with pytest.raises(StoreClosed):
            await submit(store)
        with pytest.raises(StoreClosed):
            await store.get(job.id)

    asyncio.run(main())


# --- the schema ---


def test_v1_file_migrates_to_v2_keeping_async_jobs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert migrate(conn, MIGRATIONS[:1]) == 0
    engine.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute(queries.RAW_INSERT, ("job1", "cortex", "application/json", "{}", b'{"x": 1}', 0))
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (1,)

    async def main() -> None:
        jobs = await AsyncJobStore.open(path)
        try:
            async_job = await jobs.get("job1")
            assert async_job is not None and async_job.status == ASYNC_IN_QUEUE and async_job.payload == b'{"x": 1}'
            store = RunPodJobStore(jobs)
            job = await submit(store)
            assert await store.get(job.id) == job
        finally:
            await jobs.close()

    asyncio.run(main())
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == CURRENT_VERSION >= 2


def test_tables_match_the_migrations_and_the_queries(tmp_path: Path) -> None:
    from inferd.store import runpod

    path = tmp_path / "jobs.db"
    with_store(path, submit)
    with sqlite3.connect(path) as conn:
        for table in (runpod_jobs, runpod_stream):
            columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table.name})")]
            indexes = {row[1] for row in conn.execute(f"PRAGMA index_list({table.name})")}
            assert columns == [column.name for column in table.columns]
            assert {index.name for index in table.indexes} <= indexes
        assert [c.strip() for c in COLUMNS.split(",")] == [f.name for f in fields(RunPodJob)][:-1]  # all but as_of

        moments = {"now": 0, "sync_cutoff": 0, "run_cutoff": 0, "cutoff_max": 0, "id": "x", "api": "a"}

        def plan(sql: str, params: dict[str, Any]) -> str:
            return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))

        assert "INDEX runpod_jobs_api_status_seq (api=? AND status=?)" in plan(runpod.CLAIM, {**moments, "worker_id": "w", "n": 2})
        assert "INDEX runpod_jobs_api_status_seq (api=? AND status=?)" in plan(runpod.QUEUE_LENGTH, moments)
        assert "INDEX sqlite_autoindex_runpod_jobs_1 (id=?)" in plan(runpod.BY_ID, moments)
        assert "INDEX runpod_stream_job_id_seq (job_id=?)" in plan(runpod.TAKE_STREAM, moments)
        assert "runpod_jobs_status_finished_at" in plan(runpod.RECOVER_ALL, {**moments, "reason": None, "max_attempts": 2, "give_up": ""})


def test_claim_many_takes_the_oldest_and_put_back_returns_one_uncounted(tmp_path: Path) -> None:
    async def body(store: RunPodJobStore) -> None:
        first, second, third = [await submit(store) for _ in range(3)]
        claimed = await store.claim_many("a", "w1", 2)
        assert [job.id for job in claimed] == [first.id, second.id]
        shown = (await store.get(second.id)).to_status_json()  # type: ignore[union-attr]
        assert shown["status"] == IN_PROGRESS and shown["workerId"] == "w1"
        assert all(job.attempts == 1 and job.started_at is not None for job in claimed)
        assert await store.queue_length("a") == 1 and (await store.counts("a"))["inProgress"] == 2
        assert await store.put_back(second.id)  # its worker went away before it began
        back = await store.get(second.id)
        assert back is not None and back.status == IN_QUEUE and back.attempts == 0 and back.started_at is None
        assert not await store.put_back(second.id)  # only an IN_PROGRESS job
        assert [job.id for job in await store.claim_many("a", "w2", 5)] == [second.id, third.id]
        assert await store.purge("a") == 0  # claimed jobs are not queued ones

    with_store(tmp_path / "jobs.db", body)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(output=st.none() | JSON_VALUES, error=st.none() | st.text(), worker=st.none() | st.text(),
       compact=st.booleans())
def test_the_spliced_answer_is_the_job_object(output: Any, error: str | None, worker: str | None, compact: bool) -> None:
    """/status and /runsync answer ``status_body``: the stored output's bytes spliced in, as the
    direct runner (compact) or the SDK runner's path encoded them; the same JSON, in the same
    order, as ``to_status_json``."""
    now = datetime.now(UTC)
    stored = None if output is None else json.dumps(output, separators=(",", ":") if compact else None).encode()
    job = RunPodJob("job", "api", "COMPLETED", b"{}", None, 1000, 1000, True, stored, error, 1, 0, worker,
                    now - timedelta(seconds=2), now - timedelta(seconds=1), now, now)
    answered = json.loads(job.status_body())
    assert answered == job.to_status_json()
    assert list(answered) == list(job.to_status_json())
    if output is None:  # written by hand: byte for byte what json.dumps writes
        assert job.status_body() == json.dumps(job.to_status_json(), separators=(",", ":"), ensure_ascii=False).encode()
