"""The garbage collector's view of a long-lived process.

Everything a daemon or worker builds while starting (imported modules, the project's spec, a
loaded model's Python objects) lives until the process ends, yet every full collection walks
all of it again, and the gen-0 collections that requests trigger promote into it. ``settle``
collects what starting left behind and moves the survivors to the permanent generation
(``gc.freeze``), where no collection looks again: the collector's work follows what requests
allocate, not how big the process is.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Once started (and again after a reload): collect, then freeze what survived. Whatever a
    reload dropped was frozen too: unfrozen first, so the full collection frees its cycles."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
