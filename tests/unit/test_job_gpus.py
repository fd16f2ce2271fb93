"""GPUs for BatchAPI/TaskAPI jobs: held per job while it runs, waited for when too few are free."""

from __future__ import annotations

import asyncio

from inferd.gpu import GpuDevice
from inferd.jobs.job_gpus import GpuLedger


def ledger(count: int) -> GpuLedger:
    return GpuLedger(lambda: tuple(GpuDevice(i, f"GPU-{i}", "H100", 80 << 30, 80 << 30) for i in range(count)))


def test_a_job_without_gpus_never_waits() -> None:
    assert ledger(0).take("job", 3, 0) == [(), (), ()]
    assert ledger(0).max_workers(0) == (None, "")


def test_each_worker_gets_its_own_devices_and_a_second_job_waits_for_them() -> None:
    gpus = ledger(4)
    assert gpus.take("a", 2, 1) == [(0,), (1,)]
    assert gpus.take("b", 1, 2) == [(2, 3)]
    waiting = gpus.take("c", 1, 1)
    assert isinstance(waiting, str)
    assert waiting.startswith("waiting for GPUs: the job needs 1 (1 worker(s) x compute.gpu 1), 0 of 4 are free")
    assert "a, b" in waiting
    gpus.release("a")
    assert gpus.take("c", 2, 1) == [(0,), (1,)]


def test_max_workers_says_why() -> None:
    assert ledger(3).max_workers(2) == (1, "each worker needs compute.gpu 2 and this node has 3 GPUs")
    assert ledger(0).max_workers(1)[0] == 0


def test_a_release_wakes_a_waiter() -> None:
    async def scenario() -> float:
        gpus = ledger(1)
        gpus.take("a", 1, 1)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, gpus.release, "a")
        started = loop.time()
        await gpus.wait_release(5)
        return loop.time() - started

    assert asyncio.run(scenario()) < 1
