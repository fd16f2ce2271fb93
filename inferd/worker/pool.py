"""``WorkerPool``: the workers of one API — spawn, readiness, liveness, dispatch, restart, drain.

Each worker slot has its own supervising task: start the worker (any ``WorkerBackend``), wait
for the Handler to be constructed, serve until it exits, then restart with exponential backoff
(a worker that served for a while restarts at once). While every slot is in backoff, calls get
``ApiUnavailable`` at once, naming the failure: a worker that keeps dying must not make each
call wait ``ready_wait``. While a worker lives, the supervisor pings it and aborts it when no
heartbeat came back for ``liveness_timeout``. Dispatch picks the ready worker with the fewest
calls in flight; ``max_replica_concurrency`` bounds calls per worker, beyond it the caller gets
``ApiUnavailable`` (HTTP 503). A call that outlives ``request_timeout`` raises
``CallTimedOut`` (HTTP 504) and its worker is replaced.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from inferd.logs import get_logger
from inferd.worker import protocol
from inferd.worker.backend import BackendFactory, Response, WorkerBackend, WorkerGone, exit_reason
from inferd.worker.models.report import merge_reports
from inferd.worker.stream import StreamCall

T = TypeVar("T")
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 10.0  # a worker that served this long restarts without backoff


class ApiUnavailable(Exception):
    """No worker can take this call now (starting, failed, dead mid-call, or saturated)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds until the next worker start, when one is scheduled


class WorkerDied(ApiUnavailable):
    """The worker handling the call exited before answering it."""


class CallTimedOut(Exception):
    """The handler did not answer within ``handler.request_timeout``; its worker is replaced."""


@dataclass(frozen=True)
class WorkerSlot:
    """What one worker of the pool is started with."""

    env: dict[str, str]
    gpus: tuple[int, ...]


@dataclass(frozen=True)
class Backoff:
    """A slot waiting to start its next worker after one failed."""

    reason: str
    until: float  # monotonic time of the next start


@dataclass
class PoolConfig:
    api: str
    slots: list[WorkerSlot]
    backend: BackendFactory       # slot -> a new worker, not started
    max_concurrency: int          # per worker
    ready_wait: float = 30.0      # how long a call waits for a first ready worker
    stop_timeout: float = 30.0
    liveness_timeout: float = 30.0      # no heartbeat answer for this long: the worker is hung
    request_timeout: float | None = None  # handler.request_timeout: None = no limit
    on_restart: Callable[[], None] = field(default=lambda: None)
    on_change: Callable[[], None] = field(default=lambda: None)  # a worker became ready or left
    on_log: Callable[[str], None] = field(default=lambda line: None)  # a JSON line for the API's own log

    @property
    def heartbeat_interval(self) -> float:
        return min(1.0, self.liveness_timeout / 4)


