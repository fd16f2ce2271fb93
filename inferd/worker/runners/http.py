"""RealtimeAPI over HTTP, worker side: ``handle_<verb>`` with the arguments it declares,
payloads parsed by Content-Type, every Cortex response type, callbacks, server-side batching."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers, QueryParams

from inferd.payload import PayloadError, is_form, parse_form, parse_payload
from inferd.worker import protocol
from inferd.worker.batching import Batcher
from inferd.worker.handler_class import BoundMethod, http_methods
from inferd.worker.models.runtime import ModelRuntime, model_runtime
from inferd.worker.render import JSON, error_body, render, split_callback
from inferd.worker.runners.base import CallRunner, Outcome


class HttpRunner(CallRunner):
    methods: dict[str, BoundMethod]
    batcher: Batcher | None = None
    models: ModelRuntime | None = None

    def constructor_args(self) -> dict[str, Any]:
        self.models = model_runtime(self.options, self.context.send_threadsafe, self.log)
        return self.models.constructor_args() if self.models is not None else {}

    def bind(self, handler: Any) -> dict[str, Any]:
        self.methods = http_methods(handler)
        if self.models is not None:
            self.models.start(handler)
        batching = self.options.get("batching")
        if batching and "post" in self.methods:
            self.batcher = Batcher(batching["max_batch_size"], batching["batch_interval"], self.run_batch)
        return {"verbs": {verb: list(method.wants) for verb, method in self.methods.items()}}

    async def outcome_of(self, call: protocol.Call) -> Outcome:
        method = self.methods.get(call.verb)
        if method is None:  # e.g. a reload removed the verb after the daemon checked it
            allowed = ", ".join(v.upper() for v in self.methods)
            return 405, JSON, error_body(self.api, f"method {call.verb.upper()} is not implemented "
                                                   f"(allowed: {allowed})"), None
        try:
            values = await self.arguments(method, call)
            if self.batcher is not None and call.verb == "post":
                outcome: Outcome = await self.batcher.submit({"call": call, "values": values})
                return outcome
            return await self.invoke(method, call, values)
        except PayloadError as exc:
            return 400, JSON, error_body(self.api, str(exc)), None

    async def arguments(self, method: BoundMethod, call: protocol.Call) -> dict[str, Any]:
        values: dict[str, Any] = {}
        wants = method.wants
        if "payload" in wants:
            if is_form(call.content_type):
                values["payload"] = await parse_form(call.content_type, call.data, self.context.max_body_size)
            else:
                values["payload"] = parse_payload(call.content_type, call.data)
        if "query_params" in wants:
            values["query_params"] = QueryParams(call.query)
        if "headers" in wants:
            values["headers"] = Headers(raw=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in call.headers or ()])
        return values

    def outcome(self, call: protocol.Call, result: Any) -> Outcome:
        value, callback = split_callback(result)
        return self.rendered(call, render, value, callback)

    # -- server-side batching ----------------------------------------------------------------

    async def run_batch(self, items: list[dict[str, Any]]) -> list[Outcome]:
        method = self.methods["post"]
        kwargs = {name: [item["values"][name] for item in items] for name in method.wants}
        return await self.context.loop.run_in_executor(self.context.pool, self.call_batch, method, kwargs, items)

    def call_batch(self, method: BoundMethod, kwargs: dict[str, list[Any]], items: list[dict[str, Any]]) -> list[Outcome]:
        first: protocol.Call = items[0]["call"]
        try:
            results = method.func(**kwargs)
        except Exception as exc:  # noqa: BLE001
            return [self.failure(first, exc)] * len(items)
        if not isinstance(results, list) or len(results) != len(items):
            got = f"{len(results)} results" if isinstance(results, list) else f"a {type(results).__name__}"
            message = (f"handle_post returned {got} for a batch of {len(items)} requests; "
                       "with server_side_batching it must return a list of the same length")
            self.log.error("batch_result_invalid", error=message)
            return [(500, JSON, error_body(self.api, message), None)] * len(items)
        return [self.outcome(item["call"], result) for item, result in zip(items, results, strict=True)]
