import os


class Handler:
    def __init__(self, config):
        pass

    def handle_async(self, payload, request_id):
        if payload.get("spin"):
            while True:
                pass
        return {"pid": os.getpid(), "echo": payload}
