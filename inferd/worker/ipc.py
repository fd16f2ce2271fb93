"""Length-prefixed frames between the daemon and its workers.

A frame is ``!II`` (meta length, body length), a small JSON object (the meta: kind, request
id, headers...) and an opaque body.  Bodies travel as raw bytes next to the meta so a large
upload is never re-encoded; JSON keeps the channel free of pickle, so nothing that came from
the network is ever unpickled.

Receiving is a ``BufferedProtocol``: the socket is read straight into our own buffers, never
into a fresh ``bytes`` per read that would then be appended and sliced again.  Small frames
are read into a reusable scratch buffer, several per read.  Once the header and meta of a
frame with a large body are in, the remaining reads land directly in a buffer of the body's
size, however many reads it takes; the only copy left is the final ``bytes`` handed to
``on_frame``.  That buffer is kept for the next large body (up to KEEP_BODY): fresh MiB-sized
blocks allocated and freed per frame made glibc hand the memory back to the kernel again and
again, and page-faulting it back in cost more than all the copies.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Callable
from typing import Any

from inferd.logs import get_logger

log = get_logger()

PREFIX = struct.Struct("!II")
MAX_META = 1 << 20          # headers and control data; a frame claiming more is corrupt
MAX_BODY = 1 << 31          # the HTTP layer enforces the user-facing limit long before this

LARGE_BODY = 64 << 10       # bodies from this size on are read straight into a buffer of their own
SCRATCH = 256 << 10         # the reusable receive buffer for headers, metas and small bodies
MIN_READ = 16 << 10         # a read is never offered less room than this in the scratch buffer
KEEP_BODY = 4 << 20         # a large-body buffer up to this size is kept for the next large frame

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_loads = json.loads


class FrameError(Exception):
    """The peer sent something that is not a frame: the channel cannot be trusted any more."""


def encode_frame(meta: dict[str, Any], body: bytes = b"") -> tuple[bytes, bytes]:
    """Header+meta in one buffer, body untouched: ``transport.writelines`` sends both."""
    return encode_head(meta, len(body)), body


def encode_head(meta: dict[str, Any], body_len: int) -> bytes:
    meta_bytes = _dumps(meta).encode()
    return PREFIX.pack(len(meta_bytes), body_len) + meta_bytes


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """The daemon-worker channel: a connected AF_UNIX stream pair.

    The kernel's default socket buffers (~200 KiB) are kept on purpose. Measured with 1 MiB
    request bodies, 1-4 MiB buffers let the daemon write a body in one go but cost it more CPU
    per request (far more page faults) and lowered throughput to 0.75-0.9x of the defaults."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


FrameHandler = Callable[[dict[str, Any], bytes], None]


