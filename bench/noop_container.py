"""The container of bench/containers.py: a minimal no-op starlette app on uvicorn, every verb and
path answered {"ok": true}, listening on $CORTEX_PORT (the replica's port inferd assigned)."""

import os

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

VERBS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


async def noop(request: Request) -> Response:
    await request.body()
    return Response(b'{"ok":true}', media_type="application/json")


app = Starlette(routes=[Route("/", noop, methods=VERBS), Route("/{rest:path}", noop, methods=VERBS)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["CORTEX_PORT"]), log_level="warning", access_log=False)
