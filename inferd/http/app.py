"""The ASGI entry point: ``/-/`` goes to the daemon's routes, every other path to an API.

Every request, whatever its path, first passes the Host check of ``inferd.http.hosts``.

The routing table (``inferd.http.routing.RouteTable``) is swapped as a whole, so a reload
changes it atomically.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send

from inferd.http.hosts import UNCHECKED, HostPolicy, host_refusal
from inferd.http.protocol import DirectHandler
from inferd.http.responses import send_error
from inferd.http.routing import RouteTable, direct_handler
from inferd.logs import get_logger

log = get_logger()


class InferdApp:
    def __init__(self, system: ASGIApp, hosts: HostPolicy = UNCHECKED) -> None:
        self.system = system
        self.hosts = hosts
        self.table = RouteTable()
        self.stopping = False  # the daemon is shutting down: a request cancelled now ran past the grace period

    def set_routes(self, table: RouteTable) -> None:
        self.table = table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        if self.hosts.checked:
            refusal = host_refusal(self.hosts, host_header(scope))
            if refusal is not None:
                await send_error(send, 403, None, refusal)
                return
        path = scope["path"]
        if path.startswith("/-/"):
            await self.system(scope, receive, send)
            return
        endpoint, rest = self.table.match(path)
        if endpoint is None:
            await send_error(send, 404, None, f"no api is served at {path.rstrip('/') or '/'}")
            return
        if rest:
            scope["path_params"] = {"path": rest}
        try:
            await endpoint(scope, receive, send)
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            await self._cut_by_shutdown(scope, send)

    async def _cut_by_shutdown(self, scope: Scope, send: Send) -> None:
        """A request still running when the shutdown grace period ended: a 503 naming why, when
        nothing was answered yet (not uvicorn's 500 and "Exception in ASGI application")."""
        log.warning("request_cut_by_shutdown", path=scope["path"])
        try:
            await send_error(send, 503, None, "inferd is shutting down and this request did not finish within "
                                              "its shutdown_grace_period")
        except RuntimeError:  # the answer had begun: the connection is closed under it
            raise asyncio.CancelledError from None

    def direct_handler(self, scope: Scope) -> DirectHandler | None:
        """What answers this request from the protocol's callbacks, if its route can (see
        ``inferd.http.protocol.DirectExchange``); None sends it through ``__call__``."""
        if not self.table.has_direct:
            return None
        if self.hosts.checked and host_refusal(self.hosts, host_header(scope)) is not None:
            return None
        path = scope["path"]
        finder = self.table.direct_exact.get(path)
        if finder is not None:
            return finder(scope)
        if path.startswith("/-/"):
            return None
        endpoint, rest = self.table.match(path)
        if endpoint is None:
            return None
        if rest:
            scope["path_params"] = {"path": rest}
        return direct_handler(endpoint, scope)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def host_header(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"host":
            return bytes(value)
    return None
