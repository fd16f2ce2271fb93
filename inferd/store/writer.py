"""The group-commit writer: one task, one connection, many operations per transaction.

Callers enqueue an operation with a future. The writer takes everything waiting (up to
``max_batch``), runs it all in ONE transaction, commits, and only then answers every caller:
an acknowledged write is a committed write. While one batch commits the next one queues up, so
the batch size grows by itself with the load and the cost of a commit is shared.

Operations on the hot path run on the raw sqlite3 connection, inside aiosqlite's thread:

- ``RawInsert(sql, params)``: a statement whose result nobody needs (an INSERT). All of a
  batch's RawInserts sharing one statement run as a single ``executemany``.
- ``Raw(fn, *args)``: ``fn(sqlite3_connection, *args) -> T``.

A batch made only of those is ONE hop to the driver thread: BEGIN IMMEDIATE, every statement,
COMMIT (SQLAlchemy's adapter would make about three hops per statement, and compile each).
A small batch of RawInserts and quick Raw calls (``runs_inline``: a few rows, a few hundred
KiB) makes no hop at all: it runs on the event loop's own thread, on the same connection (the
writer never uses it from two threads at once). Measured on 2 cores under load, a hop to the
driver thread and back took ~2.7 ms (the thread waits for a CPU and for the GIL), while the batch's own work takes
tens of µs: every /runsync and AsyncAPI submit waited for those hops. With the loop committing,
SQLite's automatic checkpoint (copying the WAL into the database and syncing the file) would
stall the loop every few MB, so the writer's connection has it turned off, and a ``Checkpointer``
runs it on a connection of its own, in a thread, every CHECKPOINT_EVERY commits.

Two more kinds run on the writer's sync SQLAlchemy ``Connection`` (greenlet, ``run_sync``),
for the rare operations not worth hand-written SQL:

- ``Bulk(statement, params)``: the SQLAlchemy counterpart of RawInsert;
- a callable ``fn(conn) -> T``.

Contract for every operation: it may raise a non-database exception (e.g. "unknown job") only
before it has written anything; that exception goes to its caller alone and the batch carries
on. A database error (sqlite3.Error / SQLAlchemyError) rolls the whole batch back, and the
writer then runs each of its operations in a transaction of its own, so one bad operation fails
alone; its caller gets a SQLAlchemy exception (DBAPIError subclass) either way.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, final, overload

import aiosqlite
from sqlalchemy import Connection, Executable
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.util import await_only

from inferd.logs import get_logger

from .engine import BUSY_TIMEOUT_MS, in_driver_thread, raw_connection

log = get_logger()

MAX_BATCH = 512
INLINE_OPS = 64                 # a batch of at most this many RawInserts ...
INLINE_BYTES = 256 * 1024       # ... and this many bytes of text and blobs commits on the loop
CHECKPOINT_EVERY = 256          # commits between WAL checkpoints (SQLite's own: every ~1000 pages)
_T = TypeVar("_T")


@dataclass(frozen=True)
class Bulk:
    statement: Executable
    params: dict[str, Any]


@final  # so that `type(op) is RawInsert` narrows both ways
class RawInsert:
    __slots__ = ("params", "sql")

    def __init__(self, sql: str, params: tuple[Any, ...]) -> None:
        self.sql, self.params = sql, params


@final
class Raw:
    """``quick``: a statement or two on a few rows found by key (a claim of a few jobs, one
    job's update), cheap enough to commit on the event loop's thread (``runs_inline``)."""

    __slots__ = ("args", "fn", "quick")

    def __init__(self, fn: Callable[..., Any], *args: Any, quick: bool = False) -> None:
        self.fn, self.args, self.quick = fn, args, quick


Operation = RawInsert | Raw | Bulk | Callable[[Connection], Any]
_RAW = (RawInsert, Raw)
Outcome = tuple[Any, BaseException | None]


@dataclass
class WriterStats:
    commits: int = 0  # transactions committed (batched or fallback)
    ops: int = 0  # operations answered (with a result or their own exception)
    batches: int = 0
    largest_batch: int = 0
    fallbacks: int = 0  # batches rolled back and replayed one operation per transaction


class StoreClosed(RuntimeError):
    """The store was closed (or its writer died); nothing more can be written."""


_STOP = object()
_Item = tuple[Operation, asyncio.Future[Any]]


def runs_inline(ops: list[Operation]) -> bool:
    """Whether a batch is small enough to commit on the event loop's thread: RawInserts and
    quick Raw calls, few of them, carrying little data."""
    if len(ops) > INLINE_OPS:
        return False
    size = 0
    for operation in ops:
        if type(operation) is RawInsert:
            size += _text_size(operation.params)
        elif type(operation) is Raw and operation.quick:
            size += _text_size(operation.args)
        else:
            return False
    return size <= INLINE_BYTES


def _text_size(values: Any) -> int:
    """Bytes of the text and blobs among ``values`` (a tuple of parameters, or of a call's
    arguments holding parameter tuples and dicts)."""
    size = 0
    for value in values.values() if isinstance(values, dict) else values:
        if isinstance(value, (bytes, str)):
            size += len(value)
        elif isinstance(value, (tuple, list, dict)):
            size += _text_size(value)
    return size


class Checkpointer:
    """WAL checkpoints off the event loop: a PASSIVE checkpoint (it never blocks the writer) on
    a connection of its own, in a thread, once CHECKPOINT_EVERY commits have passed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._commits = 0
        self._running: asyncio.Future[None] | None = None

    def committed(self, commits: int) -> None:
        self._commits += commits
        if self._commits >= CHECKPOINT_EVERY and (self._running is None or self._running.done()):
            self._commits = 0
            self._running = asyncio.get_running_loop().run_in_executor(None, checkpoint, self.path)
            self._running.add_done_callback(_checkpoint_done)

    async def close(self) -> None:
        if self._running is not None:
            await asyncio.gather(self._running, return_exceptions=True)


def checkpoint(path: Path) -> None:
    db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        db.close()


def _checkpoint_done(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and (error := done.exception()) is not None:
        log.warning("store_checkpoint_failed", error=str(error))  # the next one catches up


class GroupCommitWriter:
    def __init__(self, conn: AsyncConnection, driver: aiosqlite.Connection, max_batch: int = MAX_BATCH,
                 checkpoints: Path | None = None) -> None:
        """``checkpoints``: the database file, whose WAL this writer then checkpoints itself
        (see ``Checkpointer``); without it, SQLite's automatic checkpoint stays on."""
        self._conn = conn
        self._driver = driver  # the aiosqlite connection under ``conn``
        self._db = raw_connection(driver)  # the same connection, for batches run on the loop
        self._checkpointer = None if checkpoints is None else Checkpointer(checkpoints)
        if self._checkpointer is not None:
            self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._max_batch = max_batch
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._closing = False
        self.stats = WriterStats()
        self._task = asyncio.create_task(self._run(), name="inferd-store-writer")

    @overload
    async def execute(self, operation: Callable[[Connection], _T]) -> _T: ...
    @overload
    async def execute(self, operation: RawInsert | Raw | Bulk) -> Any: ...

    async def execute(self, operation: Operation) -> Any:
        """Run ``operation`` in the next group commit; return its result once committed."""
        return await self.submit(operation)

    def submit(self, operation: Operation) -> asyncio.Future[Any]:
        """``execute``, queued now: the future is done once committed (StoreClosed if closed)."""
        future = asyncio.get_running_loop().create_future()
        if self._closing or self._task.done():
            future.set_exception(StoreClosed("the job store is closed"))
        else:
            self._queue.put_nowait((operation, future))
        return future

    async def close(self) -> None:
        """Finish everything already queued, then stop."""
        if not self._closing:
            self._closing = True
            self._queue.put_nowait(_STOP)
        try:
            await asyncio.shield(self._task)
        finally:
            if self._checkpointer is not None:
                await self._checkpointer.close()

    async def _run(self) -> None:
        stopping = False
        try:
            while not stopping:
                batch, stopping = await self._take()
                try:
                    if not batch:
                        continue
                    ops = [operation for operation, _ in batch]
                    if runs_inline(ops):
                        self._record(batch, *_raw_batch(self._db, ops))  # type: ignore[arg-type]  # all raw
                    elif all(isinstance(operation, _RAW) for operation in ops):
                        self._record(batch, *await in_driver_thread(self._driver, _raw_batch, ops))
                    else:
                        await self._conn.run_sync(self._commit_batch, batch)
                except BaseException:
                    # The connection itself broke (or we were cancelled): whatever happened to
                    # this batch, its callers must hear that it is not known to be committed.
                    for _, future in batch:
                        _answer(future, error=StoreClosed("the job store writer stopped"))
                    raise
        finally:
            # Only reached with work left if the writer failed: never leave a caller waiting.
            self._closing = True
            self._fail_pending(StoreClosed("the job store writer stopped"))

    async def _take(self) -> tuple[list[_Item], bool]:
        items = [await self._queue.get()]
        while len(items) < self._max_batch and not self._queue.empty():
            items.append(self._queue.get_nowait())
        batch = [item for item in items if item is not _STOP]
        return batch, len(batch) != len(items)

    def _fail_pending(self, error: Exception) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not _STOP:
                _answer(item[1], error=error)

    def _record(self, batch: list[_Item], outcomes: list[Outcome], commits: int, fell_back: bool) -> None:
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self.stats.commits += commits
        if self._checkpointer is not None:
            self._checkpointer.committed(commits)
        self.stats.fallbacks += fell_back
        self.stats.ops += len(batch)
        for (_, future), (result, error) in zip(batch, outcomes, strict=False):
            _answer(future, result, error)

    # --- below runs inside run_sync: sync SQLAlchemy on the writer's connection (greenlet) ---

    def _commit_batch(self, conn: Connection, batch: list[_Item]) -> None:
        try:
            with conn.begin():
                outcomes = self._run_all(conn, batch)
        except (SQLAlchemyError, sqlite3.Error):
            self._record(batch, self._one_by_one(conn, batch), 0, True)
            return
        self._record(batch, outcomes, 1, False)

    def _run_all(self, conn: Connection, batch: list[_Item]) -> list[Outcome]:
        outcomes: list[Outcome] = [(None, None)] * len(batch)
        raw = [index for index, (operation, _) in enumerate(batch) if isinstance(operation, _RAW)]
        if raw:  # one hop for all of them, inside this transaction
            ops = [operation for operation, _ in batch if isinstance(operation, _RAW)]  # the ops at `raw`, in order
            for index, outcome in zip(raw, await_only(in_driver_thread(self._driver, _raw_run_all, ops)), strict=False):
                outcomes[index] = outcome
        bulk: dict[int, tuple[Executable, list[dict[str, Any]]]] = {}
        for operation, _ in batch:
            if isinstance(operation, Bulk):
                rows = bulk.setdefault(id(operation.statement), (operation.statement, []))[1]
                rows.append(operation.params)
        # Bulk statements first (in queue order within each), then the rest in queue order.
        # Any order is a valid one: the operations of one batch were all in flight at once.
        for statement, rows in bulk.values():
            conn.execute(statement, rows)
        for index, (operation, _) in enumerate(batch):
            if not isinstance(operation, (Bulk, *_RAW)):
                outcomes[index] = _call(conn, operation)
        return outcomes

    def _one_by_one(self, conn: Connection, batch: list[_Item]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for operation, _ in batch:
            if isinstance(operation, _RAW):
                outcome, committed = await_only(in_driver_thread(self._driver, _raw_alone, operation))
                self.stats.commits += committed
                outcomes.append(outcome)
                continue
            result, error = None, None
            try:
                with conn.begin():
                    if isinstance(operation, Bulk):
                        conn.execute(operation.statement, operation.params)
                    else:
                        result, error = _call(conn, operation)
            except SQLAlchemyError as exc:
                result, error = None, exc
            else:
                self.stats.commits += 1
            outcomes.append((result, error))
        return outcomes


# --- below runs in the driver thread, on the raw sqlite3 connection ---


def _raw_batch(db: sqlite3.Connection, ops: list[RawInsert | Raw]) -> tuple[list[Outcome], int, bool]:
    """The whole batch in one transaction; on a database error, each op in its own.
    Returns (outcomes, commits, fell back)."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            outcomes = _raw_run_all(db, ops)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    except sqlite3.Error:
        commits = 0
        outcomes = []
        for operation in ops:
            outcome, committed = _raw_alone(db, operation)
            commits += committed
            outcomes.append(outcome)
        return outcomes, commits, True
    return outcomes, 1, False


def _raw_run_all(db: sqlite3.Connection, ops: list[RawInsert | Raw]) -> list[Outcome]:
    """Inside the caller's transaction: RawInserts first (one executemany per statement, queue
    order within each), then the Raw calls in queue order. Raises sqlite3.Error."""
    outcomes: list[Outcome] = [(None, None)] * len(ops)
    inserts: dict[str, list[tuple[Any, ...]]] = {}
    for operation in ops:
        if type(operation) is RawInsert:
            inserts.setdefault(operation.sql, []).append(operation.params)
    for sql, rows in inserts.items():
        db.executemany(sql, rows)  # measured: twice as fast as one multi-row INSERT
    for index, operation in enumerate(ops):
        if type(operation) is Raw:
            outcomes[index] = _raw_call(db, operation)
    return outcomes


def _raw_alone(db: sqlite3.Connection, operation: RawInsert | Raw) -> tuple[Outcome, int]:
    """One operation in a transaction of its own: (outcome, commits)."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            if type(operation) is RawInsert:
                db.execute(operation.sql, operation.params)
                outcome: Outcome = (None, None)
            else:
                outcome = _raw_call(db, operation)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        sql = operation.sql if type(operation) is RawInsert else getattr(operation.fn, "__name__", "")
        return (None, DBAPIError.instance(sql, None, exc, sqlite3.Error)), 0
    return outcome, 1


def _raw_call(db: sqlite3.Connection, operation: Raw) -> Outcome:
    try:
        return operation.fn(db, *operation.args), None
    except sqlite3.Error:
        raise  # the batch is suspect: roll it all back and replay one by one
    except Exception as exc:  # the operation's own verdict, for its caller only
        return None, exc


def _call(conn: Connection, operation: Callable[[Connection], Any]) -> tuple[Any, Exception | None]:
    try:
        return operation(conn), None
    except SQLAlchemyError:
        raise  # the batch is suspect: roll it all back and replay one by one
    except Exception as exc:  # the operation's own verdict, for its caller only
        return None, exc


def _answer(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    # A caller that gave up (cancelled) still had its write committed; nobody to tell.
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
