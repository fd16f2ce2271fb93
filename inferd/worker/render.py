"""Turning a handler's return value into (status, headers, body), as Cortex did."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.responses import Response

Headers = list[list[str]]
Rendered = tuple[int, Headers, bytes]

JSON = [["content-type", "application/json"]]
TEXT = [["content-type", "text/plain; charset=utf-8"]]
OCTETS = [["content-type", "application/octet-stream"]]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class RenderError(Exception):
    """The handler returned something that cannot become an HTTP response."""


def split_callback(result: Any) -> tuple[Any, Callable[[], Any] | None]:
    """A ``(result, callable)`` pair means: send result, then run the callable."""
    if isinstance(result, tuple) and len(result) == 2 and callable(result[1]):
        return result[0], result[1]
    return result, None


def render(result: Any) -> Rendered:
    if isinstance(result, Response):
        return render_response(result)
    if isinstance(result, (bytes, bytearray, memoryview)):
        return 200, OCTETS, bytes(result)
    if isinstance(result, str):
        return 200, TEXT, result.encode()
    try:
        return 200, JSON, _dumps(result).encode()
    except RecursionError:
        raise RenderError(f"handler returned a {type(result).__name__} nested too deeply to serialise as JSON") from None
    except (TypeError, ValueError) as exc:
        raise RenderError(f"handler returned a {type(result).__name__} that is not JSON-serialisable: {exc}") from None


def render_json(result: Any) -> Rendered:
    """AsyncAPI results are stored and served as JSON, so nothing else is accepted."""
    if isinstance(result, (bytes, bytearray, memoryview, Response)):
        raise RenderError(f"handle_async returned {type(result).__name__}; it must return a JSON-serialisable value")
    try:
        return 200, JSON, _dumps(result).encode()
    except RecursionError:
        raise RenderError(f"handle_async returned a {type(result).__name__} nested too deeply to serialise as JSON") from None
    except (TypeError, ValueError) as exc:
        raise RenderError(f"handle_async returned a {type(result).__name__} that is not JSON-serialisable: {exc}") from None


def render_response(response: Response) -> Rendered:
    body = getattr(response, "body", None)
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise RenderError(f"{type(response).__name__} has no body to send; return a Response with a body")
    headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in response.raw_headers]
    return response.status_code, headers, bytes(body)


def error_body(api: str, message: str, **extra: Any) -> bytes:
    return _dumps({"error": message, "api": api, **extra}).encode()
