"""The database file and its two engines: one connection for the writer, a pool for readers.

WAL lets readers run while the writer holds its transaction, so reads never queue behind the
group-commit writer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

DIR_MODE = 0o750
FILE_MODE = 0o640  # the owner writes, the service group may read, nobody else
BUSY_TIMEOUT_MS = 5000  # another process (or a second store in tests) holding the write lock
READER_POOL_SIZE = 4


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
    """A small pool of read-only connections (query_only: a bug cannot write through them)."""
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
