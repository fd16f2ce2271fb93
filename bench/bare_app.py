"""The baseline: the same no-op Handler called in-process by a bare starlette app on uvicorn."""

import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, sys.argv[2])
from noop_handler import Handler  # noqa: E402

handler = Handler(config={})


async def predict(request: Request) -> Response:
    result = handler.handle_post(json.loads(await request.body()))
    return Response(json.dumps(result), media_type="application/json")


app = Starlette(routes=[Route("/noop", predict, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                access_log=False, log_level="warning")
