"""WorkerPool against fake backends: dispatch, admission, liveness, request timeouts, restarts.
No processes: a ``FakeWorker`` is a WorkerBackend whose behaviour each test sets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from inferd.worker import protocol
from inferd.worker.backend import Response, WorkerGone
from inferd.worker.pool import ApiUnavailable, CallTimedOut, PoolConfig, WorkerDied, WorkerPool, WorkerSlot
from inferd.worker.stream import StreamCall


class FakeWorker:
    """Ready at once; answers calls with ``answer`` (a coroutine function) or 200 {}."""

    def __init__(self, slot: int, answer: Any = None, beats: bool = True) -> None:
        self.slot, self.gpus, self.pid = slot, (), 1000 + slot
        self.state, self.in_flight, self.info, self.error = "starting", 0, {"verbs": {"post": []}}, None
        self.init_traceback: str | None = None
        self.started_at = self.last_seen = time.monotonic()
        self.answer, self.beats = answer, beats
        self.aborted: str | None = None
        self.calls: list[protocol.Call] = []
        self._exit: asyncio.Future[int | None] | None = None

    async def start(self) -> None:
        self._exit = asyncio.get_running_loop().create_future()
        self.state = "ready"

    async def wait_ready(self) -> bool:
        return True

    async def wait_exit(self) -> int | None:
        assert self._exit is not None
        return await self._exit

    def exit(self, code: int | None) -> None:
        self.state = "exited"
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(code)

    async def stop(self, timeout: float) -> None:
        self.exit(0)

    def kill(self) -> None:
        self.exit(-9)

    def abort(self, reason: str) -> None:
        self.aborted = reason
        self.error = reason
        self.exit(-6)

    def ping(self) -> None:
        if self.beats:
            self.last_seen = time.monotonic()

    async def call(self, call: protocol.Call) -> Response:
        if self.state != "ready":
            raise WorkerGone("not ready")
        self.calls.append(call)
        self.in_flight += 1
        try:
            if self.answer is not None:
                return await self.answer(self, call)
            return Response(200, [], b"{}", None)
        finally:
            self.in_flight -= 1

    def open_stream(self, opened: protocol.Open) -> StreamCall:
        raise WorkerGone("no streams here")

    def describe(self) -> dict[str, Any]:
        return {"slot": self.slot, "pid": self.pid, "state": self.state}


class DiesAtStart(FakeWorker):
    """Exits with ``code`` before it is ready, as a handler calling ``os._exit(1)`` in ``__init__``."""

    def __init__(self, slot: int, code: int = 1) -> None:
        super().__init__(slot)
        self.code = code

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._exit = loop.create_future()
        loop.call_later(0.05, self.exit, self.code)

    async def wait_ready(self) -> bool:
        assert self._exit is not None
        await asyncio.wait({self._exit})  # not awaited directly: a cancelled wait must not cancel the exit
        return False


def pool_of(workers: list[FakeWorker], **config: Any) -> tuple[WorkerPool, list[FakeWorker]]:
    """A pool whose slot ``i`` gets ``workers`` in order: the first start, then each restart."""
    started: list[FakeWorker] = []
    queue = list(workers)

    def backend(slot: int) -> FakeWorker:
        worker = queue.pop(0) if queue else FakeWorker(slot)
        started.append(worker)
        return worker

    defaults: dict[str, Any] = {"max_concurrency": 2, "ready_wait": 2.0, "liveness_timeout": 30.0}
    pool = WorkerPool(PoolConfig(api="api", slots=[WorkerSlot({}, ())] * len({w.slot for w in workers}),
                                 backend=backend, **{**defaults, **config}))
    return pool, started


def call(rid: str = "r") -> protocol.Call:
    return protocol.Call(0, rid, "post")


def test_calls_go_to_the_least_busy_worker_and_beyond_capacity_get_503() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def slow(worker: FakeWorker, c: protocol.Call) -> Response:
            await release.wait()
            return Response(200, [], worker.pid.to_bytes(2, "big"), None)

        pool, started = pool_of([FakeWorker(0, slow), FakeWorker(1, slow)], max_concurrency=1)
        pool.start()
        await pool.wait_all_ready(1)
        first = asyncio.ensure_future(pool.call(call("a")))
        second = asyncio.ensure_future(pool.call(call("b")))
        await asyncio.sleep(0)
        assert [len(w.calls) for w in started] == [1, 1]
        with pytest.raises(ApiUnavailable, match="at capacity"):
            await pool.call(call("c"))
        release.set()
        assert {(await first).body, (await second).body} == {b"\x03\xe8", b"\x03\xe9"}
        await pool.stop(1)

    asyncio.run(scenario())


def test_a_silent_worker_is_aborted_and_replaced() -> None:
    async def scenario() -> None:
        pool, started = pool_of([FakeWorker(0, beats=False)], liveness_timeout=0.2)
        pool.start()
        await pool.wait_all_ready(1)
        deadline = time.monotonic() + 5
        while len(started) < 2 or pool.state != "ready":
            assert time.monotonic() < deadline, "the hung worker was never replaced"
            await asyncio.sleep(0.02)
        assert started[0].aborted is not None and "no heartbeat" in started[0].aborted
        assert started[1].aborted is None
        assert (await pool.call(call())).status == 200
        assert pool.restarts == 1 and "no heartbeat" in (pool.last_error or "")
        await pool.stop(1)

    asyncio.run(scenario())


def test_a_call_past_request_timeout_raises_and_aborts_its_worker_only() -> None:
    async def scenario() -> None:
        async def hang(worker: FakeWorker, c: protocol.Call) -> Response:
            if c.rid == "stuck":
                await asyncio.Event().wait()
            return Response(200, [], b"", None)

        pool, started = pool_of([FakeWorker(0, hang)], request_timeout=0.1)
        pool.start()
        await pool.wait_all_ready(1)
        with pytest.raises(CallTimedOut, match="request stuck exceeded handler.request_timeout"):
            await pool.call(call("stuck"))
        assert started[0].aborted and "request_timeout" in started[0].aborted
        deadline = time.monotonic() + 5
        while len(started) < 2 or pool.state != "ready":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert (await pool.call(call("fine"))).status == 200
        await pool.stop(1)

    asyncio.run(scenario())


def test_a_worker_dying_mid_call_is_a_503_naming_the_reason_and_the_slot_restarts() -> None:
    async def scenario() -> None:
        async def die(worker: FakeWorker, c: protocol.Call) -> Response:
            worker.exit(-9)
            raise WorkerGone("worker 1000 of api 'api' killed by SIGKILL (out of memory?)")

        pool, started = pool_of([FakeWorker(0, die)])
        pool.start()
        await pool.wait_all_ready(1)
        with pytest.raises(WorkerDied, match="out of memory"):
            await pool.call(call())
        deadline = time.monotonic() + 5
        while len(started) < 2 or pool.state != "ready":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert "killed by SIGKILL (out of memory?)" in (pool.last_error or "")
        await pool.stop(1)

    asyncio.run(scenario())


def test_the_first_ready_workers_report_is_the_pools() -> None:
    async def scenario() -> None:
        pool, _ = pool_of([FakeWorker(0)])
        pool.start()
        assert (await pool.wait_info()) == {"verbs": {"post": []}}
        await pool.stop(1)
        with pytest.raises(ApiUnavailable, match="shutting down"):
            await pool.call(call())

    asyncio.run(scenario())


def test_heartbeat_silence_counts_from_an_unanswered_ping_not_from_the_daemons_pause() -> None:
    from inferd.worker.heartbeat import HeartbeatMonitor

    now = [100.0]
    monitor = HeartbeatMonitor(clock=lambda: now[0])
    assert monitor.last_seen == 100.0
    now[0] = 160.0  # the daemon slept a minute without pinging: nobody was asked anything
    assert monitor.last_seen == 160.0
    monitor.ping()  # no transport yet: nothing was sent, nothing is owed
    now[0] = 200.0
    assert monitor.last_seen == 200.0

    class Transport:
        sent = b""

        def is_closing(self) -> bool:
            return False

        def write(self, data: bytes) -> None:
            self.sent += data

    monitor.connection_made(Transport())  # type: ignore[arg-type]
    monitor.ping()
    now[0] = 230.0
    monitor.ping()
    assert monitor.last_seen == 200.0  # silent since the first unanswered ping
    monitor.data_received(b"oo")
    assert monitor.last_seen == 230.0


def test_many_calls_at_once_are_admitted_up_to_capacity_with_request_timeout_set() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def slow(worker: FakeWorker, c: protocol.Call) -> Response:
            await release.wait()
            return Response(200, [], b"", None)

        pool, _ = pool_of([FakeWorker(0, slow)], max_concurrency=1, request_timeout=60)
        pool.start()
        await pool.wait_all_ready(1)
        results = asyncio.gather(*(pool.call(call(str(i))) for i in range(4)), return_exceptions=True)
        await asyncio.sleep(0.05)
        release.set()
        outcomes = await results
        assert sum(isinstance(o, Response) for o in outcomes) == 1
        assert sum(isinstance(o, ApiUnavailable) for o in outcomes) == 3
        await pool.stop(1)

    asyncio.run(scenario())


def test_a_worker_dying_before_ready_fails_waiting_calls_at_once_and_calls_during_backoff_too() -> None:
    async def scenario() -> None:
        pool, started = pool_of([DiesAtStart(0), DiesAtStart(0, code=-9)], ready_wait=30)
        pool.start()
        async with asyncio.timeout(5):  # not ready_wait: nobody waits for a worker that died
            with pytest.raises(ApiUnavailable, match="worker exited with code 1 before it was ready") as waiting:
                await pool.call(call("waiting"))
            with pytest.raises(ApiUnavailable, match=r"next start in 1s") as backoff:
                await pool.call(call("during backoff"))
        assert waiting.value.retry_after is not None and 0 < waiting.value.retry_after <= 0.5
        assert backoff.value.retry_after is not None and backoff.value.retry_after <= 0.5
        assert pool.state == "failed"
        while len(started) < 2 or pool.workers[0] is not started[1] or pool._backoff[0] is None:
            await asyncio.sleep(0.02)
        with pytest.raises(ApiUnavailable, match=r"killed by SIGKILL \(out of memory\?\) before it was ready"):
            await pool.call(call("second failure"))
        async with asyncio.timeout(5):  # the third worker is a healthy one: the API recovers
            while pool.state != "ready":
                await asyncio.sleep(0.02)
        assert (await pool.call(call("fine"))).status == 200
        await pool.stop(1)

    asyncio.run(scenario())


def test_waiting_for_all_workers_reports_a_death_before_ready_at_once() -> None:
    async def scenario() -> None:
        pool, _ = pool_of([DiesAtStart(0), DiesAtStart(1), DiesAtStart(0), DiesAtStart(1)], ready_wait=30)
        pool.start()
        started = time.monotonic()
        assert await pool.wait_all_ready(30) == "worker exited with code 1 before it was ready"
        assert time.monotonic() - started < 5
        await pool.stop(1)

    asyncio.run(scenario())
