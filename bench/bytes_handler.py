class Handler:
    """Takes an application/octet-stream body (the payload arrives as raw bytes) and answers its size."""

    def __init__(self, config):
        pass

    def handle_post(self, payload):
        return {"n": len(payload)}
