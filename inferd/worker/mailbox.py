"""``Mailbox``: calls for one event loop posted from other threads, one wake-up per batch.

``loop.call_soon_threadsafe`` wakes the loop once per call (a write to its self-pipe, and a
pass of its selector): a thread finishing short jobs one after another would pay that for each.
Here a wake-up already on its way carries every call posted behind it, in posting order."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any


class Mailbox:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._calls: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._lock = threading.Lock()
        self._waking = False  # a wake-up is scheduled and has not taken the calls yet

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` on the loop, after everything posted before; RuntimeError once
        the loop is closed, as ``call_soon_threadsafe``."""
        with self._lock:
            self._calls.append((fn, args))
            if self._waking:
                return
            self._waking = True
        try:
            self.loop.call_soon_threadsafe(self.deliver)
        except RuntimeError:
            with self._lock:
                self._waking = False
            raise

    def deliver(self) -> None:
        """Make the calls posted so far, now (on the loop's thread): the loop's wake-up, or a
        caller that must see them first."""
        with self._lock:
            calls, self._calls = self._calls, deque()
            self._waking = False
        for fn, args in calls:
            fn(*args)
