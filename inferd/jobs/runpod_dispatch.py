"""``RunPodDispatcher``: one RunPod API's queued jobs, fed to its workers as the platform would.

Each worker slot has one consumer. It takes as many jobs at once as the worker's handler allows
(``concurrency_modifier``; sync handlers one at a time, as in the SDK), opens one streamed call
per job and writes what comes back into the store: stream items, progress, then the result the
SDK would have posted. A job whose worker dies goes back to the queue once; the store fails it
on its second interruption.

While a sync handler's jobs are short, its worker is handed a few jobs more than it runs at
once (``PIPELINE``); it runs them one after another, in the order sent, so it never sits idle
waiting for the daemon to see one result and send the next job. Such a job is IN_PROGRESS from
the moment it is handed over, but its execution timeout counts from the moment the job before
it ended; if its worker goes away before it began, it goes back to the queue uncounted.

A ``/runsync`` job is not queued in the store (``run_unqueued``): it goes to a worker with a
seat free, or waits in a line in memory for the next seat to free, and its row is written once,
already final, when it ends. Its client waits for that commit, so every answered job is stored,
with one write instead of three. Whatever needs the row sooner (its client's wait running out,
progress, a stream item, a timeout, a dying worker, the daemon stopping) writes it first, as it
stands (IN_QUEUE in the line, IN_PROGRESS once handed over), and the job goes on as a queued or
claimed one. Order is kept across the two: once a job is queued in the store (or an idle poll
passes, for jobs queued elsewhere), the line's jobs that came before it take the next seats,
then claims take them until one comes back short, then the line's later jobs. A full line
(LINE_JOBS, LINE_BYTES) queues /runsync jobs in the store.

Stopping a running job (``/cancel``, ``policy.executionTimeout``) cancels its task in the worker
when the handler is async; a sync handler cannot be interrupted, so its worker is replaced.
So is a worker whose result says ``stopPod`` (``refresh_worker``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inferd.logs import get_logger
from inferd.metrics import Metrics
from inferd.store.runpod import COMPLETED, FAILED, IN_PROGRESS, IN_QUEUE, TIMED_OUT, RunPodJob, RunPodJobStore
from inferd.worker import protocol
from inferd.worker.backend import WorkerBackend
from inferd.worker.pool import ApiUnavailable, WorkerDied, WorkerPool
from inferd.worker.stream import StreamCall

log = get_logger()
IDLE_POLL = 1.0  # a missed wake-up costs at most this long
# asyncio may fire a timer up to its clock resolution early, and executionTime is whole ms of the
# store's (wall) clock: without this a TIMED_OUT job could report 4999 ms of a 5000 ms timeout
TIMER_SLACK = 0.005
SWEEP_INTERVAL = 60.0  # seconds between deletions of this API's jobs past their retention or ttl
ASYNC_KINDS = ("async", "async_generator", "sdk")  # jobs cancelled in place (sdk: the SDK's job-stop)
SERIAL_KINDS = ("sync", "generator")        # handlers a worker runs one at a time
PIPELINE = 8            # jobs handed to a serial worker beyond the one it runs
PIPELINE_BELOW = 0.05   # seconds: the handler's recent mean time under which its workers get them
JOB_METHOD = "runpod.job"
LINE_JOBS = 512                 # unqueued /runsync jobs waiting in memory for a seat, at most
LINE_BYTES = 64 * 1024 * 1024   # and their inputs, at most; beyond either, they are queued

JobFinished = Callable[[RunPodJob], None]


@dataclass
class RunningJob:
    job: RunPodJob
    worker: WorkerBackend
    stream: StreamCall
    release: Callable[[], None]     # frees its seat on the worker (once; again is a no-op)
    in_order: deque[RunningJob]     # its serial worker's jobs, in the order it runs them
    serial: bool                    # its worker runs one job at a time (in in_order)
    began: bool = False             # the worker is running it (not waiting behind another job)
    stop_reason: str | None = None  # set when inferd stopped it (cancel, timeout): its result is not used
    expires_at: float | None = None  # its execution timeout (loop time), once it began
    # while a task follows it: that task's timeout; before (``follow_later``), a timer calling on_expiry
    deadline: asyncio.Timeout | None = None
    on_expiry: Callable[[], None] | None = None
    timer: asyncio.TimerHandle | None = None
    done: asyncio.Future[None] | None = None  # without a task of its own: done once it has ended

    def begin(self) -> None:
        self.began = True
        loop = asyncio.get_running_loop()
        self.expires_at = loop.time() + self.job.execution_timeout_ms / 1000 + TIMER_SLACK
        if self.deadline is not None:
            self.deadline.reschedule(self.expires_at)
        elif self.on_expiry is not None:
            self.timer = loop.call_at(self.expires_at, self.on_expiry)

    def begin_if_first(self) -> None:
        """Begin, unless its serial worker runs another job before it (which begins it when done)."""
        if not self.began and (not self.serial or self.in_order[0] is self):
            self.begin()

    def detach(self) -> None:
        """No longer followed from callbacks: no listener, no timer."""
        self.stream.listener = None
        self.on_expiry = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


@dataclass
class Unqueued:
    """A job run without queueing, from its hand-over until its row is committed."""

    job: RunPodJob
    place: int  # its place in arrival order among the line's jobs
    row: asyncio.Future[None] | None = None  # the write of its row, once begun (IN_PROGRESS, or final)


class Seats:
    """The jobs one worker is running: the consumer takes a seat per job, and a seat frees as
    soon as the worker's result arrives, before that result is stored."""

    def __init__(self) -> None:
        self.taken = 0
        self._changed = asyncio.Event()
        self.in_order: deque[RunningJob] = deque()  # a serial worker's jobs, in the order it runs them
        self.on_free: Callable[[], None] = lambda: None  # called as a seat frees

    def take(self) -> Callable[[], None]:
        self.taken += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.taken -= 1
                self._changed.set()
                self.on_free()

        return release

    async def changed(self) -> None:
        self._changed.clear()
        await self._changed.wait()


