"""Tables, the time encoding, and the ordered migrations that bring a database file up to date.

The Core ``Table`` objects below describe the *current* shape and are what queries use. The
migrations are plain DDL, frozen per version: a migration must never change once released, or
files created by older releases would be migrated to a different shape than fresh ones.

Times are stored as INTEGER microseconds since the Unix epoch, UTC: exact round trips (no float
rounding), cheap to compare and index, and independent of any timezone setting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    inspect,
    text,
)

# Cortex's exact status strings (AsyncAPI, spec §4.2).
IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED = "in_queue", "in_progress", "completed", "failed"
STATUSES = (IN_QUEUE, IN_PROGRESS, COMPLETED, FAILED)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    # The rowid alias: submission order. Plain INTEGER PRIMARY KEY (no AUTOINCREMENT) is enough:
    # a new row always gets max(seq)+1, so it sorts after every row still present.
    Column("seq", Integer, primary_key=True),
    Column("id", Text, nullable=False, unique=True),
    Column("api", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("content_type", Text, nullable=False),
    Column("headers", Text, nullable=False),  # JSON object of str -> str
    Column("payload", LargeBinary),  # NULL once the job finished
    Column("result", LargeBinary),  # JSON bytes exactly as the handler side gave them
    Column("error", Text),
    Column("attempts", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),  # µs since epoch, UTC
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
)
Index("jobs_api_status_seq", jobs.c.api, jobs.c.status, jobs.c.seq)
Index("jobs_created_at", jobs.c.created_at)

# RunPod queue-API jobs (spec runpod.md §4; store/runpod.py). Statuses are RunPod's uppercase ones.
runpod_jobs = Table(
    "runpod_jobs",
    metadata,
    Column("seq", Integer, primary_key=True),  # queue order, as jobs.seq; retry gives a new one
    Column("id", Text, nullable=False, unique=True),
    Column("api", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("input", LargeBinary, nullable=False),  # JSON of the request's "input" value
    Column("webhook", Text),
    Column("execution_timeout_ms", Integer, nullable=False),
    Column("ttl_ms", Integer, nullable=False),
    Column("sync", Integer, nullable=False),  # 1: /runsync (short retention), 0: /run
    Column("output", LargeBinary),  # JSON: the last progress while IN_PROGRESS, then the final output
    Column("error", Text),
    Column("attempts", Integer, nullable=False),
    Column("retried", Integer, nullable=False),  # times /retry re-queued it
    Column("worker_id", Text),
    Column("created_at", BigInteger, nullable=False),  # µs since epoch, UTC
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
)
Index("runpod_jobs_api_status_seq", runpod_jobs.c.api, runpod_jobs.c.status, runpod_jobs.c.seq)
# For the queries over every API: recovery, the execution-timeout scan and the sweep.
Index("runpod_jobs_status_finished_at", runpod_jobs.c.status, runpod_jobs.c.finished_at)

# Stream chunks not yet handed to a /stream caller; seq orders them.
runpod_stream = Table(
    "runpod_stream",
    metadata,
    Column("job_id", Text, nullable=False),
    Column("seq", Integer, primary_key=True),
    Column("chunk", LargeBinary, nullable=False),
)
Index("runpod_stream_job_id_seq", runpod_stream.c.job_id, runpod_stream.c.seq)

# BatchAPI/TaskAPI jobs (spec cortex.md §4.3-§4.6; store/batch.py). Statuses are Cortex v0.35's.
batch_jobs = Table(
    "batch_jobs",
    metadata,
    Column("seq", Integer, primary_key=True),
    # Cortex's id: hex of (2^63-1 - unix ns), so ascending id order is newest first.
    Column("id", Text, nullable=False, unique=True),
    Column("api", Text, nullable=False),
    Column("kind", Text, nullable=False),  # BatchAPI | TaskAPI
    Column("status", Text, nullable=False),
    Column("spec", Text, nullable=False),  # the job spec document (JSON), as the submitter got it
    Column("workers", Integer, nullable=False),
    Column("timeout_s", Integer),
    Column("config", Text),  # JSON of the submission's config; NULL when it gave none
    Column("max_receive_count", Integer, nullable=False),  # claims a batch gets before it counts as failed
    Column("total_batches", Integer, nullable=False),
    Column("reason", Text),  # why the job is where it is (e.g. pending: waiting for GPUs)
    Column("error", Text),  # traceback or message of a failed job
    Column("on_complete", Text),  # NULL, then claimed, then succeeded | failed: on_job_complete at most once
    Column("created_at", BigInteger, nullable=False),  # µs since epoch, UTC
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
)
Index("batch_jobs_api_id", batch_jobs.c.api, batch_jobs.c.id)
Index("batch_jobs_status_finished_at", batch_jobs.c.status, batch_jobs.c.finished_at)

job_batches = Table(
    "job_batches",
    metadata,
    Column("job_id", Text, primary_key=True),
    Column("idx", Integer, primary_key=True),  # position in the job: the order batches are handed out
    Column("status", Text, nullable=False),  # queued | running | succeeded | failed
    Column("payload", LargeBinary, nullable=False),  # a JSON array of items
    Column("attempts", Integer, nullable=False),  # times a worker claimed it
    Column("error", Text),
    Column("worker_id", Text),
    Column("started_at", BigInteger),
    Column("finished_at", BigInteger),
)
Index("job_batches_job_status_idx", job_batches.c.job_id, job_batches.c.status, job_batches.c.idx)
# recover() after a crash looks for running batches of every job
Index("job_batches_status", job_batches.c.status)

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))


class SchemaTooNew(RuntimeError):
    """The file was written by a newer inferd; opening it could corrupt data the newer code needs."""


def to_micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: the store's clock must return tz-aware UTC times")
    return (moment - EPOCH) // _MICROSECOND


def from_micros(value: int | None) -> datetime | None:
    return None if value is None else EPOCH + timedelta(microseconds=value)


def _v1_jobs(conn: Connection) -> None:
    conn.exec_driver_sql(
        """CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            api TEXT NOT NULL,
            status TEXT NOT NULL,
            content_type TEXT NOT NULL,
            headers TEXT NOT NULL,
            payload BLOB,
            result BLOB,
            error TEXT,
            attempts INTEGER NOT NULL,
            created_at BIGINT NOT NULL,
            started_at BIGINT,
            finished_at BIGINT)"""
    )
    conn.exec_driver_sql("CREATE INDEX jobs_api_status_seq ON jobs (api, status, seq)")
    conn.exec_driver_sql("CREATE INDEX jobs_created_at ON jobs (created_at)")


def _v2_runpod_jobs(conn: Connection) -> None:
    conn.exec_driver_sql(
        """CREATE TABLE runpod_jobs (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            api TEXT NOT NULL,
            status TEXT NOT NULL,
            input BLOB NOT NULL,
            webhook TEXT,
            execution_timeout_ms INTEGER NOT NULL,
            ttl_ms INTEGER NOT NULL,
            sync INTEGER NOT NULL,
            output BLOB,
            error TEXT,
            attempts INTEGER NOT NULL,
            retried INTEGER NOT NULL,
            worker_id TEXT,
            created_at BIGINT NOT NULL,
            started_at BIGINT,
            finished_at BIGINT)"""
    )
    conn.exec_driver_sql("CREATE INDEX runpod_jobs_api_status_seq ON runpod_jobs (api, status, seq)")
    conn.exec_driver_sql("CREATE INDEX runpod_jobs_status_finished_at ON runpod_jobs (status, finished_at)")
    conn.exec_driver_sql(
        """CREATE TABLE runpod_stream (
            job_id TEXT NOT NULL,
            seq INTEGER PRIMARY KEY,
            chunk BLOB NOT NULL)"""
    )
    conn.exec_driver_sql("CREATE INDEX runpod_stream_job_id_seq ON runpod_stream (job_id, seq)")


def _v3_batch_jobs(conn: Connection) -> None:
    conn.exec_driver_sql(
        """CREATE TABLE batch_jobs (
            seq INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            api TEXT NOT NULL,
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            spec TEXT NOT NULL,
            workers INTEGER NOT NULL,
            timeout_s INTEGER,
            config TEXT,
            max_receive_count INTEGER NOT NULL,
            total_batches INTEGER NOT NULL,
            reason TEXT,
            error TEXT,
            on_complete TEXT,
            created_at BIGINT NOT NULL,
            started_at BIGINT,
            finished_at BIGINT)"""
    )
    conn.exec_driver_sql("CREATE INDEX batch_jobs_api_id ON batch_jobs (api, id)")
    conn.exec_driver_sql("CREATE INDEX batch_jobs_status_finished_at ON batch_jobs (status, finished_at)")
    conn.exec_driver_sql(
        """CREATE TABLE job_batches (
            job_id TEXT NOT NULL,
            idx INTEGER NOT NULL,
            status TEXT NOT NULL,
            payload BLOB NOT NULL,
            attempts INTEGER NOT NULL,
            error TEXT,
            worker_id TEXT,
            started_at BIGINT,
            finished_at BIGINT,
            PRIMARY KEY (job_id, idx))"""
    )
    conn.exec_driver_sql("CREATE INDEX job_batches_job_status_idx ON job_batches (job_id, status, idx)")
    conn.exec_driver_sql("CREATE INDEX job_batches_status ON job_batches (status)")


Migration = Callable[[Connection], None]
# MIGRATIONS[i] takes a database from version i to version i + 1. Append only.
MIGRATIONS: Sequence[Migration] = (_v1_jobs, _v2_runpod_jobs, _v3_batch_jobs)
CURRENT_VERSION = len(MIGRATIONS)


def migrate(conn: Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the file to version ``len(migrations)``, one transaction per step, and return the
    version found. Each step re-reads the version inside its own (write-locked, see engine.py)
    transaction, so two processes opening the same file at once cannot apply a step twice.
    Call with a connection outside any transaction."""
    found: int | None = None
    while True:
        # SQLite DDL is transactional: a step that fails leaves the previous version intact.
        with conn.begin():
            version = _ensure_version_row(conn)
            found = version if found is None else found
            if version > len(migrations):
                raise SchemaTooNew(
                    f"database schema version {version} is newer than this inferd knows "
                    f"({len(migrations)}); upgrade inferd or point it at another state directory"
                )
            if version == len(migrations):
                return found
            migrations[version](conn)
            conn.execute(text("UPDATE schema_version SET version = :v"), {"v": version + 1})


def _ensure_version_row(conn: Connection) -> int:
    if not inspect(conn).has_table("schema_version"):
        conn.exec_driver_sql("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.exec_driver_sql("INSERT INTO schema_version (version) VALUES (0)")
        return 0
    return conn.execute(text("SELECT version FROM schema_version")).scalar_one_or_none() or 0
