"""cortex.yaml's handler.multi_model_reloading (Cortex §2.1, §3.2, §3.9): every rule, with file,
line and field; and the Handler checks `inferd validate` makes without importing the file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from inferd.spec import ModelPath, MultiModelSpec
from inferd.worker.handler_class import constructor_problem
from tests.unit.test_spec import errors, load, realtime

MODELS = ("handler.py", "models/iris/1/model.txt", "models/rose/model.txt")


def test_each_form_reads_into_absolute_local_paths(tmp_path: Path) -> None:
    project = load(tmp_path, realtime("    multi_model_reloading:\n      path: models/iris\n"), MODELS)
    assert project.apis[0].handler.multi_model_reloading == MultiModelSpec(
        form="path", models=(ModelPath("default", str(tmp_path / "models/iris")),))
    project = load(tmp_path, realtime("    multi_model_reloading:\n      paths:\n"
                                      "        - {name: iris, path: models/iris}\n"
                                      f"        - {{name: rose, path: {tmp_path / 'models/rose'}}}\n"
                                      "      cache_size: 1\n      disk_cache_size: 2\n"), MODELS)
    spec = project.apis[0].handler.multi_model_reloading
    assert spec.models == (ModelPath("iris", str(tmp_path / "models/iris")), ModelPath("rose", str(tmp_path / "models/rose")))
    assert (spec.form, spec.cache_size, spec.disk_cache_size) == ("paths", 1, 2)
    spec = load(tmp_path, realtime("    multi_model_reloading: {dir: models}\n"), MODELS).apis[0].handler.multi_model_reloading
    assert (spec.form, spec.dir, spec.models) == ("dir", str(tmp_path / "models"), ())


@pytest.mark.parametrize(("block", "expected"), [
    ("    multi_model_reloading: {}\n",
     "cortex.yaml:5: apis[0].handler.multi_model_reloading: needs exactly one of path (one model), paths or dir"),
    ("    multi_model_reloading:\n      path: models/iris\n      dir: models\n",
     "cortex.yaml:7: apis[0].handler.multi_model_reloading.dir: cannot be used together with path"),
    ("    multi_model_reloading:\n      dir: nowhere\n",
     'cortex.yaml:6: apis[0].handler.multi_model_reloading.dir: directory "nowhere" not found'),
    ("    multi_model_reloading:\n      path: ftp://host/model\n",
     'cortex.yaml:6: apis[0].handler.multi_model_reloading.path: must be a local directory or an s3:// or gs:// URL'),
    ("    multi_model_reloading:\n      dir: models\n      cache_size: 2\n",
     "cortex.yaml:7: apis[0].handler.multi_model_reloading.cache_size: needs disk_cache_size too"),
    ("    multi_model_reloading:\n      dir: models\n      disk_cache_size: 2\n",
     "cortex.yaml:7: apis[0].handler.multi_model_reloading.disk_cache_size: needs cache_size too"),
    ("    multi_model_reloading:\n      dir: models\n      cache_size: 3\n      disk_cache_size: 2\n",
     "cortex.yaml:8: apis[0].handler.multi_model_reloading.disk_cache_size: must be >= cache_size (3), got 2"),
    ("    multi_model_reloading:\n      dir: models\n      cache_size: 0\n      disk_cache_size: 2\n",
     "cortex.yaml:7: apis[0].handler.multi_model_reloading.cache_size: must be an integer >= 1, got 0"),
    ("    processes_per_replica: 2\n    multi_model_reloading:\n      dir: models\n      cache_size: 1\n"
     "      disk_cache_size: 1\n",
     "cortex.yaml:8: apis[0].handler.multi_model_reloading.cache_size: needs processes_per_replica: 1"),
    ("    multi_model_reloading:\n      paths: []\n",
     "cortex.yaml:6: apis[0].handler.multi_model_reloading.paths: must be a non-empty list of {name, path}, got an empty list"),
    ("    multi_model_reloading:\n      paths:\n        - {name: iris, path: models/iris}\n"
     "        - {name: iris, path: models/rose}\n",
     'cortex.yaml:8: apis[0].handler.multi_model_reloading.paths[1].name: "iris" is listed twice (first on line 7)'),
    ("    multi_model_reloading:\n      paths:\n        - {path: models/iris}\n",
     "cortex.yaml:7: apis[0].handler.multi_model_reloading.paths[0].name: is required"),
    ("    multi_model_reloading:\n      dir: models\n      signature_key: x\n",
     'cortex.yaml:7: apis[0].handler.multi_model_reloading.signature_key: unknown field "signature_key"'),
    ("    type: tensorflow\n    models: {path: s3://b/m}\n    multi_model_reloading: {dir: models}\n",
     "cortex.yaml:7: apis[0].handler.multi_model_reloading: is for type: python"),
])
def test_every_rule_is_reported_with_file_line_and_field(tmp_path: Path, block: str, expected: str) -> None:
    assert expected in errors(tmp_path, realtime(block), MODELS)


def test_async_and_batch_apis_reject_it(tmp_path: Path) -> None:
    text = realtime("    multi_model_reloading: {dir: models}\n").replace("RealtimeAPI", "AsyncAPI")
    assert "cortex.yaml:5: apis[0].handler.multi_model_reloading: is not supported for AsyncAPI" in errors(tmp_path, text, MODELS)
    text = text.replace("AsyncAPI", "BatchAPI")
    assert "cortex.yaml:5: apis[0].handler.multi_model_reloading: is not supported for BatchAPI" in errors(tmp_path, text, MODELS)


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed here")
def test_an_object_store_without_its_fsspec_backend_names_the_package(tmp_path: Path) -> None:
    text = realtime("    multi_model_reloading:\n      path: s3://bucket/iris\n")
    assert ('cortex.yaml:6: apis[0].handler.multi_model_reloading.path: reading s3:// models needs the s3fs package '
            '(pip install s3fs), got "s3://bucket/iris"') in errors(tmp_path, text, MODELS)


HANDLER = """\
class Handler:
    def __init__(self, config{extra}):
        pass
{load}
    def handle_post(self, payload):
        return payload
"""
LOAD = "\n    def load_model(self, model_path):\n        return model_path\n"


@pytest.mark.parametrize(("extra", "load", "models", "problem"), [
    (", model_client", LOAD, True, None),
    ("", LOAD, True, "Handler.__init__ must take model_client: handler.multi_model_reloading is set"),
    (", model_client", "", True, "Handler must define load_model(self, model_path): handler.multi_model_reloading is set"),
    (", model_client", LOAD, False,
     "Handler.__init__ asks for model_client, which needs handler.multi_model_reloading in cortex.yaml"),
    ("", "", False, None),
])
def test_model_client_and_load_model_come_with_multi_model_reloading(tmp_path: Path, extra: str, load: str,
                                                                     models: bool, problem: str | None) -> None:
    handler = tmp_path / "handler.py"
    handler.write_text(HANDLER.format(extra=extra, load=load))
    assert constructor_problem(handler, "RealtimeAPI", models) == problem


def test_a_models_symlink_is_kept_so_swapping_its_target_is_seen(tmp_path: Path) -> None:
    # releases/7 deployed, then `ln -sfn releases/8 current`: the worker must read through the link
    (tmp_path / "releases" / "7").mkdir(parents=True)
    (tmp_path / "current").symlink_to("releases/7")
    spec = load(tmp_path, realtime("    multi_model_reloading: {dir: current}\n"), MODELS).apis[0].handler
    assert spec.multi_model_reloading.dir == str(tmp_path.resolve() / "current")
