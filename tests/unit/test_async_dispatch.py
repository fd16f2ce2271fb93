"""AsyncDispatcher between a real SQLite job store and a fake pool: results stored, a job whose
worker died or timed out requeued once, then failed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from inferd.jobs.async_dispatch import AsyncDispatcher
from inferd.store import COMPLETED, FAILED, AsyncJobStore
from inferd.worker import protocol
from inferd.worker.backend import Response
from inferd.worker.pool import CallTimedOut, WorkerDied


class ReadyWorker:
    state = "ready"


class FakePool:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.workers = [ReadyWorker(), ReadyWorker()]  # the dispatcher looks before it waits

    async def wait_slot_ready(self, slot: int) -> None:
        return None

    async def call_slot(self, slot: int, call: protocol.Call) -> Response:
        self.seen.append(call.rid)
        payload = json.loads(call.body)
        if payload.get("die"):
            raise WorkerDied(f"worker of api 'api' killed by SIGKILL (out of memory?) on {call.rid}")
        if payload.get("hang"):
            raise CallTimedOut(f"request {call.rid} exceeded handler.request_timeout (1s)")
        if payload.get("fail"):
            return Response(500, [], json.dumps({"error": "ValueError: nope"}).encode(), None)
        return Response(200, [], json.dumps({"double": payload["n"] * 2}).encode(), None)


async def wait_final(store: AsyncJobStore, job_ids: list[str]) -> dict[str, str]:
    for _ in range(500):
        jobs = {job_id: await store.get(job_id, "api") for job_id in job_ids}
        if all(job is not None and job.status in (COMPLETED, FAILED) for job in jobs.values()):
            return {job_id: job.status for job_id, job in jobs.items() if job is not None}
        await asyncio.sleep(0.01)
    raise AssertionError("jobs did not finish")


def test_jobs_complete_fail_and_poison_jobs_stop_after_two_tries(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await AsyncJobStore.open(tmp_path / "jobs.db")
        pool = FakePool()
        dispatcher = AsyncDispatcher("api", store, pool, 1)  # type: ignore[arg-type]
        dispatcher.start()
        ids = [await store.submit("api", json.dumps(p).encode(), "application/json", {})
               for p in ({"n": 2}, {"die": 1}, {"hang": 1}, {"fail": 1})]
        dispatcher.notify()
        statuses = await wait_final(store, ids)
        assert [statuses[i] for i in ids] == [COMPLETED, FAILED, FAILED, FAILED]
        done = await store.get(ids[0], "api")
        assert done is not None and json.loads(done.result or b"") == {"double": 4}
        failed = await store.get(ids[3], "api")
        assert failed is not None and failed.error == "ValueError: nope"
        # the dying and the hanging job each ran twice, the others once
        assert sorted(pool.seen.count(i) for i in ids) == [1, 1, 2, 2]
        await dispatcher.stop(1)
        await store.close()

    asyncio.run(scenario())
