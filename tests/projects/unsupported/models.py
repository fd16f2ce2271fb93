class Handler:
    def __init__(self, config, model_client):
        self.client = model_client

    def handle_post(self, payload, query_params):
        return self.client.get_model(query_params.get("model")).predict(payload)
