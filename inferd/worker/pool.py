"""``WorkerPool``: the worker processes of one API — spawn, readiness, dispatch, restart, drain.

Each worker slot has its own supervising task: start the process, wait for the Handler to be
constructed, serve until the process exits, then restart with exponential backoff (a worker
that served for a while restarts at once). Dispatch picks the ready worker with the fewest
calls in flight; ``max_replica_concurrency`` bounds calls per worker, beyond it the caller
gets ``ApiUnavailable`` (HTTP 503).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inferd.logs import get_logger
from inferd.worker.process import MetricSink, Reply, WorkerGone, WorkerProcess
from inferd.worker.stream import StreamCall

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 10.0  # a worker that served this long restarts without backoff


class ApiUnavailable(Exception):
    """No worker can take this call now (starting, failed, dead mid-call, or saturated)."""


class WorkerDied(ApiUnavailable):
    """The worker handling the call exited before answering it."""


@dataclass(frozen=True)
class WorkerSlot:
    """What one worker of the pool is started with."""

    env: dict[str, str]
    gpus: tuple[int, ...]


@dataclass
class PoolConfig:
    api: str
    init: dict[str, Any]          # the init frame every worker receives
    cwd: str
    slots: list[WorkerSlot]
    max_concurrency: int          # per worker
    ready_wait: float = 30.0      # how long a call waits for a first ready worker
    stop_timeout: float = 30.0
    on_metric: MetricSink = field(default=lambda frame: None)
    on_restart: Callable[[], None] = field(default=lambda: None)
    on_change: Callable[[], None] = field(default=lambda: None)  # a worker became ready or left
    on_log: Callable[[str], None] = field(default=lambda line: None)  # one worker log line (JSON)


class WorkerPool:
    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.api = config.api
        self.workers: list[WorkerProcess | None] = [None] * len(config.slots)
        self.restarts = 0
        self.last_error: str | None = None
        self.stopping = False
        self.verbs: dict[str, list[str]] | None = None  # the Handler's HTTP verbs and their arguments
        self._ready_changed = asyncio.Event()
        self._supervisors: list[asyncio.Task[None]] = []
        self.log = get_logger(api=config.api)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return bool(self._supervisors)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._supervisors = [loop.create_task(self._supervise(i)) for i in range(len(self.config.slots))]

    async def stop(self, timeout: float | None = None) -> None:
        """Drain: no new calls, in-flight ones finish (bounded by ``timeout``), processes end."""
        self.stopping = True
        self._ready_changed.set()
        for task in self._supervisors:
            task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        limit = self.config.stop_timeout if timeout is None else timeout
        await asyncio.gather(*(w.stop(limit) for w in self.workers if w is not None), return_exceptions=True)

    def kill(self) -> None:
        for worker in self.workers:
            if worker is not None:
                worker.kill()

    async def _supervise(self, slot: int) -> None:
        failures = 0
        while not self.stopping:
            worker = self._new_worker(slot)
            self.workers[slot] = worker
            try:
                await worker.start()
                ready = await worker.wait_ready()
                if ready:
                    # one pool runs one handler version: any worker's report is the pool's
                    self.verbs = self.verbs or worker.verbs or None
                    self._ready_changed.set()
                    self.config.on_change()
                    self.log.info("worker_ready", pid=worker.pid, slot=slot)
                code = await worker.wait_exit()
                self.config.on_change()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the slot must keep trying, never go dark
                ready, code = False, None
                worker.error = f"cannot start worker: {type(exc).__name__}: {exc}"
                worker.kill()
            if self.stopping:
                return
            self.last_error = worker.error or f"worker {worker.pid} exited with code {code}"
            self.restarts += 1
            self.config.on_restart()
            served = time.monotonic() - worker.started_at
            failures = 0 if ready and served >= HEALTHY_AFTER else failures + 1
            delay = 0.0 if failures == 0 else min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
            self.log.warning("worker_exited", pid=worker.pid, slot=slot, code=code, ready=ready,
                             restart_in=delay, error=self.last_error)
            await asyncio.sleep(delay)

    def _new_worker(self, slot: int) -> WorkerProcess:
        spec = self.config.slots[slot]
        return WorkerProcess(self.api, slot, self.config.init, spec.env, self.config.cwd, spec.gpus,
                             self.config.on_metric, self.config.on_log)

    # -- dispatch ----------------------------------------------------------------------------

    def ready_workers(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w is not None and w.state == "ready"]


    async def call(self, meta: dict[str, Any], body: bytes) -> Reply:
        worker = await self._pick()
        try:
            return await worker.call(meta, body)
        except WorkerGone as exc:
            raise WorkerDied(str(exc)) from None

    async def wait_all_ready(self, timeout: float) -> str | None:
        """Until every worker is ready (None), or why that will not happen (an error text)."""
        deadline = time.monotonic() + timeout
        while not self.stopping:
            self._ready_changed.clear()
            if len(self.ready_workers()) == len(self.config.slots):
                return None
            if self._failing() or any(w is not None and w.state == "failed" for w in self.workers):
                return self.error or "a worker failed to start"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"workers not ready after {timeout:.0f}s"
            try:
                await asyncio.wait_for(self._ready_changed.wait(), min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass
        return "the pool is stopping"

    async def wait_slot_ready(self, slot: int) -> None:
        """Until the worker in ``slot`` is ready (job runners bind one consumer to each worker)."""
        while not self.stopping:
            self._ready_changed.clear()
            worker = self.workers[slot]
            if worker is not None and worker.state == "ready":
                return
            await self._ready_changed.wait()
        raise ApiUnavailable(self._not_ready_message())

    async def call_slot(self, slot: int, meta: dict[str, Any], body: bytes) -> Reply:
        worker = self.workers[slot]
        if worker is None:
            raise ApiUnavailable(self._not_ready_message())
        try:
            return await worker.call(meta, body)
        except WorkerGone as exc:
            raise WorkerDied(str(exc)) from None

    async def open_stream(self, meta: dict[str, Any], body: bytes) -> StreamCall:
        worker = await self._pick()
        try:
            return worker.open_stream(meta, body)
        except WorkerGone as exc:
            raise ApiUnavailable(str(exc)) from None

    async def wait_verbs(self) -> dict[str, list[str]]:
        await self._wait_for_ready()
        verbs = self.verbs
        if verbs is None:
            raise ApiUnavailable(self._not_ready_message())
        return verbs

    async def _pick(self) -> WorkerProcess:
        ready = self.ready_workers() or await self._wait_for_ready()
        worker = min(ready, key=lambda w: w.in_flight)
        if worker.in_flight >= self.config.max_concurrency:
            raise ApiUnavailable(
                f"api '{self.api}' is at capacity: {len(ready)} worker(s) x max_replica_concurrency "
                f"{self.config.max_concurrency} requests in flight"
            )
        return worker

    async def _wait_for_ready(self) -> list[WorkerProcess]:
        deadline = time.monotonic() + self.config.ready_wait
        while not self.stopping:
            ready = self.ready_workers()
            if ready:
                return ready
            if self._failing():
                break
            self._ready_changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._ready_changed.wait(), remaining)
            except asyncio.TimeoutError:
                break
        raise ApiUnavailable(self._not_ready_message())

    def _failing(self) -> bool:
        """Every slot's last start ended in a constructor failure: waiting will not help."""
        return all(w is not None and w.state in ("failed", "exited") and w.error for w in self.workers)

    def _not_ready_message(self) -> str:
        if self.stopping:
            return f"api '{self.api}' is shutting down"
        if self.error:
            return f"api '{self.api}' has no ready worker: {self.error}"
        return f"api '{self.api}' has no ready worker yet"

    # -- status ------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.stopping:
            return "stopping"
        if self.ready_workers():
            return "ready"
        if self._failing() or (self.restarts and self.last_error):
            return "failed"
        return "starting"

    @property
    def error(self) -> str | None:
        """The newest problem: a worker's constructor failure is known before its process exits."""
        current = [w.error for w in self.workers if w is not None and w.error]
        return current[0] if current else self.last_error

    def describe(self) -> dict[str, Any]:
        workers = [w.describe() for w in self.workers if w is not None]
        return {"state": self.state, "desired_workers": len(self.config.slots),
                "ready_workers": len(self.ready_workers()), "restarts": self.restarts,
                "last_error": self.error, "workers": workers}
