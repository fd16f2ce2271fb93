"""``ContainerReplica``: one replica of a container API's pod, a ``WorkerBackend``.

A replica has its own port (the daemon's pick, standing in for ``pod.port``) and its own
scratch directory (the seeds' shared ``/mnt``), and runs the pod's containers side by side
(``ContainerProcess``). It is ready once every readiness probe passed (no probe: once its port
accepts a connection) and leaves rotation while one fails. A container that exits once the
replica was ready is restarted in place (same port, same scratch directory, the pool's backoff,
its probes starting over), the replica out of rotation until its readiness passes again (why it
is out: ``unready``); a container exiting before that, or any exit in a job's replica (``JobRun``
restarts those), or a liveness probe failing ``failure_threshold`` times, ends the whole
replica, and its owner starts a new one. A task's
replica (``one_shot``) runs until every container exited, or one failed. ``stop`` lets
admitted requests finish, runs ``pre_stop``, then SIGTERMs every container's process group and
SIGKILLs it after the grace period; the scratch directory goes with the replica.

Requests reach it over HTTP through the proxy (``inferd.containers.proxy``), which asks
``admit``: at most ``max_concurrency`` inside, ``max_queue_length`` more waiting. Async jobs
and batches are whole POSTs (``call``, ``post``; ``inferd.containers.jobs``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from inferd.containers.engine import Engine, kill_argv
from inferd.containers.launch import (
    ContainerLaunch,
    JobFiles,
    ReplicaPlace,
    free_port,
    note_unused_image,
    plan_container,
    split_gpus,
)
from inferd.containers.probes import ProbeState, ProbeTarget, attempt, tcp_socket
from inferd.containers.process import ContainerProcess
from inferd.containers.upstream import UpstreamGone, UpstreamPool
from inferd.jobs.async_dispatch import NoReply
from inferd.logs import get_logger
from inferd.spec.model import ContainerSpec, PodSpec
from inferd.worker import protocol
from inferd.worker.backend import Response, WorkerGone, exit_reason
from inferd.worker.pool import BACKOFF_FIRST, BACKOFF_MAX, HEALTHY_AFTER
from inferd.worker.stream import StreamCall

DEFAULT_READY_POLL = 0.05  # no readiness probe: how often the port is tried until it accepts
# out of rotation for now, back once readiness passes (a failing probe, a container restarting)
RECOVERING = ("starting", "unready", "restarting", "failed")
FAILED_EXIT_GRACE = 5.0    # a container died: how long its siblings get to stop
ERROR_TAIL = 4000          # characters of a container's last stderr kept in an error (a progress bar is one line)
HANGUP_GRACE = 1.0         # a server hung up: how long a container has to exit before it counts as alive


class Places:
    """``count`` places, taken at once while one is free and no one waits, else waited for in
    turn: a semaphore that can also be taken without awaiting (the proxy's direct path)."""

    def __init__(self, count: int) -> None:
        self.free = count
        self._waiting: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        if self.free > 0 and not self._waiting:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.give()  # handed a place just as the wait was cancelled: it goes to the next
            else:
                self._waiting.remove(turn)
            raise

    def give(self) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the place passes straight on: ``free`` is unchanged
                return
        self.free += 1


class ContainerReplica:
    def __init__(self, api: str, slot: int, pod: PodSpec, env: Mapping[str, str], gpus: tuple[int, ...],
                 project_dir: Path, base_url: str, scratch_root: Path, engine: Engine | None,
                 on_log: Callable[[str], None] = lambda line: None, *, job: JobFiles | None = None,
                 one_shot: bool = False) -> None:
        self.api = api
        self.slot = slot
        self.gpus = gpus
        self.pod = pod
        self.pid: int | None = None
        self.state = "starting"
        self.in_flight = 0  # admitted requests: inside the replica and waiting for a place
        self.capacity = pod.max_concurrency + pod.max_queue_length
        self.info: dict[str, Any] = {"containers": [c.name for c in pod.containers]}
        self.error: str | None = None
        self.init_traceback: str | None = None
        self.started_at = time.monotonic()
        self.port = 0
        self.upstream: UpstreamPool | None = None
        self._env = env
        self._project_dir = project_dir
        self._base_url = base_url
        self._scratch_root = scratch_root
        self._engine = engine
        self._on_log = on_log
        self._job = job
        self.one_shot = one_shot  # a task: runs to its end, needs no port or readiness
        self._scratch: Path | None = None
        self._processes: list[ContainerProcess] = []
        self._targets: dict[str, ProbeTarget] = {}
        self._inside = Places(pod.max_concurrency)
        self._idle = asyncio.Event()
        self._idle.set()
        self._ready: asyncio.Future[bool] | None = None
        self._ended: asyncio.Future[None] | None = None  # aborted or stopping: the replica goes
        self._liveness_tasks: dict[str, asyncio.Task[None]] = {}  # per container with a liveness probe
        self._readiness_task: asyncio.Task[None] | None = None
        self._failures = 0  # quick container exits in a row (their restarts back off)
        self._healthy_since = 0.0
        self.restarts: dict[str, int] = {c.name: 0 for c in pod.containers}
        self._teardown: asyncio.Task[None] | None = None
        self._was_ready = False
        self._readiness: list[tuple[str, ProbeState]] = []
        self.unready: str | None = None  # why it is out of rotation: its last readiness failure
        self.log = get_logger(api=api, slot=slot)

    @property
    def last_seen(self) -> float:
        """Liveness is the probes' business (and a container's exit ends the replica at once):
        the pool's heartbeat watch never finds a replica hung."""
        return time.monotonic() if self.state != "exited" else self.started_at

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._ended = loop.create_future()
        self.port = free_port()
        self._scratch_root.mkdir(parents=True, exist_ok=True, mode=0o750)
        self._scratch = Path(tempfile.mkdtemp(prefix=f"{self.api}-{self.slot}-", dir=self._scratch_root))
        place = ReplicaPlace(self.api, self.port, self._base_url, self._project_dir, self._scratch, self._env,
                             self._job)
        nonce = secrets.token_hex(3)
        containers = self.pod.containers
        try:
            launches = [plan_container(c, place, gpus, self._engine, self.slot, nonce)
                        for c, gpus in zip(containers, split_gpus(self.gpus, containers), strict=True)]
            for container, launch in zip(containers, launches, strict=True):
                note_unused_image(self.api, container, launch, self.log)
                process = ContainerProcess(self.api, self.slot, launch, self._on_log)
                await process.start()
                self._processes.append(process)
                self._targets[container.name] = self._target(launch)
        except BaseException:
            self._kill_now()
            raise
        self.pid = self._processes[0].pid if self._processes else None
        self.upstream = UpstreamPool(self.port)
        if self.one_shot:
            self._mark(True)  # a task's containers have nothing to be ready for: they run
        else:
            self._readiness_task = loop.create_task(self._become_ready())
        for container in containers:
            self._watch_liveness(container)
        self.log.info("replica_started", port=self.port, scratch_dir=str(self._scratch),
                      containers={p.name: p.pid for p in self._processes})

    def _target(self, launch: ContainerLaunch) -> ProbeTarget:
        prefix = launch.exec_argv(self._engine, [])
        return ProbeTarget(self.pod.port, self.port, prefix, launch.env, launch.cwd)

    async def wait_ready(self) -> bool:
        assert self._ready is not None
        return await self._ready

    async def wait_exit(self) -> int | None:
        """Until a container exits (a one-shot replica: until all did, or one failed) or the
        replica is ended (aborted, stopped); then none is left."""
        assert self._ended is not None
        first = await self._exit_that_ends()
        while first is not None and await self._restart_in_place(first):
            first = await self._exit_that_ends()
        code: int | None = None
        if first is not None:
            code = first.returncode
            if self.state != "stopping" and self.error is None and not (self.one_shot and code == 0):
                self.error = await self._exit_text(first, code)
        # shielded: whoever cancels this watch (a job's consumer ending) must not cut the teardown short
        await asyncio.shield(self._finish(FAILED_EXIT_GRACE if self.state != "stopping" else None))
        return code

    async def _exit_that_ends(self) -> ContainerProcess | None:
        """The container whose exit ends the replica; None when it was ended first."""
        assert self._ended is not None
        exits: dict[asyncio.Future[Any], ContainerProcess] = {asyncio.ensure_future(p.wait()): p for p in self._processes}
        ended: asyncio.Future[Any] = asyncio.ensure_future(asyncio.shield(self._ended))
        try:
            while True:
                done, _ = await asyncio.wait({*exits, ended}, return_when=asyncio.FIRST_COMPLETED)
                gone = [exits.pop(w) for w in done if w in exits]
                if not gone:
                    return None
                failed = next((p for p in gone if p.returncode != 0), None)
                if not self.one_shot or failed is not None or not exits:
                    return failed or gone[0]
        finally:
            for waiter in (*exits, ended):
                waiter.cancel()

    async def _exit_text(self, process: ContainerProcess, code: int | None) -> str:
        when = "" if self._was_ready else " before the replica was ready"
        if self.one_shot:  # a task's error is all its user sees: the tail of its output
            await process.output_done()
            words = "\n".join(process.stderr)
        else:
            words = process.last_words()
        if len(words) > ERROR_TAIL:
            words = "..." + words[-ERROR_TAIL:]
        return f"container {process.name} of api '{self.api}' {exit_reason(code)}{when}" + (f": {words}" if words else "")

    async def _restart_in_place(self, process: ContainerProcess) -> bool:
        """A container of a replica that was ready exited: it starts again, with the pool's
        backoff, on the same port and scratch directory, and the replica is out of rotation
        until its readiness passes again. False: the replica ends instead (it never was ready, is
        a job's, whose run restarts workers its own way, or is going)."""
        assert self._ended is not None
        if self._job is not None or not self._was_ready or self.state == "stopping" or self._ended.done():
            return False
        code = process.returncode
        self.error = await self._exit_text(process, code)
        quick = time.monotonic() - self._healthy_since < HEALTHY_AFTER or self.state != "ready"
        self._failures = self._failures + 1 if quick else 0
        delay = min(BACKOFF_FIRST * 2 ** (self._failures - 1), BACKOFF_MAX) if self._failures else 0.0
        # a crash loop answers at once (the pool's 503 with the reason), a first exit lets callers wait
        self.state = "failed" if self._failures > 1 else "restarting"
        self.restarts[process.name] += 1
        if self._readiness_task is not None:
            self._readiness_task.cancel()  # no probe puts it back in rotation before its container is back
        liveness = self._liveness_tasks.pop(process.name, None)
        if liveness is not None:
            liveness.cancel()  # nor fails it while its container is down: it starts over with it
        self.log.warning("container_restarting", container=process.name, code=code, restart_in=delay, error=self.error)
        if self.upstream is not None:
            self.upstream.drop_idle()  # kept-alive connections to a server that is gone
        await process.terminate(0.0)  # what it started goes with it
        await self._remove_engine_container(process)
        await asyncio.wait({asyncio.shield(self._ended)}, timeout=delay)
        if self._ended.done() or self.state == "stopping":
            return False
        fresh = ContainerProcess(self.api, self.slot, process.launch, self._on_log)
        await fresh.start()
        if self._ended.done() or self._teardown is not None:  # stopped while it started
            await fresh.terminate(0.0)
            return False
        self._processes[self._processes.index(process)] = fresh
        self.pid = self._processes[0].pid
        # probes start over with the container (liveness after its initial delay), as in Kubernetes
        self._readiness_task = asyncio.get_running_loop().create_task(self._become_ready())
        self._watch_liveness(next(c for c in self.pod.containers if c.name == process.name))
        return True

    async def stop(self, timeout: float) -> None:
        """Admitted requests finish (within ``timeout``), pre_stop runs, then the containers get
        SIGTERM and, after what is left of the grace period, SIGKILL."""
        if self._teardown is not None or self._ended is None:
            if self._teardown is not None:
                await asyncio.shield(self._teardown)
            return
        deadline = time.monotonic() + timeout
        self.state = "stopping"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        if self._teardown is None:
            await self._pre_stop(max(deadline - time.monotonic(), 1.0))
        if not self._ended.done():
            self._ended.set_result(None)
        await asyncio.shield(self._finish(max(deadline - time.monotonic(), 1.0)))

    async def _pre_stop(self, budget: float) -> None:
        actions = [(c.name, c.pre_stop) for c in self.pod.containers if c.pre_stop is not None]
        if not actions:
            return
        results = await asyncio.gather(*(attempt(action, self._targets[name], budget) for name, action in actions
                                         if name in self._targets))
        for (name, _), failure in zip(actions, results, strict=False):
            if failure is not None:
                self.log.warning("pre_stop_failed", container=name, error=failure)

    def _finish(self, grace: float | None) -> asyncio.Task[None]:
        """The one teardown (a stop and an exit may both ask for it)."""
        if self._teardown is None:
            self._teardown = asyncio.get_running_loop().create_task(self._tear_down(grace or FAILED_EXIT_GRACE))
        return self._teardown

    async def _tear_down(self, grace: float) -> None:
        stopping = self.state == "stopping"
        self.state = "stopping" if stopping else "exited"
        self._settle_ready(False)
        tasks = [*self._liveness_tasks.values(), *([self._readiness_task] if self._readiness_task is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.upstream is not None:
            self.upstream.close()
        await asyncio.gather(*(p.terminate(grace) for p in self._processes), return_exceptions=True)
        await self._remove_engine_containers()
        self._remove_scratch()
        self.state = "exited"
        self.log.info("replica_stopped", port=self.port)

    async def _remove_engine_containers(self) -> None:
        await asyncio.gather(*(self._remove_engine_container(p) for p in self._processes))

    async def _remove_engine_container(self, process: ContainerProcess) -> None:
        name = process.launch.engine_name
        if self._engine is None or name is None:
            return
        proc = await asyncio.create_subprocess_exec(*kill_argv(self._engine, name), stdin=subprocess.DEVNULL,
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await proc.wait()

    def _remove_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def kill(self) -> None:
        """Now, without waiting (the daemon is going): every group SIGKILLed, the scratch removed."""
        self._kill_now()

    def _kill_now(self) -> None:
        for process in self._processes:
            process.kill()
            name = process.launch.engine_name
            if self._engine is not None and name is not None:
                subprocess.Popen(kill_argv(self._engine, name), stdin=subprocess.DEVNULL,  # noqa: S603
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._remove_scratch()

    def abort(self, reason: str) -> None:
        """It is unhealthy (a liveness probe failed): out of rotation now, every container killed."""
        if self._ended is None or self._ended.done() or self._teardown is not None:
            return
        self.error = reason
        self.state = "exited"
        self.log.error("replica_aborted", reason=reason)
        self._ended.set_result(None)
        for process in self._processes:
            process.signal(signal.SIGKILL)

    def ping(self) -> None:
        """Nothing to send: liveness is the probes' business."""

    # -- readiness and liveness --------------------------------------------------------------

    def _settle_ready(self, ok: bool) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(ok)

    async def _become_ready(self) -> None:
        probes = [(c.name, ProbeState(c.readiness_probe)) for c in self.pod.containers if c.readiness_probe]
        self._readiness = probes
        if not probes:
            while (failure := await tcp_socket(self.port, 1.0)) is not None:
                self.unready = f"no container accepts connections on the replica's port (pod.port): {failure}"
                await asyncio.sleep(DEFAULT_READY_POLL)
            self._mark(True)
            return
        await asyncio.gather(*(self._readiness_loop(name, state) for name, state in probes))

    async def _readiness_loop(self, name: str, state: ProbeState) -> None:
        await asyncio.sleep(state.timing.initial_delay)
        while True:
            failure = await state.run_once(self._targets[name])
            if failure is None and all(s.passed for _, s in self._readiness):
                self._mark(True)
            elif failure is not None and state.failed:
                self._not_ready(name, failure)
            await asyncio.sleep(state.timing.period)

    def _not_ready(self, container: str, failure: str) -> None:
        """A readiness probe failed ``failure_threshold`` times: out of rotation, and why is told
        (in ``/-/apis`` and, once per reason, in the log): a replica that never gets ready says so."""
        reason = f"readiness probe of container {container} failed: {failure}"
        if reason != self.unready or self.state == "ready":
            self.log.warning("replica_not_ready", container=container, error=failure)
        self.unready = reason
        self._mark(False)

    def _mark(self, ready: bool) -> None:
        if ready and self.state in RECOVERING:
            self.state, self._was_ready, self.unready = "ready", True, None
            self._healthy_since = time.monotonic()
            self._settle_ready(True)
            self.log.info("replica_ready", port=self.port)
        elif not ready and self.state == "ready":
            self.state = "unready"  # out of rotation until its readiness probes pass again

    def _watch_liveness(self, container: ContainerSpec) -> None:
        if container.liveness_probe is not None:
            self._liveness_tasks[container.name] = asyncio.get_running_loop().create_task(self._liveness(container))

    async def _liveness(self, container: ContainerSpec) -> None:
        assert container.liveness_probe is not None
        state = ProbeState(container.liveness_probe)
        await asyncio.sleep(state.timing.initial_delay)
        while True:
            await state.run_once(self._targets[container.name])
            if state.failed:
                self.abort(f"liveness probe of container {container.name} failed {state.failures} times: "
                           f"{state.last_failure}")
                return
            await asyncio.sleep(state.timing.period)

    # -- admission (the proxy) ---------------------------------------------------------------

    def admit(self) -> bool:
        """A place inside or in the queue; False when both are full."""
        if self.in_flight >= self.capacity:
            return False
        self.admit_unbounded()
        return True

    def admit_unbounded(self) -> None:
        """Counted in flight (a stop drains it) though no admission applies (queue consumers)."""
        if not self.in_flight:
            self._idle.clear()
        self.in_flight += 1

    async def enter(self) -> None:
        """After ``admit``: wait for one of the ``max_concurrency`` places (``leave`` in any case)."""
        await self._inside.take()

    def take_place(self) -> bool:
        """``admit`` and a place inside at once, if one is free now (``leave(True)`` with its answer);
        False takes nothing."""
        if self.state != "ready" or self.in_flight >= self.capacity or not self._inside.try_take():
            return False
        self.admit_unbounded()
        return True

    def leave(self, entered: bool) -> None:
        if entered:
            self._inside.give()
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    # -- whole requests: async jobs, batches -------------------------------------------------

    async def call(self, call: protocol.Call) -> Response:
        """An async job: ``POST /`` with its body, Content-Type and ``X-Cortex-Request-ID``.
        ``WorkerGone`` when a container died under it (the job goes back to the queue once),
        ``NoReply`` when the server hung up on it and lives on (the job fails)."""
        headers = [("content-type", call.content_type)] if call.content_type else []
        body = call.body if isinstance(call.body, bytes) else b"".join(call.body)
        try:
            return await self.post("/", [*headers, ("x-cortex-request-id", call.rid)], body)
        except WorkerGone as gone:
            if await self._went_down():
                raise
            raise NoReply(f"the container gave no answer: {gone}") from None

    async def _went_down(self) -> bool:
        """After a hang-up: whether a container exited (or the replica went) within
        ``HANGUP_GRACE``, rather than its server closing the connection on its own."""
        if self._ended is None or self._ended.done() or self.state != "ready":
            return True
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(p.wait()) for p in self._processes}
        waiters.add(asyncio.ensure_future(asyncio.shield(self._ended)))
        try:
            done, _ = await asyncio.wait(waiters, timeout=HANGUP_GRACE, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return bool(done) or self.state != "ready"

    async def post(self, path: str, headers: list[tuple[str, str]], body: bytes) -> Response:
        """One whole POST to the replica's port; ``WorkerGone`` when it is gone or hung up. The
        caller bounds how many are inside at once (``max_concurrency`` consumers)."""
        if self.upstream is None or self.state in ("exited", "stopping"):
            raise WorkerGone(f"replica {self.slot} of api '{self.api}' is gone: {self.error or self.state}")
        self.admit_unbounded()
        try:
            status, answer_headers, answer = await self.upstream.exchange("POST", path, headers, body)
        except UpstreamGone as exc:
            raise WorkerGone(f"replica {self.slot} (port {self.port}) of api '{self.api}': {exc}") from None
        finally:
            self.leave(False)
        return Response(status, [[k.decode("latin-1"), v.decode("latin-1")] for k, v in answer_headers], answer, None)

    def open_stream(self, opened: protocol.Open) -> StreamCall:
        raise WorkerGone(f"api '{self.api}' runs containers, reached over HTTP, not the worker protocol")

    def describe(self) -> dict[str, Any]:
        return {"slot": self.slot, "pid": self.pid, "state": self.state, "gpus": list(self.gpus),
                "in_flight": self.in_flight, "error": self.error, "port": self.port,
                "not_ready": self.unready if self.state in RECOVERING else None,
                "containers": [{"name": p.name, "pid": p.pid, "running": p.running, "restarts": self.restarts[p.name],
                                "engine_container": p.launch.engine_name} for p in self._processes]}