class WorkerPool:
    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.api = config.api
        self.workers: list[WorkerBackend | None] = [None] * len(config.slots)
        self.restarts = 0
        self.last_error: str | None = None
        self.stopping = False
        self.info: dict[str, Any] | None = None  # the first ready worker's report (e.g. its HTTP verbs)
        self._backoff: list[Backoff | None] = [None] * len(config.slots)
        self._logged_failure: tuple[str, str | None] | None = None  # (error, traceback) logged in full last
        self._ready_changed = asyncio.Event()  # a worker became ready, or a slot went into backoff
        self._supervisors: list[asyncio.Task[None]] = []
        self._retiring: set[WorkerBackend] = set()  # replaced on purpose: restarted at once, not a failure
        self._replacing: set[int] = set()  # slots whose retired worker's successor is not ready yet
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

    def retire(self, worker: WorkerBackend, reason: str, drain: float | None = 0.0, abort: bool = False) -> None:
        """Replace ``worker`` on purpose (its handler asked to be refreshed, or a job on it must
        be stopped): a new one starts at once, this counts as no failure, and the API stays
        ``ready`` meanwhile (queued work waits for the successor). ``drain`` seconds for its
        other calls, None to kill it now, or ``abort`` to kill it with its stacks in the log."""
        if worker.state not in ("starting", "ready") or worker in self._retiring:
            return
        self._retiring.add(worker)
        self._replacing.add(worker.slot)
        self.log.info("worker_retired", pid=worker.pid, slot=worker.slot, reason=reason)
        if abort:
            worker.abort(reason)
        elif drain is None:
            worker.kill()
        else:
            asyncio.get_running_loop().create_task(worker.stop(drain))

    async def _supervise(self, slot: int) -> None:
        failures = 0
        while not self.stopping:
            worker = self.config.backend(slot)
            self.workers[slot] = worker
            self._backoff[slot] = None
            try:
                await worker.start()
                exited = asyncio.get_running_loop().create_task(worker.wait_exit())
                try:
                    ready = await self._until_ready(worker, exited)
                    self._replacing.discard(slot)  # the successor is ready, or failed: no longer planned
                    if ready:
                        # one pool runs one handler version: any worker's report is the pool's
                        self.info = self.info if self.info is not None else worker.info
                        self._logged_failure = None  # the same failure later is news again
                        self._ready_changed.set()
                        self.config.on_change()
                        self.log.info("worker_ready", pid=worker.pid, slot=slot)
                    code = await self._watch(worker, exited)
                finally:
                    exited.cancel()
                self.config.on_change()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the slot must keep trying, never go dark
                ready, code = False, None
                worker.error = f"cannot start worker: {type(exc).__name__}: {exc}"
                worker.kill()
            if self.stopping:
                return
            if worker in self._retiring:
                self._retiring.discard(worker)
                failures = 0
                continue
            self.restarts += 1
            self.config.on_restart()
            served = time.monotonic() - worker.started_at
            failures = 0 if ready and served >= HEALTHY_AFTER else failures + 1
            delay = 0.0 if failures == 0 else min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
            if ready:
                self.last_error = worker.error or f"worker {worker.pid} {exit_reason(code)}"
                self.log.warning("worker_exited", pid=worker.pid, slot=slot, code=code, ready=ready,
                                 restart_in=delay, error=self.last_error)
            else:
                self.last_error = worker.error or f"worker {exit_reason(code)} before it was ready"
                self._log_start_failure(worker, slot, code, failures, delay)
            if delay:
                self._backoff[slot] = Backoff(self.last_error, time.monotonic() + delay)
                self._ready_changed.set()  # callers waiting for this slot learn why, now
            await asyncio.sleep(delay)

    def _log_start_failure(self, worker: WorkerBackend, slot: int, code: int | None, attempt: int,
                           delay: float) -> None:
        """One event per failed start. A crash loop repeats its traceback every backoff: it is
        logged in full once, and again only when it changes."""
        assert self.last_error is not None
        failure = (self.last_error, worker.init_traceback)
        fields: dict[str, Any] = {"pid": worker.pid, "slot": slot, "code": code, "attempt": attempt,
                                  "restart_in": delay, "error": self.last_error}
        if failure == self._logged_failure:
            fields["same_failure_again"] = True
        else:
            self._logged_failure = failure
            if worker.init_traceback is not None:
                fields["traceback"] = worker.init_traceback
        self.log.error("handler_init_failed", **fields)
        # `inferd logs <api>` shows the workers' own lines: the reason they never served belongs there
        self.config.on_log(json.dumps({"event": "handler_init_failed", "level": "error", "api": self.api, **fields}))

    async def _until_ready(self, worker: WorkerBackend, exited: asyncio.Task[int | None]) -> bool:
        """Construction can take minutes (models load): heartbeats, not a deadline, tell a slow
        start from a hung one."""
        ready = asyncio.ensure_future(worker.wait_ready())
        try:
            while not ready.done():
                if exited.done() or not await self._beat(worker, {ready, exited}):
                    return False
            return ready.result()
        finally:
            ready.cancel()

    async def _watch(self, worker: WorkerBackend, exited: asyncio.Task[int | None]) -> int | None:
        """Until the worker exits; one that stops answering heartbeats is aborted (and exits)."""
        while not exited.done():
            await self._beat(worker, {exited})
        return exited.result()

    async def _beat(self, worker: WorkerBackend, wake: set[asyncio.Future[Any]]) -> bool:
        """One heartbeat period; False once the worker is found hung (and aborted)."""
        worker.ping()
        await asyncio.wait(wake, timeout=self.config.heartbeat_interval, return_when=asyncio.FIRST_COMPLETED)
        silent = time.monotonic() - worker.last_seen
        if silent > self.config.liveness_timeout and worker.state in ("starting", "ready"):
            worker.abort(f"no heartbeat for {silent:.0f}s (worker_liveness_timeout "
                         f"{self.config.liveness_timeout:g}s): the worker is hung")
            return False
        return True

    # -- dispatch ----------------------------------------------------------------------------

    def ready_workers(self) -> list[WorkerBackend]:
        return [w for w in self.workers if w is not None and w.state == "ready"]

    async def call(self, call: protocol.Call) -> Response:
        return await self._call_on(await self._pick(), call)

    async def _call_on(self, worker: WorkerBackend, call: protocol.Call) -> Response:
        try:
            return await self.bounded(worker.call(call), worker.abort, f"request {call.rid}")
        except WorkerGone as exc:
            raise WorkerDied(str(exc)) from None

    async def bounded(self, answer: Awaitable[T], abort: Callable[[str], None], what: str) -> T:
        """``answer`` within ``handler.request_timeout`` (when the API sets one); past it the
        worker is aborted through ``abort`` and ``CallTimedOut`` raised. Every front's calls
        (HTTP, async jobs, unary gRPC) are bounded here."""
        timeout = self.config.request_timeout
        if timeout is None:
            return await answer
        try:
            # not wait_for: on 3.11 it runs the call in a new task that starts a loop turn
            # later, so concurrent calls would all pass admission before in_flight counts them
            async with asyncio.timeout(timeout):
                return await answer
        except TimeoutError:
            reason = f"{what} exceeded handler.request_timeout ({timeout:g}s)"
            abort(reason)
            raise CallTimedOut(f"api '{self.api}': {reason}; its worker is being replaced") from None

    async def wait_all_ready(self, timeout: float) -> str | None:
        """Until every worker is ready (None), or why that will not happen (an error text)."""
        deadline = time.monotonic() + timeout
        while not self.stopping:
            self._ready_changed.clear()
            if len(self.ready_workers()) == len(self.config.slots):
                return None
            failure = self._start_failure()
            if failure is not None:
                return failure
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return f"workers not ready after {timeout:.0f}s"
            try:
                await asyncio.wait_for(self._ready_changed.wait(), min(remaining, 0.5))
            except TimeoutError:
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

    async def call_slot(self, slot: int, call: protocol.Call) -> Response:
        worker = self.workers[slot]
        if worker is None:
            raise ApiUnavailable(self._not_ready_message())
        return await self._call_on(worker, call)

    def open_stream_on(self, worker: WorkerBackend, opened: protocol.Open) -> StreamCall:
        """A streamed call on this very worker (job runners bind their consumers to workers)."""
        try:
            return worker.open_stream(opened)
        except WorkerGone as exc:
            raise WorkerDied(str(exc)) from None

    async def open_stream(self, opened: protocol.Open) -> StreamCall:
        worker = await self._pick()
        try:
            return worker.open_stream(opened)
        except WorkerGone as exc:
            raise ApiUnavailable(str(exc)) from None

    async def wait_info(self) -> dict[str, Any]:
        """The ready report of this pool's handler, waiting for a first ready worker."""
        await self._wait_for_ready()
        info = self.info
        if info is None:
            raise ApiUnavailable(self._not_ready_message())
        return info

    async def wait_ready_workers(self) -> list[WorkerBackend]:
        """The ready workers, waiting up to ``ready_wait`` for a first one (``ApiUnavailable``
        when none comes); for fronts that pick and admit themselves (container replicas)."""
        return self.ready_workers() or await self._wait_for_ready()

    async def _pick(self) -> WorkerBackend:
        ready = self.ready_workers() or await self._wait_for_ready()
        worker = min(ready, key=lambda w: w.in_flight)
        if worker.in_flight >= self.config.max_concurrency:
            raise ApiUnavailable(
                f"api '{self.api}' is at capacity: {len(ready)} worker(s) x max_replica_concurrency "
                f"{self.config.max_concurrency} requests in flight"
            )
        return worker

    async def _wait_for_ready(self) -> list[WorkerBackend]:
        deadline = time.monotonic() + self.config.ready_wait
        while not self.stopping:
            ready = self.ready_workers()
            if ready:
                return ready
            if self._failing():
                retry_after = self._retry_after()
                raise ApiUnavailable(self._not_ready_message(retry_after), retry_after)
            self._ready_changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._ready_changed.wait(), remaining)
            except TimeoutError:
                break
        raise ApiUnavailable(self._not_ready_message())

    def _failing(self) -> bool:
        """Every slot is in backoff after a failure, or has a constructor failure reported
        (its exit follows): waiting will not help."""
        return all(backoff is not None or (worker is not None and worker.state == "failed")
                   for backoff, worker in zip(self._backoff, self.workers, strict=True))

    def _start_failure(self) -> str | None:
        """Why some slot failed to get a ready worker, if one did (a reload or the start stops waiting)."""
        if any(w is not None and w.state == "failed" for w in self.workers):
            return self.error or "a worker failed to start"
        return next((b.reason for b in self._backoff if b is not None), None)

    def _retry_after(self) -> float | None:
        """Seconds until the next worker start, for a caller told to come back."""
        starts = [b.until for b in self._backoff if b is not None]
        return max(0.0, min(starts) - time.monotonic()) if starts else None

    def _not_ready_message(self, retry_after: float | None = None) -> str:
        if self.stopping:
            return f"api '{self.api}' is shutting down"
        if self.error and retry_after is not None:
            return f"api '{self.api}' has no ready worker: {self.error}; next start in {max(1, math.ceil(retry_after))}s"
        if self.error:
            return f"api '{self.api}' has no ready worker: {self.error}"
        return f"api '{self.api}' has no ready worker yet"

    # -- status ------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self.stopping:
            return "stopping"
        if self.ready_workers() or self._replacing:
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
        described = {"state": self.state, "desired_workers": len(self.config.slots),
                     "ready_workers": len(self.ready_workers()), "restarts": self.restarts,
                     "last_error": self.error, "workers": workers}
        models = merge_reports(w.get("models") for w in workers)
        if models is not None:  # multi_model_reloading
            described["models"] = models
        return described
