"""Turning a request body into the ``payload`` a Cortex handler expects, by Content-Type.

application/json -> parsed object; multipart/form-data and x-www-form-urlencoded -> starlette
FormData (UploadFile for files); text/plain -> str in the declared charset; anything else ->
the raw bytes.  The worker parses every payload (the daemon never parses a body it only
forwards); the daemon uses the same rules only to refuse an AsyncAPI submission early.

Whatever a client sends, parsing either succeeds or raises ``PayloadError``: a body is the
client's input, so no other exception may escape to become a 500.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import AsyncGenerator
from typing import Any

from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, Headers
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# Python codecs that decode bytes to str but name no character set: domain-name and
# Python-literal encodings, and one that always fails.
NOT_CHARSETS = frozenset({"idna", "punycode", "unicode-escape", "raw-unicode-escape", "undefined"})
# IANA charset names (RFC 2978 characters, plus the '.' and ':' some registered names use)
_CHARSET_NAME = re.compile(r"[A-Za-z0-9!#$%&'+^_`{}~.:-]{1,64}")


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


def text_codec(name: str) -> str:
    """The Python codec for a Content-Type charset, or PayloadError when it names no character set."""
    shown = repr(name) if len(name) <= 64 else repr(name[:64]) + "..."
    if not _CHARSET_NAME.fullmatch(name):
        raise PayloadError(f"charset {shown} in Content-Type is not a valid charset name")
    try:
        codec = codecs.lookup(name)
    except LookupError:
        raise PayloadError(f"unknown charset {shown} in Content-Type") from None
    if not codec._is_text_encoding or codec.name in NOT_CHARSETS:
        raise PayloadError(f"charset {shown} in Content-Type is not a character set")
    return codec.name


def is_form(content_type: str) -> bool:
    return media_type(content_type) in FORM_TYPES


def parse_payload(content_type: str, body: bytes) -> Any:
    """Every non-form payload; form bodies need ``parse_form`` (starlette's parser is async)."""
    kind = media_type(content_type)
    if kind == "application/json":
        return parse_json(body)
    if kind == "text/plain":
        encoding = text_codec(charset(content_type))
        try:
            return body.decode(encoding)
        except UnicodeError as exc:
            raise PayloadError(f"body is not valid {encoding}: {exc}") from None
    return body


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except RecursionError:
        raise PayloadError("JSON body is nested too deeply to parse") from None
    except ValueError as exc:  # UnicodeDecodeError included: JSON must be UTF-8, -16 or -32
        raise PayloadError(f"malformed JSON body: {exc}") from None


async def parse_form(content_type: str, body: bytes, max_part_size: int) -> FormData:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield body
        yield b""

    headers = Headers({"content-type": content_type})
    try:
        if media_type(content_type) == "multipart/form-data":
            # the charset starlette decodes field names and values with, read as starlette reads it
            declared = parse_options_header(content_type)[1].get(b"charset")
            if declared is not None:
                text_codec(declared.decode("latin-1"))
            return await MultiPartParser(headers, stream(), max_part_size=max_part_size).parse()
        return await FormParser(headers, stream(), max_part_size=max_part_size).parse()
    except MultiPartException as exc:
        raise PayloadError(f"malformed form body: {exc.message}") from None
    except (ValueError, KeyError, LookupError) as exc:
        raise PayloadError(f"malformed form body: {exc}") from None
