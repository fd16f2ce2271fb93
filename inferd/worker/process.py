"""``WorkerProcess``: a Python worker subprocess as the daemon sees it (a ``WorkerBackend``).

The child is a fresh interpreter (``python -m inferd.worker``), never a fork of the daemon,
so it inherits no event loop, socket or lock. Its links to us are two socket pairs passed with
``pass_fds`` (the worker protocol, and heartbeats answered by a thread): nothing on disk, no
port another user could reach.
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
from typing import Any

from inferd.logs import get_logger, relay_event
from inferd.worker import protocol
from inferd.worker.backend import Response, WorkerGone, exit_reason
from inferd.worker.heartbeat import HeartbeatMonitor
from inferd.worker.ipc import FrameProtocol, channel_pair
from inferd.worker.stream import StreamCall

MetricSink = Callable[[dict[str, Any]], None]
ABORT_GRACE = 2.0  # seconds between SIGABRT (traceback) and SIGKILL for a hung worker
PUMP_DRAIN = 1.0   # seconds an exited worker's output may still take to reach the log
EXIT_POLL = 0.5    # seconds between looks at a worker's exit status


LINE_LIMIT = 1 << 20  # longer output lines are cut, never allowed to stop the pump

# How a launcher run as ``python -I -S -c <launcher> <daemon pid> ...`` begins (the SDK worker's,
# a container's): Linux SIGKILLs it if the daemon dies (even by SIGKILL), and it gives up if the
# daemon is already gone; what follows execs the real command in place (same pid).
LAUNCHER_PRELUDE = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
"""


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


