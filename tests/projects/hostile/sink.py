import os

from starlette.datastructures import FormData


def summary(payload):
    """What arrived, never the payload itself: echoing it could fail to render (NaN, depth)."""
    if isinstance(payload, FormData):
        return {"type": "form", "fields": len(payload.multi_items())}
    if isinstance(payload, (bytes, str)):
        return {"type": type(payload).__name__, "size": len(payload)}
    return {"type": type(payload).__name__}


class Handler:
    def __init__(self, config):
        pass

    def handle_post(self, payload, query_params):
        if query_params.get("fail"):
            raise ValueError("the handler's own failure")
        return {"got": summary(payload), "pid": os.getpid()}
