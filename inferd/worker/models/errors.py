"""The errors ``model_client.get_model`` raises: each becomes the call's HTTP status (through
starlette's ``HTTPException``, which the runners already answer) or gRPC code."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException

from inferd.worker import protocol

NAME_LIMIT = 80  # a hostile name is quoted, never echoed whole


def quoted(value: object) -> str:
    """``value`` in double quotes as JSON writes it (control characters escaped), cut short."""
    text = value if isinstance(value, str) else repr(value)
    shown = json.dumps(text if len(text) <= NAME_LIMIT else text[:NAME_LIMIT] + "...", ensure_ascii=False)
    return shown.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate must not break the reply


class ModelError(HTTPException):
    http_status = 404
    grpc_code = protocol.NOT_FOUND

    def __init__(self, detail: str) -> None:
        super().__init__(self.http_status, detail)


class ModelNotFound(ModelError):
    """No such model, or no such version of it."""


class ModelUnavailable(ModelError):
    """The model exists but no version of it could be loaded (``load_model`` raised)."""

    http_status = 503
    grpc_code = protocol.UNAVAILABLE
