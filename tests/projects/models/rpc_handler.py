class Handler:
    def __init__(self, config, proto_module_pb2, model_client):
        self.pb2 = proto_module_pb2
        self.client = model_client

    def load_model(self, model_path):
        with open(f"{model_path}/model.txt") as file:
            return file.read().strip()

    def Get(self, payload):
        return self.pb2.Answer(model=self.client.get_model(None, payload.version or "latest"))
