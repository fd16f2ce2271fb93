"""Helpers for the job store's unit tests (test_store.py, test_batch_store.py, test_runpod_store.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeVar

from inferd.store import AsyncJobStore

T = TypeVar("T")


class Clock:
    """A clock the tests move by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def run_on_store(path: Path, clock: Clock, body: Callable[[AsyncJobStore], Awaitable[T]]) -> T:
    """``body`` run by ``asyncio.run`` on the job store at ``path`` opened on ``clock``, closed after."""

    async def main() -> T:
        jobs = await AsyncJobStore.open(path, clock)
        try:
            return await body(jobs)
        finally:
            await jobs.close()

    return asyncio.run(main())
