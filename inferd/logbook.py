"""``LogBook``: recent worker log lines per API, for ``inferd logs <api> [-f]``."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

KEEP = 2000  # lines per API


class LogBook:
    def __init__(self) -> None:
        self._lines: dict[str, deque[str]] = {}
        self._followers: dict[str, set[asyncio.Queue[str]]] = {}

    def add(self, api: str, line: str) -> None:
        self._lines.setdefault(api, deque(maxlen=KEEP)).append(line)
        for queue in self._followers.get(api, ()):
            if queue.qsize() < KEEP:  # a follower that stopped reading loses lines, not memory
                queue.put_nowait(line)

    def recent(self, api: str, tail: int) -> list[str]:
        lines = self._lines.get(api, ())
        return list(lines)[-tail:] if tail > 0 else []

    async def follow(self, api: str, tail: int, forever: bool) -> AsyncIterator[str]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._followers.setdefault(api, set()).add(queue)
        try:
            for line in self.recent(api, tail):
                yield line
            while forever:
                yield await queue.get()
        finally:
            self._followers[api].discard(queue)
