import asyncio
import os
import pathlib
import time

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import Response


def describe(payload):
    if isinstance(payload, FormData):
        fields = {}
        for key, value in payload.multi_items():
            if isinstance(value, UploadFile):
                data = value.file.read()
                fields[key] = {"filename": value.filename, "size": len(data), "head": data[:16].decode("latin-1")}
            else:
                fields[key] = value
        return {"type": "form", "fields": fields}
    if isinstance(payload, bytes):
        return {"type": "bytes", "size": len(payload), "head": payload[:16].hex()}
    if isinstance(payload, str):
        return {"type": "str", "value": payload}
    return {"type": type(payload).__name__, "value": payload}


class Handler:
    def __init__(self, config, metrics_client):
        self.config = config
        self.metrics = metrics_client

    def handle_post(self, payload, query_params, headers):
        mode = query_params.get("mode", "echo")
        if mode == "raise":
            raise ValueError("handler was asked to fail")
        if mode == "http_error":
            raise HTTPException(status_code=418, detail="short and stout")
        if mode == "exit":
            os._exit(7)
        if mode == "sleep":
            time.sleep(float(query_params.get("seconds", "1")))
        if mode == "str":
            return "plain text"
        if mode == "bytes":
            return b"\x00\x01\x02"
        if mode == "response":
            return Response("custom", status_code=201, headers={"x-custom": "yes"}, media_type="text/csv")
        if mode == "unserialisable":
            return {"value": object()}
        if mode == "callback":
            marker = pathlib.Path(query_params["file"])

            def write_marker():
                time.sleep(0.3)
                marker.write_text("callback ran")

            return {"callback": "scheduled"}, write_marker
        if mode == "bad_callback":
            def explode():
                raise RuntimeError("callback exploded")

            return {"ok": True}, explode
        if mode == "long_print":
            print("x" * 1_500_000)  # over the daemon's 1 MiB line limit
            return {"printed": True}
        if mode == "bad_metric":
            self.metrics.gauge("inferd_requests_total", 1.0)  # clashes with inferd's own series
            return {"recorded": False}
        if mode == "metric":
            self.metrics.increment("echo_calls", tags={"mode": "metric"})
            self.metrics.gauge("echo_gauge", 4.5)
            return {"recorded": True}
        return {"payload": describe(payload), "query": dict(query_params),
                "header": headers.get("x-test-header"), "greeting": self.config["greeting"]}

    def handle_get(self, query_params):
        return {"env": {"SECRET_WORD": os.environ.get("SECRET_WORD"), "QUOTED": os.environ.get("QUOTED"),
                        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                        "NVIDIA_VISIBLE_DEVICES": os.environ.get("NVIDIA_VISIBLE_DEVICES"),
                        "CORTEX_KIND": os.environ.get("CORTEX_KIND"),
                        "CORTEX_API_BASE_URL": os.environ.get("CORTEX_API_BASE_URL")},
                "pid": os.getpid(), "cwd": os.getcwd(), "query": dict(query_params)}

    def handle_put(self, payload):
        return {"verb": "put", "payload": describe(payload)}

    async def handle_patch(self, payload):
        await asyncio.sleep(0)
        return {"verb": "patch", "payload": describe(payload)}

    def handle_delete(self):
        return {"verb": "delete"}
