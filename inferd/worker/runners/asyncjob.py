"""AsyncAPI, worker side: each ``Call`` is one queued job for ``handle_async(payload, request_id)``.

Payloads are parsed by Content-Type but never as forms (Cortex handed them over as stored);
the result must be JSON-serialisable, since it is kept in the job store; no callbacks.
"""

from __future__ import annotations

from typing import Any

from inferd.payload import PayloadError, parse_payload
from inferd.worker import protocol
from inferd.worker.handler_class import BoundMethod, HandlerLoadError, check_params
from inferd.worker.render import JSON, error_body, render_json
from inferd.worker.runners.base import CallRunner, Outcome

ASYNC_PARAMS = frozenset({"payload", "request_id"})


class AsyncJobRunner(CallRunner):
    method: BoundMethod

    def bind(self, handler: Any) -> dict[str, Any]:
        func = getattr(handler, "handle_async", None)
        if func is None:
            raise HandlerLoadError("Handler does not define handle_async, which an AsyncAPI requires")
        self.method = BoundMethod(func, tuple(check_params("Handler.handle_async", func, ASYNC_PARAMS)))
        return {}

    async def outcome_of(self, call: protocol.Call) -> Outcome:
        values: dict[str, Any] = {}
        try:
            if "payload" in self.method.wants:
                values["payload"] = parse_payload(call.content_type, call.data)
        except PayloadError as exc:
            return 400, JSON, error_body(self.api, str(exc)), None
        if "request_id" in self.method.wants:
            values["request_id"] = call.rid
        return await self.invoke(self.method, call, values)

    def outcome(self, call: protocol.Call, result: Any) -> Outcome:
        return self.rendered(call, render_json, result, None)
