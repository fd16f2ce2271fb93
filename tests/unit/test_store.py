"""inferd.store: AsyncAPI job rows in SQLite with a group-commit writer.

Async code runs through ``asyncio.run`` inside plain test functions (no pytest-asyncio).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import IntegrityError, OperationalError

from inferd.store import (
    COMPLETED,
    CURRENT_VERSION,
    FAILED,
    IN_PROGRESS,
    IN_QUEUE,
    AsyncJobStore,
    SchemaTooNew,
    StoreClosed,
    UnknownJob,
)
from inferd.store.schema import MIGRATIONS, jobs, migrate
from tests.unit.store_support import Clock, run_on_store

T = TypeVar("T")
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def with_store(path: Path, body: Callable[[AsyncJobStore], Awaitable[T]], clock: Clock | None = None) -> T:
    return run_on_store(path, clock or Clock(T0), body)


async def submit(store: AsyncJobStore, api: str = "a", payload: bytes = b'{"x": 1}') -> str:
    return await store.submit(api, payload, "application/json", {"x-request-id": "r1"})


def test_submit_then_get(tmp_path: Path) -> None:
    async def body(store: AsyncJobStore) -> None:
        job_id = await submit(store)
        job = await store.get(job_id)
        assert job is not None
        assert (job.id, job.api, job.status, job.attempts) == (job_id, "a", IN_QUEUE, 0)
        assert job.payload == b'{"x": 1}' and job.content_type == "application/json"
        assert job.headers == {"x-request-id": "r1"}
        assert job.created_at == T0 and job.created_at.tzinfo is not None
        assert job.started_at is None and job.finished_at is None and job.result is None
        assert await store.get(job_id, api="a") == job

    with_store(tmp_path / "jobs.db", body)


def test_unknown_id_or_other_api_is_none(tmp_path: Path) -> None:
    async def body(store: AsyncJobStore) -> None:
        job_id = await submit(store, "a")
        assert await store.get("0" * 32) is None
        assert await store.get(job_id, api="b") is None

    with_store(tmp_path / "jobs.db", body)


def test_claim_follows_submission_order_per_api(tmp_path: Path) -> None:
    clock = Clock(T0)

    async def body(store: AsyncJobStore) -> None:
        a1, b1, a2, a3 = [await submit(store, api) for api in ("a", "b", "a", "a")]
        clock.advance(timedelta(seconds=5))
        claimed = [await store.claim_next("a") for _ in range(4)]
        assert [job.id if job else None for job in claimed] == [a1, a2, a3, None]
        first = claimed[0]
        assert first is not None and first.status == IN_PROGRESS and first.attempts == 1
        assert first.payload == b'{"x": 1}' and first.started_at == T0 + timedelta(seconds=5)
        untouched = await store.get(b1)
        assert untouched is not None and untouched.status == IN_QUEUE and untouched.attempts == 0

    with_store(tmp_path / "jobs.db", body, clock)


def test_complete_and_fail_shapes(tmp_path: Path) -> None:
    clock = Clock(T0)

    async def body(store: AsyncJobStore) -> None:
        ok_id, bad_id = await submit(store), await submit(store)
        await store.claim_next("a")
        await store.claim_next("a")
        clock.advance(timedelta(seconds=2))
        await store.complete(ok_id, b'{"label":"setosa"}')
        await store.fail(bad_id, "ValueError: nope")
        ok, bad = await store.get(ok_id), await store.get(bad_id)
        assert ok is not None and bad is not None
        assert (ok.status, ok.payload, ok.result, ok.error) == (COMPLETED, None, b'{"label":"setosa"}', None)
        assert (bad.status, bad.payload, bad.result, bad.error) == (FAILED, None, None, "ValueError: nope")
        assert ok.finished_at == bad.finished_at == T0 + timedelta(seconds=2)

    with_store(tmp_path / "jobs.db", body, clock)


def test_finished_job_keeps_its_first_outcome(tmp_path: Path) -> None:
    async def body(store: AsyncJobStore) -> None:
        job_id = await submit(store)
        await store.claim_next("a")
        await store.complete(job_id, b"{}")
        await store.fail(job_id, "late report from a worker believed dead")  # a no-op
        job = await store.get(job_id)
        assert job is not None and (job.status, job.result, job.error) == (COMPLETED, b"{}", None)

    with_store(tmp_path / "jobs.db", body)


def test_unknown_id_fails_alone_in_its_batch(tmp_path: Path) -> None:
    async def body(store: AsyncJobStore) -> None:
        outcomes = await asyncio.gather(
            *[submit(store) for _ in range(20)], store.complete("no-such-id", b"{}"), return_exceptions=True
        )
        assert isinstance(outcomes[-1], UnknownJob)
        assert all(isinstance(job_id, str) for job_id in outcomes[:-1])
        assert await store.count() == 20
        assert store.stats.commits <= 3 and store.stats.fallbacks == 0
        with pytest.raises(UnknownJob):
            await store.fail("no-such-id", "x")

    with_store(tmp_path / "jobs.db", body)


def test_database_error_fails_only_its_operation(tmp_path: Path) -> None:
    def broken(conn: Any) -> None:
        conn.exec_driver_sql("INSERT INTO no_such_table VALUES (1)")

    async def body(store: AsyncJobStore) -> None:
        # White-box: the store's public API cannot produce SQL errors, so a raw operation is
        # handed to its writer to prove the batch is replayed one operation per transaction.
        outcomes = await asyncio.gather(
            *[submit(store) for _ in range(10)], store._writer.execute(broken), return_exceptions=True
        )
        assert isinstance(outcomes[-1], OperationalError)
        assert all(isinstance(job_id, str) for job_id in outcomes[:-1])
        assert await store.count() == 10 and store.stats.fallbacks == 1

    with_store(tmp_path / "jobs.db", body)


def test_group_commit_batches_concurrent_submissions(tmp_path: Path) -> None:
    async def body(store: AsyncJobStore) -> None:
        before = store.stats.commits
        ids = await asyncio.gather(*[submit(store) for _ in range(200)])
        assert len(set(ids)) == 200
        assert store.stats.commits - before < 20  # in practice 1
        assert store.stats.ops == 200 and store.stats.largest_batch > 50

    with_store(tmp_path / "jobs.db", body)


def test_acknowledged_submissions_survive_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        first = await AsyncJobStore.open(tmp_path / "jobs.db")
        ids = await asyncio.gather(*[submit(first) for _ in range(100)])
        # The first store is NOT closed: as if its process died right after answering.
        second = await AsyncJobStore.open(tmp_path / "jobs.db")
        try:
            assert await second.count() == 100
            assert all([await second.get(job_id) for job_id in ids])
        finally:
            await second.close()
            await first.close()

    asyncio.run(main())


def test_recover_requeues_once_then_gives_up(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"

    async def main() -> None:
        crashed = await AsyncJobStore.open(path)
        job_id, other_api = await submit(crashed, "a"), await submit(crashed, "b")
        await crashed.claim_next("a")
        await crashed.claim_next("b")
        restarted = await AsyncJobStore.open(path)  # the first one "died" without closing
        try:
            assert await restarted.recover("a") == (1, 0)
            job = await restarted.get(job_id)
            assert job is not None and job.status == IN_QUEUE and job.payload == b'{"x": 1}'
            assert (await restarted.get(other_api)).status == IN_PROGRESS  # type: ignore[union-attr]
            await restarted.claim_next("a")  # second attempt, interrupted again
            assert await restarted.recover() == (1, 1)  # "b" requeued (1st), "a" failed (2nd)
            job = await restarted.get(job_id)
            assert job is not None and job.status == FAILED and job.payload is None
            assert job.error == (
                "the job was interrupted 2 times (worker or daemon died while running it); giving up"
            )
            assert job.finished_at is not None
        finally:
            await restarted.close()
            await crashed.close()

    asyncio.run(main())


def test_requeue_one_job(tmp_path: Path) -> None:
    async def body(store: AsyncJobStore) -> None:
        job_id, bystander = await submit(store), await submit(store)
        await store.claim_next("a")
        await store.claim_next("a")
        assert await store.requeue(job_id) == IN_QUEUE
        assert (await store.get(bystander)).status == IN_PROGRESS  # type: ignore[union-attr]
        assert (await store.claim_next("a")).id == job_id  # type: ignore[union-attr]
        assert await store.requeue(job_id) == FAILED
        assert await store.requeue(job_id) == FAILED  # not in_progress: left alone
        with pytest.raises(UnknownJob):
            await store.requeue("no-such-id")

    with_store(tmp_path / "jobs.db", body)


def test_sweep_deletes_only_rows_past_retention(tmp_path: Path) -> None:
    clock = Clock(T0)

    async def body(store: AsyncJobStore) -> None:
        old = await asyncio.gather(*[submit(store, api) for api in ["a"] * 2400 + ["b"] * 5])
        clock.advance(timedelta(days=6))
        recent = await submit(store)
        clock.advance(timedelta(days=1, seconds=1))  # `old` are now 7 days + 1 s old
        assert await store.sweep(timedelta(days=7), api="b") == 5
        commits = store.stats.commits
        assert await store.sweep(timedelta(days=7)) == 2400
        assert store.stats.commits - commits == 3  # 1000 rows per transaction
        assert await store.get(old[0]) is None and await store.get(recent) is not None
        assert await store.count() == 1
        assert await store.sweep(timedelta(days=7)) == 0

    with_store(tmp_path / "jobs.db", body, clock)


def test_counts(tmp_path: Path) -> None:
    async def body(store: AsyncJobStore) -> None:
        for api in ("a", "a", "a", "b"):
            await submit(store, api)
        done = await store.claim_next("a")
        await store.complete(done.id, b"{}")  # type: ignore[union-attr]
        await store.claim_next("a")
        assert await store.queue_length("a") == 1 and await store.queue_length("zzz") == 0
        assert await store.count() == 4 and await store.count("a") == 3
        assert await store.count(status=IN_QUEUE) == 2 and await store.count("a", COMPLETED) == 1
        assert await store.counts_by_status("a") == {IN_QUEUE: 1, IN_PROGRESS: 1, COMPLETED: 1, FAILED: 0}

    with_store(tmp_path / "jobs.db", body)


def stored_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT version FROM schema_version").fetchone()[0]


def test_schema_version_fresh_reopen_and_newer(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    job_id = with_store(path, submit)
    assert stored_version(path) == CURRENT_VERSION
    assert with_store(path, lambda store: store.get(job_id)) is not None  # re-open keeps data
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (CURRENT_VERSION + 1,))
    with pytest.raises(SchemaTooNew, match="newer"):
        with_store(path, submit)
    assert stored_version(path) == CURRENT_VERSION + 1


def test_migrations_apply_in_order_and_keep_rows(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    job_id = with_store(path, submit)

    def v2(conn: Any) -> None:
        conn.exec_driver_sql("ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")

    engine = create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert migrate(conn, (*MIGRATIONS, v2)) == CURRENT_VERSION
        assert migrate(conn, (*MIGRATIONS, v2)) == CURRENT_VERSION + 1  # nothing left to do
    engine.dispose()
    assert stored_version(path) == CURRENT_VERSION + 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT priority FROM jobs WHERE id = ?", (job_id,)).fetchone() == (0,)


def test_table_definition_matches_the_migrations(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with_store(path, lambda store: store.count())
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(jobs)")}
    assert columns == [column.name for column in jobs.columns]
    assert {index.name for index in jobs.indexes} <= indexes


def test_file_permissions(tmp_path: Path) -> None:
    path = tmp_path / "state" / "inferd" / "jobs.db"
    with_store(path, submit)
    assert os.stat(path).st_mode & 0o777 & ~0o640 == 0
    assert os.stat(path.parent).st_mode & 0o777 & ~0o750 == 0
    path.chmod(0o666)  # a file someone loosened is tightened again on open
    with_store(path, lambda store: store.count())
    assert os.stat(path).st_mode & 0o777 & ~0o640 == 0


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    async def main() -> None:
        store = await AsyncJobStore.open(tmp_path / "jobs.db")
        await store.close()
        await store.close()  # idempotent
        with pytest.raises(StoreClosed):
            await submit(store)
        with pytest.raises(StoreClosed):
            await store.get("x")

    asyncio.run(main())


def test_naive_clock_is_refused(tmp_path: Path) -> None:
    clock = Clock(datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        with_store(tmp_path / "jobs.db", submit, clock)


# --- the fast paths: raw SQL in the driver thread, one hop per batch / read ---


def test_raw_sql_matches_the_schema_and_uses_the_indexes(tmp_path: Path) -> None:
    from dataclasses import fields

    from inferd.store import Job, queries

    path = tmp_path / "jobs.db"
    with_store(path, submit)
    assert [column.strip() for column in queries.JOB_COLUMNS.split(",")] == [f.name for f in fields(Job)]
    with sqlite3.connect(path) as conn:
        def plan(sql: str, params: tuple[Any, ...]) -> str:
            return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))

        assert "COVERING INDEX jobs_api_status_seq (api=? AND status=?)" in plan(
            queries.RAW_COUNT[True, True], ("a", IN_QUEUE)
        )
        assert "INDEX jobs_api_status_seq (api=? AND status=?)" in plan(queries.RAW_CLAIM, (0, "a"))
        assert "USING INDEX sqlite_autoindex_jobs_1 (id=?)" in plan(queries.RAW_BY_ID_AND_API, ("x", "a"))
        assert "USING INDEX sqlite_autoindex_jobs_1 (id=?)" in plan(queries.RAW_COMPLETE, (0, b"", "x"))
        for sql in (queries.RAW_BY_ID, queries.RAW_STATUS_OF, queries.RAW_COUNTS_BY_STATUS, queries.RAW_INSERT):
            conn.execute(f"EXPLAIN {sql}", (None,) * sql.count("?"))  # every statement compiles


def test_claims_and_completions_share_group_commits(tmp_path: Path) -> None:
    async def body(store: AsyncJobStore) -> None:
        ids = await asyncio.gather(*[submit(store) for _ in range(100)])
        commits = store.stats.commits
        claimed = await asyncio.gather(*[store.claim_next("a") for _ in range(101)])
        assert sorted(job.id for job in claimed if job is not None) == sorted(ids) and claimed.count(None) == 1
        await asyncio.gather(*[store.complete(job_id, b"{}") for job_id in ids])
        assert store.stats.commits - commits < 10  # in practice 2
        assert await store.count("a", COMPLETED) == 100

    with_store(tmp_path / "jobs.db", body)


def test_mixed_batch_of_raw_and_sqlalchemy_operations(tmp_path: Path) -> None:
    def status_count(conn: Any) -> int:
        return conn.exec_driver_sql("SELECT count(*) FROM jobs").scalar_one()

    async def body(store: AsyncJobStore) -> None:
        await submit(store)
        outcomes = await asyncio.gather(
            *[submit(store) for _ in range(5)],
            store.claim_next("a"),
            store._writer.execute(status_count),
            store.requeue("no-such-id"),
            return_exceptions=True,
        )
        assert all(isinstance(job_id, str) for job_id in outcomes[:5])
        assert outcomes[5].status == IN_PROGRESS  # type: ignore[union-attr]
        assert outcomes[6] == 6  # the raw inserts ran first, in the same transaction
        assert isinstance(outcomes[7], UnknownJob)
        assert store.stats.fallbacks == 0

    with_store(tmp_path / "jobs.db", body)


def test_database_error_in_a_raw_batch_fails_only_its_operation(tmp_path: Path) -> None:
    from inferd.store.writer import Raw

    def broken(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO no_such_table VALUES (1)")

    async def body(store: AsyncJobStore) -> None:
        outcomes = await asyncio.gather(
            *[submit(store) for _ in range(10)], store._writer.execute(Raw(broken)), return_exceptions=True
        )
        assert isinstance(outcomes[-1], OperationalError) and "no_such_table" in str(outcomes[-1])
        assert all(isinstance(job_id, str) for job_id in outcomes[:-1])
        assert await store.count() == 10 and store.stats.fallbacks == 1

    with_store(tmp_path / "jobs.db", body)


def test_reads_do_not_wait_for_the_writer(tmp_path: Path) -> None:
    import time

    from inferd.store.writer import Raw

    async def body(store: AsyncJobStore) -> None:
        job_id = await submit(store)
        slow = asyncio.create_task(store._writer.execute(Raw(lambda db: time.sleep(0.5))))
        await asyncio.sleep(0.05)  # the writer's thread is now busy inside its transaction
        start = time.perf_counter()
        assert (await store.get(job_id)) is not None and await store.queue_length("a") == 1
        assert time.perf_counter() - start < 0.3
        await slow

    with_store(tmp_path / "jobs.db", body)


def test_concurrent_queue_lengths_share_counts(tmp_path: Path) -> None:
    async def body(store: AsyncJobStore) -> None:
        await asyncio.gather(*[submit(store) for _ in range(7)])
        counted = 0
        real_count = store.count

        async def count(api: str | None = None, status: str | None = None) -> int:
            nonlocal counted
            counted += 1
            return await real_count(api, status)

        store.count = count  # type: ignore[method-assign]
        assert await asyncio.gather(*[store.queue_length("a") for _ in range(50)]) == [7] * 50
        assert counted <= 2
        await submit(store)
        assert await store.queue_length("a") == 8  # a count that began after the call
        assert await store.queue_length("b") == 0

    with_store(tmp_path / "jobs.db", body)


def test_small_insert_batches_commit_on_the_loop_and_large_ones_in_the_driver_thread(tmp_path: Path) -> None:
    import threading

    from inferd.store.engine import raw_connection
    from inferd.store.writer import INLINE_BYTES, Raw, RawInsert

    async def body(store: AsyncJobStore) -> None:
        writer = store._writer
        raw_connection(writer._driver).create_function("thread_name", 0, lambda: threading.current_thread().name)
        await writer.execute(Raw(lambda db: db.execute("CREATE TABLE probe (thread TEXT, size INTEGER)")))
        insert = "INSERT INTO probe VALUES (thread_name(), length(?))"
        await asyncio.gather(*[writer.execute(RawInsert(insert, (b"x" * 100,))) for _ in range(10)])
        await writer.execute(RawInsert(insert, (b"x" * (INLINE_BYTES + 1),)))
        rows = await writer.execute(Raw(lambda db: db.execute("SELECT thread, size FROM probe").fetchall()))
        assert rows[:10] == [(threading.current_thread().name, 100)] * 10
        assert rows[10][0] != threading.current_thread().name and rows[10][1] == INLINE_BYTES + 1
        here = await writer.execute(Raw(lambda db: threading.current_thread().name, quick=True))
        there = await writer.execute(Raw(lambda db: threading.current_thread().name))
        assert here == threading.current_thread().name != there

    with_store(tmp_path / "jobs.db", body)


def test_a_failing_insert_in_a_batch_on_the_loop_fails_alone(tmp_path: Path) -> None:
    from inferd.store.writer import Raw, RawInsert

    async def body(store: AsyncJobStore) -> None:
        writer = store._writer
        await writer.execute(Raw(lambda db: db.execute("CREATE TABLE once (id INTEGER PRIMARY KEY)")))
        outcomes = await asyncio.gather(*[writer.execute(RawInsert("INSERT INTO once VALUES (?)", (n % 5,)))
                                          for n in range(6)], return_exceptions=True)
        assert outcomes[:5] == [None] * 5 and store.stats.fallbacks == 1
        assert isinstance(outcomes[5], IntegrityError) and "UNIQUE" in str(outcomes[5])
        assert await writer.execute(Raw(lambda db: db.execute("SELECT count(*) FROM once").fetchone()[0])) == 5

    with_store(tmp_path / "jobs.db", body)


def test_the_writer_checkpoints_the_wal_itself_every_so_many_commits(tmp_path: Path) -> None:
    from inferd.store.writer import CHECKPOINT_EVERY, Raw, RawInsert

    path = tmp_path / "jobs.db"

    async def body(store: AsyncJobStore) -> tuple[int, int, int]:
        writer = store._writer
        await writer.execute(Raw(lambda db: db.execute("CREATE TABLE filler (blob BLOB)")))
        autocheckpoint = await writer.execute(Raw(lambda db: db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]))
        before = path.stat().st_size
        for _ in range(CHECKPOINT_EVERY + 1):  # one commit each, ~2 pages each: far below SQLite's own 1000
            await writer.execute(RawInsert("INSERT INTO filler VALUES (?)", (os.urandom(6000),)))
        await asyncio.sleep(0)
        await writer._checkpointer.close()  # type: ignore[union-attr]  # the one that was started
        return autocheckpoint, before, path.stat().st_size

    autocheckpoint, before, after = with_store(path, body)
    assert autocheckpoint == 0  # SQLite's own, which would run on the loop's thread, is off
    assert after > before + CHECKPOINT_EVERY * 6000  # the pages left the WAL for the database file


def test_which_batches_commit_on_the_loop() -> None:
    from inferd.store.writer import INLINE_BYTES, INLINE_OPS, Raw, RawInsert, runs_inline

    small = RawInsert("INSERT ...", ("id", b"x" * 1000, 7, None))
    assert runs_inline([small] * INLINE_OPS)
    assert not runs_inline([small] * (INLINE_OPS + 1))
    assert not runs_inline([RawInsert("INSERT ...", ("x" * (INLINE_BYTES + 1),))])
    assert not runs_inline([small, Raw(lambda db: None)])  # what a Raw call costs is not known ...
    assert runs_inline([small, Raw(lambda db: None, quick=True)])  # ... unless its caller says
    # a quick call's data counts, in tuples and dicts of parameters too
    assert not runs_inline([Raw(lambda db: None, "UPDATE ...", {"output": b"x" * (INLINE_BYTES + 1)}, quick=True)])
    assert not runs_inline([Raw(lambda db: None, "UPDATE ...", (1, b"x" * (INLINE_BYTES + 1)), quick=True)])
