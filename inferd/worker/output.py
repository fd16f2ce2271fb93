"""Handler ``print`` output as structured log events, tagged with the current request id."""

from __future__ import annotations

import io
import threading

from inferd.logs import get_logger


class PrintCapture(io.TextIOBase):
    """A stand-in for sys.stdout/stderr in the worker: each complete line becomes one event.

    Lines are buffered per thread so concurrent handler threads never interleave halves.
    """

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self._local = threading.local()
        self._log = get_logger()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        pending = getattr(self._local, "pending", "") + text
        *lines, self._local.pending = pending.split("\n")
        for line in lines:
            self._log.info("worker_output", stream=self.stream, line=line)
        return len(text)

    def flush(self) -> None:
        pending = getattr(self._local, "pending", "")
        if pending:
            self._local.pending = ""
            self._log.info("worker_output", stream=self.stream, line=pending)
