"""multi_model_reloading in the worker, without a daemon: version discovery, the LRU cache, the
store's loading rules, object-store sources (fsspec's memory filesystem) and hostile lookups."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import fsspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferd.metrics import Metrics
from inferd.worker import protocol
from inferd.worker.models.cache import Lru
from inferd.worker.models.errors import ModelError, ModelNotFound, ModelUnavailable
from inferd.worker.models.report import merge_reports
from inferd.worker.models.sources import LocalSource, RemoteSource
from inferd.worker.models.store import ModelStore, StoreEvents
from inferd.worker.models.versions import Roots, dir_models, discover, model_versions, parse_version

LOCAL = LocalSource()


class NullLog:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.events.append((event, kw))

    error = warning = info


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def read_model(path: str) -> str:
    text = (Path(path) / "model.txt").read_text()
    if text.startswith("fail"):
        raise ValueError(text)
    return text


def store_for(roots: Roots, cache_size: int | None = None, single: str | None = None) -> tuple[ModelStore, list]:
    reports: list[dict[str, Any]] = []
    loads: list[tuple[str, int, bool]] = []
    events = StoreEvents(reports.append, lambda m, v, ok, s: loads.append((m, v, ok)), NullLog())
    store = ModelStore(lambda: roots, events, cache_size=cache_size, single=single)
    store.loader = read_model
    return store, loads


# -- discovery --------------------------------------------------------------------------------

def test_integer_subdirectories_are_versions_and_other_names_are_not(tmp_path: Path) -> None:
    for name in ("1", "2", "10", "v3", "notes"):
        write(tmp_path / name / "model.txt", name)
    assert sorted(model_versions(LOCAL, str(tmp_path))) == [1, 2, 10]


def test_a_model_without_version_folders_is_one_version_and_an_empty_one_none(tmp_path: Path) -> None:
    write(tmp_path / "rose" / "model.txt", "x")
    (tmp_path / "empty").mkdir()
    assert {v: f.path for v, f in model_versions(LOCAL, str(tmp_path / "rose")).items()} == {1: str(tmp_path / "rose")}
    assert model_versions(LOCAL, str(tmp_path / "empty")) == {}
    assert model_versions(LOCAL, str(tmp_path / "gone")) == {}


def test_dir_form_names_models_after_subdirectories_hidden_ones_excluded(tmp_path: Path) -> None:
    write(tmp_path / "iris" / "1" / "model.txt", "x")
    write(tmp_path / ".cache" / "1" / "model.txt", "x")
    write(tmp_path / "stray.txt", "x")
    assert sorted(dir_models(LOCAL, str(tmp_path))) == ["iris"]
    assert sorted(discover(dir_models(LOCAL, str(tmp_path)))) == ["iris"]


def test_the_fingerprint_changes_when_a_file_does(tmp_path: Path) -> None:
    write(tmp_path / "model.txt", "one")
    before = LOCAL.fingerprint(str(tmp_path))
    write(tmp_path / "model.txt", "one more")
    assert LOCAL.fingerprint(str(tmp_path)) != before


@pytest.mark.parametrize(("value", "version"), [
    ("2", 2), (2, 2), ("007", 7), ("latest", None), ("-1", None), (-1, None), ("1.5", None), ("", None),
    ("١", None), ("9" * 19, None), (True, None), (None, None), ([1], None),
])
def test_parse_version_takes_only_plain_decimal_integers(value: object, version: int | None) -> None:
    assert parse_version(value) == version


# -- the LRU ----------------------------------------------------------------------------------

def test_lru_evicts_the_least_recently_used_past_its_capacity() -> None:
    lru: Lru[str, int] = Lru(2)
    assert lru.put("a", 1) == [] and lru.put("b", 2) == []
    assert lru.get("a") == 1  # "b" is now the least recently used
    assert lru.put("c", 3) == [("b", 2)]
    assert list(lru) == ["a", "c"]
    assert Lru[str, int](None).put("x", 1) == []  # no capacity: nothing is ever evicted


# -- the store --------------------------------------------------------------------------------

def test_without_a_cache_every_version_loads_and_latest_is_the_highest(tmp_path: Path) -> None:
    write(tmp_path / "1" / "model.txt", "v1")
    write(tmp_path / "2" / "model.txt", "v2")
    store, loads = store_for({"default": (LOCAL, str(tmp_path))}, single="default")
    store.refresh()
    assert sorted(loads) == [("default", 1, True), ("default", 2, True)]
    assert store.get(None, "latest") == "v2" and store.get(None, "1") == "v1" and store.get("default", 2) == "v2"


def test_a_version_that_fails_to_load_leaves_the_previous_one_serving(tmp_path: Path) -> None:
    write(tmp_path / "1" / "model.txt", "v1")
    store, _ = store_for({"default": (LOCAL, str(tmp_path))}, single="default")
    store.refresh()
    write(tmp_path / "2" / "model.txt", "fail v2")
    store.refresh()
    assert store.get(None, "latest") == "v1"
    with pytest.raises(ModelUnavailable, match="version 2 failed to load: ValueError: fail v2"):
        store.get(None, "2")
    assert store.snapshot()["default"] == {"versions": [1, 2], "loaded": [1], "latest": 1,
                                           "failed": {"2": 'model "default" version 2 failed to load: ValueError: fail v2'}}
    write(tmp_path / "2" / "model.txt", "v2 fixed")  # its files change: tried again
    store.refresh()
    assert store.get(None, "latest") == "v2 fixed"


def test_changed_files_reload_a_version_and_a_removed_one_is_unloaded(tmp_path: Path) -> None:
    write(tmp_path / "1" / "model.txt", "v1")
    write(tmp_path / "2" / "model.txt", "v2")
    store, _ = store_for({"default": (LOCAL, str(tmp_path))}, single="default")
    store.refresh()
    held = store.get(None, "2")
    write(tmp_path / "1" / "model.txt", "v1 retrained")
    (tmp_path / "2" / "model.txt").unlink()
    (tmp_path / "2").rmdir()
    store.refresh()
    assert held == "v2"  # a call that already had it keeps its object
    assert store.get(None, "latest") == "v1 retrained"
    with pytest.raises(ModelNotFound, match="has no version 2"):
        store.get(None, "2")


def test_with_a_cache_models_load_on_first_use_and_the_least_recently_used_is_evicted(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write(tmp_path / name / "1" / "model.txt", name)
    store, loads = store_for(dir_models(LOCAL, str(tmp_path)), cache_size=1)
    store.refresh()
    assert loads == []  # nothing until asked
    assert store.get("a", "latest") == "a"
    assert store.get("b", "latest") == "b"
    assert {name: m["loaded"] for name, m in store.snapshot().items()} == {"a": [], "b": [1]}
    assert store.get("a", "latest") == "a"
    assert loads == [("a", 1, True), ("b", 1, True), ("a", 1, True)]


def test_with_a_cache_latest_falls_back_past_a_version_that_fails(tmp_path: Path) -> None:
    write(tmp_path / "1" / "model.txt", "v1")
    write(tmp_path / "2" / "model.txt", "fail")
    store, _ = store_for({"m": (LOCAL, str(tmp_path))}, cache_size=2)
    store.refresh()
    assert store.get("m", "latest") == "v1"
    assert store.snapshot()["m"]["latest"] == 1


def test_concurrent_first_calls_share_one_load(tmp_path: Path) -> None:
    write(tmp_path / "1" / "model.txt", "v1")
    store, loads = store_for({"m": (LOCAL, str(tmp_path))}, cache_size=1)
    store.refresh()
    gate = threading.Event()

    def slow(path: str) -> str:
        gate.wait(5)
        return read_model(path)

    store.loader = slow
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(store.get("m", "latest"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(5)
    assert results == ["v1"] * 4 and len(loads) == 1


def test_unknown_names_and_versions_are_404s_that_name_them(tmp_path: Path) -> None:
    write(tmp_path / "iris" / "1" / "model.txt", "x")
    store, _ = store_for(dir_models(LOCAL, str(tmp_path)))
    store.refresh()
    with pytest.raises(ModelNotFound, match=r'no model named "rose" \(models: iris\)') as info:
        store.get("rose", "latest")
    assert info.value.status_code == 404 and info.value.grpc_code == 5
    with pytest.raises(ModelNotFound, match=r'model "iris" has no version 3 \(versions: 1\)'):
        store.get("iris", "3")
    with pytest.raises(ModelNotFound, match=r'a model name is required \(models: iris\)'):
        store.get(None, "latest")


@settings(max_examples=200, deadline=None)
@given(name=st.one_of(st.none(), st.text(max_size=300), st.integers()),
       version=st.one_of(st.text(max_size=300), st.integers(min_value=-10**30, max_value=10**30), st.none()))
def test_any_name_or_version_is_a_model_or_a_404_naming_it(name: Any, version: Any) -> None:
    try:
        value = HOSTILE.get(name, version)
    except ModelError as exc:
        assert exc.status_code in (404, 503) and len(str(exc.detail)) < 600
        return
    assert value == "iris v1"


def _hostile_store() -> ModelStore:
    store, _ = store_for({"iris": (FakeSource(), "iris")})
    store.loader = lambda path: "iris v1"
    store.refresh()
    return store


class FakeSource(LocalSource):
    def subdirs(self, path: str) -> list[str]:
        return ["1"]

    def fingerprint(self, path: str) -> str:
        return "same"


HOSTILE = _hostile_store()


# -- object stores ----------------------------------------------------------------------------

def test_remote_versions_download_once_per_content_and_the_disk_cache_is_bounded(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    for version in ("1", "2", "3"):
        fs.pipe(f"/bucket-{tmp_path.name}/iris/{version}/model.txt", f"iris v{version}".encode())
    source = RemoteSource(fs, tmp_path / "cache", keep=2)
    root = source.path_of(f"memory://bucket-{tmp_path.name}/iris")
    store, loads = store_for({"iris": (source, root)}, cache_size=2)
    store.refresh()
    assert sorted(store.snapshot()["iris"]["versions"]) == [1, 2, 3]
    assert store.get("iris", "1") == "iris v1" and store.get("iris", "latest") == "iris v3"
    assert store.get("iris", "2") == "iris v2"
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2  # disk_cache_size: the least recently used download was removed
    fs.pipe(f"/bucket-{tmp_path.name}/iris/3/model.txt", b"iris v3 retrained")
    store.refresh()
    assert store.get("iris", "latest") == "iris v3 retrained"
    assert len(loads) == 4


def test_merge_reports_unites_what_each_worker_holds() -> None:
    one = {"iris": {"versions": [1, 2], "loaded": [2], "latest": 2, "failed": {}}}
    two = {"iris": {"versions": [1, 2, 3], "loaded": [1], "latest": 3, "failed": {"4": "x"}}}
    assert merge_reports([one, None, two]) == {"iris": {"versions": [1, 2, 3], "loaded": [1, 2], "latest": 3,
                                                        "failed": {"4": "x"}}}
    assert merge_reports([None]) is None


# -- metrics ----------------------------------------------------------------------------------

def test_model_loads_reported_by_a_worker_are_inferd_series() -> None:
    metrics = Metrics()
    metrics.record_user("iris", protocol.Metric("inferd_model_loads", "increment", 1.0,
                                                {"model": "m", "outcome": "failed"}).as_dict())
    metrics.record_user("iris", protocol.Metric("inferd_model_load_seconds", "histogram", 0.25, {"model": "m"}).as_dict())
    text = metrics.render().decode()
    assert 'inferd_model_loads_total{api="iris",model="m",outcome="failed"} 1.0' in text
    assert 'inferd_model_load_seconds_sum{api="iris",model="m"} 0.25' in text


# -- found by review --------------------------------------------------------------------------

def test_an_empty_version_folder_is_not_a_version_until_its_files_arrive(tmp_path: Path) -> None:
    write(tmp_path / "1" / "model.txt", "v1")
    (tmp_path / "2").mkdir()  # `mkdir 2 && cp ... 2/`: caught between the two
    store, loads = store_for({"m": (LOCAL, str(tmp_path))})
    store.refresh()
    assert loads == [("m", 1, True)] and store.snapshot()["m"]["versions"] == [1]
    write(tmp_path / "2" / "model.txt", "v2")
    store.refresh()
    assert store.get("m", "latest") == "v2" and store.snapshot()["m"]["failed"] == {}


class RacingStore(ModelStore):
    """Removes the latest version between ``_latest`` choosing it and fetching it, as a watcher
    thread's refresh can."""

    def __init__(self, remove: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.remove = remove

    def _version(self, name: str, version: int) -> Any:
        remove, self.remove = self.remove, None
        if remove is not None:
            remove()
            self.refresh()
        return super()._version(name, version)


def test_latest_is_never_a_404_while_the_latest_version_is_removed(tmp_path: Path) -> None:
    write(tmp_path / "1" / "model.txt", "v1")
    write(tmp_path / "2" / "model.txt", "v2")

    def remove() -> None:
        (tmp_path / "2" / "model.txt").unlink()
        (tmp_path / "2").rmdir()

    events = StoreEvents(lambda report: None, lambda m, v, ok, s: None, NullLog())
    store = RacingStore(remove, lambda: {"m": (LOCAL, str(tmp_path))}, events)
    store.loader = read_model
    store.refresh()
    assert store.get("m", "latest") in ("v1", "v2")


def test_a_load_model_that_exits_does_not_leave_later_calls_waiting_forever(tmp_path: Path) -> None:
    write(tmp_path / "1" / "model.txt", "v1")
    store, _ = store_for({"m": (LOCAL, str(tmp_path))}, cache_size=1)
    store.refresh()

    def exits(path: str) -> str:
        raise SystemExit(1)

    store.loader = exits
    with pytest.raises(SystemExit):
        store.get("m", "latest")
    store.loader = read_model
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(store.get("m", "latest")), daemon=True)
    thread.start()
    thread.join(5)
    assert result == ["v1"]