@dataclass
class Feed:
    """One ready worker's seats and the jobs it runs (claimed or unqueued): a task each, or a
    future each for those followed from callbacks."""

    worker: WorkerBackend
    seats: Seats = field(default_factory=Seats)
    tasks: set[asyncio.Future[None]] = field(default_factory=set)
    taker: str = field(init=False)  # the worker's id in the jobs it runs (``workerId``)
    serial: bool = field(init=False)  # its handler runs one job at a time

    def __post_init__(self) -> None:
        self.taker = worker_id(self.worker)
        self.serial = self.worker.info.get("handler_kind") in SERIAL_KINDS


def worker_id(worker: WorkerBackend) -> str:
    return f"{socket.gethostname()}-{worker.pid}"


def job_message(job: RunPodJob) -> bytes:
    """The job object the handler receives, as the platform's job-take hands it over."""
    # spliced, not parsed and encoded again: the stored input is already the JSON to send; ids
    # are ours (hex and dashes), a webhook is the client's and is encoded
    webhook = b"" if job.webhook is None else b', "webhook": ' + json.dumps(job.webhook).encode()
    return b'{"id": "' + job.id.encode() + b'"' + webhook + b', "input": ' + job.input + b"}"


def split_reply(body: bytes) -> tuple[dict[str, Any], bytes | None]:
    """A worker's message, and a result's output JSON where it follows the message after a
    newline (the direct runner); None where there is no output or it is inside (the SDK runner)."""
    head, newline, output = body.partition(b"\n")
    return json.loads(head), (output if newline else None)


def reply_message(body: bytes) -> dict[str, Any]:
    """A worker's message as one dict, a result's output parsed into it (``inferd test``)."""
    message, output = split_reply(body)
    if output is not None:
        message["result"]["output"] = json.loads(output)
    return message


def result_fields(result: dict[str, Any], output: bytes | None = None) -> tuple[str, bytes | None, str | None]:
    """(status, output JSON, error) of the result dict the SDK would post to job-done, its
    output given as JSON already or inside it."""
    if output is None and "output" in result:
        output = json.dumps(result["output"], separators=(",", ":")).encode()
    error = result.get("error")
    if error:
        return FAILED, output, error if isinstance(error, str) else json.dumps(error)
    return COMPLETED, output, None


