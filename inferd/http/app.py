"""The ASGI entry point: ``/-/`` goes to the daemon's routes, every other path to an API.

The routing table is a plain dict swapped as a whole, so a reload changes it atomically.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from inferd.http.responses import send_error


class InferdApp:
    def __init__(self, system: ASGIApp) -> None:
        self.system = system
        self.routes: Mapping[str, ASGIApp] = {}
        self.subroutes: Mapping[str, ASGIApp] = {}

    def set_routes(self, routes: Mapping[str, ASGIApp], subroutes: Mapping[str, ASGIApp] | None = None) -> None:
        """``routes`` match the path exactly; ``subroutes`` also take one more segment
        (AsyncAPI's ``/<endpoint>/<id>``)."""
        self.routes = dict(routes)
        self.subroutes = dict(subroutes or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        path = scope["path"]
        if path.startswith("/-/"):
            await self.system(scope, receive, send)
            return
        path = path.rstrip("/") or "/"
        endpoint = self.routes.get(path)
        if endpoint is None:
            endpoint = self.subroutes.get(path.rpartition("/")[0])
        if endpoint is None:
            await send_error(send, 404, None, f"no api is served at {path}")
            return
        await endpoint(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
