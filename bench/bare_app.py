"""The baseline: the same Handlers called in-process by a bare starlette app on uvicorn.

/noop: the no-op JSON handler (the body parsed as JSON, as inferd does for application/json);
/bytes: the bytes handler (the raw body, as inferd hands over application/octet-stream).
"""

import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, sys.argv[2])
from bytes_handler import Handler as BytesHandler  # noqa: E402
from noop_handler import Handler  # noqa: E402

handler = Handler(config={})
bytes_handler = BytesHandler(config={})


async def predict(request: Request) -> Response:
    result = handler.handle_post(json.loads(await request.body()))
    return Response(json.dumps(result), media_type="application/json")


async def predict_bytes(request: Request) -> Response:
    result = bytes_handler.handle_post(await request.body())
    return Response(json.dumps(result), media_type="application/json")


app = Starlette(routes=[Route("/noop", predict, methods=["POST"]), Route("/bytes", predict_bytes, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                access_log=False, log_level="warning")
