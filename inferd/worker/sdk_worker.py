"""``SdkWorker``: a RunPod worker file run unchanged as ``python -u <file> [args]``, in the SDK's
production mode, with inferd playing the platform for it (``handler.runner: sdk``; a
``WorkerBackend``).

Each worker has its own ``RunPodPlatform`` served on 127.0.0.1 (a port the kernel picks) and a
random key: the SDK sends it raw in ``Authorization`` (``RUNPOD_AI_API_KEY``) and every other
request is refused, so no other local process can take or finish this worker's jobs. Everything
the SDK reads about the platform is in its environment before it starts (it reads it at import).

The process is the leader of its own process group (``start_new_session``): real workers leave
children behind (the SDK's own heartbeat process, the handler's helpers), and stopping, killing or
losing a worker ends the whole group. It is started through a tiny launcher that asks Linux to
SIGKILL it if the daemon dies and then execs ``python -u <file> [args]`` in place (same pid).

Lifecycle: ready once the SDK asks for its first job (its job loop runs); liveness from its
heartbeats (every second) and any other request; ``stop`` answers the held polls, sends SIGTERM
(the SDK finishes its jobs and exits), then SIGKILLs the group after ``timeout``.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import os
import secrets
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from inferd.logs import get_logger
from inferd.worker import protocol
from inferd.worker.backend import Response, WorkerGone, exit_reason
from inferd.worker.loopback_http import LoopbackServer, Request
from inferd.worker.process import (
    ABORT_GRACE,
    LAUNCHER_PRELUDE,
    LINE_LIMIT,
    drain_output,
    exit_code,
    relay_output,
    signal_group,
    unexpected_exit,
)
from inferd.worker.runpod_platform import STOP_GRACE, PlatformJob, RunPodPlatform, job_id_of, urls
from inferd.worker.stream import StreamCall

JOB_METHOD = "runpod.job"
# An SDK worker takes a Cancel for any handler (job-stop, and for a sync handler that cannot let
# go, a new worker: ``RunPodPlatform.stop_job``), so the dispatcher counts it among the kinds it
# stops in place.
HANDLER_KIND = "sdk"
PING_INTERVAL_MS = "1000"  # liveness: the pool finds a worker hung after worker_liveness_timeout of silence
STDERR_TAIL = 200          # lines kept for the traceback of a worker that died before it was ready
# Variables that would take the SDK out of production mode (its local API server instead of our jobs).
OTHER_MODES = ("RUNPOD_REALTIME_PORT", "RUNPOD_REALTIME_CONCURRENCY")

# ``python -I -S -c LAUNCHER <daemon pid> -u <file> [args]``: die with the daemon (even after its
# SIGKILL), no core files (a model in memory would make gigabytes of them), then become exactly
# ``python -u <file> [args]``. Isolated (-I): a project file named like a stdlib module cannot
# shadow what this imports.
LAUNCHER = LAUNCHER_PRELUDE + """\
import resource
resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


def sdk_environment(env: Mapping[str, str], base_url: str, api: str, worker: str, key: str,
                    log_level: str) -> dict[str, str]:
    """The worker's environment (GPU pinning, .env, handler.env) plus the platform's variables."""
    merged = {name: value for name, value in env.items() if name not in OTHER_MODES}
    merged.update(urls(base_url, worker, f"api={quote(api)}"))
    merged.update({"RUNPOD_POD_ID": worker, "RUNPOD_AI_API_KEY": key, "RUNPOD_PING_INTERVAL": PING_INTERVAL_MS})
    # start-up checks would need 8.8.8.8:53 and 4 GB free; a handler's own fitness checks still run
    merged.setdefault("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS", "true")
    merged.setdefault("RUNPOD_SKIP_GPU_CHECK", "true")
    if "RUNPOD_LOG_LEVEL" not in merged and "RUNPOD_DEBUG_LEVEL" not in merged:
        merged["RUNPOD_LOG_LEVEL"] = log_level.upper()  # the SDK's default, DEBUG, logs every poll
    merged.setdefault("PYTHONFAULTHANDLER", "1")  # abort (SIGABRT) logs where a hung handler was
    return merged


