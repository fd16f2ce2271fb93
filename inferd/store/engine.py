"""The database file and its two engines: one connection for the writer, a pool for readers.

WAL lets readers run while the writer holds its transaction, so reads never queue behind the
group-commit writer.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

DIR_MODE = 0o750
FILE_MODE = 0o640  # the owner writes, the service group may read, nobody else
BUSY_TIMEOUT_MS = 5000  # another process (or a second store in tests) holding the write lock
READER_POOL_SIZE = 4
T = TypeVar("T")


def prepare_file(path: Path) -> None:
    """Create missing parent directories (0o750) and the file itself (0o640) before SQLite does:
    SQLite would create it with 0o644 minus the umask, readable by everyone. The -wal and -shm
    files SQLite creates later copy the database file's mode."""
    for parent in reversed(path.parents):
        if not parent.exists():
            parent.mkdir(mode=DIR_MODE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        # A pre-existing file may be wider; never leave it world-accessible. fchmod also undoes
        # a permissive umask having no say on an existing file.
        if os.fstat(fd).st_mode & 0o777 & ~FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _pragmas(dbapi_connection: Any, statements: list[str]) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for statement in statements:
            cursor.execute(statement)
    finally:
        cursor.close()


def writer_engine(path: Path) -> AsyncEngine:
    """One connection, owned by the writer task. Transactions start with BEGIN IMMEDIATE: the
    write lock is taken up front, so a transaction never fails half-way upgrading a read lock
    (SQLITE_BUSY that busy_timeout cannot wait out) when another process writes too."""
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{path}", poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=0
    )

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Hand transaction control to SQLAlchemy (the driver's implicit BEGIN is deferred and
        # breaks SAVEPOINT); see the "begin" hook below.
        dbapi_connection.isolation_level = None
        _pragmas(
            dbapi_connection,
            [
                "PRAGMA journal_mode=WAL",
                # In WAL mode, NORMAL skips the fsync at each commit (only checkpoints sync). A
                # commit is in the WAL file as soon as it returns, so it survives the daemon
                # process crashing or being killed; only an OS crash / power loss can lose the
                # last commits (never corrupting the file). That trade buys group commits that
                # cost microseconds instead of a disk flush each.
                "PRAGMA synchronous=NORMAL",
                f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
            ],
        )

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def reader_engine(path: Path) -> AsyncEngine:
    """A small pool of read-only connections (query_only: a bug cannot write through them).
    The store checks READER_POOL_SIZE of them out for good (see ``Readers``)."""
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{path}",
        poolclass=AsyncAdaptedQueuePool,
        pool_size=READER_POOL_SIZE,
        max_overflow=READER_POOL_SIZE,
        # A lone SELECT through the driver never opens a transaction, so the pool's ROLLBACK
        # on check-in has nothing to undo: skip that round trip to the driver thread per read.
        pool_reset_on_return=None,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        _pragmas(dbapi_connection, [f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}", "PRAGMA query_only=ON"])

    return engine


async def driver_connection(conn: AsyncConnection) -> aiosqlite.Connection:
    """The aiosqlite connection under a checked-out SQLAlchemy connection."""
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    if not isinstance(driver, aiosqlite.Connection) or not callable(getattr(driver, "_execute", None)):
        raise TypeError(f"the job store needs an aiosqlite connection, got {type(driver).__name__}")
    return driver


def raw_connection(driver: aiosqlite.Connection) -> sqlite3.Connection:
    """The sqlite3 connection under ``driver``, for use on the event loop's thread while nothing
    runs on it in the driver's (SQLAlchemy opens file databases with check_same_thread=False)."""
    conn: sqlite3.Connection = driver._conn  # private, as _execute below
    return conn


def in_driver_thread(driver: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> Awaitable[T]:
    """Run ``fn(sqlite3_connection, *args)`` in the connection's own aiosqlite thread: ONE hop
    to that thread and back, however many statements ``fn`` runs (SQLAlchemy's adapter makes
    ~3 hops per statement: cursor, execute, fetch). ``_execute`` is private to aiosqlite, but it
    is the queue every one of its public methods goes through (read against aiosqlite 0.22);
    driver_connection() refuses a driver without it, and test_store.py runs every path through
    it."""

    def call() -> T:
        return fn(driver._conn, *args)

    return driver._execute(call)  # type: ignore[no-untyped-call]  # aiosqlite leaves its private queue unannotated


class Readers:
    """Long-lived read-only aiosqlite connections handed out one per query, first come first
    served: no pool checkout, no statement compilation, one thread hop per read."""

    def __init__(self, engine: AsyncEngine, conns: list[AsyncConnection], drivers: list[aiosqlite.Connection]):
        self.engine = engine
        self._conns = conns
        self._idle: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        for driver in drivers:
            self._idle.put_nowait(driver)

    @classmethod
    async def open(cls, path: Path, size: int = READER_POOL_SIZE) -> Readers:
        engine = reader_engine(path)
        conns: list[AsyncConnection] = []
        try:
            for _ in range(size):
                conns.append(await engine.connect())
            drivers = [await driver_connection(conn) for conn in conns]
        except BaseException:
            for conn in conns:
                await conn.close()
            await engine.dispose()
            raise
        return cls(engine, conns, drivers)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        driver = await self._idle.get()  # no suspension while one is idle
        try:
            return await in_driver_thread(driver, fn, *args)
        finally:
            self._idle.put_nowait(driver)

    async def close(self) -> None:
        try:
            for conn in self._conns:
                await conn.close()
        finally:
            await self.engine.dispose()
