"""Plain ASGI response sending for the request path (no Response object per request)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from starlette.types import Send

RawHeaders = list[tuple[bytes, bytes]]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def json_bytes(data: Any) -> bytes:
    """``data`` as the compact UTF-8 JSON every answer carries."""
    return _dumps(data).encode()


async def send_bytes(send: Send, status: int, headers: RawHeaders, body: bytes) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, data: Any, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    headers = [(b"content-type", b"application/json"), *extra]
    await send_bytes(send, status, headers, json_bytes(data))


async def send_error(send: Send, status: int, api: str | None, message: str,
                     extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body: dict[str, Any] = {"error": message}
    if api is not None:
        body["api"] = api
    await send_json(send, status, body, extra)
