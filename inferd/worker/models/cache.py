"""A least-recently-used map with an optional capacity (``cache_size``, ``disk_cache_size``)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """Not thread-safe: its owner holds a lock around it."""

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        """The value, now the most recently used; None when absent."""
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def peek(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> list[tuple[K, V]]:
        """Insert or replace as most recently used; returns what fell out past the capacity."""
        self._items[key] = value
        self._items.move_to_end(key)
        evicted = []
        while self.capacity is not None and len(self._items) > self.capacity:
            evicted.append(self._items.popitem(last=False))
        return evicted

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)
