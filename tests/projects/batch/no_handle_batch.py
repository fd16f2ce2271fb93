"""A Handler without handle_batch."""


class Handler:
    def __init__(self, config):
        pass

    def handle_post(self, payload):
        return payload
