"""The models a worker holds: which versions exist, which are in memory, loading and unloading.

Without ``cache_size`` every version is loaded as soon as it is found, in the background once the
worker serves, and ``latest`` is the highest version *loaded*: a new version takes over only
when its ``load_model`` has returned, and one whose ``load_model`` raised never does. With
``cache_size``, a version is loaded by the first call that asks for it (the call waits) and the
least recently used one is dropped past the limit.

Dropping a version only forgets inferd's reference: a call still using the object keeps it alive
until it returns, so a removed or evicted model is freed after its in-flight calls finish.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from inferd.worker.models.cache import Lru
from inferd.worker.models.errors import ModelNotFound, ModelUnavailable, quoted
from inferd.worker.models.versions import Found, Roots, discover, parse_version

Key = tuple[str, int]
LIST_LIMIT = 10  # names shown in an error message
# With a cache, a version that failed is tried again by a call this long after (Cortex tried on
# every call): a failure may be passing (out of memory while an evicted model was still in use).
# Without one, it is tried again when its files change.
RETRY_FAILED = 30.0


@dataclass(frozen=True)
class Failure:
    fingerprint: str  # retried once the files change
    error: str
    at: float = 0.0   # time.monotonic()


@dataclass(frozen=True)
class StoreEvents:
    """What the store tells the rest of the worker (and through it, the daemon)."""

    snapshot: Callable[[dict[str, Any]], None]
    loaded: Callable[[str, int, bool, float], None]  # model, version, ok, seconds
    log: Any


def _listing(names: list[Any]) -> str:
    shown = ", ".join(str(n) for n in names[:LIST_LIMIT])
    return shown + (", ..." if len(names) > LIST_LIMIT else "") if names else "none"


class ModelStore:
    def __init__(self, roots: Callable[[], Roots], events: StoreEvents, *, cache_size: int | None = None,
                 single: str | None = None) -> None:
        self.roots = roots
        self.events = events
        self.lazy = cache_size is not None
        self.single = single  # multi_model_reloading.path: the one model's name
        self.loader: Callable[[str], Any] | None = None
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._found: dict[str, dict[int, Found]] = {}
        self._memory: Lru[Key, tuple[str, Any]] = Lru(cache_size)  # key -> (fingerprint, value)
        self._failed: dict[Key, Failure] = {}
        self._loading: dict[Key, Future[Any]] = {}

    # -- finding versions ---------------------------------------------------------------------

    def refresh(self) -> None:
        """Look at the sources again: unload what is gone, load what is new or changed (at once
        without a cache; on first use with one)."""
        with self._refreshing:  # the watcher and the object-store poll: an older listing must not land last
            self._refresh()

    def _refresh(self) -> None:
        found = discover(self.roots())
        with self._lock:
            self._found = found
            gone = [key for key in self._memory if self._now(key) is None]
            changed = [key for key in self._memory if key not in gone and self._stale(key)]
            for key in gone + (changed if self.lazy else []):
                self._memory.pop(key)
            for key, failure in list(self._failed.items()):
                now = self._now(key)
                if now is None or now.fingerprint != failure.fingerprint:
                    del self._failed[key]
            todo = [] if self.lazy else [(n, v) for n, versions in found.items() for v in versions
                                         if ((n, v) not in self._memory or (n, v) in changed) and (n, v) not in self._failed]
        for name, version in gone:
            self.events.log.info("model_unloaded", model=name, version=version, reason="removed")
        for key in sorted(todo):
            try:
                self._load(key)
            except (ModelUnavailable, ModelNotFound):
                pass  # logged with its traceback; the previous version keeps serving
        self._publish()

    def _now(self, key: Key) -> Found | None:
        return self._found.get(key[0], {}).get(key[1])

    def _stale(self, key: Key) -> bool:
        held, now = self._memory.peek(key), self._now(key)
        return held is not None and now is not None and held[0] != now.fingerprint

    # -- get_model ----------------------------------------------------------------------------

    def get(self, model_name: Any, model_version: Any) -> Any:
        if self.loader is None:  # Handler.__init__ runs before its load_model can be bound (so in Cortex)
            raise ModelUnavailable("model_client.get_model cannot be called in Handler.__init__: models are loaded "
                                   "with load_model once the Handler exists; call it from the handler's methods")
        name = self._name(model_name)
        if model_version is None or model_version == "latest":
            return self._latest(name)
        version = parse_version(model_version)
        if version is None:
            raise ModelNotFound(f'model version must be an integer or "latest", got {quoted(model_version)}')
        return self._version(name, version)

    def _name(self, model_name: Any) -> str:
        if self.single is not None:  # Cortex took the one model whatever name was asked
            return self.single
        with self._lock:  # the names are listed (sorted) only for an error, not on every call
            if isinstance(model_name, str) and model_name in self._found:
                return model_name
            names = sorted(self._found)
        if model_name is None:
            raise ModelNotFound(f"a model name is required (models: {_listing(names)})")
        raise ModelNotFound(f"no model named {quoted(model_name)} (models: {_listing(names)})")

    def _versions(self, name: str) -> list[int]:
        versions = sorted(self._found.get(name, {}))
        if not versions:
            raise ModelNotFound(f"model {quoted(name)} has no versions")
        return versions

    def _version(self, name: str, version: int) -> Any:
        key = (name, version)
        with self._lock:
            versions = self._versions(name)
            if version not in versions:
                raise ModelNotFound(f"model {quoted(name)} has no version {version} (versions: {_listing(versions)})")
            held = self._memory.get(key)
            failure = self._failed.get(key)
        if failure is not None and self._retry(failure):
            failure = None
        if held is not None:
            return held[1]
        if failure is not None:
            raise ModelUnavailable(failure.error)
        value = self._load(key)
        self._publish()
        return value

    def _latest(self, name: str) -> Any:
        with self._lock:
            versions = self._versions(name)
            loaded = [v for v in versions if (name, v) in self._memory]
            failed = {v: f.error for (n, v), f in self._failed.items() if n == name and not self._retry(f)}
            held = self._memory.get((name, loaded[-1])) if loaded and not self.lazy else None
        if held is not None:  # taken under the lock that chose it: a refresh cannot remove it in between
            return held[1]
        errors = []
        for version in reversed(versions):  # with a cache (or nothing loaded yet): the highest that loads
            if version in failed:
                errors.append(failed[version])
                continue
            try:
                return self._version(name, version)
            except (ModelUnavailable, ModelNotFound) as exc:  # failed, or removed since we looked
                errors.append(str(exc.detail))
        raise ModelUnavailable(f"model {quoted(name)} has no version that loads: {errors[0] if errors else 'none found'}")

    def _retry(self, failure: Failure) -> bool:
        return self.lazy and time.monotonic() - failure.at >= RETRY_FAILED

    # -- loading ------------------------------------------------------------------------------

    def _load(self, key: Key) -> Any:
        """Load ``key`` once, however many calls ask for it meanwhile; they all get its outcome."""
        with self._lock:
            found = self._now(key)
            pending = self._loading.get(key)
            owner = pending is None and found is not None
            if owner:
                pending = self._loading[key] = Future()
        if pending is None or found is None:
            raise ModelNotFound(f"model {quoted(key[0])} has no version {key[1]} any more")
        if not owner:
            return pending.result()
        try:
            value = self._call_loader(key, found)
        except ModelUnavailable as exc:
            with self._lock:
                self._failed[key] = Failure(found.fingerprint, str(exc.detail), time.monotonic())
                self._loading.pop(key, None)
            pending.set_exception(exc)
            raise
        except BaseException as exc:  # load_model called sys.exit: the calls waiting on it must not hang
            with self._lock:
                self._loading.pop(key, None)
            pending.set_exception(exc)
            raise
        with self._lock:
            evicted = self._memory.put(key, (found.fingerprint, value)) if self._now(key) == found else []
            self._failed.pop(key, None)
            self._loading.pop(key, None)
        for (name, version), _ in evicted:
            self.events.log.info("model_unloaded", model=name, version=version, reason="evicted (cache_size)")
        pending.set_result(value)
        return value

    def _call_loader(self, key: Key, found: Found) -> Any:
        name, version = key
        assert self.loader is not None, "load_model is bound before the first refresh"
        started = time.perf_counter()
        try:
            with found.local() as path:
                value = self.loader(path)
        except Exception as exc:  # noqa: BLE001 - the user's load_model; logged, then reported to callers
            seconds = time.perf_counter() - started
            self.events.log.error("model_load_failed", model=name, version=version, path=found.path, exc_info=exc)
            self.events.loaded(name, version, False, seconds)
            raise ModelUnavailable(f"model {quoted(name)} version {version} failed to load: "
                                   f"{type(exc).__name__}: {exc}") from None
        seconds = time.perf_counter() - started
        self.events.log.info("model_loaded", model=name, version=version, seconds=round(seconds, 3))
        self.events.loaded(name, version, True, seconds)
        return value

    # -- reporting ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Per model: its versions, those in memory, what ``latest`` means now, and failures."""
        with self._lock:
            report = {}
            for name, versions in sorted(self._found.items()):
                loaded = sorted(v for n, v in self._memory if n == name)
                failed = {str(v): f.error for (n, v), f in self._failed.items() if n == name}
                usable = [v for v in versions if str(v) not in failed]
                latest = (max(usable) if usable else None) if self.lazy else (max(loaded) if loaded else None)
                report[name] = {"versions": sorted(versions), "loaded": loaded, "latest": latest, "failed": failed}
            return report

    def _publish(self) -> None:
        self.events.snapshot(self.snapshot())
