"""``WorkerBackend``: what the pool needs of one worker, whatever runs it.

The pool (admission, dispatch, readiness, liveness, restart with backoff) is written against
this protocol only. ``inferd.worker.process.WorkerProcess`` (a Python subprocess speaking the
worker protocol) is the first implementation; a supervised user process or container reached
over HTTP is the next, and the pool does not change for it.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from inferd.worker import protocol
from inferd.worker.stream import StreamCall


class WorkerGone(Exception):
    """The worker exited, was killed, or closed its channel before answering."""


def exit_reason(code: int | None) -> str:
    """``-9`` is the kernel's OOM killer far more often than anyone else: say so."""
    if code is None:
        return "exited"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    return f"exited with code {code}"


@dataclass(slots=True)
class Response:
    status: int
    headers: list[list[str]]
    body: bytes
    ack: Callable[[], None] | None  # set when the handler returned a callback: call once sent


class WorkerBackend(Protocol):
    slot: int
    gpus: tuple[int, ...]
    pid: int | None
    state: str            # starting, ready, failed, stopping, exited
    in_flight: int
    info: dict[str, Any]  # what the worker reported when ready (e.g. the HTTP verbs)
    error: str | None
    init_traceback: str | None  # the handler constructor's traceback, when it raised
    started_at: float     # monotonic

    @property
    def last_seen(self) -> float:
        """Monotonic time of the latest heartbeat answer (or of the start)."""
        ...

    async def start(self) -> None: ...

    async def wait_ready(self) -> bool:
        """True once ready; False when it failed to construct or exited first."""
        ...

    async def wait_exit(self) -> int | None: ...

    async def stop(self, timeout: float) -> None:
        """Drain in-flight calls (bounded by ``timeout``), then make sure it is gone."""
        ...

    def kill(self) -> None: ...

    def abort(self, reason: str) -> None:
        """It is hung: fail its in-flight calls with ``reason`` and end it (with a traceback
        where the backend can produce one)."""
        ...

    def ping(self) -> None:
        """Send one heartbeat; its answer moves ``last_seen``."""
        ...

    async def call(self, call: protocol.Call) -> Response: ...

    def open_stream(self, opened: protocol.Open) -> StreamCall: ...

    def describe(self) -> dict[str, Any]: ...


BackendFactory = Callable[[int], WorkerBackend]  # slot -> a new, unstarted worker
