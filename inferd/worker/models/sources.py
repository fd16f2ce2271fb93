"""Model sources: the local disk, read in place, and object stores (``s3://``, ``gs://``) read
through fsspec into a content-addressed disk cache under the daemon's state dir."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from inferd.worker.models.cache import Lru


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogatepass")).hexdigest() if parts else ""


class LocalSource:
    def path_of(self, location: str) -> str:
        return location

    def subdirs(self, path: str) -> list[str]:
        try:
            return sorted(entry.name for entry in os.scandir(path) if entry.is_dir())
        except OSError:
            return []

    def fingerprint(self, path: str) -> str:
        parts = []
        for top, _, files in os.walk(path):
            for name in files:
                full = os.path.join(top, name)
                try:
                    stat = os.stat(full)
                except OSError:
                    continue  # removed while we looked: the watcher reports it next
                parts.append(f"{os.path.relpath(full, path)}\0{stat.st_size}\0{stat.st_mtime_ns}")
        return _digest(sorted(parts))

    def join(self, path: str, name: str) -> str:
        return os.path.join(path, name)

    def local(self, path: str, fingerprint: str) -> AbstractContextManager[str]:
        return nullcontext(path)


class RemoteSource:
    """An fsspec filesystem. A version is downloaded once per content (its listing's digest) into
    ``cache_dir``; at most ``keep`` versions stay on disk (``disk_cache_size``), least recently used
    removed first."""

    def __init__(self, fs: Any, cache_dir: Path, keep: int | None = None) -> None:
        self.fs = fs
        self.cache_dir = cache_dir
        self.on_disk: Lru[str, Path] = Lru(keep)
        self._lock = threading.Lock()  # one download at a time: the disk cache is shared
        self._reading: Counter[str] = Counter()  # downloads a load_model is reading now
        self._evicted: set[str] = set()  # out of the disk cache: removed once nothing reads them

    def path_of(self, location: str) -> str:
        """``s3://bucket/models`` as the filesystem names it (``bucket/models``)."""
        return str(self.fs._strip_protocol(location)).rstrip("/")

    def subdirs(self, path: str) -> list[str]:
        try:
            entries = self.fs.ls(path, detail=True)
        except (FileNotFoundError, ValueError):
            return []  # any other error (a network blip) is raised: the models it holds are not gone
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")

    def fingerprint(self, path: str) -> str:
        try:
            found = self.fs.find(path, detail=True)
        except (FileNotFoundError, ValueError):
            return ""
        return _digest(sorted(f"{name}\0{info.get('size')}\0{_version_tag(info)}" for name, info in found.items()))

    def join(self, path: str, name: str) -> str:
        return f"{path.rstrip('/')}/{name}"

    @contextmanager
    def local(self, path: str, fingerprint: str) -> Iterator[str]:
        """The version's files on local disk, downloaded unless this content already is; the
        disk cache does not remove them while load_model reads them (another call's download
        may push them out meanwhile)."""
        with self._lock:
            target = self._download(path, fingerprint)
            self._reading[fingerprint] += 1
            self._evicted.discard(fingerprint)
            self._evicted.update(evicted for evicted, _ in self.on_disk.put(fingerprint, target))
            self._remove_evicted()
        try:
            yield str(target)
        finally:
            with self._lock:
                self._reading[fingerprint] -= 1
                if not self._reading[fingerprint]:
                    del self._reading[fingerprint]
                self._remove_evicted()

    def _download(self, path: str, fingerprint: str) -> Path:
        target = self.cache_dir / fingerprint
        if target.is_dir():
            return target
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".download-", dir=self.cache_dir))
        try:
            self.fs.get(path.rstrip("/") + "/", str(partial) + "/", recursive=True)
            try:
                partial.rename(target)
            except OSError:
                if not target.is_dir():
                    raise
                # another worker process of the API downloaded the same content first: use theirs
                shutil.rmtree(partial, ignore_errors=True)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return target

    def _remove_evicted(self) -> None:
        for fingerprint in [f for f in self._evicted if not self._reading[f]]:
            self._evicted.discard(fingerprint)
            shutil.rmtree(self.cache_dir / fingerprint, ignore_errors=True)


def _version_tag(info: dict[str, Any]) -> Any:
    """What changes when an object's content does, as each store names it."""
    for key in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "created"):
        if info.get(key) is not None:
            return info[key]
    return None


def source_for(location: str, cache_dir: Path, keep: int | None) -> LocalSource | RemoteSource:
    if "://" not in location:
        return LocalSource()
    import fsspec  # type: ignore[import-untyped]  # ships no types; only remote models need it

    fs, _ = fsspec.core.url_to_fs(location)
    return RemoteSource(fs, cache_dir, keep)
