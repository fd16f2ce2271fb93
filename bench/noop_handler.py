class Handler:
    def __init__(self, config):
        pass

    def handle_post(self, payload):
        return {"ok": True, "n": payload.get("n") if isinstance(payload, dict) else None}
