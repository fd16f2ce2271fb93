import os


class Handler:
    def __init__(self, config):
        self.pid = os.getpid()

    def handle_post(self, payload):
        if isinstance(payload, dict) and payload.get("spin"):
            while True:  # a handler stuck for good: a deadlock, a hung CUDA call
                pass
        return {"pid": self.pid}
