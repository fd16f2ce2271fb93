"""TrafficSplitter over HTTP: each request goes to one of the splitter's APIs, chosen by weight,
and the shadow's weight percent of them are mirrored to its shadow API as well.

The chosen API's own route answers, called in-process (no HTTP hop), with the path rewritten to
that API's endpoint, so it receives the request (verb, sub-path, query, headers, body) as if it
had been sent there. The splitter's CORS policy stands in for the target's: the browser asked
the splitter. The shadow's copy runs on a task of its own, with the same body and request id;
its answer is dropped and its failures only logged, so neither reaches the client nor delays it.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inferd.http.body import BodyTooLarge, ClientGone, content_length, read_body, send_too_large
from inferd.http.cors import CorsApp
from inferd.http.realtime import REQUEST_ID, new_request_id
from inferd.http.responses import RawHeaders, send_error
from inferd.http.routing import RouteTable
from inferd.logs import get_logger
from inferd.metrics import Metrics
from inferd.spec import TrafficTarget

log = get_logger()
# Mirrored calls beyond this many at once are skipped (and counted): a slow shadow must not
# pile up tasks and buffered bodies without bound while the routed APIs keep answering.
MAX_SHADOW_IN_FLIGHT = 1024

# api name -> (its endpoint, its own routes), or None while it serves nothing
Lookup = Callable[[str], tuple[str, RouteTable] | None]


@dataclass(frozen=True)
class Split:
    """One version of a splitter's weights, in the shape a request reads them."""

    names: tuple[str, ...]  # the APIs requests are routed to, in cortex.yaml order
    bounds: tuple[int, ...]  # running totals of their weights; the last is 100
    shadow: str | None = None
    shadow_weight: int = 0  # the percentage of requests mirrored to the shadow


def make_split(targets: Sequence[TrafficTarget]) -> Split:
    routed = [t for t in targets if not t.shadow]
    shadow = next((t for t in targets if t.shadow), None)
    return Split(tuple(t.name for t in routed), tuple(itertools.accumulate(t.weight for t in routed)),
                 shadow.name if shadow else None, shadow.weight if shadow else 0)


def choose(split: Split, roll: float) -> str:
    """The API for a request that rolled ``roll`` in [0, 100): each API owns a band of rolls as
    wide as its weight, in order (a weight of 0 owns none)."""
    return split.names[bisect.bisect_right(split.bounds, roll)]


def mirrors(split: Split, roll: float) -> bool:
    """Whether a request that rolled ``roll`` in [0, 100) is also sent to the shadow."""
    return split.shadow is not None and roll < split.shadow_weight


def with_request_id(headers: RawHeaders) -> tuple[str, RawHeaders]:
    """The request's id (the client's ``X-Request-ID`` when usable, else a new one) and the
    headers carrying it, so the routed API and the shadow log and answer the same id."""
    for name, value in headers:
        if name == b"x-request-id" and REQUEST_ID.match(value):
            return value.decode(), headers
    rid = new_request_id()
    return rid, [*(h for h in headers if h[0] != b"x-request-id"), (b"x-request-id", rid.encode())]


def replay(body: bytes, then: Receive) -> Receive:
    """A receive that gives ``body`` whole, then defers to ``then`` (the client's disconnect)."""
    pending = True

    async def receive() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive


async def never() -> Message:
    """The shadow has no client of its own: it never disconnects."""
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Forward:
    app: ASGIApp | None  # None: the API serves nothing at that path
    scope: Scope


class SplitterEndpoint:
    def __init__(self, api: str, split: Split, lookup: Lookup, max_body_size: int, metrics: Metrics) -> None:
        self.api = api
        self.split = split
        self.lookup = lookup
        self.max_body_size = max_body_size
        self.recorder = metrics.recorder(api)
        self.shadows: set[asyncio.Task[None]] = set()
        self.shadow_skipped = 0

    def switch(self, split: Split) -> None:
        """A reload changed the weights: requests from now on are split by the new ones; one
        already routed keeps its API (a request reads ``self.split`` once)."""
        self.split = split

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.recorder.record(self._serve(scope, receive, send))

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> int:
        split = self.split
        rid, headers = with_request_id(scope["headers"])
        rid_header = [(b"x-request-id", rid.encode())]
        rest = scope.get("path_params", {}).get("path", "")
        target = choose(split, random.random() * 100)
        forward = self._forward(target, rest, scope, headers)
        if forward is None:
            log.warning("split_target_unavailable", api=self.api, request_id=rid, target=target)
            await send_error(send, 503, self.api, f"api {target}, which {self.api} routed this request to, "
                                                  "is not serving", rid_header)
            return 503
        if forward.app is None:
            await send_error(send, 404, None, f"no api is served at {scope['path'].rstrip('/')}", rid_header)
            return 404
        shadow = split.shadow if mirrors(split, random.random() * 100) else None
        log.debug("split_routed", api=self.api, request_id=rid, target=target, shadow=shadow)
        if shadow is not None and len(self.shadows) >= MAX_SHADOW_IN_FLIGHT:
            self.shadow_skipped += 1
        elif shadow is not None:
            try:  # both calls need the body: read once, replayed to each
                body = await read_body(receive, self.max_body_size, content_length(headers))
            except BodyTooLarge:  # what the routed API would have answered
                await send_too_large(send, self.api, self.max_body_size, rid_header)
                return 413
            except ClientGone:
                return 0
            receive = replay(body, receive)
            self._mirror(shadow, rest, scope, headers, body, rid)
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await forward.app(forward.scope, receive, send_status)
        return status

    def _forward(self, api: str, rest: str, scope: Scope, headers: RawHeaders) -> Forward | None:
        """Where API ``api`` answers ``rest`` (the path below the splitter's endpoint), and the
        request as it would have reached it; None when the API is not serving."""
        found = self.lookup(api)
        if found is None:
            return None
        endpoint, table = found
        path = f"{endpoint}/{rest}" if rest else endpoint
        app, below = table.match(path)
        if isinstance(app, CorsApp):
            app = app.app
        forwarded: dict[str, Any] = {**scope, "path": path, "raw_path": quote(path).encode(), "headers": headers}
        forwarded.pop("path_params", None)
        if below:
            forwarded["path_params"] = {"path": below}
        return Forward(app, forwarded)

    def _mirror(self, api: str, rest: str, scope: Scope, headers: RawHeaders, body: bytes, rid: str) -> None:
        forward = self._forward(api, rest, scope, headers)
        if forward is None or forward.app is None:
            log.debug("shadow_not_serving", api=self.api, request_id=rid, shadow=api)
            return
        task = asyncio.get_running_loop().create_task(self._shadow_call(api, forward.app, forward.scope, body, rid))
        self.shadows.add(task)
        task.add_done_callback(self.shadows.discard)

    async def _shadow_call(self, api: str, app: ASGIApp, scope: Scope, body: bytes, rid: str) -> None:
        status = 0

        async def discard(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        try:
            await app(scope, replay(body, never), discard)
        except Exception as exc:  # noqa: BLE001 - a shadow's failure must never reach the client
            log.error("shadow_call_failed", api=self.api, request_id=rid, shadow=api, exc_info=exc)
            return
        # the shadow's own metrics and logs count its errors; this line ties them to the split
        log.debug("shadow_answered", api=self.api, request_id=rid, shadow=api, status=status)
