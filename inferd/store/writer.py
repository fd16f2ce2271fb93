"""The group-commit writer: one task, one connection, many operations per transaction.

Callers enqueue an operation with a future. The writer takes everything waiting (up to
``max_batch``), runs it all in ONE transaction, commits, and only then answers every caller:
an acknowledged write is a committed write. While one batch commits the next one queues up, so
the batch size grows by itself with the load and the cost of a commit is shared.

Two kinds of operation:

- ``Bulk(statement, params)``: a statement whose result nobody needs (an INSERT). All the Bulk
  operations of a batch sharing one statement run as a single ``executemany``.
- a callable ``fn(conn) -> T`` run on the writer's sync ``Connection``. Contract: it may raise a
  non-database exception (e.g. "unknown job") only before it has written anything; that
  exception goes to its caller alone and the batch carries on.

A database error (a SQLAlchemyError) in a batch rolls the whole batch back, and the writer then
runs each of its operations in a transaction of its own, so one bad operation fails alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Executable
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

MAX_BATCH = 512


@dataclass(frozen=True)
class Bulk:
    statement: Executable
    params: dict[str, Any]


Operation = Bulk | Callable[[Connection], Any]


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
_Item = tuple[Operation, asyncio.Future]


class GroupCommitWriter:
    def __init__(self, conn: AsyncConnection, max_batch: int = MAX_BATCH) -> None:
        self._conn = conn
        self._max_batch = max_batch
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._closing = False
        self.stats = WriterStats()
        self._task = asyncio.create_task(self._run(), name="inferd-store-writer")

    async def execute(self, operation: Operation) -> Any:
        """Run ``operation`` in the next group commit; return its result once committed."""
        if self._closing or self._task.done():
            raise StoreClosed("the job store is closed")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((operation, future))
        return await future

    async def close(self) -> None:
        """Finish everything already queued, then stop."""
        if not self._closing:
            self._closing = True
            self._queue.put_nowait(_STOP)
        await asyncio.shield(self._task)

    async def _run(self) -> None:
        stopping = False
        try:
            while not stopping:
                batch, stopping = await self._take()
                try:
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

    # --- below runs inside run_sync: plain sync SQLAlchemy on the writer's connection ---

    def _commit_batch(self, conn: Connection, batch: list[_Item]) -> None:
        if not batch:
            return
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        try:
            with conn.begin():
                outcomes = self._run_all(conn, batch)
        except SQLAlchemyError:
            self.stats.fallbacks += 1
            self._one_by_one(conn, batch)
            return
        self.stats.commits += 1
        for (_, future), (result, error) in zip(batch, outcomes):
            _answer(future, result, error)
        self.stats.ops += len(batch)

    def _run_all(self, conn: Connection, batch: list[_Item]) -> list[tuple[Any, Exception | None]]:
        outcomes: list[tuple[Any, Exception | None]] = [(None, None)] * len(batch)
        bulk: dict[int, tuple[Executable, list[dict[str, Any]]]] = {}
        for operation, _ in batch:
            if isinstance(operation, Bulk):
                rows = bulk.setdefault(id(operation.statement), (operation.statement, []))[1]
                rows.append(operation.params)
        # Bulk statements first (in queue order within each), then the rest in queue order.
        for statement, rows in bulk.values():
            conn.execute(statement, rows)
        for index, (operation, _) in enumerate(batch):
            if not isinstance(operation, Bulk):
                outcomes[index] = _call(conn, operation)
        return outcomes

    def _one_by_one(self, conn: Connection, batch: list[_Item]) -> None:
        for operation, future in batch:
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
            _answer(future, result, error)
            self.stats.ops += 1


def _call(conn: Connection, operation: Callable[[Connection], Any]) -> tuple[Any, Exception | None]:
    try:
        return operation(conn), None
    except SQLAlchemyError:
        raise  # the batch is suspect: roll it all back and replay one by one
    except Exception as exc:  # the operation's own verdict, for its caller only
        return None, exc


def _answer(future: asyncio.Future, result: Any = None, error: Exception | None = None) -> None:
    # A caller that gave up (cancelled) still had its write committed; nobody to tell.
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