class RunPodDispatcher:
    def __init__(self, api: str, jobs: RunPodJobStore, pool: WorkerPool, metrics: Metrics,
                 on_finished: JobFinished) -> None:
        self.api = api
        self.metrics = metrics
        self.jobs = jobs
        self.pool = pool
        self.on_finished = on_finished
        self.stopping = False
        self.running: dict[str, RunningJob] = {}
        self._wakeup = asyncio.Event()
        self._consumers: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Future[None]] = set()
        self._pace = PIPELINE_BELOW  # moving mean of the handler's seconds per job
        self._delays = metrics.runpod_queue_delay.labels(api)
        self._executions = metrics.runpod_execution.labels(api)
        self._feeds: list[Feed] = []
        self._unqueued: dict[str, Unqueued] = {}  # by job id, from its hand-over until its row is committed
        self._line: deque[Unqueued] = deque()     # unqueued jobs waiting for a seat, oldest first
        self._line_bytes = 0
        self._places = itertools.count()
        self._before_store = 0  # the line's jobs placed before this one came before the store's
        # True only while the last claim came back short and nothing was queued since (notify)
        self._queue_empty = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._consumers = [loop.create_task(self._consume(slot)) for slot in range(len(self.pool.workers))]
        self._consumers.append(loop.create_task(self._sweep_forever()))

    def notify(self) -> None:
        """A job was queued: wake idle consumers now instead of at their next poll."""
        self._store_first()
        self._wakeup.set()

    def _store_first(self) -> None:
        """The store's queue may hold jobs: they go before the line's jobs that come after now."""
        if self._queue_empty:
            self._queue_empty = False
            self._before_store = self._line[-1].place + 1 if self._line else 0

    def run_unqueued(self, job_input: bytes, webhook: str | None, execution_timeout_ms: int,
                     ttl_ms: int) -> RunPodJob | None:
        """A /runsync job for a worker now or at the next free seat, its row written when it
        ends; None when it must be queued in the store (the line is full)."""
        if self.stopping:
            return None
        feed = self._free_feed() if self._queue_empty and not self._line else None
        if feed is None and (len(self._line) >= LINE_JOBS or self._line_bytes + len(job_input) > LINE_BYTES):
            return None
        # handed over at once: made as a claim would leave it, not queued and then handed over
        job = self.jobs.unqueued(self.api, job_input, webhook, execution_timeout_ms, ttl_ms,
                                 None if feed is None else feed.taker)
        unqueued = self._unqueued[job.id] = Unqueued(job, next(self._places))
        if feed is None:
            self._line.append(unqueued)
            self._line_bytes += len(job.input)
        else:
            self._start(feed, job)
        return job

    async def write_row(self, job_id: str) -> None:
        """Until an unqueued job's row is committed (as it stands, unless its final write began
        first); at once for any other job. A job in the line is queued in the store."""
        unqueued = self._unqueued.get(job_id)
        if unqueued is None:
            return
        if unqueued.row is None:
            unqueued.row = self.jobs.insert(unqueued.job)
            if unqueued.job.status == IN_QUEUE:
                self._leave_line(unqueued)
                unqueued.row.add_done_callback(lambda _: self._unqueued.pop(job_id, None))
                self.notify()  # before the insert commits, as /run does: the claim joins its group commit
        await asyncio.shield(unqueued.row)

    def unwritten(self) -> dict[str, int]:
        """Unqueued jobs not in the store yet, by the status they have: IN_QUEUE (in the line)
        and IN_PROGRESS (handed to a worker)."""
        running = sum(1 for unqueued in self._unqueued.values() if unqueued.row is None) - len(self._line)
        return {IN_QUEUE: len(self._line), IN_PROGRESS: running}

    def _free_feed(self) -> Feed | None:
        return min((feed for feed in self._feeds
                    if feed.worker.state == "ready" and feed.seats.taken < self._capacity(feed.worker)),
                   key=lambda feed: feed.seats.taken, default=None)

    def _fill(self, feed: Feed) -> None:
        """A seat of ``feed`` freed (or it is new): the line's jobs, oldest first, take its free
        seats, unless jobs queued in the store came before them."""
        while self._line and (self._queue_empty or self._line[0].place < self._before_store) \
                and feed.worker.state == "ready" and feed.seats.taken < self._capacity(feed.worker):
            unqueued = self._line[0]
            self._leave_line(unqueued)
            self._hand_over(feed, unqueued)

    def _leave_line(self, unqueued: Unqueued) -> None:
        self._line.remove(unqueued)
        self._line_bytes -= len(unqueued.job.input)

    def _hand_over(self, feed: Feed, unqueued: Unqueued) -> None:
        unqueued.job = self.jobs.handed_over(unqueued.job, feed.taker)
        self._start(feed, unqueued.job)

    async def stop(self, timeout: float) -> None:
        """Stop claiming jobs; running ones and the line's (accepted /runsync jobs, which the
        workers still take as seats free) get ``timeout`` to finish; the rest stay IN_PROGRESS
        and go back to the queue at the next start (``recover``)."""
        self.stopping = True
        self._wakeup.set()
        await self._drain(timeout)
        # unqueued jobs not done: stored as they stand, so the next start runs them; their clients
        # are answered with the id and status to poll, as when a /runsync wait runs out
        left = list(self._unqueued.values())
        written = await asyncio.gather(*(self.write_row(u.job.id) for u in left), return_exceptions=True)
        for unqueued, failed in zip(left, written, strict=True):
            if failed is None and unqueued.job.status in (IN_QUEUE, IN_PROGRESS):
                self.on_finished(unqueued.job)
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)

    async def _drain(self, timeout: float) -> None:
        """Until every job handed over and in the line is done, or ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._tasks or self._line) and (left := deadline - loop.time()) > 0:
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=left, return_when=asyncio.FIRST_COMPLETED)
            else:  # a line and no worker to take it (all restarting): one may be back in time
                await asyncio.sleep(min(left, IDLE_POLL / 10))

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                deleted = await self.jobs.sweep(self.api)
            except Exception as exc:  # noqa: BLE001 - a failed sweep is retried next period
                log.error("runpod_sweep_failed", api=self.api, error=str(exc), exc_info=exc)
            else:
                if deleted:
                    log.info("runpod_jobs_swept", api=self.api, deleted=deleted)

    # -- stopping one job ------------------------------------------------------------------------

    def stop_job(self, job_id: str, reason: str) -> bool:
        """Stop a running job (already marked final in the store); False when it is not running here."""
        running = self.running.get(job_id)
        if running is None:
            return False
        running.stop_reason = reason
        if running.worker.info.get("handler_kind") in ASYNC_KINDS or not running.began:
            running.stream.cancel()  # a job waiting behind another is dropped when its turn comes
        else:
            self.pool.retire(running.worker, f"job {job_id}: {reason}", drain=None)
        return True

    def health_workers(self) -> dict[str, int]:
        """RunPod's ``/health`` ``workers`` block, from the pool's own view of its workers."""
        busy = {id(r.worker) for r in self.running.values()}
        counts = {"idle": 0, "running": 0, "initializing": 0, "unhealthy": 0}
        for worker in self.pool.workers:
            if worker is None or worker.state == "starting":
                counts["initializing"] += 1
            elif worker.state == "ready":
                counts["running" if id(worker) in busy else "idle"] += 1
            else:
                counts["unhealthy"] += 1
        return counts

    # -- the consumer per worker -----------------------------------------------------------------

    async def _consume(self, slot: int) -> None:
        while not self.stopping:
            try:
                await self.pool.wait_slot_ready(slot)
                worker = self.pool.workers[slot]
                if worker is not None:
                    await self._feed(worker)
            except ApiUnavailable:
                if self.stopping:
                    return
                await asyncio.sleep(IDLE_POLL)
            except Exception as exc:  # noqa: BLE001 - e.g. a busy disk: retry, never die
                log.error("runpod_dispatch_failed", api=self.api, slot=slot, error=str(exc), exc_info=exc)
                await asyncio.sleep(IDLE_POLL)

    async def _feed(self, worker: WorkerBackend) -> None:
        """Jobs for this worker until it is no longer ready, as many at once as its handler runs."""
        feed = Feed(worker)
        feed.seats.on_free = lambda: self._fill(feed)
        self._feeds.append(feed)
        self._fill(feed)
        try:
            await self._claim_for(feed)
        finally:
            self._feeds.remove(feed)
        if feed.tasks:  # a replaced worker's jobs end (requeued or final) before its slot takes more
            await asyncio.wait(feed.tasks)

    async def _claim_for(self, feed: Feed) -> None:
        worker, seats, taker = feed.worker, feed.seats, feed.taker
        queued = True  # whether the queue may hold a job: a claim that came back short says it is empty
        while not self.stopping and worker.state == "ready":
            room = self._room(worker, seats)
            if room <= 0:
                await seats.changed()
                continue
            if not queued:
                await self._idle()  # an empty claim costs a write transaction: none until a job is queued
                queued = True
                continue
            self._wakeup.clear()
            taken = await self.jobs.claim_many(self.api, taker, room)
            queued = len(taken) == room or self._wakeup.is_set()
            for job in taken:
                self._start(feed, job)
            if not queued and not self._queue_empty:  # the store's queue is done: the line's turn, after these
                self._queue_empty = True
                for other in list(self._feeds):
                    self._fill(other)

    def _start(self, feed: Feed, job: RunPodJob) -> None:
        """Send ``job`` to ``feed``'s worker now (jobs reach a worker in the order started here)
        and follow it: from callbacks while it is an unwritten /runsync job, else in a task."""
        release = feed.seats.take()
        try:
            running = self._open(feed, job, release)
        except WorkerDied as exc:
            self._track(feed, asyncio.get_running_loop().create_task(self._never_ran(job, release, str(exc))))
            return
        unqueued = self._unqueued.get(job.id)
        if unqueued is not None and unqueued.row is None:
            self._follow_later(feed, running)
        else:
            self._track(feed, asyncio.get_running_loop().create_task(self._run(running)))

    def _track(self, feed: Feed, ends: asyncio.Future[None]) -> None:
        feed.tasks.add(ends)
        ends.add_done_callback(feed.tasks.discard)
        self._keep(ends)

    @staticmethod
    def _concurrency(worker: WorkerBackend) -> int:
        return max(1, int(worker.info.get("concurrency", 1)))

    def _capacity(self, worker: WorkerBackend) -> int:
        """Jobs ``worker`` may hold: its handler's concurrency, plus a pipeline for a serial
        handler whose jobs are short."""
        if self._pace >= PIPELINE_BELOW or worker.info.get("handler_kind") not in SERIAL_KINDS:
            return self._concurrency(worker)
        return self._concurrency(worker) + PIPELINE

    def _room(self, worker: WorkerBackend, seats: Seats) -> int:
        """Jobs to claim for ``worker`` now; while it has jobs waiting in its pipeline, only once
        half the pipeline is free, so one claim serves several jobs."""
        room = self._capacity(worker) - seats.taken
        return room if seats.taken <= self._concurrency(worker) or room >= PIPELINE // 2 else 0

    def _keep(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("runpod_dispatch_failed", api=self.api, error=str(task.exception()), exc_info=task.exception())

    async def _idle(self) -> None:
        """Until a job is queued here, or IDLE_POLL passes (a job another node queued, or a
        wake-up missed: the fast lane waits for the next claim)."""
        try:
            async with asyncio.timeout(IDLE_POLL):
                await self._wakeup.wait()
        except TimeoutError:
            self._store_first()

    # -- one job ---------------------------------------------------------------------------------

    async def _run(self, running: RunningJob) -> None:
        try:
            await self._drive(running)
        finally:
            self._let_go(running.job, running.release)

    async def _never_ran(self, job: RunPodJob, release: Callable[[], None], reason: str) -> None:
        """``job``'s worker was gone before it could be sent."""
        try:
            await self._interrupted(job, reason, began=False)
        finally:
            self._let_go(job, release)

    def _let_go(self, job: RunPodJob, release: Callable[[], None]) -> None:
        """``job`` has ended here: its seat, and its place among the unwritten jobs."""
        release()
        self._unqueued.pop(job.id, None)

    def _open(self, feed: Feed, job: RunPodJob, release: Callable[[], None]) -> RunningJob:
        """The job sent to ``feed``'s worker (WorkerDied: it is gone); not begun yet."""
        stream = self.pool.open_stream_on(feed.worker, protocol.Open(0, job.id, JOB_METHOD, body=job_message(job)))
        running = self.running[job.id] = RunningJob(job, feed.worker, stream, release, feed.seats.in_order, feed.serial)
        if feed.serial:
            running.in_order.append(running)
        return running

    async def _drive(self, running: RunningJob) -> None:
        """Follow the job to its end (or what ended it instead) and store that."""
        job, stream = running.job, running.stream
        running.detach()
        running.deadline = asyncio.timeout_at(running.expires_at)
        result = None
        try:
            async with running.deadline:  # every job in in_order is inside its deadline's block
                try:
                    running.begin_if_first()
                    result = await self._follow(running)
                finally:
                    self._left(running, result is not None)
        except TimeoutError:
            await self._timed_out(running)
            return
        if running.stop_reason is not None:
            return  # cancelled: the store already says so, and nothing the worker sent counts
        if result is None:
            reason = (stream.end.details if stream.end else "") or "the worker ended the job"
            await self._interrupted(job, reason, running.began)
            return
        await self._finish(running, *result)

    def _left(self, running: RunningJob, answered: bool) -> None:
        """``running`` no longer runs: its worker answered (``answered``: with a result) or it
        was cut off."""
        self.running.pop(running.job.id, None)
        if running.serial:  # the worker answered (a result, or a cancelled job dropped): it goes on
            end = running.stream.end
            self._next_in_order(running, running.in_order, answered or (end is not None and end.code == protocol.OK))

    # -- an unqueued job followed from callbacks -------------------------------------------------
    # Most /runsync jobs end with one message, the result: a task per job (its steps, its timeout
    # context) would cost more than the rest of the job's way through the daemon. Such a job is
    # followed from the stream's callbacks until its result is stored; anything else (progress, a
    # stream item, its timeout, its worker gone, its row written sooner) hands it to a task,
    # ``_drive``, which goes on from where it is.

    def _follow_later(self, feed: Feed, running: RunningJob) -> None:
        running.on_expiry = lambda: self._hand_to_task(running)
        running.done = asyncio.get_running_loop().create_future()
        self._track(feed, running.done)
        running.begin_if_first()
        running.stream.listener = lambda: self._heard(running)

    def _heard(self, running: RunningJob) -> None:
        try:
            self._take_result(running)
        except Exception as exc:  # noqa: BLE001 - a bug of ours: never into the worker channel's read callback
            running.detach()
            self._ended(running, exc)  # logged once, as a failed job task is (_done)

    def _take_result(self, running: RunningJob) -> None:
        body = running.stream.peek()
        unqueued = self._unqueued.get(running.job.id)
        if body is None or running.stop_reason is not None or unqueued is None or unqueued.row is not None:
            self._hand_to_task(running)
            return
        try:
            message, output = split_reply(body)
        except ValueError:  # not JSON: the task's reading of it fails the job, logged, as it would have
            message, output = {}, None
        if "result" not in message:
            self._hand_to_task(running)
            return
        running.stream.take()
        running.detach()
        result = self._took_result(running, message)
        self._left(running, True)
        status, output, error = result_fields(result, output)
        unqueued.job = final = self.jobs.finished(unqueued.job, status, output, error)
        unqueued.row = self.jobs.insert(final)
        unqueued.row.add_done_callback(lambda row: self._stored(running, final, result, row))

    def _stored(self, running: RunningJob, final: RunPodJob, result: dict[str, Any], row: asyncio.Future[None]) -> None:
        try:
            if not row.cancelled() and row.exception() is None:
                self._result_stored(running, final, result)
        finally:
            self._ended(running, row)

    def _hand_to_task(self, running: RunningJob) -> None:
        if running.on_expiry is None:
            return  # handed over already (detached)
        running.detach()
        task = asyncio.get_running_loop().create_task(self._drive(running))
        task.add_done_callback(lambda task: self._ended(running, task))

    def _ended(self, running: RunningJob, ended: asyncio.Future[None] | Exception) -> None:
        """A job followed from callbacks is over: its seat and its future, with what failed it."""
        self._let_go(running.job, running.release)
        done = running.done
        if done is None or done.done():
            return
        if isinstance(ended, Exception):
            done.set_exception(ended)
        elif ended.cancelled():
            done.cancel()
        elif (error := ended.exception()) is not None:
            done.set_exception(error)
        else:
            done.set_result(None)

    @staticmethod
    def _next_in_order(running: RunningJob, in_order: deque[RunningJob], ended: bool) -> None:
        """``running`` left its serial worker's line; when it was at the head and ended there (not
        cut off with its worker), the worker has begun the next job."""
        head = bool(in_order) and in_order[0] is running
        in_order.remove(running)
        if head and ended and in_order:
            in_order[0].begin()

    async def _follow(self, running: RunningJob) -> tuple[dict[str, Any], bytes | None] | None:
        """Stream items and progress into the store until the worker's result and its output
        JSON, when apart (None: no result came)."""
        job_id = running.job.id
        async for body in running.stream.messages():
            message, output = split_reply(body)
            if "result" not in message:
                await self.write_row(job_id)
            if "stream" in message:
                await self.jobs.append_stream(job_id, json.dumps(message["stream"]).encode())
            elif "progress" in message:
                await self.jobs.set_progress(job_id, json.dumps(message["progress"]).encode())
            elif "result" in message:
                return self._took_result(running, message), output
        return None

    def _took_result(self, running: RunningJob, message: dict[str, Any]) -> dict[str, Any]:
        """The result in the worker's message, and what else it says of the worker."""
        if "concurrency" in message:
            running.worker.info["concurrency"] = message["concurrency"]
        if "seconds" in message:
            self._pace = 0.8 * self._pace + 0.2 * float(message["seconds"])
        # the worker is free for the next job now: starting it overlaps storing this result
        running.release()
        return dict(message["result"])

    async def _finish(self, running: RunningJob, result: dict[str, Any], output_json: bytes | None) -> None:
        status, output, error = result_fields(result, output_json)
        unqueued = self._unqueued.get(running.job.id)
        if unqueued is not None and unqueued.row is None:  # one write, the whole final row
            unqueued.job = final = self.jobs.finished(unqueued.job, status, output, error)
            unqueued.row = self.jobs.insert(final)
            await asyncio.shield(unqueued.row)  # a write_row waiting on the same write is not cancelled with us
            finished: RunPodJob | None = final
        else:
            await self.write_row(running.job.id)
            finished = await self.jobs.finish(running.job.id, status, output, error)
        self._result_stored(running, finished, result)

    def _result_stored(self, running: RunningJob, finished: RunPodJob | None, result: dict[str, Any]) -> None:
        """The worker's result is stored (``finished``: the job as it now is; None: it was final already)."""
        if result.get("stopPod"):
            self.pool.retire(running.worker, "the handler asked for a fresh worker (refresh_worker)",
                             drain=self.pool.config.stop_timeout)
        if finished is not None:
            self._finished(finished, logged=True)

    async def _timed_out(self, running: RunningJob) -> None:
        job = running.job
        reason = f"execution timeout of {job.execution_timeout_ms} ms (policy.executionTimeout) passed"
        running.stop_reason = reason
        await self.write_row(job.id)
        finished = await self.jobs.finish(job.id, TIMED_OUT, None, reason)
        # the handler may still be running: its worker is replaced (stacks logged), so nothing of it lingers
        self.pool.retire(running.worker, f"job {job.id}: {reason}", abort=True)
        log.warning("runpod_job_timed_out", api=self.api, request_id=job.id, timeout_ms=job.execution_timeout_ms)
        if finished is not None:
            self._finished(finished)

    def _finished(self, job: RunPodJob, logged: bool = False) -> None:
        """``job`` is final: its times observed (``logged``: and a ``runpod_job_finished`` line)."""
        delay_ms, execution_ms = job.delay_ms, job.execution_ms
        if logged:
            log.info("runpod_job_finished", api=self.api, request_id=job.id, status=job.status,
                     delay_ms=delay_ms, execution_ms=execution_ms)
        self._delays.observe(delay_ms / 1000)
        self._executions.observe(execution_ms / 1000)
        self.on_finished(job)

    async def _interrupted(self, job: RunPodJob, reason: str, began: bool) -> None:
        await self.write_row(job.id)
        current = await self.jobs.get(job.id)
        if current is None or current.status != IN_PROGRESS:
            return
        if not began and await self.jobs.put_back(job.id):
            log.info("runpod_job_put_back", api=self.api, request_id=job.id, error=reason)
            self.notify()
            return
        status = await self.jobs.requeue(job.id, f"the worker running it stopped: {reason}")
        log.warning("runpod_job_interrupted", api=self.api, request_id=job.id, error=reason, status=status)
        if status == FAILED:
            finished = await self.jobs.get(job.id)
            if finished is not None:
                self._finished(finished)
        else:
            self.notify()

