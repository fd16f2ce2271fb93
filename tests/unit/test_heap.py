"""``inferd.heap.settle``: what starting built is frozen out of the collector's sight, and what a
reload then drops is still freed."""

from __future__ import annotations

import gc
import weakref

from inferd import heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_settle_freezes_survivors_and_frees_cycles_dropped_since() -> None:
    try:
        node = Node()
        alive = weakref.ref(node)
        heap.settle()
        assert gc.get_freeze_count() > 0
        del node
        gc.collect()
        assert alive() is not None  # frozen: full collections no longer look at it
        heap.settle()  # as after a reload
        assert alive() is None
    finally:
        gc.unfreeze()
