"""``AsyncDispatcher``: one AsyncAPI's queued jobs, fed to its workers in submission order.

One consumer per worker slot, each running one job at a time (Cortex ran one workload per
replica); a container replica takes ``pod.max_concurrency`` consumers. A reply is the job's
result when it is 200 (a container's must also be JSON: ``check``). A job whose worker dies
goes back to the queue once; the store fails it on its second interruption, so a poison job
cannot kill workers forever. A worker that lives on but gave no answer (``NoReply``: a
container's server hung up) fails the job at once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from inferd.logs import get_logger
from inferd.store import AsyncJobStore, Job, UnknownJob
from inferd.worker import protocol
from inferd.worker.backend import Response
from inferd.worker.pool import ApiUnavailable, CallTimedOut, WorkerDied, WorkerPool

log = get_logger()
IDLE_POLL = 1.0  # a missed wake-up costs at most this long


class NoReply(Exception):
    """The worker lives but gave the job no answer (a container's server hung up, or refused the
    connection): the job fails with this reason, and is not run again as after a worker's death."""


def reply_error(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode("utf-8", "replace")[:1000]


class AsyncDispatcher:
    def __init__(self, api: str, store: AsyncJobStore, pool: WorkerPool, slots: int, per_slot: int = 1,
                 check: Callable[[Response], str | None] | None = None) -> None:
        self.api = api
        self.store = store
        self.pool = pool
        self.slots = slots
        self.per_slot = per_slot  # jobs one worker runs at once
        self.check = check        # why a reply is no result (None: it is), beyond its status
        self.stopping = False
        self._wakeup = asyncio.Event()
        self._consumers: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._claims = 0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._consumers = [loop.create_task(self._consume(slot)) for slot in range(self.slots)
                           for _ in range(self.per_slot)]

    def notify(self) -> None:
        """A job was submitted: wake an idle consumer now instead of at its next poll."""
        self._wakeup.set()

    async def stop(self, timeout: float) -> None:
        """Stop claiming; jobs already running get ``timeout`` to finish, the rest stay
        in_progress and are requeued by ``recover`` at the next start."""
        self.stopping = True
        self._wakeup.set()
        deadline = asyncio.get_running_loop().time() + timeout
        while self._claims:  # a claim being committed becomes a running job: let it
            await asyncio.sleep(0.01)
        if self._running:
            await asyncio.wait(set(self._running), timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
        for task in self._consumers:  # now only waiting (for a worker or for work): safe to cancel
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)

    async def _consume(self, slot: int) -> None:
        while not self.stopping:
            try:
                await self._step(slot)
            except ApiUnavailable:
                return
            except Exception as exc:  # noqa: BLE001 - e.g. a busy or full disk: retry, never die
                log.error("async_dispatch_failed", api=self.api, slot=slot, error=str(exc), exc_info=exc)
                await asyncio.sleep(IDLE_POLL)

    async def _step(self, slot: int) -> None:
        worker = self.pool.workers[slot]
        if worker is None or worker.state != "ready":
            try:
                # bounded: a container replica back in rotation (restarted in place) is no pool event
                await asyncio.wait_for(self.pool.wait_slot_ready(slot), IDLE_POLL)
            except TimeoutError:
                return
        self._wakeup.clear()
        self._claims += 1
        try:
            job = await self.store.claim_next(self.api)
        finally:
            self._claims -= 1
        if job is None:
            try:
                await asyncio.wait_for(self._wakeup.wait(), IDLE_POLL)
            except TimeoutError:
                pass
            return
        # shielded: stopping the dispatcher must not abandon a job mid-call
        task = asyncio.get_running_loop().create_task(self._run(slot, job))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        await asyncio.shield(task)

    async def _run(self, slot: int, job: Job) -> None:
        call = protocol.Call(0, job.id, "post", job.content_type, body=job.payload or b"")
        try:
            reply = await self.pool.call_slot(slot, call)
        except (WorkerDied, ApiUnavailable, CallTimedOut) as exc:
            status = await self.store.requeue(job.id)
            log.warning("async_job_interrupted", api=self.api, request_id=job.id, error=str(exc), status=status)
            return
        except NoReply as exc:
            await self._fail(job, str(exc))
            return
        try:
            if self.check is not None:
                problem = self.check(reply)
            else:
                problem = None if reply.status == 200 else reply_error(reply.body)
            if problem is None:
                await self.store.complete(job.id, reply.body)
            else:
                await self._fail(job, problem, reply.status)
        except UnknownJob:
            log.warning("async_job_vanished", api=self.api, request_id=job.id)  # swept while running

    async def _fail(self, job: Job, problem: str, status: int | None = None) -> None:
        try:
            await self.store.fail(job.id, problem)
        except UnknownJob:
            log.warning("async_job_vanished", api=self.api, request_id=job.id)  # swept while running
            return
        log.info("async_job_failed", api=self.api, request_id=job.id, status=status, error=problem)
