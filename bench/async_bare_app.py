"""The AsyncAPI baseline: a bare starlette app on uvicorn doing the naive thing.

    python bench/async_bare_app.py PORT DB_PATH

POST /jobs stores the body with one INSERT committed on its own (aiosqlite in autocommit mode,
WAL, synchronous=NORMAL like inferd's store) and answers {"id": ...} after that commit.
GET /jobs/<id> is a plain SELECT by primary key.
"""

import contextlib
import json
import sqlite3
import sys
import time
import uuid

import aiosqlite
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

SCHEMA = ("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, payload BLOB, "
          "result BLOB, created_at INTEGER NOT NULL)")
INSERT = "INSERT INTO jobs (id, status, payload, result, created_at) VALUES (?, ?, ?, ?, ?)"
SELECT = "SELECT status, result, created_at FROM jobs WHERE id = ?"
DB: dict[str, aiosqlite.Connection] = {}


def create(path: str) -> sqlite3.Connection:
    """The file, its schema and WAL mode; also used by bench/asyncapi.py to prefill it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(SCHEMA)
    return conn


@contextlib.asynccontextmanager
async def lifespan(app: Starlette):
    create(app.state.path).close()
    # isolation_level=None: autocommit, so each INSERT is its own transaction, committed when
    # execute() returns.
    DB["conn"] = await aiosqlite.connect(app.state.path, isolation_level=None)
    await DB["conn"].execute("PRAGMA synchronous=NORMAL")  # a per-connection setting
    yield
    await DB["conn"].close()


async def submit(request: Request) -> Response:
    body = await request.body()
    try:
        json.loads(body)
    except ValueError:
        return PlainTextResponse("malformed JSON body", status_code=400)
    job_id = uuid.uuid4().hex
    await DB["conn"].execute(INSERT, (job_id, "in_queue", body, None, time.time_ns() // 1000))
    return JSONResponse({"id": job_id})


async def poll(request: Request) -> Response:
    job_id = request.path_params["id"]
    async with DB["conn"].execute(SELECT, (job_id,)) as cursor:
        row = await cursor.fetchone()
    if row is None:
        return PlainTextResponse(f"error: id {job_id} not found", status_code=404)
    status, result, created_at = row
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created_at / 1e6))
    return JSONResponse({"id": job_id, "status": status, "result": json.loads(result) if result else None,
                         "timestamp": stamp})


app = Starlette(routes=[Route("/jobs", submit, methods=["POST"]), Route("/jobs/{id}", poll, methods=["GET"])],
                lifespan=lifespan)

if __name__ == "__main__":
    app.state.path = sys.argv[2]
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                access_log=False, log_level="warning")
