import os


class Handler:
    def __init__(self, config):
        pass

    def handle_async(self, payload, request_id):
        return {"type": type(payload).__name__, "pid": os.getpid()}
