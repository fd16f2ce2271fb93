"""``JobManager``: one BatchAPI's or TaskAPI's jobs — submitted, resumed, reported, stopped.

It outlives reloads (its front holds it): a reload changes how the next job's workers start
(``switch``), jobs already running keep theirs. A submission is cut into batches in a thread,
stored with all of them in one transaction, and only then answered and started (``JobRun``).
At daemon start the store's ``recover()`` (``inferd.jobs.lifecycle``) has put interrupted
batches back; ``resume`` starts every unfinished job of this API again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from inferd.jobs.batch_dispatch import JobRun
from inferd.jobs.batch_launch import JobLaunch
from inferd.jobs.batch_submission import Submission, job_spec, make_batches, new_job_id, start_time_text
from inferd.jobs.job_gpus import GpuLedger
from inferd.logs import get_logger
from inferd.metrics import Metrics
from inferd.store.batch import (
    ON_COMPLETE_CLAIMED,
    STATUSES,
    STOPPED,
    WORKER_ERROR,
    BatchJob,
    BatchJobStore,
    StopResult,
)
from inferd.store.jobs import utc_now

log = get_logger()
WORKER_COUNT_KEYS = ("pending", "initializing", "running", "succeeded", "failed", "stalled", "unknown")
INTERRUPTED_COMPLETE = ("on_job_complete was running when the daemon stopped; it runs at most once, "
                        "so the job ends here")


class JobManager:
    def __init__(self, api: str, batched: bool, store: BatchJobStore, metrics: Metrics, ledger: GpuLedger,
                 max_workers: int) -> None:
        self.api = api
        self.batched = batched  # a BatchAPI's (a TaskAPI's job has no batches)
        self.store = store
        self.metrics = metrics
        self.ledger = ledger
        self.max_job_workers = max_workers  # the daemon's bound (settings.max_job_workers)
        self.launch: JobLaunch | None = None
        self.api_id = ""
        self.runs: dict[str, JobRun] = {}
        self.served: object | None = None  # the runtime whose spec starts new jobs
        self._resuming: asyncio.Task[None] | None = None

    def switch(self, launch: JobLaunch, api_id: str, served: object) -> None:
        """New jobs start with ``launch`` (a reload); running ones keep their workers."""
        self.launch, self.api_id, self.served = launch, api_id, served
        if self._resuming is None:
            self._resuming = asyncio.get_running_loop().create_task(self.resume())

    async def resume(self) -> None:
        """Every unfinished job of this API, started again (after a restart or a crash)."""
        try:
            for job in await self.store.unfinished(self.api):
                if job.id in self.runs:
                    continue
                if job.on_complete == ON_COMPLETE_CLAIMED:
                    await self.store.finish(job.id, WORKER_ERROR, INTERRUPTED_COMPLETE)
                    continue
                log.info("job_resumed", api=self.api, job_id=job.id, status=job.status,
                         finished_batches=job.counts.finished, total_batches=job.total_batches)
                self._start(job)
        except Exception as exc:  # noqa: BLE001 - logged; the jobs stay in the store for the next start
            log.error("job_resume_failed", api=self.api, error=str(exc), exc_info=exc)

    def max_workers(self) -> tuple[int, str]:
        """The most workers a job may ask for here, and why (for the 400)."""
        bound, reason = self.max_job_workers, f"max_job_workers is {self.max_job_workers}"
        per_worker = self.launch.gpus_per_worker if self.launch is not None else 0
        gpu_bound, gpu_reason = self.ledger.max_workers(per_worker)
        if gpu_bound is not None and gpu_bound < bound:
            bound, reason = gpu_bound, gpu_reason
        return bound, reason

    async def submit(self, submission: Submission) -> dict[str, Any]:
        """Store the job and all its batches, start it, and return its spec document.
        Raises SubmissionError (files that cannot be listed or read)."""
        payloads = await asyncio.to_thread(make_batches, submission)
        job_id = new_job_id()
        digest = self.api_id
        spec = job_spec(submission, job_id=job_id, api_name=self.api, api_id=digest[:16], start_time=utc_now(),
                        total_batch_count=len(payloads), spec_id=digest[16:32], handler_id=digest[32:48])
        job = await self.store.create(spec, payloads, max_receive_count=submission.max_receive_count)
        log.info("job_submitted", api=self.api, job_id=job_id, batches=len(payloads), workers=submission.workers)
        self._start(job)
        return spec

    def _start(self, job: BatchJob) -> None:
        if self.launch is None:
            raise RuntimeError(f"api {self.api} cannot start jobs: it is not deployed")
        run = JobRun(job, self.launch, self.store, self.metrics, self.ledger, self._done)
        self.runs[job.id] = run
        run.start()

    def _done(self, job_id: str) -> None:
        self.runs.pop(job_id, None)

    async def get(self, job_id: str) -> BatchJob | None:
        return await self.store.get(job_id, self.api)

    async def stop(self, job_id: str) -> StopResult:
        job = await self.store.get(job_id, self.api)
        if job is None:
            return StopResult.UNKNOWN
        result = await self.store.stop(job_id)
        run = self.runs.get(job_id)
        if result is StopResult.STOPPED:
            log.info("job_finished", api=self.api, job_id=job_id, status=STOPPED, reason="stopped by request")
            if run is not None:
                await run.stop()
        return result

    async def shutdown(self, timeout: float) -> None:
        """The daemon is stopping: jobs stay in progress in the store and resume at the next start."""
        if self._resuming is not None:
            self._resuming.cancel()
        await asyncio.gather(*(run.shutdown(timeout) for run in list(self.runs.values())), return_exceptions=True)

    async def remove(self) -> None:
        """The API left cortex.yaml: its jobs are stopped, as Cortex did when an API was deleted."""
        for job_id in list(self.runs):
            await self.stop(job_id)

    # -- reports -----------------------------------------------------------------------------

    def worker_counts(self, job_id: str) -> dict[str, int]:
        run = self.runs.get(job_id)
        if run is None:
            return {}
        counts = {key: run.worker_states.count(key) for key in WORKER_COUNT_KEYS}
        return {key: n for key, n in counts.items() if n}  # Cortex omits the zeros

    def status_of(self, job: BatchJob) -> dict[str, Any]:
        """Cortex's ``job_status`` (spec §4.4): the spec document, then status, end_time,
        batches_in_queue, batch_metrics and worker_counts (those three BatchAPI only, and
        omitted when empty). inferd adds ``reason`` (why a job is pending) and ``error`` (what
        ended it, with the traceback) when there is one."""
        status = dict(job.spec)
        status["status"] = job.status
        if job.finished_at is not None:
            status["end_time"] = start_time_text(job.finished_at)
        if self.batched:
            counts = job.counts
            status["batches_in_queue"] = counts.queued
            if job.started_at is not None:
                status["batch_metrics"] = {"succeeded": counts.succeeded, "failed": counts.failed,
                                           "average_time_per_batch": counts.average_time_per_batch}
        workers = self.worker_counts(job.id) if job.in_progress else {}
        if workers:
            status["worker_counts"] = workers
        if job.reason and job.in_progress:
            status["reason"] = job.reason
        if job.error:
            status["error"] = job.error
        return status

    async def recent(self, limit: int = 20) -> list[BatchJob]:
        return await self.store.recent(self.api, limit)

    async def progress(self) -> list[dict[str, Any]]:
        """Running jobs with batches done / total, for ``inferd status``."""
        rows = []
        for job in await self.store.unfinished(self.api):
            rows.append({"job_id": job.id, "status": job.status, "done": job.counts.finished,
                         "failed": job.counts.failed, "total": job.total_batches, "reason": job.reason})
        return rows

    async def refresh_gauges(self) -> None:
        counts = await self.store.counts_by_status(self.api)
        for status in STATUSES:
            self.metrics.batch_jobs.labels(self.api, status).set(counts.get(status, 0))