class FrameProtocol(asyncio.BufferedProtocol):
    """Parses frames out of a stream socket and hands each to ``on_frame``.

    Used on both ends of the socket pair. ``send`` is only to be called from the loop thread;
    ``send_threadsafe`` is for worker threads (handler code, metrics).

    Buffers handed out by ``get_buffer`` may still be referenced by the loop while
    ``buffer_updated`` runs, so a buffer is never resized: it is replaced.
    """

    def __init__(self, on_frame: FrameHandler, on_close: Callable[[Exception | None], None]) -> None:
        self._on_frame = on_frame
        self._on_close = on_close
        self._buf = bytearray(SCRATCH)
        self._view = memoryview(self._buf)
        self._start = 0     # first byte of _buf not parsed yet
        self._end = 0       # end of the bytes received into _buf
        self._meta: dict[str, Any] | None = None  # the frame whose large body is being received
        self._body: memoryview | None = None      # exactly that body's size
        self._filled = 0
        self._spare = bytearray()                 # large-body buffer kept between frames
        self.transport: asyncio.Transport | None = None
        self._closed = False
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    # -- receiving ---------------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body is not None:
            return self._body[self._filled:]
        if not self._end:
            return self._view  # the usual case: everything so far parsed, the whole buffer free
        if len(self._buf) - self._end < MIN_READ:
            self._make_room()
        return self._view[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._closed:
            return
        if self._body is not None:
            self._filled += nbytes
            if self._filled == len(self._body):
                self._finish_body()
            return
        self._end += nbytes
        self._parse()

    def data_received(self, data: bytes) -> None:
        """The same, for data already read: fed through our own buffers."""
        view = memoryview(data)
        while view and not self._closed:
            buf = self.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            del buf
            self.buffer_updated(n)
            view = view[n:]

    def _parse(self) -> None:
        buf, start, end = self._buf, self._start, self._end
        unpack, prefix, on_frame = PREFIX.unpack_from, PREFIX.size, self._on_frame
        while end - start >= prefix:
            meta_len, body_len = unpack(buf, start)
            if meta_len > MAX_META or body_len > MAX_BODY:
                self._fail(FrameError(f"frame too large: meta {meta_len} body {body_len}"))
                return
            meta_start = start + prefix
            body_start = meta_start + meta_len
            frame_end = body_start + body_len
            if frame_end > end and (body_len < LARGE_BODY or body_start > end):
                break  # wait for more: a small frame whole, a large one up to the end of its meta
            try:
                meta = _loads(buf[meta_start:body_start])
            except ValueError as exc:  # UnicodeDecodeError included
                self._fail(FrameError(f"bad frame meta: {exc}"))
                return
            if type(meta) is not dict:
                self._fail(FrameError(f"bad frame meta: a JSON {type(meta).__name__}, not an object"))
                return
            if frame_end > end:  # a large body, partly here: the rest is read straight into its buffer
                self._start = self._end = 0
                self._start_body(meta, self._view[body_start:end], body_len)
                return
            start = self._start = frame_end
            try:
                on_frame(meta, bytes(self._view[body_start:frame_end]) if body_len else b"")
            except Exception as exc:  # noqa: BLE001 - one bad frame handler must not kill the channel
                log.error("frame_handler_failed", kind=meta.get("t"), exc_info=exc)
            if self._closed:
                return
        if start == end:
            start = end = 0
            if len(buf) > SCRATCH:  # grown for one huge meta: give the memory back
                self._buf = bytearray(SCRATCH)
                self._view = memoryview(self._buf)
        self._start, self._end = start, end

    def _make_room(self) -> None:
        """Move the unparsed tail to the front of the scratch buffer, or into a larger one when
        the frame being received needs more room (a meta of up to MAX_META, a body < LARGE_BODY)."""
        pending = self._end - self._start
        size = len(self._buf)
        if pending + MIN_READ > size:
            size = max(2 * size, pending + MIN_READ)
        tail = bytes(self._view[self._start:self._end])
        if size != len(self._buf):
            self._buf = bytearray(size)
            self._view = memoryview(self._buf)
        self._buf[:pending] = tail
        self._start, self._end = 0, pending

    def _start_body(self, meta: dict[str, Any], head: memoryview, size: int) -> None:
        if size > KEEP_BODY:
            buf = bytearray(size)
        else:
            if len(self._spare) < size:  # replaced, never resized: the loop may hold a view of it
                self._spare = bytearray(max(size, min(2 * len(self._spare), KEEP_BODY)))
            buf = self._spare
        self._meta = meta
        self._body = memoryview(buf)[:size]
        self._filled = len(head)
        self._body[:self._filled] = head

    def _finish_body(self) -> None:
        meta, body = self._meta, self._body
        assert meta is not None and body is not None
        self._meta, self._body = None, None
        self._deliver(meta, bytes(body))
        self._yield_reading()

    def _yield_reading(self) -> None:
        """Read nothing more until the loop has run what this frame started (the handler call
        it scheduled), then go on.  Without this pause the next large body was read, and more
        memory kept alive, before this one was handled and freed; with 1 MiB bodies the worker
        page-faulted more and served fewer requests.  The next frames wait in the socket
        buffer meanwhile."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.pause_reading()
        self._loop.call_soon(self._resume_reading, transport)

    def _resume_reading(self, transport: asyncio.Transport) -> None:
        if not self._closed and not transport.is_closing():
            transport.resume_reading()

    def _deliver(self, meta: dict[str, Any], body: bytes) -> None:
        try:
            self._on_frame(meta, body)
        except Exception as exc:  # noqa: BLE001 - one bad frame handler must not kill the channel
            log.error("frame_handler_failed", kind=meta.get("t"), exc_info=exc)

    def _fail(self, exc: Exception) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.connection_lost(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:  # _fail and the transport may both report the same loss
            return
        self._closed = True
        self._meta, self._body, self._spare = None, None, bytearray()
        self._on_close(exc)

    # -- sending -----------------------------------------------------------------------------

    def send(self, meta: dict[str, Any], body: bytes | list[bytes] = b"") -> bool:
        """One frame; a body given as pieces (a request body as the server read it) is sent
        as those pieces, never joined into a copy first."""
        if self.transport is None or self.transport.is_closing():
            return False
        if isinstance(body, list):
            self.transport.writelines((encode_head(meta, sum(map(len, body))), *body))
        elif body:
            self.transport.writelines((encode_head(meta, len(body)), body))
        else:
            self.transport.write(encode_head(meta, 0))
        return True

    def send_threadsafe(self, meta: dict[str, Any], body: bytes | list[bytes] = b"") -> None:
        self._loop.call_soon_threadsafe(self.send, meta, body)
