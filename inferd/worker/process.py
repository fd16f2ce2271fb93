"""One worker child process as the daemon sees it: spawn, the IPC channel, calls, stop.

The child is a fresh interpreter (``python -m inferd.worker``), never a fork of the daemon,
so it inherits no event loop, socket or lock. Its only link to us is one end of a socket pair
passed with ``pass_fds``: nothing on disk, no port another user could reach.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from inferd.logs import get_logger, relay_event
from inferd.worker.ipc import FrameProtocol
from inferd.worker.stream import StreamCall

MetricSink = Callable[[dict[str, Any]], None]


LINE_LIMIT = 1 << 20  # longer output lines are cut, never allowed to stop the pump


async def _read_line(stream: asyncio.StreamReader) -> bytes:
    """One line, cut at LINE_LIMIT: a handler printing a huge line must not stall its pipe."""
    try:
        return await stream.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial  # the last line without a newline, or b"" at EOF
    except asyncio.LimitOverrunError as exc:
        head = await stream.readexactly(min(exc.consumed, LINE_LIMIT))
        while True:  # drop the rest of the over-long line
            try:
                await stream.readuntil(b"\n")
                break
            except asyncio.LimitOverrunError as more:
                await stream.readexactly(more.consumed)
            except asyncio.IncompleteReadError:
                break
        return head + b" [line cut]\n"


class WorkerGone(Exception):
    """The worker exited or closed its channel before answering."""


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[list[str]]
    body: bytes
    ack: Callable[[], None] | None  # set when the handler returned a callback


class WorkerProcess:
    def __init__(self, api: str, slot: int, init: dict[str, Any], env: dict[str, str], cwd: str,
                 gpus: tuple[int, ...], on_metric: MetricSink,
                 on_log: Callable[[str], None] = lambda line: None) -> None:
        self.api = api
        self.slot = slot
        self.gpus = gpus
        self._init = init
        self._env = env
        self._cwd = cwd
        self._on_metric = on_metric
        self._on_log = on_log
        self.state = "starting"
        self.pid: int | None = None
        self.in_flight = 0
        self.verbs: dict[str, list[str]] = {}
        self.error: str | None = None
        self.started_at = time.monotonic()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._streams: dict[int, StreamCall] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._channel: FrameProtocol | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._last_stderr = ""
        self.log = get_logger(api=api, slot=slot)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "inferd.worker", "--fd", str(child_sock.fileno()),
                "--parent", str(os.getpid()),
                pass_fds=(child_sock.fileno(),), env=self._env, cwd=self._cwd,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, limit=LINE_LIMIT,
            )
            self.pid = self._proc.pid
            _, self._channel = await loop.create_unix_connection(
                lambda: FrameProtocol(self._on_frame, self._on_close), sock=parent_sock
            )
        except BaseException:
            parent_sock.close()  # a failed spawn must leak neither a descriptor nor a child
            self.kill()
            raise
        finally:
            child_sock.close()
        self._pumps = [loop.create_task(self._pump(self._proc.stdout, "stdout")),
                       loop.create_task(self._pump(self._proc.stderr, "stderr"))]
        self._channel.send(self._init)
        self.log.info("worker_started", pid=self.pid, gpus=list(self.gpus))

    async def wait_ready(self) -> bool:
        """True once the Handler is constructed; False if it failed or the process died."""
        return await self._ready

    async def wait_exit(self) -> int:
        assert self._proc is not None
        code = await self._proc.wait()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._fail_pending(f"worker {self.pid} of api '{self.api}' exited with code {code}")
        if self.error is None and self.state != "stopping" and self._last_stderr:
            # e.g. an import error before the handler could even report: show its last words
            self.error = f"worker exited with code {code}: {self._last_stderr}"
        self.state = "exited"
        return code

    async def stop(self, timeout: float) -> None:
        """Let in-flight calls finish (bounded by ``timeout``), then make sure the process is gone."""
        if self._proc is None or self._proc.returncode is not None:
            return
        self.state = "stopping"
        if self._channel is not None:
            self._channel.send({"t": "stop"})
        try:
            await asyncio.wait_for(asyncio.shield(self._proc.wait()), timeout)
        except asyncio.TimeoutError:
            self.log.warning("worker_stop_timeout", pid=self.pid, timeout=timeout)
            self.kill()
            await self._proc.wait()

    def kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            try:
                self._proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -- calls -------------------------------------------------------------------------------

    async def call(self, meta: dict[str, Any], body: bytes) -> Reply:
        if self._channel is None or self.state != "ready":
            raise WorkerGone(f"worker of api '{self.api}' is not ready")
        call_id = next(self._ids)
        meta["id"] = call_id
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        self.in_flight += 1
        try:
            self._channel.send(meta, body)
            return await future
        finally:
            self.in_flight -= 1
            self._pending.pop(call_id, None)

    def open_stream(self, meta: dict[str, Any], body: bytes) -> StreamCall:
        """Start a streamed call; the worker slot stays taken until the worker's end frame."""
        if self._channel is None or self.state != "ready":
            raise WorkerGone(f"worker of api '{self.api}' is not ready")
        call_id = next(self._ids)
        meta["id"] = call_id
        stream = StreamCall(call_id, self._channel.send, self._stream_finished)
        self._streams[call_id] = stream
        self.in_flight += 1
        self._channel.send(meta, body)
        return stream

    def _stream_finished(self, call_id: int) -> None:
        if self._streams.pop(call_id, None) is not None:
            self.in_flight -= 1

    def _ack(self, call_id: int, request_id: str | None) -> Callable[[], None]:
        def ack() -> None:
            if self._channel is not None:
                self._channel.send({"t": "sent", "id": call_id, "rid": request_id})
        return ack

    # -- frames from the worker --------------------------------------------------------------

    def _on_frame(self, meta: dict[str, Any], body: bytes) -> None:
        kind = meta["t"]
        if kind == "reply":
            future = self._pending.get(meta["id"])
            ack = self._ack(meta["id"], meta.get("rid")) if meta.get("cb") else None
            if future is not None and not future.done():
                future.set_result(Reply(meta["status"], meta["h"], body, ack))
            elif ack is not None:
                ack()  # nobody waits any more; the worker must still run and forget the callback
        elif kind in ("msg", "end", "credit"):
            self._on_stream_frame(kind, meta, body)
        elif kind == "metric":
            try:
                self._on_metric(meta)
            except Exception as exc:  # noqa: BLE001 - a handler's bad metric must not cut its worker off
                self.log.warning("user_metric_rejected", metric=meta.get("name"), error=str(exc))
        elif kind == "ready":
            self.verbs = meta["verbs"]
            if self.state == "starting":  # a stop that came first wins
                self.state = "ready"
            self.error = None
            self._settle_ready(True)
        elif kind == "init_failed":
            self.error = meta["error"]
            self.state = "failed"
            self.log.error("handler_init_failed", pid=self.pid, error=meta["error"], traceback=meta.get("traceback"))
            self._settle_ready(False)

    def _on_stream_frame(self, kind: str, meta: dict[str, Any], body: bytes) -> None:
        stream = self._streams.get(meta["id"])
        if stream is None:
            return
        if kind == "msg":
            stream.on_message(body)
        elif kind == "credit":
            stream.on_credit(meta["n"])
        else:
            stream.on_end(meta, body)

    def _on_close(self, exc: Exception | None) -> None:
        if self.state in ("starting", "ready"):
            self.state = "exited"
        self._settle_ready(False)
        self._fail_pending(f"worker {self.pid} of api '{self.api}' died while handling the request")

    def _settle_ready(self, ok: bool) -> None:
        if not self._ready.done():
            self._ready.set_result(ok)

    def _fail_pending(self, message: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(WorkerGone(message))
        for stream in list(self._streams.values()):
            stream.on_gone(message)

    async def _pump(self, stream: asyncio.StreamReader | None, name: str) -> None:
        """Worker output becomes daemon log lines; the worker's own JSON events pass through."""
        if stream is None:
            return
        while line := await _read_line(stream):
            text = line.decode("utf-8", "replace").rstrip("\n")
            if text.startswith("{") and text.endswith("}"):
                try:
                    event = json.loads(text)
                except ValueError:
                    pass
                else:
                    relay_event(text, event)
                    self._on_log(text)
                    continue
            if name == "stderr" and text.strip():
                self._last_stderr = text.strip()
            self.log.info("worker_output", pid=self.pid, stream=name, line=text)
            self._on_log(json.dumps({"event": "worker_output", "api": self.api, "worker": self.pid,
                                     "stream": name, "line": text}))
        sys.stdout.flush()

    def describe(self) -> dict[str, Any]:
        return {"slot": self.slot, "pid": self.pid, "state": self.state, "gpus": list(self.gpus),
                "in_flight": self.in_flight, "error": self.error}
