"""One handler for every API of the splitter project; ``config`` names the API and how it misbehaves."""

import threading
import time

_lock = threading.Lock()
_count = 0


class Handler:
    def __init__(self, config):
        self.name = config["name"]
        self.fail = config.get("fail", False)
        self.sleep = config.get("sleep", 0)

    def handle_post(self, payload, headers):
        global _count
        with _lock:
            _count += 1
        if self.sleep:
            time.sleep(self.sleep)
        if self.fail:
            raise RuntimeError(f"{self.name} fails on purpose")
        return {"api": self.name, "payload": payload, "header": headers.get("x-test")}

    def handle_get(self, query_params):
        """How many POSTs this API received (routed or mirrored): the tests read it directly."""
        return {"api": self.name, "count": _count, "query": dict(query_params)}
