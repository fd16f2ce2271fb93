import os
import signal


class Handler:
    def __init__(self, config):
        os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does to a model too big to load

    def handle_post(self, payload):
        return {}
