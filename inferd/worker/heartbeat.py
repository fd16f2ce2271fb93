"""Heartbeats over a second socket pair, answered by a thread in the worker.

The daemon writes one ``PING`` byte per beat; a thread in the worker, needing neither the
handler's event loop nor its threads, answers each with ``PONG``. A handler that blocks its
loop (or spins in ``while True``) therefore still answers, and only a process that cannot run
at all (stopped, deadlocked in the interpreter, swapped to death) stops answering: that is
what ``worker_liveness_timeout`` detects. A slow handler is ``handler.request_timeout``'s job.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import cast

PING, PONG = b"p", b"o"


def answer_heartbeats(fd: int) -> threading.Thread:
    """Worker side: a daemon thread answering every ping until the daemon closes the socket."""
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)

    def serve() -> None:
        with sock:
            while True:
                try:
                    data = sock.recv(64)
                    if not data:
                        return
                    sock.sendall(PONG * data.count(PING))
                except OSError:
                    return

    thread = threading.Thread(target=serve, name="inferd-heartbeat", daemon=True)
    thread.start()
    return thread


class HeartbeatMonitor(asyncio.Protocol):
    """Daemon side of one worker's heartbeat socket: ``ping()`` sends a beat.

    ``last_seen`` is "now" while every ping has been answered, else the time the oldest
    unanswered ping was sent. Silence is thus counted from a question the worker failed to
    answer, never from the daemon's own pause (a blocked loop, a stopped or swapped-out daemon
    sends no pings, and must not find every worker hung when it wakes).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._unanswered_since: float | None = None
        self.transport: asyncio.Transport | None = None

    @property
    def last_seen(self) -> float:
        return self._clock() if self._unanswered_since is None else self._unanswered_since

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if PONG in data:
            self._unanswered_since = None

    def ping(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(PING)
            if self._unanswered_since is None:
                self._unanswered_since = self._clock()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
