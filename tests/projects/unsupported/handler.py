class Handler:
    def __init__(self, config):
        self.config = config

    def handle_post(self, payload):
        return payload
