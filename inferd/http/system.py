"""The daemon's own routes, under ``/-/`` so no API endpoint can ever shadow them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inferd.metrics import Metrics

DescribeApis = Callable[[], list[dict[str, Any]]]


def system_app(describe_apis: DescribeApis, metrics: Metrics) -> Starlette:
    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        not_ready = [api["name"] for api in describe_apis() if api["state"] != "ready"]
        if not_ready:
            return JSONResponse({"ready": False, "not_ready": not_ready}, status_code=503)
        return JSONResponse({"ready": True})

    async def ready_api(request: Request) -> Response:
        """One API's readiness, for a balancer in front of that API alone: another API's
        crashed worker must not take this one out of rotation."""
        name = request.path_params["api"]
        api = next((api for api in describe_apis() if api["name"] == name), None)
        if api is None:
            return JSONResponse({"error": f"no api named {name!r}"}, status_code=404)
        if api["state"] == "ready":
            return JSONResponse({"api": name, "ready": True, "state": "ready"})
        return JSONResponse({"api": name, "ready": False, "state": api["state"], "error": api.get("error")},
                            status_code=503)

    async def apis(request: Request) -> Response:
        return JSONResponse({"apis": describe_apis()})

    async def prometheus(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    routes = [
        Route("/-/healthz", healthz),
        Route("/-/ready", ready),
        Route("/-/ready/{api}", ready_api),
        Route("/-/apis", apis),
        Route("/-/metrics", prometheus),
    ]
    return Starlette(routes=routes)
