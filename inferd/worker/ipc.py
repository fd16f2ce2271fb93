"""Length-prefixed frames between the daemon and its workers.

A frame is ``!II`` (meta length, body length), a small JSON object (the meta: kind, request
id, headers...) and an opaque body.  Bodies travel as raw bytes next to the meta so a large
upload is never re-encoded; JSON keeps the channel free of pickle, so nothing that came from
the network is ever unpickled.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable
from typing import Any

from inferd.logs import get_logger

log = get_logger()

PREFIX = struct.Struct("!II")
MAX_META = 1 << 20          # headers and control data; a frame claiming more is corrupt
MAX_BODY = 1 << 31          # the HTTP layer enforces the user-facing limit long before this

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_loads = json.loads


class FrameError(Exception):
    """The peer sent something that is not a frame: the channel cannot be trusted any more."""


def encode_frame(meta: dict[str, Any], body: bytes = b"") -> tuple[bytes, bytes]:
    """Header+meta in one buffer, body untouched: ``transport.writelines`` sends both."""
    meta_bytes = _dumps(meta).encode()
    return PREFIX.pack(len(meta_bytes), len(body)) + meta_bytes, body


FrameHandler = Callable[[dict[str, Any], bytes], None]


class FrameProtocol(asyncio.Protocol):
    """Parses frames out of a stream socket and hands each to ``on_frame``.

    Used on both ends of the socket pair. ``send`` is only to be called from the loop thread;
    ``send_threadsafe`` is for worker threads (handler code, metrics).
    """

    def __init__(self, on_frame: FrameHandler, on_close: Callable[[Exception | None], None]) -> None:
        self._on_frame = on_frame
        self._on_close = on_close
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self._closed = False
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        offset = 0
        size = len(buf)
        while size - offset >= PREFIX.size:
            meta_len, body_len = PREFIX.unpack_from(buf, offset)
            if meta_len > MAX_META or body_len > MAX_BODY:
                self._fail(FrameError(f"frame too large: meta {meta_len} body {body_len}"))
                return
            end = offset + PREFIX.size + meta_len + body_len
            if end > size:
                break
            start = offset + PREFIX.size
            try:
                meta = _loads(buf[start:start + meta_len])
            except ValueError as exc:
                self._fail(FrameError(f"bad frame meta: {exc}"))
                return
            body = bytes(buf[start + meta_len:end]) if body_len else b""
            offset = end
            try:
                self._on_frame(meta, body)
            except Exception as exc:  # noqa: BLE001 - one bad frame handler must not kill the channel
                log.error("frame_handler_failed", kind=meta.get("t"), exc_info=exc)
        if offset:
            del buf[:offset]

    def _fail(self, exc: Exception) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.connection_lost(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:  # _fail and the transport may both report the same loss
            return
        self._closed = True
        self._on_close(exc)

    def send(self, meta: dict[str, Any], body: bytes = b"") -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        head, payload = encode_frame(meta, body)
        if payload:
            self.transport.writelines((head, payload))
        else:
            self.transport.write(head)
        return True

    def send_threadsafe(self, meta: dict[str, Any], body: bytes = b"") -> None:
        self._loop.call_soon_threadsafe(self.send, meta, body)
