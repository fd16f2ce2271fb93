import os


class Handler:
    def __init__(self, config):
        pass

    def handle_get(self):
        return {"pid": os.getpid()}