class WorkerProcess:
    def __init__(self, api: str, slot: int, init: protocol.Init, env: dict[str, str], cwd: str,
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
        self.info: dict[str, Any] = {}
        self.models: dict[str, Any] | None = None  # multi_model_reloading: the worker's latest report
        self.error: str | None = None
        self.init_traceback: str | None = None
        self.started_at = time.monotonic()
        self._heartbeat = HeartbeatMonitor()
        self._aborted: str | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Response]] = {}
        self._streams: dict[int, StreamCall] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._channel: FrameProtocol | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._last_stderr = ""
        self._ready: asyncio.Future[bool] | None = None
        self.log = get_logger(api=api, slot=slot)

    @property
    def last_seen(self) -> float:
        return self._heartbeat.last_seen

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        parent_sock, child_sock = channel_pair()
        beat_parent, beat_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "inferd.worker", "--fd", str(child_sock.fileno()),
                "--heartbeat-fd", str(beat_child.fileno()), "--parent", str(os.getpid()),
                pass_fds=(child_sock.fileno(), beat_child.fileno()), env=self._env, cwd=self._cwd,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, limit=LINE_LIMIT,
            )
            self.pid = self._proc.pid
            _, self._channel = await loop.create_unix_connection(
                lambda: FrameProtocol(self._on_frame, self._on_close), sock=parent_sock
            )
            await loop.create_unix_connection(lambda: self._heartbeat, sock=beat_parent)
        except BaseException:
            parent_sock.close()  # a failed spawn must leak neither a descriptor nor a child
            beat_parent.close()
            self.kill()
            raise
        finally:
            child_sock.close()
            beat_child.close()
        self._pumps = [loop.create_task(self._pump(self._proc.stdout, "stdout")),
                       loop.create_task(self._pump(self._proc.stderr, "stderr"))]
        self._send(self._init)
        self.log.info("worker_started", pid=self.pid, gpus=list(self.gpus))

    async def wait_ready(self) -> bool:
        """True once the Handler is constructed; False if it failed or the process died."""
        assert self._ready is not None
        return await self._ready

    async def wait_exit(self) -> int | None:
        assert self._proc is not None
        code = await self._exit_code()
        stopping, self.state = self.state == "stopping", "exited"
        reason = self._aborted or exit_reason(code)
        # now, not at EOF of its pipes and sockets: a process the handler started may hold
        # them open long after the worker itself is gone
        self._fail_pending(f"worker {self.pid} of api '{self.api}' {reason}")
        if self._channel is not None and self._channel.transport is not None:
            self._channel.transport.abort()
        self._heartbeat.close()
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        await drain_output(self._pumps)
        if self._aborted:
            self.error = self._aborted
        elif self.error is None and not stopping:
            self.error = unexpected_exit(reason, self._reported_ready(), self._last_stderr)
        return code

    def _reported_ready(self) -> bool:
        return self._ready is not None and self._ready.done() and self._ready.result()

    async def _exit_code(self) -> int:
        assert self._proc is not None
        return await exit_code(self._proc)

    async def stop(self, timeout: float) -> None:
        """Let in-flight calls finish (bounded by ``timeout``), then make sure the process is gone."""
        if self._proc is None or self._proc.returncode is not None:
            return
        self.state = "stopping"
        self._send(protocol.Stop())
        try:
            await asyncio.wait_for(self._exit_code(), timeout)
        except TimeoutError:
            self.log.warning("worker_stop_timeout", pid=self.pid, timeout=timeout)
            self.kill()
            await self._exit_code()

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def abort(self, reason: str) -> None:
        """Hung: its calls fail now with ``reason``; SIGABRT makes faulthandler print every
        thread's stack to our log, SIGKILL follows in case it cannot even do that (stopped)."""
        if self._aborted or self._proc is None or self._proc.returncode is not None:
            return
        self._aborted = reason
        self.state = "exited"
        self.log.error("worker_aborted", pid=self.pid, reason=reason)
        self._fail_pending(f"worker {self.pid} of api '{self.api}' was killed: {reason}")
        self._signal(signal.SIGABRT)
        self._kill_timer = asyncio.get_running_loop().call_later(ABORT_GRACE, self._signal, signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.returncode is None:
            try:
                self._proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def ping(self) -> None:
        self._heartbeat.ping()

    # -- calls -------------------------------------------------------------------------------

    def _send(self, message: protocol.Message) -> None:
        if self._channel is not None:
            self._channel.send(*message.encode())

    def _send_call(self, message: protocol.Call | protocol.Open, call_id: int) -> None:
        """The caller's message, under this channel's id for it (the message itself is not
        changed: the caller may hold it, e.g. to retry it elsewhere)."""
        if self._channel is not None:
            meta, body = message.encode()
            meta["id"] = call_id
            self._channel.send(meta, body)

    async def call(self, call: protocol.Call) -> Response:
        if self._channel is None or self.state != "ready":
            raise WorkerGone(f"worker of api '{self.api}' is not ready")
        call_id = next(self._ids)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        self.in_flight += 1
        try:
            self._send_call(call, call_id)
            return await future
        finally:
            self.in_flight -= 1
            self._pending.pop(call_id, None)

    def open_stream(self, opened: protocol.Open) -> StreamCall:
        """Start a streamed call; the worker slot stays taken until the worker's end frame."""
        if self._channel is None or self.state != "ready":
            raise WorkerGone(f"worker of api '{self.api}' is not ready")
        call_id = next(self._ids)
        stream = StreamCall(call_id, self._send, self._stream_finished, self.abort)
        self._streams[call_id] = stream
        self.in_flight += 1
        self._send_call(opened, call_id)
        return stream

    def _stream_finished(self, call_id: int) -> None:
        if self._streams.pop(call_id, None) is not None:
            self.in_flight -= 1

    def _ack(self, call_id: int) -> Callable[[], None]:
        return lambda: self._send(protocol.Sent(call_id))

    # -- frames from the worker --------------------------------------------------------------

    def _on_frame(self, meta: dict[str, Any], body: bytes) -> None:
        message = protocol.decode(meta, body)
        if isinstance(message, protocol.Reply):
            future = self._pending.get(message.id)
            ack = self._ack(message.id) if message.callback else None
            if future is not None and not future.done():
                future.set_result(Response(message.status, message.headers, message.body, ack))
            elif ack is not None:
                ack()  # nobody waits any more; the worker must still run and forget the callback
        elif isinstance(message, (protocol.Chunk, protocol.Credit, protocol.End)):
            self._on_stream_frame(message)
        elif isinstance(message, protocol.Metric):
            try:
                self._on_metric(message.as_dict())
            except Exception as exc:  # noqa: BLE001 - a handler's bad metric must not cut its worker off
                self.log.warning("user_metric_rejected", metric=message.name, error=str(exc))
        elif isinstance(message, protocol.Models):
            self.models = message.models
        elif isinstance(message, protocol.Ready):
            self.info = message.info
            if self.state == "starting":  # a stop that came first wins
                self.state = "ready"
            self.error = None
            self._settle_ready(True)
        elif isinstance(message, protocol.InitFailed):
            # logged by the pool once the exit status is known, and only when it is news
            self.error = message.error
            self.init_traceback = message.traceback
            self.state = "failed"
            self._settle_ready(False)

    def _on_stream_frame(self, message: protocol.Chunk | protocol.Credit | protocol.End) -> None:
        stream = self._streams.get(message.id)
        if stream is None:
            return
        if isinstance(message, protocol.Chunk):
            stream.on_message(message.body)
        elif isinstance(message, protocol.Credit):
            stream.on_credit(message.n)
        else:
            stream.on_end(message)

    def _on_close(self, exc: Exception | None) -> None:
        if self.state in ("starting", "ready"):
            self.state = "exited"
        self._settle_ready(False)
        self._fail_pending(f"worker {self.pid} of api '{self.api}' died while handling the request")

    def _settle_ready(self, ok: bool) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(ok)

    def _fail_pending(self, message: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(WorkerGone(message))
        for stream in list(self._streams.values()):
            stream.on_gone(message)

    async def _pump(self, stream: asyncio.StreamReader | None, name: str) -> None:
        await relay_output(stream, name, self.api, self.pid, self.log, self._on_log, self._on_stderr)

    def _on_stderr(self, text: str) -> None:
        self._last_stderr = text.strip()

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {"slot": self.slot, "pid": self.pid, "state": self.state,
                                     "gpus": list(self.gpus), "in_flight": self.in_flight, "error": self.error}
        if self.models is not None:
            described["models"] = self.models
        return described


def signal_group(pid: int | None, sig: int) -> None:
    """``sig`` to the process group ``pid`` leads (it outlives its leader: what it started goes too)."""
    if pid is None:
        return
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def drain_output(pumps: list[asyncio.Task[None]]) -> None:
    """An exited worker's last output lines still reach the log, for at most PUMP_DRAIN."""
    if pumps:
        _, late = await asyncio.wait(pumps, timeout=PUMP_DRAIN)
        for pump in late:
            pump.cancel()


def unexpected_exit(reason: str, ready: bool, last_words: str) -> str | None:
    """What to say of a worker that ended on its own (os._exit in __init__, the OOM killer, a
    crash in a C extension): when, and its last stderr line, if it had any."""
    when = "" if ready else " before it was ready"
    words = f": {last_words}" if last_words else ""
    return f"worker {reason}{when}{words}" if when or words else None


async def exit_code(proc: asyncio.subprocess.Process) -> int:
    """The exit status as soon as the process is reaped. ``Process.wait()`` alone also waits
    for its pipes to close, which a process the handler started can hold open for ever."""
    waiter = asyncio.ensure_future(proc.wait())
    try:
        while not waiter.done() and proc.returncode is None:
            await asyncio.wait({waiter}, timeout=EXIT_POLL)
    finally:
        waiter.cancel()
    code = proc.returncode
    assert code is not None
    return code


async def relay_output(stream: asyncio.StreamReader | None, name: str, api: str, pid: int | None, log: Any,
                       on_log: Callable[[str], None], on_stderr: Callable[[str], None]) -> None:
    """A worker's output becomes daemon log lines (and its API's log book); the worker's own JSON
    events pass through as events. ``on_stderr`` sees each non-blank stderr line."""
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
                if isinstance(event, dict):
                    relay_event(text, event)
                    on_log(text)
                    continue
        if name == "stderr" and text.strip():
            on_stderr(text)
        log.info("worker_output", pid=pid, stream=name, line=text)
        on_log(json.dumps({"event": "worker_output", "api": api, "worker": pid, "stream": name, "line": text}))
    sys.stdout.flush()
