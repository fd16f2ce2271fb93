"""``StreamCall``: the daemon's side of one streamed call (every gRPC call uses it).

Messages flow both ways as one ``Chunk`` frame each. Each direction has a credit window: the
sender may be ``WINDOW`` chunks ahead of the receiver's consumption, then waits for a
``Credit`` frame. A slow gRPC client therefore slows the handler's generator instead of letting it fill
the daemon's memory, and a fast client cannot flood a slow handler either.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from inferd.worker import protocol
from inferd.worker.protocol import WINDOW

Send = Callable[[protocol.Message], Any]
_END = object()


class StreamCall:
    def __init__(self, call_id: int, send: Send, on_finished: Callable[[int], None],
                 abort_worker: Callable[[str], None] = lambda reason: None) -> None:
        self.id = call_id
        self._send = send
        self._on_finished = on_finished
        self.abort_worker = abort_worker  # the handler is stuck: replace the worker running it
        # a deque and one waiter, not an asyncio.Queue: most calls (RunPod jobs, unary gRPC)
        # carry one message, and a Queue with its Event costs more than the message
        self._messages: deque[Any] = deque()
        self._arrived: asyncio.Future[None] | None = None  # the reader waiting for a message
        self._credit = WINDOW
        self._credit_changed: asyncio.Event | None = None  # made when a sender first waits
        self.end: protocol.End | None = None
        # called after each message or the end arrives, instead of a reader waiting: a job runner
        # that takes a one-message call from callbacks (its messages stay in order until read)
        self.listener: Callable[[], None] | None = None
        self.started = time.perf_counter()
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def finished(self) -> bool:
        return self.end is not None

    # -- from the worker ---------------------------------------------------------------------

    def on_message(self, body: bytes) -> None:
        self._put(body)
        if self.listener is not None:
            self.listener()

    def on_credit(self, count: int) -> None:
        self._credit += count
        self._wake_sender()

    def _put(self, item: Any) -> None:
        self._messages.append(item)
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)

    def _wake_sender(self) -> None:
        if self._credit_changed is not None:
            self._credit_changed.set()

    def on_end(self, end: protocol.End) -> None:
        """The worker's last frame for this call: its status (and a unary reply); the slot is free."""
        if self.end is None:
            if end.has_reply:
                self._messages.append(end.body)
            self.end = end
            if not self._done.done():
                self._done.set_result(None)
            self._put(_END)
            self._wake_sender()
            self._on_finished(self.id)
            if self.listener is not None:
                self.listener()

    def on_gone(self, message: str) -> None:
        self.on_end(protocol.End(self.id, protocol.UNAVAILABLE, message))

    # -- to the worker -----------------------------------------------------------------------

    async def send_input(self, body: bytes) -> bool:
        """Forward one client message; False once the call has ended (stop reading the client)."""
        while self._credit <= 0 and not self.finished:
            if self._credit_changed is None:
                self._credit_changed = asyncio.Event()
            self._credit_changed.clear()
            await self._credit_changed.wait()
        if self.finished:
            return False
        self._credit -= 1
        self._send(protocol.Chunk(self.id, body))
        return True

    def end_input(self) -> None:
        if not self.finished:
            self._send(protocol.InputEnd(self.id))

    def peek(self) -> bytes | None:
        """The next message without taking it; None when there is none, or only the end."""
        if self._messages and self._messages[0] is not _END:
            item: bytes = self._messages[0]
            return item
        return None

    def take(self) -> None:
        """Drop the message ``peek`` returned, and the end right behind it (no credit: the call
        is over, or its one message was all the reader wanted)."""
        self._messages.popleft()
        if self._messages and self._messages[0] is _END:
            self._messages.popleft()

    def cancel(self) -> None:
        """The client went away or its deadline passed: tell the worker to stop producing."""
        if not self.finished:
            self._send(protocol.Cancel(self.id))

    async def single(self) -> bytes | None:
        """For unary replies: wait for the end, return the (last) message, no credit traffic."""
        # shielded: a cancelled caller (deadline) must not cancel the future on_end will resolve
        await asyncio.shield(self._done)
        reply = None
        while (item := self._messages.popleft()) is not _END:
            reply = item
        return reply

    async def messages(self) -> AsyncIterator[bytes]:
        """The worker's messages in order; each one consumed returns a credit to the worker."""
        while True:
            while not self._messages:
                self._arrived = asyncio.get_running_loop().create_future()
                try:
                    await self._arrived
                finally:
                    self._arrived = None
            item = self._messages.popleft()
            if item is _END:
                return
            yield item
            if not self.finished:
                self._send(protocol.Credit(self.id, 1))
