from wordlib import WORD  # importable only through handler.python_path: lib


class Handler:
    def __init__(self, config):
        pass

    def handle_get(self):
        return {"word": WORD}
