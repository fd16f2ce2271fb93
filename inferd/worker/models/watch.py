"""What makes the store look again: filesystem events for local models (watchfiles), a timer
for object stores (they send no events)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REMOTE_POLL = 30.0  # seconds between listings of an object store
RETRY = 1.0         # seconds before watching again after the watcher failed (a root removed)
STEP_MS = 100       # quiet time that ends a batch of changes: a copied version loads once, whole


def watch_local(paths: list[str], on_change: Callable[[], None], log: Any) -> threading.Thread:
    import watchfiles  # here: a worker without multi_model_reloading does not pay for it at start

    def run() -> None:
        while True:
            roots = [p for p in paths if Path(p).is_dir()]
            try:
                if not roots:
                    time.sleep(RETRY)
                    continue
                for _ in watchfiles.watch(*roots, step=STEP_MS, debounce=1600, raise_interrupt=False):
                    refresh(on_change, log)
            except Exception as exc:  # noqa: BLE001 - a root removed or unreadable: watch again
                log.warning("model_watch_failed", roots=roots, error=str(exc))
            time.sleep(RETRY)
            refresh(on_change, log)  # whatever changed while nothing watched

    return _start(run, "model-watch")


def poll_remote(on_change: Callable[[], None], log: Any, interval: float = REMOTE_POLL) -> threading.Thread:
    def run() -> None:
        while True:
            time.sleep(interval)
            refresh(on_change, log)

    return _start(run, "model-poll")


def refresh(on_change: Callable[[], None], log: Any) -> None:
    try:
        on_change()
    except Exception as exc:  # noqa: BLE001 - the watcher must outlive one bad look
        log.error("model_refresh_failed", exc_info=exc)


def _start(run: Callable[[], None], name: str) -> threading.Thread:
    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