def test_get_model_in_the_constructor_says_why_it_cannot_answer_yet(tmp_path: Path) -> None:
    write(tmp_path / "1" / "model.txt", "v1")
    store, _ = store_for({"m": (LOCAL, str(tmp_path))})
    store.loader = None  # Handler.__init__ runs before load_model can be bound
    with pytest.raises(ModelUnavailable, match=r"model_client.get_model cannot be called in Handler.__init__"):
        store.get("m", "latest")


class FlakyFs:
    """An object store whose listings fail (a network blip) while ``down`` is set."""

    def __init__(self, fs: Any) -> None:
        self.fs, self.down = fs, False

    def __getattr__(self, name: str) -> Any:
        if self.down and name in ("ls", "find"):
            raise ConnectionResetError("connection reset by peer")
        return getattr(self.fs, name)


def test_an_object_store_that_cannot_be_listed_for_a_while_keeps_its_models(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe(f"/flaky-{tmp_path.name}/iris/1/model.txt", b"iris v1")
    flaky = FlakyFs(fs)
    source = RemoteSource(flaky, tmp_path / "cache")
    store, loads = store_for({"iris": (source, source.path_of(f"memory://flaky-{tmp_path.name}/iris"))})
    store.refresh()
    flaky.down = True
    with pytest.raises(OSError):
        store.refresh()  # the watcher logs it and looks again later
    flaky.down = False
    assert store.get("iris", "latest") == "iris v1" and loads == [("iris", 1, True)]


def test_an_evicted_model_is_released(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write(tmp_path / name / "1" / "model.txt", name)
    store, _ = store_for(dir_models(LOCAL, str(tmp_path)), cache_size=1)
    store.loader = lambda path: Model(path)
    store.refresh()
    first = weakref.ref(store.get("a", "latest"))
    store.get("b", "latest")
    gc.collect()
    assert first() is None


class Model:
    def __init__(self, path: str) -> None:
        self.path = path


def test_with_a_cache_a_version_that_failed_once_is_tried_again_later(tmp_path: Path, monkeypatch: Any) -> None:
    # e.g. out of memory while the model just evicted was still in use, or its download removed
    write(tmp_path / "1" / "model.txt", "v1")
    store, loads = store_for({"m": (LOCAL, str(tmp_path))}, cache_size=1)
    store.refresh()
    attempts: list[str] = []

    def flaky(path: str) -> str:
        attempts.append(path)
        if len(attempts) == 1:
            raise MemoryError("CUDA out of memory")
        return read_model(path)

    store.loader = flaky
    with pytest.raises(ModelUnavailable, match="MemoryError"):
        store.get("m", "latest")
    with pytest.raises(ModelUnavailable):
        store.get("m", "1")  # not at once: a broken model must not run load_model on every call
    monkeypatch.setattr("inferd.worker.models.store.RETRY_FAILED", 0.0)
    assert store.get("m", "latest") == "v1"
    assert store.snapshot()["m"]["failed"] == {}


def test_two_workers_downloading_the_same_version_at_once_both_load_it(tmp_path: Path) -> None:
    # processes_per_replica: 2 with an s3:// model: both processes start, both download version 1
    fs = fsspec.filesystem("memory")
    fs.pipe(f"/twice-{tmp_path.name}/iris/1/model.txt", b"iris v1")
    mine, other = RemoteSource(fs, tmp_path / "cache"), RemoteSource(fs, tmp_path / "cache")
    root = mine.path_of(f"memory://twice-{tmp_path.name}/iris")
    found = model_versions(mine, root)[1]
    real_get = fs.get

    def racing_get(*args: Any, **kwargs: Any) -> None:
        fs.get = real_get
        with other.local(found.path, found.fingerprint):  # the other process finishes first
            pass
        real_get(*args, **kwargs)

    fs.get = racing_get
    with mine.local(found.path, found.fingerprint) as path:
        assert (Path(path) / "model.txt").read_text() == "iris v1"


def test_a_download_being_loaded_is_not_removed_by_the_disk_cache(tmp_path: Path) -> None:
    # cache_size 1, disk_cache_size 1: a call for b while a is still in load_model
    fs = fsspec.filesystem("memory")
    for name in ("a", "b"):
        fs.pipe(f"/pinned-{tmp_path.name}/{name}/1/model.txt", name.encode())
    source = RemoteSource(fs, tmp_path / "cache", keep=1)
    store, _ = store_for(dir_models(source, source.path_of(f"memory://pinned-{tmp_path.name}")), cache_size=1)
    store.refresh()

    def load(path: str) -> str:
        if store.loader is load:
            store.loader = read_model
            assert store.get("b", "latest") == "b"  # another call, meanwhile
        return read_model(path)

    store.loader = load
    assert store.get("a", "latest") == "a"
    assert len(list((tmp_path / "cache").iterdir())) == 1  # and the bound holds once a is loaded


def test_a_single_model_is_returned_whatever_name_is_asked(tmp_path: Path) -> None:
    write(tmp_path / "1" / "model.txt", "v1")
    store, _ = store_for({"default": (LOCAL, str(tmp_path))}, single="default")
    store.refresh()
    assert store.get("iris-classifier", "latest") == store.get(None, "1") == "v1"


class SlowListing(FakeSource):
    """The first listing is slow and sees only version 1; later ones see 1 and 2."""

    def __init__(self) -> None:
        self.calls, self.entered, self.release = 0, threading.Event(), threading.Event()

    def subdirs(self, path: str) -> list[str]:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            self.release.wait(5)
            return ["1"]
        return ["1", "2"]


def test_an_older_listing_finishing_last_does_not_undo_a_newer_one() -> None:
    # mixed local and s3:// paths: the watcher and the object-store poll refresh at once
    source = SlowListing()
    store, _ = store_for({"m": (source, "m")})
    store.loader = lambda path: "model"
    first = threading.Thread(target=store.refresh)
    first.start()
    source.entered.wait(5)
    second = threading.Thread(target=store.refresh)
    second.start()
    time.sleep(0.2)
    source.release.set()
    first.join(5)
    second.join(5)
    assert store.snapshot()["m"]["versions"] == [1, 2]
