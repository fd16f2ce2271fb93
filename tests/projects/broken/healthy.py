class Handler:
    def __init__(self, config):
        pass

    def handle_post(self, payload):
        return {"healthy": True}

    def handle_async(self, payload, request_id):
        return {"ok": True}