def traceback_tail(lines: Sequence[str]) -> str | None:
    """The last Python traceback among a process's last stderr lines."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    return "\n".join(lines[starts[-1]:]) if starts else None


class SdkWorker:
    def __init__(self, api: str, slot: int, script: Path, args: Sequence[str], env: Mapping[str, str], cwd: Path,
                 gpus: tuple[int, ...], log_level: str = "info", on_log: Callable[[str], None] = lambda line: None) -> None:
        self.api = api
        self.slot = slot
        self.gpus = gpus
        self._script = script
        self._args = list(args)
        self._env = env
        self._cwd = cwd
        self._log_level = log_level
        self._on_log = on_log
        self.state = "starting"
        self.pid: int | None = None
        self.in_flight = 0
        self.info: dict[str, Any] = {"handler_kind": HANDLER_KIND, "concurrency": 1, "runner": "sdk"}
        self.error: str | None = None
        self.init_traceback: str | None = None
        self.started_at = time.monotonic()
        self._key = secrets.token_urlsafe(32)
        self._ids = itertools.count(1)
        self._jobs: dict[int, PlatformJob] = {}
        self._platform: RunPodPlatform | None = None
        self._server: LoopbackServer | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._stderr: deque[str] = deque(maxlen=STDERR_TAIL)
        self._ready: asyncio.Future[bool] | None = None
        self._aborted: str | None = None
        self._kill_timer: asyncio.TimerHandle | None = None
        self._refused_logged = False
        self.log = get_logger(api=api, slot=slot)

    @property
    def last_seen(self) -> float:
        """The SDK's latest request; until its first one (it may import a model for minutes),
        a process that is still running counts as alive."""
        if self._platform is not None and self._platform.last_request is not None:
            return self._platform.last_request
        running = self._proc is not None and self._proc.returncode is None
        return time.monotonic() if running else self.started_at

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._platform = RunPodPlatform(self._on_take, self._on_unstoppable, self._on_unhealthy)
        self._server = LoopbackServer(self._platform.handle, self._authorized, self._refused)
        port = await self._server.start()
        worker = f"inferd-{self.api}-{self.slot}"
        env = sdk_environment(self._env, f"http://127.0.0.1:{port}", self.api, worker, self._key, self._log_level)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", "-c", LAUNCHER, str(os.getpid()), "-u", str(self._script), *self._args,
                env=env, cwd=self._cwd, start_new_session=True, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=LINE_LIMIT,
            )
        except BaseException:
            self._server.close()  # a failed spawn must leave no listening socket behind
            raise
        self.pid = self._proc.pid
        self._pumps = [loop.create_task(self._pump(self._proc.stdout, "stdout")),
                       loop.create_task(self._pump(self._proc.stderr, "stderr"))]
        self.log.info("worker_started", pid=self.pid, gpus=list(self.gpus), runner="sdk", platform_port=port)

    async def wait_ready(self) -> bool:
        """True once the SDK asked for its first job; False if the process ended first."""
        assert self._ready is not None
        return await self._ready

    async def wait_exit(self) -> int | None:
        assert self._proc is not None
        code = await self._exit_code()
        stopping, self.state = self.state == "stopping", "exited"
        reason = self._aborted or exit_reason(code)
        self._end(f"worker {self.pid} of api '{self.api}' {reason}")
        await drain_output(self._pumps)
        if self._aborted:
            self.error = self._aborted
        elif self.error is None and not stopping:
            ready = self._ready is not None and self._ready.done() and self._ready.result()
            last = self._stderr[-1].strip() if self._stderr else ""
            if code == 0 and not ready:
                last = last or f"{self._script.name} did not start the SDK's worker loop (runpod.serverless.start)"
            self.error = unexpected_exit(reason, ready, last)
            if not ready:
                self.init_traceback = traceback_tail(list(self._stderr))
        return code

    async def _exit_code(self) -> int:
        assert self._proc is not None
        return await exit_code(self._proc)

    async def stop(self, timeout: float) -> None:
        """SIGTERM: the SDK takes no more jobs, finishes the ones it holds and exits; after
        ``timeout`` the whole process group is killed."""
        if self._proc is None:
            return
        if self._proc.returncode is None:
            self.state = "stopping"
            assert self._platform is not None
            self._platform.close()  # its held polls end now, so it is not kept waiting on us
            self._platform.drop_queued(f"worker {self.pid} of api '{self.api}' is stopping")
            self._signal(signal.SIGTERM, group=False)  # as a container's main process gets it
            try:
                await asyncio.wait_for(self._exit_code(), timeout)
            except TimeoutError:
                self.log.warning("worker_stop_timeout", pid=self.pid, timeout=timeout)
                self.kill()
                await self._exit_code()
        self._end(f"worker {self.pid} of api '{self.api}' stopped")
        await drain_output(self._pumps)  # its last lines (the SDK says how it shut down) still reach the log

    def kill(self) -> None:
        self._signal(signal.SIGKILL, group=True)

    def abort(self, reason: str) -> None:
        """Hung: its jobs fail now with ``reason``; SIGABRT makes faulthandler log where the
        handler was (PYTHONFAULTHANDLER), SIGKILL to the group follows."""
        if self._give_up(reason):
            self.log.error("worker_aborted", pid=self.pid, reason=reason)
            self._signal(signal.SIGABRT, group=False)
            self._kill_timer = asyncio.get_running_loop().call_later(ABORT_GRACE, self._signal, signal.SIGKILL, True)

    def _give_up(self, reason: str) -> bool:
        """Its jobs fail now with ``reason`` (False: it is already gone or going)."""
        if self._aborted or self._proc is None or self._proc.returncode is not None:
            return False
        self._aborted = reason
        self.state = "exited"
        self._fail_jobs(f"worker {self.pid} of api '{self.api}' was killed: {reason}")
        return True

    def _end(self, message: str) -> None:
        """The process is gone (or going): nothing of it may linger, no job may wait on it."""
        self._settle_ready(False)
        self._fail_jobs(message)
        self._signal(signal.SIGKILL, group=True)  # what it left behind
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        if self._server is not None:
            self._server.close()

    def _fail_jobs(self, message: str) -> None:
        if self._platform is not None:
            self._platform.close()
            self._platform.fail_all(message)

    def _signal(self, sig: int, group: bool) -> None:
        if self.pid is None or self._proc is None:
            return
        if group:  # the group outlives its leader: a child left behind still has to go
            signal_group(self.pid, sig)
            return
        try:
            if self._proc.returncode is None:
                self._proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    def ping(self) -> None:
        """Nothing to send: the SDK pings us (every second), and its other requests count too."""

    # -- the platform's view -----------------------------------------------------------------

    def _authorized(self, headers: dict[str, str]) -> bool:
        return hmac.compare_digest(headers.get("authorization", "").encode(), self._key.encode())

    def _refused(self, request: Request) -> None:
        if self._refused_logged:
            return
        self._refused_logged = True
        home = Path(self._env.get("HOME") or Path.home())
        hint = ""
        if (home / ".runpod" / "config.toml").exists():
            hint = (f"; {home}/.runpod/config.toml exists, and the RunPod SDK sends its api_key instead of "
                    "RUNPOD_AI_API_KEY: remove that file's [default] api_key for this user, or use handler.runner: direct")
        self.log.warning("runpod_platform_refused", pid=self.pid, path=request.path,
                         detail=f"a request without this worker's key (Authorization) was refused{hint}")

    def _on_take(self, asked: int, holding: int) -> None:
        """The SDK asks for jobs: how many it can run at once (its concurrency_modifier's answer)
        is what it asks for plus what it holds. Exact when it holds none; while it holds some it
        may count jobs still in its own queue twice and ask for fewer, so then only a rise counts."""
        seen = asked + holding
        self.info["concurrency"] = seen if holding == 0 else max(seen, int(self.info["concurrency"]))
        if self.state == "starting":
            self.state = "ready"
            self.error = None
            self._settle_ready(True)

    def _on_unstoppable(self, job_id: str) -> None:
        reason = (f"job {job_id} was stopped, but its handler did not let go within {STOP_GRACE:g}s "
                  "(a sync handler blocks the SDK's loop): the worker is replaced")
        if self._give_up(reason):
            self.log.warning("worker_replaced", pid=self.pid, reason=reason)
            self.kill()

    def _on_unhealthy(self, reason: str) -> None:
        self.error = reason
        self.log.error("runpod_fitness_check_failed", pid=self.pid, error=reason)

    def _settle_ready(self, ok: bool) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(ok)

    # -- calls -------------------------------------------------------------------------------

    async def call(self, call: protocol.Call) -> Response:
        raise WorkerGone(f"worker of api '{self.api}' runs RunPod jobs only")

    def open_stream(self, opened: protocol.Open) -> StreamCall:
        """Queue one job for the SDK; its call ends with the result the SDK posts."""
        if self._platform is None or self.state != "ready":
            raise WorkerGone(f"worker of api '{self.api}' is not ready")
        call_id = next(self._ids)
        stream = StreamCall(call_id, lambda message: self._from_daemon(call_id, message), self._stream_finished,
                            self.abort)
        self.in_flight += 1
        if opened.method != JOB_METHOD:
            stream.on_end(protocol.End(call_id, protocol.UNIMPLEMENTED, f"method {opened.method} is not a RunPod job"))
            return stream
        try:
            job_id = job_id_of(opened.body)
        except ValueError as exc:
            stream.on_end(protocol.End(call_id, protocol.INVALID_ARGUMENT, str(exc)))
            return stream
        job = self._jobs[call_id] = PlatformJob(job_id, opened.body, stream)
        self._platform.submit(job)
        return stream

    def _from_daemon(self, call_id: int, message: protocol.Message) -> None:
        """Only a Cancel means anything: there is no input to send and no window (Credit)."""
        job = self._jobs.get(call_id)
        if isinstance(message, protocol.Cancel) and job is not None and self._platform is not None:
            self._platform.stop_job(job)

    def _stream_finished(self, call_id: int) -> None:
        self._jobs.pop(call_id, None)
        self.in_flight -= 1

    # -- output ------------------------------------------------------------------------------

    async def _pump(self, stream: asyncio.StreamReader | None, name: str) -> None:
        # as a WorkerProcess's: JSON lines (the SDK's, with RUNPOD_ENDPOINT_ID set) pass through as events
        await relay_output(stream, name, self.api, self.pid, self.log, self._on_log, self._stderr.append)

    def describe(self) -> dict[str, Any]:
        return {"slot": self.slot, "pid": self.pid, "state": self.state, "gpus": list(self.gpus),
                "in_flight": self.in_flight, "error": self.error}
