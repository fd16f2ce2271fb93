"""inferd.spec: cortex.yaml to frozen dataclasses, and errors that name file, line and field."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import textwrap
import time
from pathlib import Path

import pytest

from inferd.spec import (
    ApiSpec,
    FrozenMap,
    NetworkingSpec,
    ProjectSpec,
    SpecError,
    SpecIssue,
    load_project,
    parse_apis,
    parse_duration,
    parse_quantity,
    plain,
)

MINIMAL = """\
- name: iris
  kind: RealtimeAPI
  handler:
    path: handler.py
"""


def write_project(root: Path, text: str, files: tuple[str, ...] = ("handler.py",)) -> Path:
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("class Handler:\n    pass\n")
    (root / "cortex.yaml").write_text(textwrap.dedent(text))
    return root


def load(root: Path, text: str, files: tuple[str, ...] = ("handler.py",)) -> ProjectSpec:
    return load_project(write_project(root, text, files))


def errors(root: Path, text: str, files: tuple[str, ...] = ("handler.py",)) -> str:
    with pytest.raises(SpecError) as info:
        load(root, text, files)
    return str(info.value)


def realtime(extra: str, name: str = "iris") -> str:
    """A valid RealtimeAPI (lines 1-4) followed by `extra` (indented as YAML), from line 5."""
    return f"- name: {name}\n  kind: RealtimeAPI\n  handler:\n    path: handler.py\n" + extra


# -- defaults ---------------------------------------------------------------------------------


def test_minimal_realtime_api_gets_every_cortex_default(tmp_path):
    project = load(tmp_path, MINIMAL)
    assert project.project_dir == tmp_path.resolve()
    assert project.config_file == tmp_path.resolve() / "cortex.yaml"
    assert project.ignored == ()
    api = project.api("iris")
    assert (api.name, api.kind, api.line) == ("iris", "RealtimeAPI", 1)
    handler = api.handler
    assert handler.type == "python" and handler.path == "handler.py"
    assert handler.protobuf_path is None and handler.server_side_batching is None
    assert (handler.dependencies.pip, handler.dependencies.conda, handler.dependencies.shell) == (
        "requirements.txt", "conda-packages.txt", "dependencies.sh")
    assert handler.multi_model_reloading is None and handler.models is None
    assert (handler.processes_per_replica, handler.threads_per_process) == (1, 1)
    assert handler.config == {} and handler.env == {}
    assert handler.python_path is None and handler.image is None and handler.shm_size is None
    assert handler.log_level == "info"
    assert (api.compute.cpu, api.compute.gpu, api.compute.inf, api.compute.mem) == ("200m", 0, 0, None)
    scaling = api.autoscaling
    assert (scaling.min_replicas, scaling.max_replicas, scaling.init_replicas) == (1, 100, 1)
    assert scaling.max_replica_concurrency == 1024
    assert scaling.target_replica_concurrency == 1.0
    assert (scaling.window, scaling.downscale_stabilization_period, scaling.upscale_stabilization_period) == (
        60.0, 300.0, 60.0)
    assert (scaling.max_downscale_factor, scaling.max_upscale_factor) == (0.75, 1.5)
    assert (scaling.downscale_tolerance, scaling.upscale_tolerance) == (0.05, 0.05)
    assert scaling.target_in_flight is None
    assert (api.update_strategy.max_surge, api.update_strategy.max_unavailable) == ("25%", "25%")
    assert api.networking.endpoint == "/iris"
    assert api.definition is None and api.pod is None and api.traffic_splits == () and api.node_groups is None
    assert not api.is_grpc
    assert (api.gpus_per_replica, api.processes_per_replica, api.worker_count) == (0, 1, 1)


def test_derived_defaults_follow_parallelism_and_min_replicas(tmp_path):
    project = load(tmp_path, """\
    - name: iris
      kind: RealtimeAPI
      handler:
        path: handler.py
        processes_per_replica: 2
        threads_per_process: 3
      autoscaling:
        min_replicas: 3
      compute:
        gpu: 1
    - name: queue
      kind: AsyncAPI
      handler:
        path: handler.py
    """)
    api = project.api("iris")
    assert api.autoscaling.target_replica_concurrency == 6.0
    assert api.autoscaling.init_replicas == 3
    assert (api.gpus_per_replica, api.processes_per_replica, api.worker_count) == (1, 2, 6)
    assert project.api("queue").autoscaling.target_replica_concurrency == 1.0


def test_batch_and_task_apis_have_no_autoscaling(tmp_path):
    project = load(tmp_path, """\
        - name: batcher
          kind: BatchAPI
          handler:
            path: handler.py
        - name: tasker
          kind: TaskAPI
          definition:
            path: handler.py
            config: {epochs: 3}
    """)
    batch, task = project.apis
    assert batch.autoscaling is None and batch.update_strategy is None and batch.worker_count == 1
    assert task.definition.path == "handler.py" and task.definition.config == {"epochs": 3}
    assert task.handler is None and task.processes_per_replica == 1


def test_parse_apis_from_text_uses_the_label(tmp_path):
    (tmp_path / "handler.py").write_text("")
    project = parse_apis(MINIMAL, tmp_path, "apis.yaml")
    assert project.config_file == tmp_path.resolve() / "apis.yaml"
    with pytest.raises(SpecError) as info:
        parse_apis(MINIMAL.replace("RealtimeAPI", "Nope"), tmp_path, "apis.yaml")
    assert str(info.value).startswith("apis.yaml:2: apis[0].kind: must be one of")


def test_api_lookup_raises_key_error(tmp_path):
    with pytest.raises(KeyError):
        load(tmp_path, MINIMAL).api("nope")


# -- immutability and plain() -----------------------------------------------------------------


def test_specs_are_frozen_all_the_way_down(tmp_path):
    api = load(tmp_path, """\
    - name: iris
      kind: RealtimeAPI
      handler:
        path: handler.py
        config:
          layers: [1, 2]
          nested: {a: b}
    """).api("iris")
    with pytest.raises(dataclasses.FrozenInstanceError):
        api.name = "other"
    with pytest.raises(TypeError):
        api.handler.config["layers"] = []
    assert api.handler.config["layers"] == (1, 2)
    assert isinstance(api.handler.config["nested"], FrozenMap)
    hash(api)  # usable as a dict key / in sets


def test_plain_round_trip_gives_ordinary_data(tmp_path):
    config = {"layers": [1, 2, {"deep": [3]}], "nested": {"a": "b"}, "rate": 0.5, "on": True}
    text = realtime("    config: " + json.dumps(config) + "\n")
    project = load(tmp_path, text)
    frozen = project.api("iris").handler.config
    assert plain(frozen) == config
    assert type(plain(frozen)["layers"]) is list
    copied = copy.deepcopy(dict(frozen))
    assert copied.keys() == config.keys()
    assert json.loads(json.dumps(plain(project)))["apis"][0]["handler"]["config"] == config
    assert pickle.loads(pickle.dumps(project)) == project


def test_null_config_becomes_empty_mapping(tmp_path):
    assert load(tmp_path, realtime("    config: null\n")).api("iris").handler.config == {}


# -- durations and quantities -----------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [
    ("10s", 10.0), ("1m", 60.0), ("1h30m", 5400.0), ("250ms", 0.25), ("1.5s", 1.5), ("0", 0.0),
    ("2h45m30.5s", 9930.5), ("500us", 0.0005), ("-1s", -1.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10", "s", "1x", "", "1 s", "1s2"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("text, value", [
    ("200m", 0.2), ("1", 1), ("0.5", 0.5), ("512Mi", 512 * 2**20), ("1G", 10**9), ("1e3", 1000), ("2Ki", 2048),
])
def test_parse_quantity(text, value):
    assert float(parse_quantity(text)) == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "1MB", "", "1.2.3", "Mi"])
def test_parse_quantity_rejects(text):
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_cpu_and_mem_are_kept_as_written(tmp_path):
    project = load(tmp_path, """\
    - name: iris
      kind: RealtimeAPI
      handler:
        path: handler.py
      compute:
        cpu: 1
        mem: 512Mi
    - name: half
      kind: RealtimeAPI
      handler:
        path: handler.py
      compute:
        cpu: 0.5
        mem: null
    """)
    assert (project.api("iris").compute.cpu, project.api("iris").compute.mem) == ("1", "512Mi")
    assert (project.api("half").compute.cpu, project.api("half").compute.mem) == ("0.5", None)


def test_quantity_minimums(tmp_path):
    text = errors(tmp_path, """\
    - name: iris
      kind: RealtimeAPI
      handler:
        path: handler.py
      compute:
        cpu: 10m
        mem: 1Mi
    """)
    assert 'cortex.yaml:6: apis[0].compute.cpu: must be at least 20m, got "10m"' in text
    assert 'cortex.yaml:7: apis[0].compute.mem: must be at least 20Mi, got "1Mi"' in text


def test_batching_interval_is_a_duration(tmp_path):
    batching = load(tmp_path, """\
    - name: iris
      kind: RealtimeAPI
      handler:
        path: handler.py
        threads_per_process: 2
        server_side_batching:
          max_batch_size: 8
          batch_interval: 250ms
    """).api("iris").handler.server_side_batching
    assert (batching.max_batch_size, batching.batch_interval) == (8, 0.25)


# -- locating errors --------------------------------------------------------------------------


def test_error_names_file_line_and_path(tmp_path):
    text = errors(tmp_path, """\
    - name: iris
      kind: RealtimeAPI
      handler:
        path: handler.py
      compute:
        cpu: 1
        gpu: two
    """)
    assert text == 'cortex.yaml:7: apis[0].compute.gpu: must be an integer >= 0, got "two"'


def test_booleans_are_not_integers(tmp_path):
    text = errors(tmp_path, realtime("  compute:\n    gpu: true\n"))
    assert text == "cortex.yaml:6: apis[0].compute.gpu: must be an integer >= 0, got true"


def test_every_problem_is_reported_at_once(tmp_path):
    with pytest.raises(SpecError) as info:
        load(tmp_path, """\
        - name: iris
          kind: RealtimeAPI
          handler:
            path: handler.py
            processes_per_replica: 0
          compute:
            gpu: -1
        - name: Bad_Name
          kind: RealtimeAPI
          handler:
            path: missing.py
        """)
    issues = info.value.issues
    assert [(i.line, i.path) for i in issues] == [
        (5, "apis[0].handler.processes_per_replica"),
        (7, "apis[0].compute.gpu"),
        (8, "apis[1].name"),
        (11, "apis[1].handler.path"),
    ]
    assert all(isinstance(i, SpecIssue) and i.file == "cortex.yaml" for i in issues)
    assert str(info.value) == "\n".join(str(i) for i in issues)


def test_issue_formatting_without_line_or_path():
    assert str(SpecIssue("cortex.yaml", None, "", "file not found")) == "cortex.yaml: file not found"
    assert str(SpecIssue("a.yaml", 3, "", "bad")) == "a.yaml:3: bad"


def test_unknown_fields_are_named_with_the_allowed_ones(tmp_path):
    text = errors(tmp_path, """\
    - name: iris
      kind: RealtimeAPI
      handler:
        path: handler.py
        pathh: x.py
      computer:
        gpu: 1
    """)
    assert 'cortex.yaml:5: apis[0].handler.pathh: unknown field "pathh" (allowed: type, path,' in text
    assert 'cortex.yaml:6: apis[0].computer: unknown field "computer"' in text
    assert 'did you mean "compute"?' in text


def test_duplicate_yaml_keys_are_errors(tmp_path):
    text = errors(tmp_path, realtime("  compute:\n    gpu: 1\n    gpu: 2\n"))
    assert "cortex.yaml:7: apis[0].compute.gpu: duplicate key (first on line 6)" in text


# -- file shape -------------------------------------------------------------------------------


def test_single_mapping_suggests_a_list(tmp_path):
    text = errors(tmp_path, "name: iris\nkind: RealtimeAPI\n")
    assert text.startswith("cortex.yaml:1: must be a list of APIs, not a single mapping")
    assert '"- "' in text


@pytest.mark.parametrize("content", ["", "# only a comment\n"])
def test_empty_file(tmp_path, content):
    assert errors(tmp_path, content).startswith("cortex.yaml:1: the file is empty")


def test_yaml_syntax_error_has_a_line(tmp_path):
    text = errors(tmp_path, "- name: iris\n  kind: RealtimeAPI\n  handler: [\n")
    assert text.startswith("cortex.yaml:4: invalid YAML")


def test_scalar_document_and_scalar_entries(tmp_path):
    assert errors(tmp_path, "hello\n") == 'cortex.yaml:1: must be a list of APIs, got "hello"'
    text = errors(tmp_path, MINIMAL + "- just a string\n")
    assert text == 'cortex.yaml:5: apis[1]: must be a mapping, got "just a string"'


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SpecError) as info:
        load_project(tmp_path)
    assert info.value.issues[0].line is None
    assert "file not found" in str(info.value)
    with pytest.raises(SpecError, match="project directory"):
        load_project(tmp_path / "nowhere")


def test_unsafe_tags_are_refused(tmp_path):
    text = errors(tmp_path, realtime("    config: !!python/object/apply:os.system ['true']\n"))
    assert "cortex.yaml:5: apis[0].handler.config: unsupported YAML tag" in text


def test_anchors_and_merge_keys_work(tmp_path):
    project = load(tmp_path, """\
        - name: one
          kind: RealtimeAPI
          handler: &common
            path: handler.py
            config: {size: 1}
        - name: two
          kind: RealtimeAPI
          handler:
            <<: *common
            threads_per_process: 2
    """)
    assert project.api("two").handler.config == {"size": 1}
    assert project.api("two").handler.threads_per_process == 2


def test_yaml_oddities_are_reported_not_crashed_on(tmp_path, monkeypatch):
    assert errors(tmp_path, "- &r [*r]\n").startswith("cortex.yaml:1: apis[0][0]: recursive YAML alias")
    assert errors(tmp_path, MINIMAL + "---\n" + MINIMAL) == (
        "cortex.yaml:5: invalid YAML: expected a single document in the stream, but found another document")
    monkeypatch.setattr("inferd.spec.yamlnodes.MAX_NODES", 50)
    bomb = "- &a [x, x, x, x, x, x, x, x]\n- &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
    assert "document too large" in errors(tmp_path, bomb)


def write_bytes_project(root: Path, data: bytes) -> Path:
    (root / "handler.py").write_text("class Handler:\n    pass\n")
    (root / "cortex.yaml").write_bytes(data)
    return root


def byte_errors(root: Path, data: bytes) -> str:
    with pytest.raises(SpecError) as info:
        load_project(write_bytes_project(root, data))
    return str(info.value)


def test_control_characters_are_reported_at_their_line(tmp_path):
    text = byte_errors(tmp_path, MINIMAL.encode().replace(b"RealtimeAPI", b"Realtime\x00API"))
    assert text == "cortex.yaml:2: invalid YAML: a NUL byte (U+0000) in column 17 is not allowed in a YAML file"
    text = byte_errors(tmp_path, MINIMAL.encode() + b"  compute: {cpu: \x07}\n")
    assert text.startswith("cortex.yaml:5: invalid YAML: character U+0007 in column 18")


def test_bytes_that_are_not_utf8_are_reported_at_their_line(tmp_path):
    text = byte_errors(tmp_path, MINIMAL.encode().replace(b"iris", b"ir\xffis"))
    assert text == "cortex.yaml:1: not UTF-8 text: byte 0xff in column 11 (invalid start byte); save the file as UTF-8"
    text = byte_errors(tmp_path, MINIMAL.encode("utf-16"))
    assert text.startswith("cortex.yaml:1: not UTF-8 text") and "it looks like UTF-16" in text


def test_windows_line_endings_keep_line_numbers(tmp_path):
    text = byte_errors(tmp_path, realtime("  compute: {gpu: -1}\n").encode().replace(b"\n", b"\r\n"))
    assert text.startswith("cortex.yaml:5: apis[0].compute.gpu")


@pytest.mark.parametrize("text, line", [
    ("[" * 10_000, 1),
    ("{a: " * 5_000, 1),
    ("".join(" " * i + f"k{i}:\n" for i in range(3_000)), 100),
    ("- " * 3_000 + "x\n", 1),
], ids=["flow-lists", "flow-mappings", "block-mappings", "block-lists"])
def test_deep_nesting_is_refused_not_crashed_on(tmp_path, text, line):
    assert errors(tmp_path, text).startswith(f"cortex.yaml:{line}: nested too deeply: more than 100 levels")


def test_aliases_cannot_nest_deeper_than_the_limit(tmp_path):
    lines = ["- &a0 [x]"] + [f"- &a{i} [[[[[[[[[[*a{i - 1}]]]]]]]]]]" for i in range(1, 30)]
    text = errors(tmp_path, "\n".join(lines) + "\n")
    assert "nested too deeply" in text and text.startswith("cortex.yaml:")


def test_alias_and_merge_bombs_stop_quickly(tmp_path):
    laughs = ["- &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    laughs += [f"- &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    merges = ["- &m0 {k: v}"] + [f"- &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}]}}" for i in range(1, 9)]
    for bomb in (laughs, merges):
        started = time.monotonic()
        text = errors(tmp_path, "\n".join(bomb) + "\n")
        assert time.monotonic() - started < 10
        assert "document too large: more than 200000 values after expanding aliases" in text
        assert text.startswith("cortex.yaml:")


def test_merge_keys_are_overridden_by_keys_written_beside_them(tmp_path):
    project = load(tmp_path, """\
        - &base
          name: one
          kind: RealtimeAPI
          handler: {path: handler.py}
        - <<: *base
          name: two
        - <<: [{name: three, kind: AsyncAPI}, *base]
    """)
    assert [(a.name, a.kind) for a in project.apis] == [("one", "RealtimeAPI"), ("two", "RealtimeAPI"),
                                                       ("three", "AsyncAPI")]
    assert "merge key (<<) takes a mapping" in errors(tmp_path, MINIMAL + "  <<: 5\n")


@pytest.mark.parametrize("value, message", [
    ("2021-13-45", "'2021-13-45' is not a valid timestamp (month must be in 1..12)"),
    ("!!int abc", "'abc' is not a valid int"),
    ("!!float abc", "'abc' is not a valid float"),
    ("!!timestamp abc", "'abc' is not a valid timestamp"),
    ('!!int ""', "'' is not a valid int"),
    ("1" * 5000, "is not a valid int (Exceeds the limit (4300 digits)"),
], ids=["bad-date", "bad-int", "bad-float", "bad-timestamp", "empty-int", "huge-int"])
def test_values_pyyaml_cannot_construct_are_reported(tmp_path, value, message):
    text = errors(tmp_path, realtime(f"    config: {{when: {value}}}\n"))
    assert "cortex.yaml:5: apis[0].handler.config.when: " in text and message in text


def test_spec_error_pickles_with_its_issues(tmp_path):
    with pytest.raises(SpecError) as info:
        load(tmp_path, realtime("  compute: {gpu: -1}\n"))
    again = pickle.loads(pickle.dumps(info.value))
    assert again.issues == info.value.issues and str(again) == str(info.value)


# -- name and kind ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, message", [
    ("Iris", "must be lower-case letters"),
    ("iris-", "must be lower-case letters"),
    ("1iris", "must be lower-case letters"),
    ("b-iris", 'must not start with "b-"'),
    ("a" * 43, "must be at most 42 characters, got 43"),
])
def test_invalid_names(tmp_path, name, message):
    text = errors(tmp_path, MINIMAL.replace("iris", name, 1))
    assert text.startswith(f"cortex.yaml:1: apis[0].name: {message}")


def test_name_and_kind_are_required(tmp_path):
    text = errors(tmp_path, "- handler:\n    path: handler.py\n")
    assert "cortex.yaml:1: apis[0].name: is required" in text
    assert "cortex.yaml:1: apis[0].kind: is required" in text


def test_kind_is_case_sensitive(tmp_path):
    text = errors(tmp_path, MINIMAL.replace("RealtimeAPI", "realtimeapi"))
    assert text == 'cortex.yaml:2: apis[0].kind: must be "RealtimeAPI" (kind is case-sensitive), got "realtimeapi"'


def test_duplicate_names_point_at_the_first(tmp_path):
    text = errors(tmp_path, MINIMAL + MINIMAL.replace("handler.py", "handler.py\n  networking:\n    endpoint: other"))
    assert text == 'cortex.yaml:5: apis[1].name: duplicate name "iris" (first defined on line 1)'


# -- blocks per kind --------------------------------------------------------------------------


def test_handler_and_pod_are_exclusive_and_one_is_required(tmp_path):
    text = errors(tmp_path, """\
    - name: iris
      kind: RealtimeAPI
      handler:
        path: handler.py
      pod:
        containers: [{name: api, image: x}]
    - name: empty
      kind: AsyncAPI
    """)
    assert "cortex.yaml:5: apis[0].pod: use either handler (handler generation) or pod" in text
    assert "cortex.yaml:7: apis[1]: AsyncAPI needs either handler or pod" in text


def test_blocks_not_allowed_for_a_kind(tmp_path):
    text = errors(tmp_path, """\
        - name: batcher
          kind: BatchAPI
          handler:
            path: handler.py
          autoscaling:
            min_replicas: 2
        - name: tasker
          kind: TaskAPI
          handler:
            path: handler.py
    """)
    assert "cortex.yaml:5: apis[0].autoscaling: is only supported for RealtimeAPI and AsyncAPI" in text
    assert "cortex.yaml:9: apis[1].handler: TaskAPI uses definition (or pod), not handler" in text


def test_async_and_batch_reject_parallelism_and_batching(tmp_path):
    text = errors(tmp_path, """\
        - name: queue
          kind: AsyncAPI
          handler:
            path: handler.py
            processes_per_replica: 2
            threads_per_process: 2
            server_side_batching: {max_batch_size: 2, batch_interval: 1s}
            multi_model_reloading: {path: s3://x}
    """)
    assert "cortex.yaml:5: apis[0].handler.processes_per_replica: must be 1 for AsyncAPI, got 2" in text
    assert "cortex.yaml:6: apis[0].handler.threads_per_process: must be 1 for AsyncAPI, got 2" in text
    assert "cortex.yaml:7: apis[0].handler.server_side_batching: is not supported for AsyncAPI" in text
    assert "cortex.yaml:8: apis[0].handler.multi_model_reloading: is not supported for AsyncAPI" in text


# -- handler ----------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, expected", [
    ("    processes_per_replica: 101\n", "handler.processes_per_replica: must be an integer between 1 and 100, got 101"),
    ("    threads_per_process: 0\n", "handler.threads_per_process: must be an integer >= 1, got 0"),
    ("    log_level: verbose\n", 'handler.log_level: must be one of "debug", "info", "warning", "error", got "verbose"'),
    ("    type: onnx\n", "handler.type: onnx handlers are not supported; use type: python"),
    ("    env: {CORTEX_X: a}\n", "handler.env.CORTEX_X: names starting with CORTEX_ are reserved"),
    ("    env: {PORT: 80}\n", 'handler.env.PORT: must be a string, got 80 (quote it: "80")'),
    ("    config: [1]\n", "handler.config: must be a mapping, got a list"),
    ("    config: {1: a}\n", "handler.config.1: keys must be strings, got 1"),
    ("    server_side_batching: {max_batch_size: 1, batch_interval: 1s}\n",
     "handler.server_side_batching.max_batch_size: must be an integer between 2 and 1024, got 1"),
    ("    server_side_batching: {max_batch_size: 2, batch_interval: 0s}\n",
     'handler.server_side_batching.batch_interval: must be a duration > 0, got "0s"'),
    ("    server_side_batching: {max_batch_size: 2}\n", "handler.server_side_batching.batch_interval: is required"),
])
def test_handler_field_errors(tmp_path, extra, expected):
    assert f"cortex.yaml:5: apis[0].{expected}" in errors(tmp_path, realtime(extra))


def test_tensorflow_handlers_need_models(tmp_path):
    text = errors(tmp_path, realtime("    type: tensorflow\n"))
    assert text == "cortex.yaml:3: apis[0].handler.models: is required"  # the line of handler:


def test_batching_size_need_not_match_threads(tmp_path):
    spec = load(tmp_path, realtime("    server_side_batching: {max_batch_size: 16, batch_interval: 10ms}\n"))
    assert spec.api("iris").handler.server_side_batching.max_batch_size == 16


def test_handler_path_must_stay_inside_the_project(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "outside.py").write_text("")
    (project / "link.py").symlink_to(tmp_path / "outside.py")
    text = errors(project, """\
        - name: up
          kind: RealtimeAPI
          handler:
            path: ../outside.py
        - name: absolute
          kind: RealtimeAPI
          handler:
            path: {outside}
        - name: linked
          kind: RealtimeAPI
          handler:
            path: link.py
        - name: missing
          kind: RealtimeAPI
          handler:
            path: nothere.py
        - name: suffix
          kind: RealtimeAPI
          handler:
            path: handler.txt
    """.replace("{outside}", str(tmp_path / "outside.py")), files=("handler.txt",))
    assert 'cortex.yaml:4: apis[0].handler.path: must stay inside the project directory, got "../outside.py"' in text
    assert "cortex.yaml:8: apis[1].handler.path: must be relative to the project directory" in text
    assert 'cortex.yaml:12: apis[2].handler.path: must stay inside the project directory, got "link.py"' in text
    assert 'cortex.yaml:16: apis[3].handler.path: file "nothere.py" not found in the project directory' in text
    assert 'cortex.yaml:20: apis[4].handler.path: must be a Python file ending in .py, got "handler.txt"' in text


@pytest.mark.parametrize("block, path", [("handler", "handler.pickle"), ("handler", "handler"),
                                         ("definition", "task.pickle")])
def test_code_paths_must_be_python_files(tmp_path, block, path):
    kind = "TaskAPI" if block == "definition" else "RealtimeAPI"
    text = errors(tmp_path, f"- name: iris\n  kind: {kind}\n  {block}:\n    path: {path}\n", files=(path,))
    assert text == f'cortex.yaml:4: apis[0].{block}.path: must be a Python file ending in .py, got "{path}"'


def test_code_paths_that_cannot_be_resolved_are_errors(tmp_path):
    (tmp_path / "loop.py").symlink_to("loop.py")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    text = errors(tmp_path, realtime("").replace("handler.py", "a/x.py"))
    assert 'cortex.yaml:4: apis[0].handler.path: cannot be resolved (Symlink loop' in text
    text = errors(tmp_path, realtime("").replace("handler.py", '"nul\\0.py"'))
    assert 'cortex.yaml:4: apis[0].handler.path: cannot be resolved (embedded null byte), got "nul\\u0000.py"' in text
    assert "cannot be resolved (Symlink loop" in errors(tmp_path, realtime("").replace("handler.py", "loop.py"))


def test_dotenv_symlink_must_stay_inside_the_project(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "secrets.env").write_text("TOKEN=outside\n")
    (project / ".env").symlink_to(tmp_path / "secrets.env")
    text = errors(project, MINIMAL)
    assert text == (f".env: must stay inside the project directory, got a symlink to {tmp_path / 'secrets.env'}; "
                    "copy the file into the project")
    (project / ".env").unlink()
    (project / "config").mkdir()
    (project / "config" / "app.env").write_text("TOKEN=inside\n")
    (project / ".env").symlink_to("config/app.env")
    assert load(project, MINIMAL).api("iris")


def test_handler_path_in_a_subdirectory_and_python_path(tmp_path):
    (tmp_path / "lib").mkdir()
    api = load(tmp_path, realtime("    python_path: lib\n").replace("handler.py", "src/handler.py"),
               files=("src/handler.py",)).api("iris")
    assert (api.handler.path, api.handler.python_path) == ("src/handler.py", "lib")


@pytest.mark.parametrize("value, message", [
    (".", "must name a subdirectory"),
    ("./", "must name a subdirectory"),
    ("nolib", 'directory "nolib" not found in the project directory'),
    ("..", 'must stay inside the project directory, got ".."'),
])
def test_python_path_rules(tmp_path, value, message):
    text = errors(tmp_path, realtime(f"    python_path: '{value}'\n"))
    assert f"cortex.yaml:5: apis[0].handler.python_path: {message}" in text


def test_protobuf_path_makes_a_grpc_api(tmp_path):
    api = load(tmp_path, realtime("    protobuf_path: iris.proto\n"), files=("handler.py", "iris.proto")).api("iris")
    assert api.is_grpc and api.handler.protobuf_path == "iris.proto"
    assert api.networking.endpoint == "/iris"


def test_protobuf_path_rules(tmp_path):
    text = errors(tmp_path, """\
    - name: iris
      kind: RealtimeAPI
      handler:
        path: handler.py
        protobuf_path: protos/iris.proto
    - name: batched
      kind: RealtimeAPI
      handler:
        path: handler.py
        protobuf_path: iris.proto
        server_side_batching: {max_batch_size: 2, batch_interval: 1s}
    - name: queue
      kind: AsyncAPI
      handler:
        path: handler.py
        protobuf_path: iris.proto
    - name: absent
      kind: RealtimeAPI
      handler:
        path: handler.py
        protobuf_path: absent.proto
    """, files=("handler.py", "iris.proto"))
    assert "cortex.yaml:5: apis[0].handler.protobuf_path: must be a .proto file at the project root" in text
    assert "cortex.yaml:11: apis[1].handler.server_side_batching: cannot be used with protobuf_path" in text
    assert "cortex.yaml:16: apis[2].handler.protobuf_path: is only supported for RealtimeAPI, not AsyncAPI" in text
    assert 'cortex.yaml:21: apis[3].handler.protobuf_path: file "absent.proto" not found' in text


# -- compute, autoscaling, update strategy ----------------------------------------------------


@pytest.mark.parametrize("extra, expected", [
    ("  compute: {gpu: 1, inf: 1}\n", "compute.inf: cannot be used together with gpu"),
    ("  compute: {inf: 2}\n", "compute.inf: must be an integer between 0 and 1, got 2"),
    ("  compute: {node_groups: []}\n", "compute.node_groups: must be a non-empty list of strings"),
    ("  compute: 4\n", "compute: must be a mapping, got 4"),
    ("  autoscaling: {min_replicas: 0}\n", "autoscaling.min_replicas: must be an integer >= 1, got 0"),
    ("  autoscaling: {min_replicas: 3, max_replicas: 2}\n", "autoscaling.max_replicas: must be >= min_replicas (3), got 2"),
    ("  autoscaling: {init_replicas: 200}\n", "autoscaling.init_replicas: must be between min_replicas (1) and max_replicas (100), got 200"),
    ("  autoscaling: {max_replica_concurrency: 30001}\n", "autoscaling.max_replica_concurrency: must be an integer between 1 and 30000, got 30001"),
    ("  autoscaling: {max_replica_concurrency: 4, target_replica_concurrency: 5}\n", "autoscaling.target_replica_concurrency: must be <= max_replica_concurrency (4), got 5"),
    ("  autoscaling: {target_replica_concurrency: 0}\n", "autoscaling.target_replica_concurrency: must be a number > 0, got 0"),
    ("  autoscaling: {window: 5s}\n", 'autoscaling.window: must be a duration >= 10s, got "5s"'),
    ("  autoscaling: {window: 15s}\n", 'autoscaling.window: must be a multiple of 10s, got "15s"'),
    ("  autoscaling: {window: 60}\n", "autoscaling.window: must be a duration like \"10s\", \"1m\" or \"1h30m\", got 60 (add a unit"),
    ("  autoscaling: {max_downscale_factor: 1}\n", "autoscaling.max_downscale_factor: must be a number >= 0 and < 1, got 1"),
    ("  autoscaling: {max_upscale_factor: 1}\n", "autoscaling.max_upscale_factor: must be a number > 1, got 1"),
    ("  autoscaling: {upscale_tolerance: -0.1}\n", "autoscaling.upscale_tolerance: must be a number >= 0, got -0.1"),
    ("  autoscaling: {target_in_flight: 3}\n", "autoscaling.target_in_flight: is for pod APIs"),
    ("  update_strategy: {max_surge: 150%}\n", 'update_strategy.max_surge: must be an integer >= 0 or a percentage "0%" to "100%", got "150%"'),
    ("  update_strategy: {max_surge: 0, max_unavailable: 0%}\n", "update_strategy.max_unavailable: max_surge and max_unavailable cannot both be 0"),
])
def test_range_errors(tmp_path, extra, expected):
    assert f"cortex.yaml:5: apis[0].{expected}" in errors(tmp_path, realtime(extra))


def test_cross_field_compute_rules(tmp_path):
    text = errors(tmp_path, """\
        - name: iris
          kind: RealtimeAPI
          handler:
            path: handler.py
            processes_per_replica: 3
            shm_size: 2Gi
          compute:
            inf: 1
            mem: 1Gi
    """)
    assert "cortex.yaml:6: apis[0].handler.shm_size: must not exceed compute.mem (1Gi), got \"2Gi\"" in text
    assert "cortex.yaml:8: apis[0].compute.inf: with inf: 1, processes_per_replica (3) must divide 4" in text


def test_update_strategy_keeps_integers_as_strings(tmp_path):
    strategy = load(tmp_path, realtime("  update_strategy: {max_surge: 1, max_unavailable: 0}\n")).api("iris").update_strategy
    assert (strategy.max_surge, strategy.max_unavailable) == ("1", "0")


def test_autoscaling_durations_are_seconds(tmp_path):
    scaling = load(tmp_path, """\
    - name: iris
      kind: RealtimeAPI
      handler:
        path: handler.py
      autoscaling:
        window: 2m
        downscale_stabilization_period: 1h
        upscale_stabilization_period: 0s
    """).api("iris").autoscaling
    assert (scaling.window, scaling.downscale_stabilization_period, scaling.upscale_stabilization_period) == (
        120.0, 3600.0, 0.0)


# -- networking -------------------------------------------------------------------------------


@pytest.mark.parametrize("written, endpoint", [
    ("api/", "/api"), ("/v1/predict/", "/v1/predict"), ("a", "/a"), ("/x.y_z-1", "/x.y_z-1"),
])
def test_endpoint_is_normalised(tmp_path, written, endpoint):
    api = load(tmp_path, realtime(f"  networking:\n    endpoint: {written}\n")).api("iris")
    assert api.networking == NetworkingSpec(endpoint)


@pytest.mark.parametrize("written, message", [
    ("/", "cannot be / alone"),
    ("a//b", "must not contain '//'"),
    ("'a b'", "may contain only letters, digits"),
    ("/-/metrics", "must not start with /-/: inferd reserves it"),
    ("/-", "must not start with /-/"),
    ("/" + "a" * 1000, "must be at most 1000 characters, got 1001"),
])
def test_invalid_endpoints(tmp_path, written, message):
    text = errors(tmp_path, realtime(f"  networking:\n    endpoint: {written}\n"))
    assert text.startswith(f"cortex.yaml:6: apis[0].networking.endpoint: {message}")


def test_endpoint_collision_names_both_apis(tmp_path):
    text = errors(tmp_path, MINIMAL + realtime("  networking:\n    endpoint: /iris/\n", name="other"))
    assert text == 'cortex.yaml:10: apis[1].networking.endpoint: endpoint /iris of API "other" collides with API "iris" (line 1)'


# -- traffic splitter -------------------------------------------------------------------------

SPLIT_MEMBERS = MINIMAL + realtime("", name="iris-v2")


def test_traffic_splitter(tmp_path):
    project = load(tmp_path, SPLIT_MEMBERS + """\
- name: split
  kind: TrafficSplitter
  apis:
    - {name: iris, weight: 80}
    - {name: iris-v2, weight: 20}
    - {name: iris-v2, weight: 5, shadow: true}
""".replace("    - {name: iris-v2, weight: 5, shadow: true}\n", ""))
    split = project.api("split")
    assert [(t.name, t.weight, t.shadow) for t in split.traffic_splits] == [("iris", 80, False), ("iris-v2", 20, False)]
    assert split.networking.endpoint == "/split" and split.handler is None and split.autoscaling is None


def test_traffic_splitter_shadow_weight_is_not_counted(tmp_path):
    project = load(tmp_path, SPLIT_MEMBERS + """\
- name: split
  kind: TrafficSplitter
  apis:
    - {name: iris, weight: 100}
    - {name: iris-v2, weight: 10, shadow: true}
""")
    assert project.api("split").traffic_splits[1].shadow


def test_traffic_splitter_errors(tmp_path):
    text = errors(tmp_path, SPLIT_MEMBERS + """\
- name: batcher
  kind: BatchAPI
  handler:
    path: handler.py
- name: split
  kind: TrafficSplitter
  apis:
    - {name: iris, weight: 50, shadow: true}
    - {name: iris, weight: 30}
    - {name: iris-v2, weight: 101, shadow: true}
    - {name: batcher, weight: 10}
    - {name: ghost, weight: 10}
""")
    assert "cortex.yaml:15: apis[3].apis: the weights of the non-shadow APIs must add up to 100, got 50" in text
    assert 'cortex.yaml:17: apis[3].apis[1].name: "iris" is listed twice (first on line 16)' in text
    assert "cortex.yaml:18: apis[3].apis[2].weight: must be an integer between 0 and 100, got 101" in text
    assert "cortex.yaml:18: apis[3].apis[2].shadow: only one API can be the shadow (first on line 16)" in text
    assert 'cortex.yaml:19: apis[3].apis[3].name: "batcher" is a BatchAPI; a TrafficSplitter can only route to RealtimeAPIs' in text
    assert 'cortex.yaml:20: apis[3].apis[4].name: no API named "ghost" in this file' in text


def test_traffic_splitter_rejects_grpc_members(tmp_path):
    text = errors(tmp_path, realtime("    protobuf_path: iris.proto\n") + """\
- name: split
  kind: TrafficSplitter
  apis: [{name: iris, weight: 100}]
""", files=("handler.py", "iris.proto"))
    assert 'cortex.yaml:8: apis[1].apis[0].name: "iris" serves gRPC' in text


def test_traffic_splitter_needs_apis(tmp_path):
    text = errors(tmp_path, "- name: split\n  kind: TrafficSplitter\n")
    assert text == "cortex.yaml:1: apis[0].apis: is required"


# -- pods (container generation) --------------------------------------------------------------

POD = """\
- name: web
  kind: RealtimeAPI
  pod:
    containers:
      - name: api
        image: quay.io/me/api:1
        compute: {gpu: 1, cpu: 500m}
      - name: sidecar
        image: redis
        command: [redis-server]
        compute: {gpu: 2}
"""


def test_pod_defaults_and_aggregated_compute(tmp_path):
    api = load(tmp_path, POD).api("web")
    assert (api.pod.port, api.pod.max_concurrency, api.pod.max_queue_length) == (8080, 1, 100)
    first, second = api.pod.containers
    assert (first.name, first.image, first.command, first.args, first.env) == ("api", "quay.io/me/api:1", None, None, {})
    assert first.readiness_probe is None and first.liveness_probe is None and first.pre_stop is None
    assert second.command == ("redis-server",)
    assert (api.compute.gpu, api.compute.cpu, api.gpus_per_replica) == (3, "500m", 3)
    assert api.handler is None and not api.is_grpc
    assert api.autoscaling.target_in_flight == 1.0
    assert api.autoscaling.max_replica_concurrency == 101  # max_concurrency + max_queue_length


def test_pod_probes_and_pre_stop(tmp_path):
    api = load(tmp_path, """\
        - name: web
          kind: AsyncAPI
          pod:
            port: 9000
            max_concurrency: 4
            containers:
              - name: api
                image: me/api
                readiness_probe:
                  http_get: {port: 9000, path: healthz}
                  period_seconds: 2
                liveness_probe:
                  exec: {command: [cat, /tmp/ok]}
                pre_stop:
                  exec: {command: [sleep, "5"]}
          autoscaling:
            min_replicas: 0
    """).api("web")
    container = api.pod.containers[0]
    assert container.readiness_probe.http_get == {"path": "/healthz", "port": 9000}
    assert container.readiness_probe.period_seconds == 2 and container.readiness_probe.failure_threshold == 3
    assert container.liveness_probe.exec == {"command": ("cat", "/tmp/ok")}
    assert plain(container.pre_stop) == {"exec": {"command": ["sleep", "5"]}}
    assert api.autoscaling.min_replicas == 0 and api.worker_count == 1
    assert api.autoscaling.target_in_flight == 4.0


def test_pod_errors(tmp_path):
    text = errors(tmp_path, """\
        - name: web
          kind: RealtimeAPI
          compute: {gpu: 1}
          pod:
            port: 8888
            containers:
              - name: proxy
                image: x
                env: {KUBEXIT_A: "1", N: 1}
                readiness_probe:
                  http_get: {port: 80}
                  tcp_socket: {port: 80}
              - name: Bad
                image: x
                liveness_probe: {}
          autoscaling:
            max_replica_concurrency: 10
    """)
    assert "cortex.yaml:3: apis[0].compute: with pod, compute goes inside each container" in text
    assert "cortex.yaml:5: apis[0].pod.port: must not be 8888: ports 8888 and 15000 are reserved" in text
    assert 'cortex.yaml:7: apis[0].pod.containers[0].name: "proxy" is reserved' in text
    assert "cortex.yaml:9: apis[0].pod.containers[0].env.KUBEXIT_A: names starting with CORTEX_ and KUBEXIT_ are reserved" in text
    assert 'cortex.yaml:9: apis[0].pod.containers[0].env.N: must be a string, got 1 (quote it: "1")' in text
    assert ("cortex.yaml:10: apis[0].pod.containers[0].readiness_probe: needs exactly one of http_get, tcp_socket, "
            "exec, got http_get and tcp_socket") in text
    assert "cortex.yaml:13: apis[0].pod.containers[1].name: must be lower-case letters" in text
    assert "cortex.yaml:15: apis[0].pod.containers[1].liveness_probe: needs exactly one of" in text
    assert "cortex.yaml:17: apis[0].autoscaling.max_replica_concurrency: is for handler APIs" in text


def test_pod_rules_per_kind(tmp_path):
    text = errors(tmp_path, """\
        - name: batcher
          kind: BatchAPI
          pod:
            max_concurrency: 2
            containers:
              - name: worker
                image: x
                pre_stop: {exec: {command: [x]}}
        - name: tasker
          kind: TaskAPI
          pod:
            port: 9000
            containers:
              - name: task
                image: x
                command: [python, task.py]
                readiness_probe: {tcp_socket: {port: 9000}}
        - name: queue
          kind: AsyncAPI
          pod:
            max_concurrency: 101
            containers:
              - name: api
                image: x
                readiness_probe: {exec: {command: [x]}}
              - name: api
                image: y
    """)
    assert "cortex.yaml:4: apis[0].pod.max_concurrency: is not supported for BatchAPI" in text
    assert "cortex.yaml:6: apis[0].pod.containers[0].command: is required" in text
    assert "cortex.yaml:8: apis[0].pod.containers[0].pre_stop: is only supported for RealtimeAPI and AsyncAPI" in text
    assert "cortex.yaml:12: apis[1].pod.port: is not supported for TaskAPI" in text
    assert "cortex.yaml:17: apis[1].pod.containers[0].readiness_probe: is not allowed for TaskAPI" in text
    assert "cortex.yaml:21: apis[2].pod.max_concurrency: must be an integer between 1 and 100, got 101" in text
    assert "cortex.yaml:25: apis[2].pod.containers[0].readiness_probe.exec: is not supported in a readiness_probe for AsyncAPI" in text
    assert 'cortex.yaml:26: apis[2].pod.containers[1].name: duplicate container name "api" (first on line 23)' in text


def test_pod_target_in_flight_is_capped_by_the_queue(tmp_path):
    text = errors(tmp_path, POD.replace("    containers:", "    max_queue_length: 2\n    containers:")
                  + "  autoscaling:\n    target_in_flight: 4\n")
    assert text == "cortex.yaml:14: apis[0].autoscaling.target_in_flight: must be <= pod.max_concurrency + pod.max_queue_length (3), got 4"


def test_pod_needs_containers(tmp_path):
    text = errors(tmp_path, "- name: web\n  kind: RealtimeAPI\n  pod:\n    port: 9000\n")
    assert text == "cortex.yaml:3: apis[0].pod.containers: is required"


# -- ignored fields ---------------------------------------------------------------------------


def test_fields_a_single_node_cannot_honour_are_listed(tmp_path):
    project = load(tmp_path, """\
    - name: iris
      kind: RealtimeAPI
      handler:
        path: handler.py
        image: my/image:1
        shm_size: 1Gi
        dependencies:
          pip: reqs.txt
      compute:
        cpu: 1
        mem: 2Gi
        node_groups: [gpu-pool]
      node_groups: [gpu-pool]
      autoscaling:
        min_replicas: 2
        max_replicas: 4
        max_replica_concurrency: 8
      update_strategy:
        max_surge: 1
    """)
    assert project.ignored == (
        "apis[0].handler.shm_size: accepted, not enforced on a single node",
        "apis[0].handler.image: accepted, not used: inferd runs the handler in its own Python environment",
        "apis[0].handler.dependencies.pip: not installed by inferd; install it into inferd's environment yourself",
        "apis[0].compute.cpu: accepted, not enforced on a single node",
        "apis[0].compute.mem: accepted, not enforced on a single node",
        "apis[0].compute.node_groups: accepted, not enforced on a single node (there is one node)",
        "apis[0].node_groups: accepted, not enforced on a single node (there is one node)",
        "apis[0].autoscaling.max_replicas: accepted, not enforced on a single node",
        "apis[0].update_strategy.max_surge: accepted, not enforced on a single node",
    )
    api = project.api("iris")
    assert api.node_groups == ("gpu-pool",) and api.compute.node_groups == ("gpu-pool",)
    assert api.handler.dependencies.pip == "reqs.txt" and api.handler.image == "my/image:1"
    assert api.worker_count == 2


def test_absent_fields_are_not_listed_as_ignored(tmp_path):
    assert load(tmp_path, POD).ignored == ("apis[0].pod.containers[0].compute.cpu: accepted, not enforced on a single node",)


def test_load_project_accepts_str_and_pathlike(tmp_path):
    write_project(tmp_path, MINIMAL)
    assert load_project(str(tmp_path)).apis == load_project(tmp_path, "cortex.yaml").apis
    os.rename(tmp_path / "cortex.yaml", tmp_path / "other.yaml")
    with pytest.raises(SpecError) as info:
        load_project(tmp_path)
    assert info.value.issues[0].file == "cortex.yaml"
    assert isinstance(load_project(tmp_path, "other.yaml").apis[0], ApiSpec)
