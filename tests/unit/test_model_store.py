"""multi_model_reloading in the worker, without a daemon: version discovery, the LRU cache, the
store's loading rules, object-store sources (fsspec's memory filesystem) and hostile lookups."""

from __future__ import annotations

import threading
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
