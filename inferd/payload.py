"""Turning a request body into the ``payload`` a Cortex handler expects, by Content-Type.

application/json -> parsed object; multipart/form-data and x-www-form-urlencoded -> starlette
FormData (UploadFile for files); text/plain -> str in the declared charset; anything else ->
the raw bytes.  The worker parses every payload (the daemon never parses a body it only
forwards); the daemon uses the same rules only to refuse an AsyncAPI submission early.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from starlette.datastructures import FormData, Headers
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class PayloadError(Exception):
    """The body does not match its Content-Type: the client gets 400 and the handler is not called."""


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def charset(content_type: str, default: str = "utf-8") -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return default


def is_form(content_type: str) -> bool:
    return media_type(content_type) in FORM_TYPES


def parse_payload(content_type: str, body: bytes) -> Any:
    """Every non-form payload; form bodies need ``parse_form`` (starlette's parser is async)."""
    kind = media_type(content_type)
    if kind == "application/json":
        try:
            return json.loads(body)
        except ValueError as exc:
            raise PayloadError(f"malformed JSON body: {exc}") from None
    if kind == "text/plain":
        encoding = charset(content_type)
        try:
            return body.decode(encoding)
        except LookupError:
            raise PayloadError(f"unknown charset {encoding!r} in Content-Type") from None
        except UnicodeDecodeError as exc:
            raise PayloadError(f"body is not valid {encoding}: {exc}") from None
    return body


async def parse_form(content_type: str, body: bytes, max_part_size: int) -> FormData:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body
        yield b""

    headers = Headers({"content-type": content_type})
    try:
        if media_type(content_type) == "multipart/form-data":
            return await MultiPartParser(headers, stream(), max_part_size=max_part_size).parse()
        return await FormParser(headers, stream(), max_part_size=max_part_size).parse()
    except MultiPartException as exc:
        raise PayloadError(f"malformed form body: {exc.message}") from None
    except (ValueError, KeyError) as exc:
        raise PayloadError(f"malformed form body: {exc}") from None
