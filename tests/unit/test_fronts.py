"""The HTTP fronts against fake pools: what a client sees for each thing a pool can answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from inferd.http.app import InferdApp
from inferd.http.realtime import RealtimeEndpoint
from inferd.http.routing import Route, RouteTable
from inferd.metrics import Metrics
from inferd.worker import protocol
from inferd.worker.backend import Response
from inferd.worker.pool import ApiUnavailable, CallTimedOut


class FakePool:
    def __init__(self, outcome: Any) -> None:
        self.info = {"verbs": {"post": ["payload", "headers"], "get": []}}
        self.outcome = outcome
        self.calls: list[protocol.Call] = []

    async def wait_info(self) -> dict[str, Any]:
        return self.info

    async def call(self, call: protocol.Call) -> Response:
        self.calls.append(call)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def serve(pool: FakePool, **kwargs: Any) -> httpx.AsyncClient:
    endpoint = RealtimeEndpoint("api", pool, 1024, Metrics(), **kwargs)  # type: ignore[arg-type]
    app = InferdApp(system=endpoint)
    app.set_routes(RouteTable([Route("/predict", endpoint)]))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def request(pool: FakePool, method: str, path: str = "/predict", **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with serve(pool) as client:
            return await client.request(method, path, **kwargs)
    return asyncio.run(go())


def test_a_reply_is_sent_as_the_worker_gave_it_with_a_request_id() -> None:
    pool = FakePool(Response(201, [["content-type", "text/plain"], ["content-length", "999"]], b"made", None))
    response = request(pool, "POST", content=b'{"a": 1}', headers={"content-type": "application/json",
                                                                    "x-request-id": "abc-1"})
    assert (response.status_code, response.text, response.headers["x-request-id"]) == (201, "made", "abc-1")
    assert response.headers["content-length"] == "4"
    call = pool.calls[0]
    assert (call.verb, call.rid, call.content_type, call.body) == ("post", "abc-1", "application/json", b'{"a": 1}')
    assert ["x-request-id", "abc-1"] in (call.headers or [])  # the handler takes headers


def test_each_pool_failure_has_its_status() -> None:
    for error, status in ((ApiUnavailable("api 'api' is at capacity"), 503),
                          (CallTimedOut("api 'api': request r exceeded handler.request_timeout (1s)"), 504)):
        response = request(FakePool(error), "POST", json={})
        assert response.status_code == status
        assert response.json()["api"] == "api" and str(error) in response.json()["error"]


def test_refusals_before_any_call() -> None:
    pool = FakePool(Response(200, [], b"", None))
    assert request(pool, "PUT").status_code == 405
    assert request(pool, "PUT").headers["allow"] == "POST, GET"
    assert request(pool, "POST", content=b"x" * 2000).status_code == 413
    big = request(pool, "POST", json={}, headers={"x-big": "y" * (70 << 10)})
    assert big.status_code == 431 and "max_header_size" in json.loads(big.text)["error"]
    assert request(pool, "POST", "/elsewhere").status_code == 404
    assert pool.calls == []
