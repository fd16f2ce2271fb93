from pathlib import Path


class Handler:
    def __init__(self, config):
        pass

    def handle_async(self, payload, request_id):
        # a side effect a test can look for: proof that the job ran, or did not
        if isinstance(payload, dict) and "touch" in payload:
            Path(payload["touch"]).touch()
        return {"done": payload}
