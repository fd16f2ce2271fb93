"""Job ids: random UUIDs drawn from a pool of the OS's random bytes.

``uuid.uuid4()`` asks the kernel for 16 bytes each time (a ``getrandom`` call, dear under a
sandboxing kernel); here one call serves 256 ids. The bytes are the same CSPRNG output, so the
ids stay unguessable: they are what fetches a job's result."""

from __future__ import annotations

import os
import uuid

_POOL = 16 * 256


class RandomIds:
    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def uuid4(self) -> uuid.UUID:
        if self._at + 16 > len(self._pool):
            self._pool, self._at = os.urandom(_POOL), 0
        raw = self._pool[self._at:self._at + 16]
        self._at += 16
        return uuid.UUID(bytes=raw, version=4)


random_ids = RandomIds()
