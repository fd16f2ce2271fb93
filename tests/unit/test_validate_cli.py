"""`inferd validate` (and `inferd run`'s refusal) as the user sees them: exit codes and stderr lines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inferd.cli import main
from inferd.containers.engine import find_engine

PROJECTS = Path(__file__).parent.parent / "projects"
HANDLER = "class Handler:\n    def __init__(self, config):\n        pass\n\n    def handle_post(self, payload):\n        return payload\n"
API = "- name: iris\n  kind: RealtimeAPI\n  handler:\n    path: handler.py\n"


def project(root: Path, config: bytes | str, handler: str = HANDLER) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "handler.py").write_text(handler)
    data = config.encode() if isinstance(config, str) else config
    (root / "cortex.yaml").write_bytes(data)
    return root


def inferd(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}
    return subprocess.run([sys.executable, "-m", "inferd", *args], capture_output=True, text=True, timeout=120, env=env)


# -- malformed files: a located error, never a traceback (issue 10, item 5) ------------------------


@pytest.mark.parametrize("config, where", [
    (API.encode().replace(b"RealtimeAPI", b"Realtime\x00API"), "cortex.yaml:2: invalid YAML: a NUL byte"),
    (b"[" * 10_000, "cortex.yaml:1: nested too deeply"),
    ("".join(" " * i + f"k{i}:\n" for i in range(3_000)).encode(), "cortex.yaml:100: nested too deeply"),
    (API.encode().replace(b"iris", b"ir\xffis"), "cortex.yaml:1: not UTF-8 text: byte 0xff in column 11"),
], ids=["nul-byte", "deep-flow", "deep-block", "not-utf8"])
def test_validate_reports_malformed_files_with_a_line(tmp_path, config, where):
    result = inferd("validate", "--project", str(project(tmp_path, config)))
    assert result.returncode == 1
    assert where in result.stderr and "1 problem(s) found" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_run_refuses_a_malformed_file_with_a_line(tmp_path):
    root = project(tmp_path / "project", API.encode().replace(b"RealtimeAPI", b"Realtime\x00API"))
    result = inferd("run", "--project", str(root), "--port", "0", "--grpc-port", "0", "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 2
    assert "config_invalid" in result.stdout + result.stderr
    assert "cortex.yaml:2: invalid YAML: a NUL byte" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# -- APIs this version cannot start (issue 10, item 15) --------------------------------------------


def test_validate_names_each_api_that_will_not_start(capsys, monkeypatch):
    monkeypatch.setenv("INFERD_CONTAINER_ENGINE", "none")  # no podman or docker, whatever this host has
    find_engine.cache_clear()
    try:
        assert main(["validate", "--project", str(PROJECTS / "unsupported")]) == 1
    finally:
        find_engine.cache_clear()
    out, err = capsys.readouterr()
    assert f"{PROJECTS / 'unsupported' / 'cortex.yaml'}: 4 api(s) valid: served, trainer, splitter, queue\n" in out
    lines = err.splitlines()
    assert lines[-1] == "2 api(s) will not start"
    assert lines[:-1] == [
        'cortex.yaml:18: api "containers": pod.containers[0] (api): image example/api:latest has no command, and no '
        "container engine (podman or docker) can run images on this host; give the container a command to run it "
        "as a local process, or install podman or docker",
        'cortex.yaml:25: api "tf": handler.type tensorflow is not supported by inferd; use type: python',
    ]


def test_validate_refuses_constructor_arguments_inferd_does_not_pass(tmp_path, capsys):
    handler = HANDLER.replace("(self, config)", "(self, config, python_client, *, metrics_client)")
    assert main(["validate", "--project", str(project(tmp_path, API, handler))]) == 1
    out, err = capsys.readouterr()
    assert "api(s) valid" not in out
    assert err.splitlines() == [
        'cortex.yaml:1: api "iris": Handler.__init__ asks for python_client; inferd passes only config, '
        "metrics_client, model_client, module_proto_pb2, proto_module_pb2",
        "1 api(s) will not start",
    ]


def test_validate_accepts_apis_that_will_start(tmp_path, capsys):
    config = API + API.replace("iris", "jobs").replace("RealtimeAPI", "AsyncAPI")
    assert main(["validate", "--project", str(project(tmp_path, config))]) == 0
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 'cortex.yaml'}: 2 api(s) valid: iris, jobs\n" and err == ""


# -- files the project names must be Python files inside it (issue 10, item 7) ----------------------


def test_validate_refuses_a_non_python_handler_path(tmp_path, capsys):
    root = project(tmp_path, API.replace("handler.py", "handler.pickle"))
    shutil.copy(root / "handler.py", root / "handler.pickle")
    assert main(["validate", "--project", str(root)]) == 1
    assert 'cortex.yaml:4: apis[0].handler.path: must be a Python file ending in .py, got "handler.pickle"' in (
        capsys.readouterr().err)


def test_validate_refuses_a_dotenv_symlink_out_of_the_project(tmp_path, capsys):
    root = project(tmp_path / "project", API)
    (tmp_path / "secrets").write_text("TOKEN=x\n")
    (root / ".env").symlink_to(tmp_path / "secrets")
    assert main(["validate", "--project", str(root)]) == 1
    assert f".env: must stay inside the project directory, got a symlink to {tmp_path / 'secrets'}" in capsys.readouterr().err


# -- GPUs: validate runs where the daemon will, and refuses what the daemon would -----------------


def test_validate_refuses_more_gpus_than_the_machine_has(tmp_path, capsys, monkeypatch):
    from inferd.control import target
    from inferd.gpu import GpuDevice

    h200 = GpuDevice(0, "GPU-8442a712", "NVIDIA H200", 141 << 30, 140 << 30)
    monkeypatch.setattr(target, "read_inventory", lambda: (h200,))
    config = (API.replace("iris", "big") + "  compute:\n    gpu: 2\n" + API.replace("iris", "one") + "  compute:\n    gpu: 1\n"
              + API.replace("iris", "cpu"))
    assert main(["validate", "--project", str(project(tmp_path, config))]) == 1
    out, err = capsys.readouterr()
    assert out == f"{tmp_path / 'cortex.yaml'}: 2 api(s) valid: one, cpu\n"
    assert err.splitlines() == [
        'cortex.yaml:1: compute.gpu: api "big" asks for 2 GPUs per replica (compute.gpu: 2) but only 1 NVIDIA GPU is visible',
        "1 api(s) will not start",
    ]
