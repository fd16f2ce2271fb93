"""Server-side batching: concurrent ``handle_post`` calls gathered into one handler call.

A batch closes when ``max_batch_size`` requests are waiting or ``batch_interval`` seconds have
passed since its first request, whichever comes first (Cortex's rule).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Item = dict[str, Any]
RunBatch = Callable[[list[Item]], Awaitable[list[Any]]]


class Batcher:
    def __init__(self, max_size: int, interval: float, run_batch: RunBatch) -> None:
        self.max_size = max_size
        self.interval = interval
        self._run_batch = run_batch
        self._pending: list[tuple[Item, asyncio.Future[Any]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.max_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.interval, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Any]]]) -> None:
        try:
            outcomes = await self._run_batch([item for item, _ in batch])
        except BaseException as exc:  # every waiter must hear about it, whatever it was
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), outcome in zip(batch, outcomes, strict=False):
            if not future.done():
                future.set_result(outcome)
