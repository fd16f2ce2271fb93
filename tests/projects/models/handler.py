import time


class Handler:
    def __init__(self, config, model_client):
        self.client = model_client

    def load_model(self, model_path):
        with open(f"{model_path}/model.txt") as file:
            text = file.read().strip()
        if text.startswith("fail"):
            raise ValueError(f"refusing to load {text}")
        if text.startswith("slow"):
            time.sleep(0.5)  # the old version must keep answering meanwhile
        return text

    def handle_get(self, query_params):
        model = self.client.get_model(query_params.get("model"), query_params.get("version", "latest"))
        return {"model": model}
