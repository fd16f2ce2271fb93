"""``JobRun`` with real worker processes over a real store, and GPUs from a fake inventory: a job
that asks for more GPUs than are free waits ``pending`` with the reason, then runs pinned."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from inferd.gpu import GpuDevice
from inferd.jobs.batch_dispatch import JobRun
from inferd.jobs.batch_launch import JobLaunch, PythonJobWorkers, batch_body
from inferd.jobs.job_gpus import GpuLedger
from inferd.metrics import Metrics
from inferd.store import AsyncJobStore, Batch, BatchJobStore
from inferd.worker import protocol

PROJECT = Path(__file__).resolve().parents[1] / "projects" / "jobs"


def test_batch_body_splices_the_stored_payload() -> None:
    body = batch_body(Batch("j", 3, b'[1,{"a":2}]', 1))
    assert json.loads(body) == {"batch_id": "j-3", "payload": [1, {"a": 2}]}


def launch(tmp_path: Path) -> JobLaunch:
    init = protocol.Init("batch", "inferd.worker.runners.batch:BatchRunner", str(PROJECT), "batch_handler.py")
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.pathsep.join([str(PROJECT), *sys.path])}
    workers = PythonJobWorkers(api="batch", init=init, env=env, cwd=str(PROJECT), spec_envs=("CORTEX_JOB_SPEC",),
                               on_metric=lambda frame: None, on_log=lambda line: None)
    return JobLaunch(api="batch", single_call=False, workers=workers, gpus_per_worker=1, jobs_dir=tmp_path / "jobs",
                     liveness_timeout=30, stop_timeout=5)


def spec(job_id: str, output: Path) -> dict[str, Any]:
    return {"job_id": job_id, "api_name": "batch", "kind": "BatchAPI", "workers": 1, "timeout": None,
            "config": {"output": str(output), "complete_marker": str(output) + ".done"}}


async def scenario(tmp_path: Path) -> tuple[str | None, list[str]]:
    jobs = await AsyncJobStore.open(tmp_path / "store.db")
    try:
        store = BatchJobStore(jobs)
        gpus = GpuLedger(lambda: (GpuDevice(0, "GPU-0", "test", 1 << 30, 1 << 30),))
        first = await store.create(spec("b", tmp_path / "b.jsonl"), [b'[{"sleep": 0.5}]'])
        second = await store.create(spec("a", tmp_path / "a.jsonl"), [b"[1]"])
        runs = [JobRun(job, launch(tmp_path), store, Metrics(), gpus, lambda job_id: None) for job in (first, second)]
        for run in runs:
            run.start()
        await asyncio.sleep(0.2)
        waiting = await store.get("a")
        assert waiting is not None and waiting.status == "pending"
        await asyncio.wait_for(asyncio.gather(*(run.wait() for run in runs)), 30)
        statuses = [(await store.get(job_id)).status for job_id in ("b", "a")]  # type: ignore[union-attr]
        return waiting.reason, statuses
    finally:
        await jobs.close()


def test_a_job_waits_pending_for_gpus_another_job_holds(tmp_path: Path) -> None:
    reason, statuses = asyncio.run(scenario(tmp_path))
    assert reason is not None and reason.startswith("waiting for GPUs: the job needs 1 (1 worker(s) x compute.gpu 1), "
                                                    "0 of 1 are free (held by job(s) b)")
    assert statuses == ["succeeded", "succeeded"]
    for name in ("b", "a"):  # each ran pinned to the one device, in turn
        ends = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines() if '"end"' in line]
        assert [end["gpus"] for end in ends] == ["0"]
