"""Request bodies under a size limit: refused from Content-Length before reading when it
already says too much, else cut off while streaming (chunked uploads have no length)."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Receive, Send

from inferd.http.responses import RawHeaders, send_error


class BodyTooLarge(Exception):
    pass


class ClientGone(Exception):
    pass


def content_length(headers: RawHeaders) -> bytes | None:
    """The request's ``Content-Length`` as sent (``read_body`` judges it); None without one."""
    return next((value for name, value in headers if name == b"content-length"), None)


async def read_body(receive: Receive, limit: int, content_length: bytes | str | None = None) -> bytes:
    parts = await read_body_parts(receive, limit, content_length)
    return parts[0] if len(parts) == 1 else b"".join(parts)  # [] joins to b""


async def read_body_parts(receive: Receive, limit: int, content_length: bytes | str | None = None) -> list[bytes]:
    """The body as the server delivered it (64 KiB pieces for a large one): forwarding the
    pieces with one ``writelines`` saves joining a copy that is only ever sent on."""
    if content_length is not None and (not content_length.isdigit() or int(content_length) > limit):
        raise BodyTooLarge()
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks


async def send_too_large(send: Send, api: str, limit: int, extra: Iterable[tuple[bytes, bytes]] = ()) -> None:
    # no "connection: close": the connection protocol reads and drops the rest of the body
    # (bounded by body_timeout), so a client still sending sees this answer, not a reset
    await send_error(send, 413, api, f"request body is larger than the limit of {limit} bytes", extra)
