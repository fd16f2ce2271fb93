class Handler:
    def __init__(self, config):
        raise RuntimeError("model weights not found")

    def handle_post(self, payload):
        return {}
