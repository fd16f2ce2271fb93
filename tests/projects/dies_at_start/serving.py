import os

VERSION = 1


class Handler:
    def __init__(self, config):
        pass

    def handle_post(self, payload):
        return {"version": VERSION, "pid": os.getpid()}
