"""``ContainerReplica``: one replica of a container API's pod, a ``WorkerBackend``.

A replica has its own port (the daemon's pick, standing in for ``pod.port``) and its own
scratch directory (the seeds' shared ``/mnt``), and runs the pod's containers side by side
(``ContainerProcess``). It is ready once every readiness probe passed (no probe: once its port
accepts a connection) and leaves rotation while one fails; a liveness probe failing
``failure_threshold`` times, or any container exiting, ends the whole replica, and the pool
starts a new one with its backoff. ``stop`` lets admitted requests finish, runs ``pre_stop``,
then SIGTERMs every container's process group and SIGKILLs it after the grace period; the
scratch directory goes with the replica.

Requests reach it over HTTP through the proxy (``inferd.containers.proxy``), which asks
``admit``: at most ``max_concurrency`` inside, ``max_queue_length`` more waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from inferd.containers.engine import Engine, kill_argv
from inferd.containers.launch import ContainerLaunch, ReplicaPlace, plan_container, split_gpus
from inferd.containers.probes import ProbeState, ProbeTarget, attempt, tcp_socket
from inferd.containers.process import ContainerProcess
from inferd.containers.upstream import UpstreamPool
from inferd.logs import get_logger
from inferd.spec.model import ContainerSpec, PodSpec
from inferd.worker import protocol
from inferd.worker.backend import Response, WorkerGone, exit_reason
from inferd.worker.stream import StreamCall

DEFAULT_READY_POLL = 0.05  # no readiness probe: how often the port is tried until it accepts
FAILED_EXIT_GRACE = 5.0    # a container died: how long its siblings get to stop
_image_noted: set[tuple[str, str]] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, picked by the kernel."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ContainerReplica:
    def __init__(self, api: str, slot: int, pod: PodSpec, env: Mapping[str, str], gpus: tuple[int, ...],
                 project_dir: Path, base_url: str, scratch_root: Path, engine: Engine | None,
                 on_log: Callable[[str], None] = lambda line: None) -> None:
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
        self._scratch: Path | None = None
        self._processes: list[ContainerProcess] = []
        self._targets: dict[str, ProbeTarget] = {}
        self._inside = asyncio.Semaphore(pod.max_concurrency)
        self._idle = asyncio.Event()
        self._idle.set()
        self._ready: asyncio.Future[bool] | None = None
        self._ended: asyncio.Future[None] | None = None  # aborted or stopping: the replica goes
        self._tasks: list[asyncio.Task[None]] = []
        self._teardown: asyncio.Task[None] | None = None
        self._was_ready = False
        self._readiness: list[tuple[str, ProbeState]] = []
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
        place = ReplicaPlace(self.api, self.port, self._base_url, self._project_dir, self._scratch, self._env)
        nonce = secrets.token_hex(3)
        containers = self.pod.containers
        try:
            launches = [plan_container(c, place, gpus, self._engine, self.slot, nonce)
                        for c, gpus in zip(containers, split_gpus(self.gpus, containers), strict=True)]
            for container, launch in zip(containers, launches, strict=True):
                self._note_image(container, launch)
                process = ContainerProcess(self.api, self.slot, launch, self._on_log)
                await process.start()
                self._processes.append(process)
                self._targets[container.name] = self._target(launch)
        except BaseException:
            self._kill_now()
            raise
        self.pid = self._processes[0].pid if self._processes else None
        self.upstream = UpstreamPool(self.port)
        self._tasks.append(loop.create_task(self._become_ready()))
        for container in containers:
            if container.liveness_probe is not None:
                self._tasks.append(loop.create_task(self._liveness(container)))
        self.log.info("replica_started", port=self.port, scratch_dir=str(self._scratch),
                      containers={p.name: p.pid for p in self._processes})

    def _target(self, launch: ContainerLaunch) -> ProbeTarget:
        prefix = launch.exec_argv(self._engine, [])
        return ProbeTarget(self.pod.port, self.port, prefix, launch.env, launch.cwd)

    def _note_image(self, container: ContainerSpec, launch: ContainerLaunch) -> None:
        key = (self.api, container.name)
        if launch.image_unused and key not in _image_noted:
            _image_noted.add(key)
            self.log.warning("container_image_not_used", container=container.name, image=container.image,
                             detail="no container engine (podman or docker) can run images here: its command "
                                    "runs as a local process in the project directory")

    async def wait_ready(self) -> bool:
        assert self._ready is not None
        return await self._ready

    async def wait_exit(self) -> int | None:
        """Until a container exits or the replica is ended (aborted, stopped); then none is left."""
        assert self._ended is not None
        exits: dict[asyncio.Future[Any], ContainerProcess] = {asyncio.ensure_future(p.wait()): p for p in self._processes}
        ended: asyncio.Future[Any] = asyncio.ensure_future(asyncio.shield(self._ended))
        try:
            done, _ = await asyncio.wait({*exits, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (*exits, ended):
                waiter.cancel()
        first = next((exits[w] for w in done if w in exits), None)
        code: int | None = None
        if first is not None:
            code = first.returncode
            if self.state not in ("stopping",) and self.error is None:
                when = "" if self._was_ready else " before the replica was ready"
                words = first.last_words()
                self.error = (f"container {first.name} of api '{self.api}' {exit_reason(code)}{when}"
                              + (f": {words}" if words else ""))
        await self._finish(FAILED_EXIT_GRACE if self.state != "stopping" else None)
        return code

    async def stop(self, timeout: float) -> None:
        """Admitted requests finish (within ``timeout``), pre_stop runs, then the containers get
        SIGTERM and, after what is left of the grace period, SIGKILL."""
        if self._teardown is not None or self._ended is None:
            if self._teardown is not None:
                await self._teardown
            return
        deadline = time.monotonic() + timeout
        self.state = "stopping"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        if self._teardown is None:
            await self._pre_stop(max(deadline - time.monotonic(), 1.0))
        if not self._ended.done():
            self._ended.set_result(None)
        await self._finish(max(deadline - time.monotonic(), 1.0))

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
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.upstream is not None:
            self.upstream.close()
        await asyncio.gather(*(p.terminate(grace) for p in self._processes), return_exceptions=True)
        await self._remove_engine_containers()
        self._remove_scratch()
        self.state = "exited"
        self.log.info("replica_stopped", port=self.port)

    async def _remove_engine_containers(self) -> None:
        if self._engine is None:
            return
        for process in self._processes:
            name = process.launch.engine_name
            if name is None:
                continue
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
            while await tcp_socket(self.port, 1.0) is not None:
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
            elif failure is not None and state.failed and self.state == "ready":
                self.log.warning("replica_not_ready", container=name, error=failure)
                self._mark(False)
            await asyncio.sleep(state.timing.period)

    def _mark(self, ready: bool) -> None:
        if ready and self.state in ("starting", "unready"):
            self.state, self._was_ready = "ready", True
            self.error = None
            self._settle_ready(True)
            self.log.info("replica_ready", port=self.port)
        elif not ready and self.state == "ready":
            self.state = "unready"  # out of rotation until its readiness probes pass again

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
        self.in_flight += 1
        self._idle.clear()
        return True

    async def enter(self) -> None:
        """After ``admit``: wait for one of the ``max_concurrency`` places (``leave`` in any case)."""
        await self._inside.acquire()

    def leave(self, entered: bool) -> None:
        if entered:
            self._inside.release()
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    # -- the worker protocol (Python workers only) -------------------------------------------

    async def call(self, call: protocol.Call) -> Response:
        raise WorkerGone(f"api '{self.api}' runs containers, reached over HTTP")

    def open_stream(self, opened: protocol.Open) -> StreamCall:
        raise WorkerGone(f"api '{self.api}' runs containers, reached over HTTP")

    def describe(self) -> dict[str, Any]:
        return {"slot": self.slot, "pid": self.pid, "state": self.state, "gpus": list(self.gpus),
                "in_flight": self.in_flight, "error": self.error, "port": self.port,
                "containers": [{"name": p.name, "pid": p.pid, "running": p.running,
                                "engine_container": p.launch.engine_name} for p in self._processes]}


def scratch_root(state_dir: Path) -> Path:
    return state_dir / "scratch"

