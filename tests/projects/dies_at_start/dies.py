import os


class Handler:
    def __init__(self, config):
        os._exit(1)  # no output, no exception: the process just ends

    def handle_post(self, payload):
        return {}
