import os
import pathlib
import time


def describe(payload):
    if isinstance(payload, bytes):
        return {"type": "bytes", "hex": payload.hex()}
    return {"type": type(payload).__name__, "value": payload}


class Handler:
    def __init__(self, config):
        self.order = pathlib.Path("order.log")

    def handle_async(self, payload, request_id):
        if isinstance(payload, dict):
            action = payload.get("action")
            if action == "fail":
                raise ValueError("job failed on purpose")
            if action == "sleep":
                time.sleep(payload["seconds"])
            if action == "die":
                os._exit(9)
            if action == "die_once":
                marker = pathlib.Path(f"died-{request_id}")
                if not marker.exists():
                    marker.write_text("x")
                    os._exit(9)
            if action == "bytes":
                return b"not json"
            if "seq" in payload:
                with self.order.open("a") as f:
                    f.write(f"{payload['seq']}\n")
        return {"echo": describe(payload), "request_id": request_id}
