"""GPUs for BatchAPI and TaskAPI jobs.

A job's workers exist only while it runs, so their devices are chosen when it starts, not at
deploy time: each job holds ``workers x compute.gpu`` devices of its own until it ends, and a job
that finds too few free waits (``pending``, the reason in its status) until another job releases
some. A request the node can never meet is refused at submission (``max_workers``).

Standing APIs (RealtimeAPI, AsyncAPI, ...) are placed by the deployment, which lets replicas
share a device with a warning; jobs do not count them, for the same reason: on one box sharing is
the user's choice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from inferd.gpu import GpuDevice, read_inventory


class GpuLedger:
    """Which job holds which devices. One per daemon (``LEDGER``): every BatchAPI and TaskAPI
    draws from the same devices."""

    def __init__(self, inventory: Callable[[], tuple[GpuDevice, ...]] = read_inventory) -> None:
        self._read = inventory
        self._devices: tuple[int, ...] | None = None
        self.held: dict[str, tuple[int, ...]] = {}  # job id -> its devices
        self._changed: asyncio.Event | None = None

    def devices(self) -> tuple[int, ...]:
        """The node's device indexes, read from NVML once (a GPU does not appear while we run)."""
        if self._devices is None:
            self._devices = tuple(sorted(device.index for device in self._read()))
        return self._devices

    def max_workers(self, per_worker: int) -> tuple[int | None, str]:
        """The most workers a job can ever have on this node, and why (None: no GPU bound)."""
        if per_worker == 0:
            return None, ""
        total = len(self.devices())
        return total // per_worker, (f"each worker needs compute.gpu {per_worker} and this node has "
                                     f"{total} GPU{'' if total == 1 else 's'}")

    def take(self, job_id: str, workers: int, per_worker: int) -> list[tuple[int, ...]] | str:
        """One device tuple per worker, now held by ``job_id``; or why it has to wait."""
        if per_worker == 0:
            return [()] * workers
        need = workers * per_worker
        devices = self.devices()
        busy = {index for held in self.held.values() for index in held}
        free = [index for index in devices if index not in busy]
        if len(free) < need:
            holders = ", ".join(sorted(self.held)) or "none"
            return (f"waiting for GPUs: the job needs {need} ({workers} worker(s) x compute.gpu {per_worker}), "
                    f"{len(free)} of {len(devices)} are free (held by job(s) {holders})")
        chosen = tuple(free[:need])
        self.held[job_id] = chosen
        return [chosen[i * per_worker:(i + 1) * per_worker] for i in range(workers)]

    def release(self, job_id: str) -> None:
        if self.held.pop(job_id, None) is not None and self._changed is not None:
            self._changed.set()

    async def wait_release(self, timeout: float) -> None:
        """Until some job releases its devices (or ``timeout``: a poll, in case of a miss)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass


LEDGER = GpuLedger()
