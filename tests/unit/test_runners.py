"""Worker-side runners with a fake context: the frames a Handler's answers become."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from inferd.worker import protocol
from inferd.worker.runners.asyncjob import AsyncJobRunner
from inferd.worker.runners.base import Runner, WorkerContext
from inferd.worker.runners.http import HttpRunner


class Handler:
    def handle_post(self, payload: Any, query_params: Any) -> Any:
        if payload == {"boom": True}:
            raise ValueError("bad input")
        return {"got": payload, "q": dict(query_params)}, lambda: CALLBACKS.append("ran")

    def handle_get(self) -> str:
        return "text"

    def handle_async(self, payload: Any, request_id: str) -> Any:
        return {"id": request_id, "payload": payload}


CALLBACKS: list[str] = []


def run(runner_class: type[Runner], calls: list[protocol.Call], options: dict[str, Any] | None = None
        ) -> tuple[list[protocol.Message], dict[str, Any], dict[int, Any]]:
    async def scenario() -> tuple[list[protocol.Message], dict[str, Any], dict[int, Any]]:
        sent: list[protocol.Message] = []
        callbacks: dict[int, Any] = {}
        tasks: list[asyncio.Future[Any]] = []
        context = WorkerContext(api="api", loop=asyncio.get_running_loop(), send=sent.append,
                                send_threadsafe=sent.append, pool=ThreadPoolExecutor(1), inline=True,
                                max_body_size=1 << 20, log=_Log(), track=tasks.append,
                                on_callback=lambda i, cb, rid: callbacks.__setitem__(i, cb))
        runner = runner_class(context, options or {})
        info = runner.bind(Handler())
        for call in calls:
            runner.on_message(call)
        await asyncio.gather(*tasks)
        return sent, info, callbacks
    return asyncio.run(scenario())


class _Log:
    def __init__(self) -> None:
        self.events: list[str] = []

    def error(self, event: str, **kw: Any) -> None:
        self.events.append(event)


def test_http_runner_replies_once_per_call_and_keeps_callbacks_for_sent() -> None:
    calls = [protocol.Call(1, "r1", "post", "application/json", "a=1", None, b'{"x": 1}'),
             protocol.Call(2, "r2", "post", "application/json", "", None, b'{"boom": true}'),
             protocol.Call(3, "r3", "post", "application/json", "", None, b"{not json"),
             protocol.Call(4, "r4", "get"),
             protocol.Call(5, "r5", "delete")]
    sent, info, callbacks = run(HttpRunner, calls)
    assert info == {"verbs": {"post": ["payload", "query_params"], "get": []}}
    replies = {m.id: m for m in sent if isinstance(m, protocol.Reply)}
    assert sorted(replies) == [1, 2, 3, 4, 5]
    assert json.loads(replies[1].body) == {"got": {"x": 1}, "q": {"a": "1"}} and replies[1].callback
    assert list(callbacks) == [1]
    assert replies[2].status == 500 and b"ValueError: bad input" in replies[2].body
    assert replies[3].status == 400 and b"malformed JSON" in replies[3].body
    assert (replies[4].status, replies[4].body) == (200, b"text")
    assert replies[5].status == 405


def test_async_runner_hands_over_payload_and_request_id_and_wants_json() -> None:
    sent, info, callbacks = run(AsyncJobRunner, [protocol.Call(9, "job-1", "post", "application/json", body=b"[1]")])
    assert info == {} and callbacks == {}
    (reply,) = sent
    assert isinstance(reply, protocol.Reply)
    assert json.loads(reply.body) == {"id": "job-1", "payload": [1]}
