"""A handler asking for a constructor parameter BatchAPI does not give here."""


class Handler:
    def __init__(self, config, tensorflow_client):
        self.client = tensorflow_client

    def handle_batch(self, payload):
        pass
