"""RunPodAPI in cortex.yaml, and RunPod worker repositories served with no cortex.yaml at all."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from inferd.spec import ProjectSpec, RunPodSpec, SpecError, load_project, plain
from inferd.spec.dockerfile import find_script
from inferd.spec.runpod import parse_size

WORKER = 'import runpod\n\n\ndef handler(job):\n    return job["input"]\n\n\nrunpod.serverless.start({"handler": handler})\n'
NOT_A_WORKER = "def handler(job):\n    return job\n"
MIB = 1024 * 1024


def make(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text) if name.endswith(".yaml") else text)
    return root


def load(root: Path, files: dict[str, str]) -> ProjectSpec:
    return load_project(make(root, files))


def errors(root: Path, files: dict[str, str]) -> str:
    with pytest.raises(SpecError) as info:
        load(root, files)
    return str(info.value)


def runpod_api(extra: str = "", handler_extra: str = "") -> dict[str, str]:
    """A RunPodAPI whose handler block is lines 3-4 (+ handler_extra), then `extra` from line 5 on."""
    text = "- name: worker\n  kind: RunPodAPI\n  handler:\n    path: handler.py\n" + handler_extra + extra
    return {"cortex.yaml": text, "handler.py": WORKER}


# -- cortex.yaml ----------------------------------------------------------------------------------


def test_a_minimal_runpod_api_gets_runpods_defaults(tmp_path):
    api = load(tmp_path, runpod_api()).api("worker")
    assert api.kind == "RunPodAPI"
    assert api.handler is not None
    assert (api.handler.path, api.handler.type, api.handler.runner, api.handler.args) == ("handler.py", "python", "direct", ())
    assert dict(api.handler.env) == {}
    assert api.networking.endpoint == "/v2/worker"
    assert api.compute.gpu == 0 and not api.gpu_hint
    assert api.replicas == 1 and api.worker_count == 1
    assert api.runpod == RunPodSpec()
    assert plain(api.runpod) == {"execution_timeout": 600.0, "ttl": 86400.0, "run_retention": 1800.0,
                                 "runsync_retention": 60.0, "max_run_body": 10 * MIB, "max_runsync_body": 20 * MIB,
                                 "api_keys": []}
    assert api.runpod.run_retention_delta.total_seconds() == 1800


def test_every_runpod_api_field(tmp_path):
    handler = """\
        env:
          MODEL: tiny
        args: ["--size", "3"]
        runner: sdk
        type: python
        python_path: src
    """
    extra = """\
      compute:
        gpu: 2
      autoscaling:
        min_replicas: 3
      networking:
        endpoint: jobs/worker/
      runpod:
        execution_timeout: 10m
        ttl: 1h
        run_retention: 5m
        runsync_retention: 30s
        max_run_body: 5MB
        max_runsync_body: 1Mi
        api_keys: [secret-one, secret-two]
    """
    files = runpod_api(textwrap.indent(textwrap.dedent(extra), "  "), textwrap.indent(textwrap.dedent(handler), "    "))
    (tmp_path / "src").mkdir()
    api = load(tmp_path, files).api("worker")
    assert api.handler is not None
    assert dict(api.handler.env) == {"MODEL": "tiny"}
    assert api.handler.args == ("--size", "3")
    assert api.handler.runner == "sdk"
    assert api.handler.python_path == "src"
    assert api.compute.gpu == 2 and not api.gpu_hint  # strict in cortex.yaml
    assert api.replicas == 3
    assert api.networking.endpoint == "/jobs/worker"
    assert api.runpod == RunPodSpec(execution_timeout=600.0, ttl=3600.0, run_retention=300.0, runsync_retention=30.0,
                                    max_run_body=5_000_000, max_runsync_body=MIB, api_keys=("secret-one", "secret-two"))


def test_runpod_apis_sit_next_to_cortex_apis(tmp_path):
    text = "- name: iris\n  kind: RealtimeAPI\n  handler:\n    path: predictor.py\n"
    files = runpod_api()
    files["cortex.yaml"] = text + files["cortex.yaml"]
    files["predictor.py"] = "class Handler:\n    pass\n"
    project = load(tmp_path, files)
    assert [(a.name, a.kind, a.networking.endpoint) for a in project.apis] == [
        ("iris", "RealtimeAPI", "/iris"), ("worker", "RunPodAPI", "/v2/worker")]
    assert project.api("iris").runpod is None


@pytest.mark.parametrize(("extra", "handler_extra", "message"), [
    ("  replicas: 2\n", "", "cortex.yaml:5: apis[0].replicas: unknown field \"replicas\""),
    ("", "    protobuf_path: x.proto\n", "cortex.yaml:5: apis[0].handler.protobuf_path: is only supported for RealtimeAPI"),
    ("", "    server_side_batching:\n      max_batch_size: 4\n",
     "cortex.yaml:5: apis[0].handler.server_side_batching: is not supported for RunPodAPI"),
    ("", "    processes_per_replica: 2\n", "cortex.yaml:5: apis[0].handler.processes_per_replica: is not used by RunPodAPI"),
    ("", "    config: {a: 1}\n", "cortex.yaml:5: apis[0].handler.config: is not used by RunPodAPI"),
    ("", "    request_timeout: 3\n", "use runpod.execution_timeout"),
    ("", "    type: tensorflow\n", 'cortex.yaml:5: apis[0].handler.type: must be one of "python", got "tensorflow"'),
    ("", "    runner: subprocess\n", 'cortex.yaml:5: apis[0].handler.runner: must be one of "direct", "sdk"'),
    ("", "    args: [--model, x, --rp_serve_api]\n",
     "cortex.yaml:5: apis[0].handler.args[2]: \"--rp_serve_api\" is the RunPod SDK's own flag"),
    ("", "    args: [--rp_serve_api]\n", "apis[0].handler.args[0]: \"--rp_serve_api\" is the RunPod SDK's own flag"),
    ("", "    args: [1]\n", "cortex.yaml:5: apis[0].handler.args[0]: must be a string, got 1"),
    ("", "    env:\n      RUNPOD_WEBHOOK_GET_JOB: x\n",
     "cortex.yaml:6: apis[0].handler.env.RUNPOD_WEBHOOK_GET_JOB: names starting with CORTEX_ and RUNPOD_WEBHOOK_ are reserved"),
    ("  pod:\n    containers: []\n", "", "cortex.yaml:5: apis[0].pod: RunPodAPI runs a RunPod worker file"),
    ("  autoscaling:\n    max_replica_concurrency: 4\n", "",
     "cortex.yaml:6: apis[0].autoscaling.max_replica_concurrency: is not used by RunPodAPI"),
    ("  autoscaling:\n    min_replicas: 0\n", "", "cortex.yaml:6: apis[0].autoscaling.min_replicas: must be an integer >= 1"),
    ("  runpod:\n    timeout: 10s\n", "", 'cortex.yaml:6: apis[0].runpod.timeout: unknown field "timeout"'),
    ("  runpod:\n    execution_timeout: 600\n", "",
     "cortex.yaml:6: apis[0].runpod.execution_timeout: must be a duration like \"10s\", \"1m\" or \"1h30m\", got 600 (add a unit"),
    ("  runpod:\n    ttl: 0s\n", "", 'cortex.yaml:6: apis[0].runpod.ttl: must be a duration > 0, got "0s"'),
    ("  runpod:\n    max_run_body: lots\n", "", 'cortex.yaml:6: apis[0].runpod.max_run_body: must be a size like "10MB"'),
    ("  runpod:\n    max_runsync_body: 0\n", "", "cortex.yaml:6: apis[0].runpod.max_runsync_body: must be a size"),
    ("  runpod:\n    api_keys: key\n", "", 'cortex.yaml:6: apis[0].runpod.api_keys: must be a list of strings, got "key"'),
    ("  runpod:\n    api_keys: [\"\"]\n", "", "cortex.yaml:6: apis[0].runpod.api_keys[0]: must be a string matching"),
    ("  networking:\n    endpoint: /-/x\n", "", "cortex.yaml:6: apis[0].networking.endpoint: must not start with /-/"),
])
def test_runpod_api_errors_name_file_line_and_field(tmp_path, extra, handler_extra, message):
    assert message in errors(tmp_path, runpod_api(extra, handler_extra))


def test_the_handler_must_be_a_python_file_in_the_project(tmp_path):
    files = {"cortex.yaml": "- name: worker\n  kind: RunPodAPI\n  handler:\n    path: ../handler.py\n"}
    assert "cortex.yaml:4: apis[0].handler.path: must stay inside the project directory" in errors(tmp_path / "p", files)
    files = {"cortex.yaml": "- name: worker\n  kind: RunPodAPI\n  handler:\n    path: handler.sh\n"}
    assert "cortex.yaml:4: apis[0].handler.path: must be a Python file ending in .py" in errors(tmp_path / "q", files)
    files = {"cortex.yaml": "- name: worker\n  kind: RunPodAPI\n"}
    assert "cortex.yaml:1: apis[0].handler: is required" in errors(tmp_path / "r", files)


def test_runpod_section_belongs_to_runpod_apis_only(tmp_path):
    text = "- name: iris\n  kind: RealtimeAPI\n  handler:\n    path: handler.py\n  runpod:\n    ttl: 1h\n"
    assert "cortex.yaml:5: apis[0].runpod: is only used by RunPodAPI" in errors(tmp_path, {"cortex.yaml": text,
                                                                                         "handler.py": WORKER})


def test_an_endpoint_under_a_runpod_apis_routes_collides(tmp_path):
    text = "- name: iris\n  kind: RealtimeAPI\n  handler:\n    path: predictor.py\n  networking:\n    endpoint: /v2/worker/run\n"
    files = runpod_api()
    files["cortex.yaml"] = text + files["cortex.yaml"]
    files["predictor.py"] = "class Handler:\n    pass\n"
    assert ('cortex.yaml:6: apis[0].networking.endpoint: endpoint /v2/worker/run of API "iris" lies under the routes '
            'of RunPodAPI "worker"') in errors(tmp_path, files)


@pytest.mark.parametrize(("value", "size"), [
    (1024, 1024), ("10MB", 10_000_000), ("10M", 10_000_000), ("10Mi", 10 * MIB), ("10MiB", 10 * MIB),
    ("512k", 512_000), ("1.5KiB", 1536), ("2G", 2_000_000_000), ("lots", None), (True, None), (1.5, None),
])
def test_sizes(value, size):
    assert parse_size(value) == size


# -- no cortex.yaml: discovery ----------------------------------------------------------------------


def discovered(root: Path, files: dict[str, str]) -> ProjectSpec:
    project = load(root, files)
    assert len(project.apis) == 1 and project.apis[0].kind == "RunPodAPI"
    return project


def handler_of(project: ProjectSpec) -> tuple[str, tuple[str, ...]]:
    handler = project.apis[0].handler
    assert handler is not None
    return handler.path, handler.args


def test_a_bare_handler_py_is_served_as_an_api_named_after_the_directory(tmp_path):
    root = tmp_path / "my-worker"
    project = discovered(root, {"handler.py": WORKER, "requirements.txt": "runpod\n"})
    api = project.apis[0]
    assert api.name == "my-worker"
    assert api.networking.endpoint == "/v2/my-worker"
    assert api.line == 8  # the runpod.serverless.start call
    assert handler_of(project) == ("handler.py", ())
    assert api.runpod == RunPodSpec() and api.replicas == 1
    assert api.compute.gpu == 0 and not api.gpu_hint
    assert project.config_file == root / "handler.py"
    assert project.ignored == ("no cortex.yaml: serving RunPod worker handler.py (found by its name) as api my-worker "
                               "at /v2/my-worker/run",)


@pytest.mark.parametrize(("dockerfile", "files", "path", "args"), [
    ('FROM python:3.11\nCMD ["python", "-u", "src/handler.py"]\n', ("src/handler.py",), "src/handler.py", ()),
    ("FROM python:3.11\nCMD python -u /handler.py\n", ("handler.py",), "handler.py", ()),
    ("FROM python:3.11\nCMD python3 -u /src/handler.py\n", ("src/handler.py",), "src/handler.py", ()),
    # RunPod's worker template: the contents of src/ are copied to / and run from there.
    ("FROM runpod/base\nWORKDIR /\nADD src .\nCMD python -u /handler.py\n", ("src/handler.py",), "src/handler.py", ()),
    ("FROM python:3.11\nWORKDIR /app\nCOPY src/rp_handler.py /app/\nCMD [\"python3\", \"rp_handler.py\"]\n",
     ("src/rp_handler.py",), "src/rp_handler.py", ()),
    ('FROM python:3.11\nWORKDIR /app\nCOPY . .\nCMD ["python3", "-u", "rp_handler.py", "--rp_serve_api", "--rp_log_level",'
     ' "DEBUG", "--model", "tiny"]\n', ("rp_handler.py",), "rp_handler.py", ("--rp_log_level", "DEBUG", "--model", "tiny")),
    ('FROM python:3.11\nCMD ["sh", "-c", "cd / && python -u worker.py --size 3 && echo done"]\n', ("worker.py",),
     "worker.py", ("--size", "3")),
    ('FROM python:3.11\nENTRYPOINT ["python", "-u", "main.py"]\nCMD ["--rp_api_port=8000", "--fast"]\n', ("main.py",),
     "main.py", ("--fast",)),
    ("FROM python:3.11\nCMD python \\\n  # the worker\n  -u app/serve.py --x 1; echo\n", ("app/serve.py",),
     "app/serve.py", ("--x", "1")),
])
def test_the_dockerfile_names_the_worker(tmp_path, dockerfile, files, path, args):
    contents = {"Dockerfile": dockerfile, **{name: WORKER for name in files}}
    contents["handler.py"] = contents.get("handler.py", NOT_A_WORKER)
    project = discovered(tmp_path / "w", contents)
    assert handler_of(project) == (path, args)
    assert "named by the " in project.ignored[0] and "Dockerfile:" in project.ignored[0]


def test_the_dockerfile_wins_over_the_usual_names(tmp_path):
    files = {"Dockerfile": "FROM x\nCMD python -u /worker.py\n", "handler.py": WORKER, "worker.py": WORKER}
    project = discovered(tmp_path / "w", files)
    assert handler_of(project)[0] == "worker.py"
    assert "(named by the CMD on Dockerfile:2)" in project.ignored[0]


def test_a_dockerfile_that_runs_no_runpod_worker_falls_back_to_the_usual_names(tmp_path):
    files = {"Dockerfile": "FROM x\nCMD python app.py\n", "app.py": NOT_A_WORKER, "src/handler.py": WORKER}
    assert handler_of(discovered(tmp_path / "a", files))[0] == "src/handler.py"
    files = {"Dockerfile": 'FROM x\nCMD ["/start.sh"]\n', "rp_handler.py": WORKER}
    assert handler_of(discovered(tmp_path / "b", files))[0] == "rp_handler.py"


def test_usual_names_in_order_and_only_runpod_workers(tmp_path):
    files = {"handler.py": NOT_A_WORKER, "src/handler.py": WORKER, "main.py": WORKER}
    assert handler_of(discovered(tmp_path / "a", files))[0] == "src/handler.py"
    files = {"main.py": WORKER, "worker.py": WORKER}
    assert handler_of(discovered(tmp_path / "b", files))[0] == "worker.py"
    other_spellings = {"main.py": "import runpod as rp\nrp.serverless.start({'handler': print})\n"}
    assert handler_of(discovered(tmp_path / "c", other_spellings))[0] == "main.py"
    imported = {"main.py": "from runpod.serverless import start\n\nstart({'handler': print})\n"}
    project = discovered(tmp_path / "d", imported)
    assert handler_of(project)[0] == "main.py" and project.apis[0].line == 3


def test_nothing_to_serve_is_a_clear_error(tmp_path):
    text = errors(tmp_path / "empty", {"handler.py": NOT_A_WORKER, "README.md": "hi"})
    assert text.startswith("cortex.yaml: file not found: ")
    assert "nor is this a RunPod worker repository" in text
    assert "handler.py, src/handler.py, rp_handler.py, src/rp_handler.py, worker.py, main.py" in text
    text = errors(tmp_path / "docker", {"Dockerfile": "FROM x\nCMD python -u /app.py\n", "app.py": NOT_A_WORKER})
    assert "Dockerfile:2: CMD runs app.py, which does not call runpod.serverless.start" in text
    text = errors(tmp_path / "gone", {"Dockerfile": "FROM x\nCMD python -u /gone.py\n"})
    assert "Dockerfile:2: CMD runs /gone.py, which is not in the project directory" in text
    text = errors(tmp_path / "script", {"Dockerfile": "FROM x\nCMD /start.sh\n"})
    assert "Dockerfile: its CMD/ENTRYPOINT runs no Python file" in text


def test_a_named_config_file_is_never_replaced_by_discovery(tmp_path):
    root = make(tmp_path / "w", {"handler.py": WORKER})
    with pytest.raises(SpecError, match="file not found"):
        load_project(root, "other.yaml")


def test_a_cortex_yaml_turns_discovery_off(tmp_path):
    files = {"handler.py": WORKER, "cortex.yaml": "- name: iris\n  kind: RealtimeAPI\n  handler:\n    path: predictor.py\n",
             "predictor.py": "class Handler:\n    pass\n"}
    assert [api.name for api in load(tmp_path, files).apis] == ["iris"]


def test_a_worker_outside_the_project_is_not_followed(tmp_path):
    (tmp_path / "outside.py").write_text(WORKER)
    root = make(tmp_path / "w", {})
    (root / "handler.py").symlink_to(tmp_path / "outside.py")
    with pytest.raises(SpecError, match="nor is this a RunPod worker repository"):
        load_project(root)


HUB = {
    "title": "Worker",
    "type": "serverless",
    "config": {
        "runsOn": "GPU",
        "gpuCount": 2,
        "containerDiskInGb": 20,
        "env": [
            {"key": "MODEL_NAME", "input": {"name": "Model", "type": "string", "default": "tiny"}},
            {"key": "STATIC", "value": "on"},
            {"key": "MAX_CONCURRENCY", "input": {"type": "number", "default": 8}},
            {"key": "TRACE", "input": {"type": "boolean", "default": False}},
            {"key": "API_TOKEN", "input": {"type": "string", "default": ""}},
            {"key": "NO_DEFAULT", "input": {"type": "string"}},
        ],
    },
}


def test_hub_json_gives_a_gpu_hint_and_environment_presets(tmp_path, monkeypatch):
    for key in ("MODEL_NAME", "STATIC", "MAX_CONCURRENCY", "TRACE"):
        monkeypatch.delenv(key, raising=False)
    files = {"handler.py": WORKER, ".runpod/hub.json": json.dumps(HUB, indent=2), ".runpod/tests.json": "{}"}
    project = discovered(tmp_path / "w", files)
    api = project.apis[0]
    assert api.compute.gpu == 2 and api.gpu_hint
    assert api.handler is not None
    assert dict(api.handler.env) == {"MODEL_NAME": "tiny", "STATIC": "on", "MAX_CONCURRENCY": "8", "TRACE": "false"}
    assert ".runpod/hub.json: gpuCount 2 is a hint: on a node with fewer GPUs the worker starts with those there are" \
        in project.ignored
    assert ".runpod/hub.json: environment presets set for the worker: MODEL_NAME, STATIC, MAX_CONCURRENCY, TRACE" \
        in project.ignored


def test_presets_do_not_override_the_environment_or_dotenv(tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_NAME", "mine")
    monkeypatch.delenv("STATIC", raising=False)
    hub = {"config": {"env": [{"key": "MODEL_NAME", "value": "tiny"}, {"key": "STATIC", "value": "on"},
                              {"key": "LOCAL", "value": "x"}]}}
    files = {"handler.py": WORKER, ".runpod/hub.json": json.dumps(hub), ".env": "LOCAL=mine\n"}
    project = discovered(tmp_path / "w", files)
    assert project.apis[0].handler is not None
    assert dict(project.apis[0].handler.env) == {"STATIC": "on"}
    assert ".runpod/hub.json: presets not applied, already set in the environment or .env: MODEL_NAME, LOCAL" \
        in project.ignored
    assert project.apis[0].compute.gpu == 0 and not project.apis[0].gpu_hint


def test_hub_json_on_cpu_asks_for_no_gpu(tmp_path):
    hub = {"config": {"runsOn": "CPU", "gpuCount": 1}}
    api = discovered(tmp_path / "w", {"handler.py": WORKER, ".runpod/hub.json": json.dumps(hub)}).apis[0]
    assert api.compute.gpu == 0 and not api.gpu_hint


@pytest.mark.parametrize(("hub", "message"), [
    ('{\n  "config": {\n    "gpuCount": 1,\n  }\n}', ".runpod/hub.json:4: not valid JSON"),
    ('{\n  "config": {\n    "gpuCount": "two"\n  }\n}', '.runpod/hub.json:3: config.gpuCount: must be an integer >= 0, got "two"'),
    ('{"config": []}', ".runpod/hub.json:1: config: must be an object, got a list"),
    ('{"config": {"env": {"A": "1"}}}', ".runpod/hub.json:1: config.env: must be a list of {key, value} or {key, input}"),
    ('{"config": {"env": [{"value": "1"}]}}', ".runpod/hub.json:1: config.env[0].key: must be a variable name, got null"),
])
def test_hub_json_problems_are_errors(tmp_path, hub, message):
    assert message in errors(tmp_path / "w", {"handler.py": WORKER, ".runpod/hub.json": hub})


@pytest.mark.parametrize(("directory", "name"), [
    ("My_Worker.v2", "my-worker-v2"), ("worker-vllm", "worker-vllm"), ("_runpod  worker_", "runpod-worker"),
])
def test_the_directory_name_becomes_a_valid_api_name(tmp_path, directory, name):
    assert discovered(tmp_path / directory, {"handler.py": WORKER}).apis[0].name == name


@pytest.mark.parametrize(("directory", "problem"), [
    ("2024-worker", "start with a letter"), ("b-worker", 'must not start with "b-"'), ("w" * 43, "at most 42 characters"),
])
def test_a_directory_name_that_cannot_name_an_api_is_an_error(tmp_path, directory, problem):
    text = errors(tmp_path / directory, {"handler.py": WORKER})
    assert text.startswith("handler.py: no cortex.yaml, so the API is named after the directory")
    assert problem in text and "kind: RunPodAPI" in text


def test_find_script_reads_python_flags():
    assert find_script(["python", "-W", "ignore", "-u", "h.py", "a"]) == (4, "h.py", ("a",))
    assert find_script(["python", "-m", "worker"]) is None
    assert find_script(["/opt/venv/bin/python3.11", "h.py", "--test_input", "{}", "b", ">", "log"]) == (1, "h.py", ("b",))
    assert find_script(["uvicorn", "app:api"]) is None
