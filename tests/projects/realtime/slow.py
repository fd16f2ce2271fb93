import os
import time


class Handler:
    def __init__(self, config):
        pass

    def handle_post(self, payload):
        time.sleep(float(payload.get("seconds", 0)) if isinstance(payload, dict) else 0)
        return {"pid": os.getpid()}

    def handle_get(self):
        return {"pid": os.getpid()}
