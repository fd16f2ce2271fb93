"""multi_model_reloading's watcher on a real filesystem: a version is looked at once it is
whole, and a models directory that is removed, replaced or appears later is still watched."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from inferd.worker.models.watch import watch_local


class NullLog:
    def warning(self, event: str, **kw: Any) -> None: ...

    error = warning


@pytest.fixture
def watching() -> Iterator[Callable[[list[str], Callable[[], None]], None]]:
    stop = threading.Event()

    def start(paths: list[str], on_change: Callable[[], None]) -> None:
        watch_local(paths, on_change, NullLog(), stop=stop)
        time.sleep(0.3)  # the watch is set up

    yield start
    stop.set()


def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_a_version_being_copied_is_looked_at_only_once_it_is_whole(tmp_path: Path, watching: Any) -> None:
    root = tmp_path / "iris"
    root.mkdir()
    seen: list[int] = []
    watching([str(root)], lambda: seen.append(os.path.getsize(root / "2" / "model.bin")
                                              if (root / "2" / "model.bin").exists() else -1))
    (root / "2").mkdir()
    with open(root / "2" / "model.bin", "wb") as file:  # a large model copied for 2.5 s
        for _ in range(50):
            file.write(b"x" * 1000)
            file.flush()
            time.sleep(0.05)
    assert eventually(lambda: seen), "no change seen"
    time.sleep(1.5)
    assert seen == [50_000], seen


def test_a_models_dir_that_is_replaced_is_watched_again(tmp_path: Path, watching: Any) -> None:
    root = tmp_path / "models"
    (root / "1").mkdir(parents=True)
    calls: list[float] = []
    watching([str(root)], lambda: calls.append(time.monotonic()))
    shutil.rmtree(root)  # rm -rf models && cp -r new-models models
    (root / "2").mkdir(parents=True)
    assert_later_changes_seen(root, calls, "3", "changes in the new directory are not seen")


def assert_later_changes_seen(root: Path, calls: list[float], version: str, why: str) -> None:
    """The replaced directory was noticed, and a version added to it afterwards is noticed too."""
    assert eventually(lambda: calls)
    time.sleep(1.5)
    before = len(calls)
    (root / version).mkdir()
    (root / version / "model.txt").write_text(f"v{version}")
    assert eventually(lambda: len(calls) > before), why


def test_a_models_dir_swapped_by_rename_is_watched_again(tmp_path: Path, watching: Any) -> None:
    root = tmp_path / "models"
    root.mkdir()
    calls: list[float] = []
    watching([str(root)], lambda: calls.append(time.monotonic()))
    staged = tmp_path / "staged"
    (staged / "1").mkdir(parents=True)
    (staged / "1" / "model.txt").write_text("v1")
    root.rename(tmp_path / "old")
    staged.rename(root)
    assert_later_changes_seen(root, calls, "2", "changes in the swapped-in directory are not seen")


def test_a_model_path_missing_at_start_is_watched_once_it_appears(tmp_path: Path, watching: Any) -> None:
    present, missing = tmp_path / "iris", tmp_path / "rose"
    present.mkdir()
    calls: list[float] = []
    watching([str(present), str(missing)], lambda: calls.append(time.monotonic()))
    missing.mkdir()
    (missing / "model.txt").write_text("rose")
    assert eventually(lambda: calls)
    time.sleep(1.5)
    before = len(calls)
    (missing / "model.txt").write_text("rose retrained")
    assert eventually(lambda: len(calls) > before), "changes in the late directory are not seen"


def test_a_models_symlink_swapped_to_a_new_release_is_followed(tmp_path: Path, watching: Any) -> None:
    (tmp_path / "releases" / "7").mkdir(parents=True)
    (tmp_path / "releases" / "8" / "1").mkdir(parents=True)
    (tmp_path / "current").symlink_to("releases/7")
    calls: list[float] = []
    watching([str(tmp_path / "current")], lambda: calls.append(time.monotonic()))
    (tmp_path / "next").symlink_to("releases/8")
    (tmp_path / "next").rename(tmp_path / "current")  # ln -sfn, atomically
    assert eventually(lambda: calls)
    time.sleep(1.5)
    before = len(calls)
    (tmp_path / "releases" / "8" / "2").mkdir()
    (tmp_path / "releases" / "8" / "2" / "model.txt").write_text("v2")
    assert eventually(lambda: len(calls) > before), "changes in the new release are not seen"
