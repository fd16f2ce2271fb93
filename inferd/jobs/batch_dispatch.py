"""``JobRun``: one BatchAPI or TaskAPI job, from its GPUs to its final status.

A job's workers exist only while it runs: ``workers`` workers from the launch's ``JobWorkers``
(inferd's worker processes running the kind's runner, or replicas of the user's containers; the
job spec file named in ``CORTEX_JOB_SPEC``/``CORTEX_TASK_SPEC``), each with its own consumer.
A BatchAPI consumer claims one batch at a time from the store and sends it as ``batch.run``
(``JobWorkers.send``); the store counts attempts, so a failed batch is queued again until its
job's ``max_receive_count`` and then counted failed. Once every batch has finished, exactly one
consumer wins ``claim_on_job_complete`` and runs ``batch.complete`` on its worker; the job is
then ``succeeded``/``completed_with_failures`` (``complete()``), or ``worker_error`` when
on_job_complete raised or its worker died under it. A TaskAPI job is one ``task.run`` call.

Worker deaths: a batch whose worker died is failed once (retried within its limit) and the
worker restarted, up to ``MAX_RESTARTS``; a worker killed by SIGKILL that inferd did not send
(the kernel's OOM killer, in practice) ends the job ``worker_oom``; a Handler constructor that
raises ends it ``worker_error`` with the traceback. ``timeout`` (from submission) ends it
``timed_out``, DELETE ``stopped``; either kills its workers at once.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

from inferd.jobs.batch_launch import (
    COMPLETE_METHOD,
    RUN_METHOD,
    TASK_METHOD,
    JobLaunch,
    Outcome,
    either,
    oom_text,
    write_spec,
)
from inferd.jobs.job_gpus import GpuLedger
from inferd.logs import get_logger
from inferd.metrics import Metrics
from inferd.store.batch import (
    PENDING,
    RUNNING,
    SUCCEEDED,
    TIMED_OUT,
    UNEXPECTED_ERROR,
    WORKER_ERROR,
    WORKER_OOM,
    Batch,
    BatchJob,
    BatchJobStore,
)
from inferd.store.jobs import utc_now
from inferd.worker.backend import WorkerBackend, WorkerGone, exit_reason

log = get_logger()
MAX_RESTARTS = 3     # per worker slot: a worker that keeps dying ends the job worker_error
IDLE_POLL = 1.0      # an idle consumer looks again this often, in case a wake-up was missed
GPU_POLL = 5.0


class JobEnded(Exception):
    """The job reached its final status (this consumer's work is over)."""


class WorkerLost(Exception):
    def __init__(self, reason: str, oom: bool) -> None:
        super().__init__(reason)
        self.oom = oom


class JobRun:
    def __init__(self, job: BatchJob, launch: JobLaunch, store: BatchJobStore, metrics: Metrics, ledger: GpuLedger,
                 on_done: Callable[[str], None]) -> None:
        self.job = job
        self.id = job.id
        self.launch = launch
        self.store = store
        self.metrics = metrics
        self.ledger = ledger
        self.on_done = on_done
        self.worker_states = ["pending"] * job.workers  # Cortex's worker_counts, per slot
        self.workers: list[WorkerBackend | None] = [None] * job.workers
        self.ended: asyncio.Future[str] | None = None
        self.draining = False  # the daemon is stopping: finish the batch in hand, claim no more
        self._killed: set[int] = set()  # pids inferd killed: their SIGKILL is no OOM
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.log = log.bind(api=launch.api, job_id=job.id)
        self._batches = metrics.batches
        self._duration = metrics.batch_duration.labels(launch.api)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.ended = asyncio.get_running_loop().create_future()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """DELETE: the store already says stopped; the workers go now."""
        self._end("stopped")
        await self.wait()

    async def shutdown(self, timeout: float) -> None:
        """The daemon is stopping: batches in hand get ``timeout`` to finish, the store keeps the
        job in progress (``recover()`` resumes it at the next start)."""
        self.draining = True
        self._progress.set()
        if self.launch.single_call or not any(self.workers):  # a task starts over anyway; or it still waits for GPUs
            self._end("shutdown")
        if self._task is not None:
            _, late = await asyncio.wait({self._task}, timeout=timeout)
            if late:
                self._end("shutdown")
        await self.wait()

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def _end(self, outcome: str) -> None:
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(outcome)

    async def _finish(self, status: str, error: str | None = None) -> None:
        """A final status decided here (first outcome wins, in the store as here)."""
        if await self.store.finish(self.id, status, error):
            self.log.info("job_finished", status=status, error=(error or "").split("\n", 1)[0] or None)
        self._end(status)

    # -- the run -----------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self.ended is not None
        consumers: list[asyncio.Task[None]] = []
        try:
            devices = await self._gpus()
            if devices is None:
                return
            spec_path = write_spec(self.launch.jobs_dir, self.job)
            if not await self.store.set_status(self.id, RUNNING):
                return  # stopped (or timed out) while it waited
            self.log.info("job_running", workers=self.job.workers, gpus=[list(d) for d in devices])
            loop = asyncio.get_running_loop()
            consumers = [loop.create_task(self._slot(i, devices[i], spec_path)) for i in range(self.job.workers)]
            # every consumer returns once the job ended, or (the daemon stopping) once it put its batch down
            returned = asyncio.gather(*consumers, return_exceptions=True)
            await asyncio.wait(either(self.ended, returned), timeout=self._time_left(), return_when=asyncio.FIRST_COMPLETED)
            if not self.ended.done():
                if returned.done():
                    self._end("drained")
                else:
                    await self._finish(TIMED_OUT, f"the job ran past its timeout of {self.job.timeout}s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a fault of ours must end the job, not hang it
            self.log.error("job_run_failed", error=str(exc), exc_info=exc)
            await self.store.finish(self.id, UNEXPECTED_ERROR, f"{type(exc).__name__}: {exc}")
            self._end(UNEXPECTED_ERROR)
        finally:
            await self._teardown(consumers)

    def _time_left(self) -> float | None:
        if self.job.timeout is None:
            return None
        return max(0.0, self.job.timeout - (utc_now() - self.job.created_at).total_seconds())

    async def _gpus(self) -> list[tuple[int, ...]] | None:
        """Devices for every worker, waiting (pending, with the reason) while they are held by
        other jobs; None if the job ended meanwhile."""
        assert self.ended is not None
        waited = False
        while True:
            taken = self.ledger.take(self.id, self.job.workers, self.launch.gpus_per_worker)
            if not isinstance(taken, str):
                return taken
            if not waited:
                self.log.info("job_waiting_for_gpus", reason=taken)
                await self.store.set_status(self.id, PENDING, taken)
                waited = True
            left = self._time_left()
            if left is not None and left <= 0:
                await self._finish(TIMED_OUT, f"the job waited for GPUs past its timeout of {self.job.timeout}s")
                return None
            release = asyncio.ensure_future(self.ledger.wait_release(min(GPU_POLL, left or GPU_POLL)))
            await asyncio.wait(either(release, self.ended), return_when=asyncio.FIRST_COMPLETED)
            release.cancel()
            if self.ended.done():
                return None

    async def _teardown(self, consumers: list[asyncio.Task[None]]) -> None:
        assert self.ended is not None
        graceful = self.ended.done() and self.ended.result() in ("completed", "drained")
        if not graceful:
            for worker in self.workers:
                self._kill(worker)
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        await asyncio.gather(*(w.stop(self.launch.stop_timeout) for w in self.workers if w is not None),
                             return_exceptions=True)
        self.ledger.release(self.id)
        shutil.rmtree(self.launch.jobs_dir / self.id, ignore_errors=True)
        self.on_done(self.id)

    def _kill(self, worker: WorkerBackend | None) -> None:
        if worker is not None and worker.pid is not None:
            self._killed.add(worker.pid)
            worker.kill()

    # -- one worker slot ---------------------------------------------------------------------

    async def _slot(self, slot: int, gpus: tuple[int, ...], spec_path: Path) -> None:
        assert self.ended is not None
        restarts = 0
        while not self.ended.done():
            worker = self.launch.workers.create(slot, gpus, spec_path)
            self.workers[slot] = worker
            self.worker_states[slot] = "initializing"
            try:
                await self._serve(worker)
                self.worker_states[slot] = "succeeded"
                return
            except JobEnded:
                if self.worker_states[slot] != "failed":
                    self.worker_states[slot] = "succeeded"
                return
            except (OSError, ValueError) as exc:  # cannot even start the process (fds, a bad environment)
                self.worker_states[slot] = "failed"
                await self._finish(UNEXPECTED_ERROR, f"cannot start a worker: {type(exc).__name__}: {exc}")
                return
            except WorkerLost as lost:
                self.worker_states[slot] = "failed"
                if lost.oom:
                    await self._finish(WORKER_OOM, str(lost))
                    return
                restarts += 1
                if self.launch.single_call or restarts > MAX_RESTARTS:
                    await self._finish(WORKER_ERROR, str(lost))
                    return
                self.log.warning("job_worker_restarting", slot=slot, reason=str(lost), restart=restarts)

    async def _serve(self, worker: WorkerBackend) -> None:
        await worker.start()
        loop = asyncio.get_running_loop()
        exited = loop.create_task(worker.wait_exit())
        beats = loop.create_task(self._heartbeat(worker, exited))
        try:
            ready = loop.create_task(worker.wait_ready())
            await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not (ready.done() and ready.result()):
                ready.cancel()
                await self._constructor_failed(worker, exited)
            self.worker_states[worker.slot] = "running"
            if self.launch.single_call:
                await self._task_call(worker, exited)
            else:
                await self._consume(worker, exited)
        finally:
            beats.cancel()
            if not exited.done():
                exited.cancel()

    async def _constructor_failed(self, worker: WorkerBackend, exited: asyncio.Task[int | None]) -> None:
        code = await exited
        if self._oom(worker, code):
            raise WorkerLost(oom_text(worker, code), oom=True)
        detail = worker.error or f"worker {exit_reason(code)} before it was ready"
        if worker.init_traceback:
            detail += "\n" + worker.init_traceback
        self.worker_states[worker.slot] = "failed"
        await self._finish(WORKER_ERROR, detail)  # a constructor that raises would raise again
        raise JobEnded()

    async def _heartbeat(self, worker: WorkerBackend, exited: asyncio.Task[int | None]) -> None:
        interval = min(1.0, self.launch.liveness_timeout / 4)
        while not exited.done():
            worker.ping()
            await asyncio.wait({exited}, timeout=interval)
            silent = time.monotonic() - worker.last_seen
            if silent > self.launch.liveness_timeout and worker.state in ("starting", "ready"):
                if worker.pid is not None:
                    self._killed.add(worker.pid)
                worker.abort(f"no heartbeat for {silent:.0f}s (worker_liveness_timeout "
                             f"{self.launch.liveness_timeout:g}s): the worker is hung")
                return

    async def _call(self, worker: WorkerBackend, method: str, batch: Batch | None,
                    exited: asyncio.Task[int | None]) -> Outcome:
        """One call on ``worker``; ``WorkerLost`` when the worker died under it."""
        try:
            return await self.launch.workers.send(worker, self.id, method, batch, exited)
        except WorkerGone:
            pass
        code = await exited
        oom = self._oom(worker, code)
        raise WorkerLost(oom_text(worker, code) if oom else
                         f"worker {worker.pid} {worker.error or exit_reason(code)} while running {method}", oom=oom)

    def _oom(self, worker: WorkerBackend, code: int | None) -> bool:
        return code == -signal.SIGKILL and worker.pid not in self._killed

    # -- BatchAPI ----------------------------------------------------------------------------

    async def _consume(self, worker: WorkerBackend, exited: asyncio.Task[int | None]) -> None:
        worker_id = f"{self.id}/{worker.slot}/{worker.pid}"
        succeeded: int | None = None  # the last batch, its success not yet written
        while not self.draining:
            self._progress.clear()
            if succeeded is None:
                claimed = await self.store.claim(self.id, worker_id)
            else:  # one commit for both: the success written (even if we are cancelled), the next batch claimed
                _, claimed = await asyncio.gather(asyncio.shield(self.store.succeed_batch(self.id, succeeded)),
                                                  self.store.claim(self.id, worker_id))
                succeeded = None
                self._progress.set()
            if not claimed:
                if await self._idle(worker, exited):
                    raise JobEnded()
                continue
            batch = claimed[0]
            try:
                outcome = await self._call(worker, RUN_METHOD, batch, exited)
            except WorkerLost as lost:
                await self._batch_failed(batch, str(lost))
                raise
            if outcome.ok:
                succeeded = batch.index
                self._batches.labels(self.launch.api, "succeeded").inc()
                self._duration.observe(float(outcome.seconds or 0.0))
            else:
                await self._batch_failed(batch, outcome.error)
        if succeeded is not None:  # draining: the last success is written before the worker goes
            await self.store.succeed_batch(self.id, succeeded)
            self._progress.set()

    async def _batch_failed(self, batch: Batch, error: str) -> None:
        status = await self.store.fail_batch(self.id, batch.index, error)
        outcome = "failed" if status == "failed" else "retried"
        self._batches.labels(self.launch.api, outcome).inc()
        self.log.warning("batch_failed", batch_id=batch.id, attempt=batch.attempts, outcome=outcome,
                         error=error.split("\n", 1)[0])
        self._progress.set()

    async def _idle(self, worker: WorkerBackend, exited: asyncio.Task[int | None]) -> bool:
        """Nothing to claim. True once the job is over for this consumer: every batch finished
        and on_job_complete ran (here or on another worker)."""
        assert self.ended is not None
        counts = await self.store.counts(self.id)
        if counts.queued or counts.running:  # others' batches in flight may still fail and come back
            waiter = asyncio.ensure_future(self._progress.wait())
            await asyncio.wait(either(waiter, self.ended), timeout=IDLE_POLL, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            return self.ended.done()
        if not await self.store.claim_on_job_complete(self.id):
            await asyncio.wait({self.ended}, timeout=IDLE_POLL)
            return self.ended.done() or not (await self._still_running())
        try:
            outcome = await self._call(worker, COMPLETE_METHOD, None, exited)
        except WorkerLost as lost:
            # the claim is spent (no other worker may run on_job_complete): the job ends here, or
            # every consumer would wait for an outcome no one records
            self.worker_states[worker.slot] = "failed"
            await self.store.record_on_job_complete(self.id, f"on_job_complete failed: {lost}")
            await self._finish(WORKER_OOM if lost.oom else WORKER_ERROR, f"on_job_complete failed: {lost}")
            return True
        if outcome.ok:
            await self.store.record_on_job_complete(self.id)
            status = await self.store.complete(self.id)
            self.log.info("job_finished", status=status, on_job_complete=outcome.ran)
            self._end("completed")
        else:
            error = "on_job_complete failed: " + outcome.error
            await self.store.record_on_job_complete(self.id, error)
            await self._finish(WORKER_ERROR, error)
        return True

    async def _still_running(self) -> bool:
        job = await self.store.get(self.id)
        return job is not None and job.status == RUNNING

    # -- TaskAPI -----------------------------------------------------------------------------

    async def _task_call(self, worker: WorkerBackend, exited: asyncio.Task[int | None]) -> None:
        outcome = await self._call(worker, TASK_METHOD, None, exited)
        if outcome.ok:
            if await self.store.finish(self.id, SUCCEEDED):
                self.log.info("job_finished", status=SUCCEEDED, seconds=outcome.seconds)
            self._end("completed")
        else:
            self.worker_states[worker.slot] = "failed"
            await self._finish(WORKER_ERROR, outcome.error)
        raise JobEnded()
