"""What makes the store look again: filesystem events for local models (watchfiles), a timer
for object stores (they send no events)."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

REMOTE_POLL = 30.0  # seconds between listings of an object store
RETRY = 1.0         # seconds before watching again after the watcher failed
STEP_MS = 100
# A copy writes for as long as it takes (watchfiles yields its changes every few hundred ms):
# the store looks only once the files have been quiet this long, so load_model sees a version
# whole, not half-copied; unless the files never settle, then it looks every SETTLE_LIMIT.
QUIET_MS = 1000
SETTLE_LIMIT = 60.0

Identity = tuple[int, int] | None  # (device, inode) of a watched directory; None when absent


def watch_local(paths: list[str], on_change: Callable[[], None], log: Any,
                stop: threading.Event | None = None) -> threading.Thread:
    """``stop`` ends the thread (tests); the worker's runs as long as the process."""
    stopped = stop or threading.Event()

    def run() -> None:
        restarted = False
        while not stopped.is_set():
            try:
                _watch(paths, on_change, log, stopped, restarted)
            except Exception as exc:  # noqa: BLE001 - an unreadable root: watch again
                log.warning("model_watch_failed", roots=paths, error=str(exc))
                stopped.wait(RETRY)
            restarted = True

    return _start(run, "model-watch")


def _watch(paths: list[str], on_change: Callable[[], None], log: Any, stopped: threading.Event,
           restarted: bool) -> None:
    """Watch until a root is removed, replaced (by a rename, a symlink swap) or appears: inotify
    follows the directory it started on, so a new one is never seen without watching again."""
    import watchfiles  # here: a worker without multi_model_reloading does not pay for it at start

    identities = {path: _identity(path) for path in paths}
    roots = [path for path, identity in identities.items() if identity is not None]
    if not roots:
        if restarted:
            refresh(on_change, log)  # unload what went with them
        while not stopped.wait(RETRY) and all(_identity(path) is None for path in paths):
            pass
        return
    pending = time.monotonic() if restarted else None  # after a restart: what changed while nothing watched
    for changes in watchfiles.watch(*roots, step=STEP_MS, rust_timeout=QUIET_MS, yield_on_timeout=True,
                                    stop_event=stopped, raise_interrupt=False):
        now = time.monotonic()
        if changes and pending is None:
            pending = now
        if pending is not None and (not changes or now - pending > SETTLE_LIMIT):
            pending = None
            refresh(on_change, log)
        # a root's own event is its removal or rename (its inode may be reused at once by a new one)
        if any(path in identities for _, path in changes) or \
                any(_identity(path) != identity for path, identity in identities.items()):
            return  # watched again, and looked at once quiet


def _identity(path: str) -> Identity:
    try:
        info = os.stat(path)  # follows a symlink: swapping its target is a new identity
    except OSError:
        return None
    return (info.st_dev, info.st_ino) if stat.S_ISDIR(info.st_mode) else None


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
