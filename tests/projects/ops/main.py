import os

from cortex_internal.lib.log import logger

VERSION = 1


class Handler:
    def __init__(self, config):
        pass

    def handle_post(self, payload):
        logger.info("received payload", extra={"payload": payload, "version": VERSION})
        print(f"handled version {VERSION}")
        return {"version": VERSION, "pid": os.getpid()}

    def handle_get(self):
        return {"version": VERSION, "pid": os.getpid()}
