"""multi_model_reloading on the real daemon: model_client.get_model over HTTP and gRPC, live
reloading as version folders come, break and go, the cache, and the 404s.

The daemon serves a copy of tests/projects/models, whose store/ the tests change while it runs.
Each API has its own part of store/, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_tools import protoc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import PROJECTS, RunningDaemon, metrics_once, shared_daemon

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    project = tmp_path_factory.mktemp("copy") / "models"
    shutil.copytree(PROJECTS / "models", project)
    # the workers must import this checkout's inferd, whatever copy site-packages holds
    yield from shared_daemon(project, tmp_path_factory, env={"PYTHONPATH": str(REPO)})


def store(daemon: RunningDaemon) -> Path:
    return daemon.project / "store"


def add_version(folder: Path, text: str) -> None:
    """A version folder appears whole (written aside, then renamed in), as a deploy script does it."""
    staging = folder.parent.parent / f".staging-{folder.parent.name}-{folder.name}"
    staging.mkdir()
    (staging / "model.txt").write_text(text)
    staging.rename(folder)


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def models_of(daemon: RunningDaemon, api: str) -> dict[str, Any]:
    return daemon.api(api).get("models") or {}


def answer(daemon: RunningDaemon, api: str, **query: str) -> tuple[int, dict[str, Any]]:
    response = daemon.client.get(f"/{api}", params=query)
    return response.status_code, response.json()


# -- live reloading ---------------------------------------------------------------------------

def test_a_new_version_takes_over_with_no_failed_request(daemon: RunningDaemon) -> None:
    assert answer(daemon, "single") == (200, {"model": "single-v1"})
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            status, body = answer(daemon, "single")
            seen.append((status, body.get("model") or body.get("error")))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        add_version(store(daemon) / "single" / "2", "slow-v2")  # load_model takes 0.5 s for it
        switched = eventually(lambda: seen and seen[-1][1] == "slow-v2")
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert switched, seen[-5:]
    assert {status for status, _ in seen} == {200}, [s for s in seen if s[0] != 200][:3]
    assert {model for _, model in seen} == {"single-v1", "slow-v2"}
    assert seen.index((200, "slow-v2")) < len(seen) - 1 and seen[-1] == (200, "slow-v2")
    assert models_of(daemon, "single")["default"] == {"versions": [1, 2], "loaded": [1, 2], "latest": 2, "failed": {}}
    assert answer(daemon, "single", version="1") == (200, {"model": "single-v1"})


def test_a_version_whose_load_model_raises_leaves_the_previous_one_serving(daemon: RunningDaemon) -> None:
    add_version(store(daemon) / "named" / "iris" / "3", "fail-v3")
    failed = eventually(lambda: models_of(daemon, "named").get("iris", {}).get("failed"))
    assert failed == {"3": 'model "iris" version 3 failed to load: ValueError: refusing to load fail-v3'}
    assert answer(daemon, "named", model="iris") == (200, {"model": "iris-v2"})
    status, body = answer(daemon, "named", model="iris", version="3")
    assert status == 503 and "refusing to load fail-v3" in body["error"]
    event = next(e for e in daemon.log_events() if e.get("event") == "model_load_failed")
    assert (event["api"], event["model"], event["version"]) == ("named", "iris", 3)
    assert "Traceback" in event["exception"] and "refusing to load fail-v3" in event["exception"]
    text = metrics_once(daemon, 'outcome="failed"')
    assert 'inferd_model_loads_total{api="named",model="iris",outcome="failed"} 1.0' in text
    assert 'inferd_model_load_seconds_count{api="named",model="iris"}' in text


def test_a_removed_version_is_unloaded_and_latest_moves_back(daemon: RunningDaemon) -> None:
    assert answer(daemon, "catalog", model="b") == (200, {"model": "b-v2"})
    shutil.rmtree(store(daemon) / "catalog" / "b" / "2")
    assert eventually(lambda: models_of(daemon, "catalog").get("b", {}).get("versions") == [1])
    assert models_of(daemon, "catalog")["b"]["loaded"] == [1]
    assert answer(daemon, "catalog", model="b") == (200, {"model": "b-v1"})
    status, body = answer(daemon, "catalog", model="b", version="2")
    assert status == 404 and body["error"] == 'model "b" has no version 2 (versions: 1)'


def test_dir_form_serves_a_model_folder_added_while_running(daemon: RunningDaemon) -> None:
    (store(daemon) / "catalog" / "c").mkdir()
    add_version(store(daemon) / "catalog" / "c" / "1", "c-v1")
    assert eventually(lambda: "c" in models_of(daemon, "catalog"))
    assert answer(daemon, "catalog", model="c") == (200, {"model": "c-v1"})


# -- the forms, the cache, the errors ---------------------------------------------------------

def test_paths_form_serves_each_named_model_and_an_unversioned_one(daemon: RunningDaemon) -> None:
    assert answer(daemon, "named", model="iris", version="1") == (200, {"model": "iris-v1"})
    assert answer(daemon, "named", model="flower") == (200, {"model": "flower"})
    assert models_of(daemon, "named")["flower"]["versions"] == [1]


def test_cache_size_one_evicts_the_first_model_when_the_second_is_used(daemon: RunningDaemon) -> None:
    assert {name: m["loaded"] for name, m in models_of(daemon, "cached").items()} == {"a": [], "b": []}
    assert answer(daemon, "cached", model="a") == (200, {"model": "cached-a"})
    assert {name: m["loaded"] for name, m in models_of(daemon, "cached").items()} == {"a": [1], "b": []}
    assert answer(daemon, "cached", model="b") == (200, {"model": "cached-b"})
    loaded = eventually(lambda: {name: m["loaded"] for name, m in models_of(daemon, "cached").items()} == {"a": [], "b": [1]})
    assert loaded, models_of(daemon, "cached")


@pytest.mark.parametrize(("api", "query", "error"), [
    ("named", {"model": "tulip"}, 'no model named "tulip" (models: flower, iris)'),
    ("named", {}, "a model name is required (models: flower, iris)"),
    ("named", {"model": "iris", "version": "9"}, 'model "iris" has no version 9 (versions: 1, 2'),
    ("named", {"model": "iris", "version": "newest"}, 'model version must be an integer or "latest", got "newest"'),
    ("catalog", {"model": "zzz"}, 'no model named "zzz" (models: '),
])
def test_unknown_models_and_versions_are_404_json_naming_them(daemon: RunningDaemon, api: str, query: dict[str, str],
                                                              error: str) -> None:
    status, body = answer(daemon, api, **query)
    assert status == 404 and body["api"] == api
    assert body["error"].startswith(error), body


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=st.text(max_size=200), version=st.text(max_size=40))
def test_any_model_or_version_query_is_answered_never_a_500(daemon: RunningDaemon, model: str, version: str) -> None:
    query = urllib.parse.urlencode({"model": model, "version": version})
    response = daemon.client.get(f"/named?{query}")
    assert response.status_code in (200, 404, 503), response.text
    body = response.json()
    assert "model" in body if response.status_code == 200 else body["api"] == "named" and body["error"]


def test_inferd_status_lists_the_models(daemon: RunningDaemon) -> None:
    result = subprocess.run([sys.executable, "-m", "inferd", "status", "catalog", "--state-dir", str(daemon.state_dir)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "  model a: latest 1, loaded 1, versions 1" in result.stdout


# -- gRPC -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rpc(daemon: RunningDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    out = tmp_path_factory.mktemp("model_stubs")
    include = Path(protoc.__file__).parent / "_proto"
    project = PROJECTS / "models"
    assert protoc.main(["protoc", f"-I{project}", f"-I{include}", f"--python_out={out}",
                        str(project / "models.proto")]) == 0
    sys.path.insert(0, str(out))
    pb2 = importlib.import_module("models_pb2")
    channel = grpc.insecure_channel(f"127.0.0.1:{daemon.grpc_port}")
    get = channel.unary_unary("/rpc.Models/Get", request_serializer=pb2.Query.SerializeToString,
                              response_deserializer=pb2.Answer.FromString)
    try:
        yield lambda version="": get(pb2.Query(version=version), timeout=10)
    finally:
        channel.close()
        sys.path.remove(str(out))


def test_grpc_handler_gets_its_models_and_unknown_versions_are_not_found(rpc: Callable[..., Any]) -> None:
    assert rpc().model == "rpc-v2"
    assert rpc("1").model == "rpc-v1"
    with pytest.raises(grpc.RpcError) as info:
        rpc("9")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == 'model "default" has no version 9 (versions: 1, 2)'


def test_apis_view_lists_models_of_every_worker(daemon: RunningDaemon) -> None:
    api = daemon.api("rpc")
    assert api["models"] == {"default": {"versions": [1, 2], "loaded": [1, 2], "latest": 2, "failed": {}}}
    assert api["workers"][0]["models"] == api["models"]
    assert json.dumps(api)  # plain JSON all the way down


# -- found by review --------------------------------------------------------------------------

def test_a_model_folder_removed_and_copied_anew_is_still_watched(daemon: RunningDaemon) -> None:
    flower = store(daemon) / "named" / "flower"
    assert answer(daemon, "named", model="flower") == (200, {"model": "flower"})
    shutil.rmtree(flower)  # rm -rf flower && cp -r new-flower flower
    flower.mkdir()
    (flower / "model.txt").write_text("flower-new")
    assert eventually(lambda: answer(daemon, "named", model="flower") == (200, {"model": "flower-new"}))
    (flower / "model.txt").write_text("flower-newer")  # the new folder is watched, not the removed one
    assert eventually(lambda: answer(daemon, "named", model="flower") == (200, {"model": "flower-newer"}))


def test_a_version_copied_slowly_is_loaded_once_whole(daemon: RunningDaemon) -> None:
    iris = store(daemon) / "named" / "iris"
    (iris / "4").mkdir()
    with open(iris / "4" / "model.txt", "w") as file:  # a large model, copied for 2 s
        for _ in range(40):
            file.write("w")
            file.flush()
            time.sleep(0.05)
    assert eventually(lambda: answer(daemon, "named", model="iris") == (200, {"model": "w" * 40}))
    loads = [e for e in daemon.log_events() if e.get("event") in ("model_loaded", "model_load_failed")
             and e.get("api") == "named" and e.get("version") == 4]
    assert [e["event"] for e in loads] == ["model_loaded"], loads


def test_a_single_model_api_ignores_the_model_name_as_cortex_did(daemon: RunningDaemon) -> None:
    # Cortex's get_model took the one model of `path` whatever name a handler passed
    assert answer(daemon, "single", model="other", version="1") == (200, {"model": "single-v1"})
