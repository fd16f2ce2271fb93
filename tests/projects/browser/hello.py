from pathlib import Path


class Handler:
    def __init__(self, config):
        pass

    def handle_post(self, payload):
        # a side effect a test can look for: proof that the handler ran, or did not
        if isinstance(payload, dict) and "touch" in payload:
            Path(payload["touch"]).touch()
        return {"hello": payload}

    def handle_get(self):
        return {"hello": "world"}
