"""What a worker is started with: environment precedence, GPU pinning, the init frame."""

from __future__ import annotations

from pathlib import Path

from inferd.deployment import Deployment
from inferd.gpu import GpuDevice
from inferd.kinds import get_kind
from inferd.kinds.base import ApiRuntime, KindContext
from inferd.metrics import Metrics
from inferd.reload import api_digests
from inferd.settings import Settings
from inferd.spec import parse_apis
from inferd.worker.launch import init_message, worker_environment

HANDLER = "class Handler:\n    def __init__(self, config):\n        pass\n    def handle_post(self, payload):\n        return payload\n"


def project(tmp_path: Path, yaml: str):
    (tmp_path / "handler.py").write_text(HANDLER)
    (tmp_path / "lib").mkdir()
    return parse_apis(yaml, tmp_path)


def device(index: int, free_gib: int) -> GpuDevice:
    return GpuDevice(index, f"GPU-{index}", "Test GPU", 80 << 30, free_gib << 30)


def build_all(spec, inventory):
    names = [api.name for api in spec.apis]
    context = KindContext(Settings(), Metrics(), None, spec.project_dir / "protos")
    return Deployment(context, {}).build(spec, {}, inventory, api_digests(spec), names)


def test_environment_precedence_and_daemon_only_variables(tmp_path: Path) -> None:
    spec = project(tmp_path, """
- name: api
  kind: RealtimeAPI
  handler:
    type: python
    path: handler.py
    python_path: lib
    env: {FROM: handler, KEEP: handler}
""")
    base = {"PATH": "/usr/bin", "FROM": "base", "INFERD_PORT": "1", "NOTIFY_SOCKET": "/run/x",
            "CUDA_VISIBLE_DEVICES": "0,1", "PYTHONPATH": "/extra"}
    env = worker_environment(base, spec, spec.api("api"), {"FROM": "dotenv", "DOT": "yes"}, (2,))
    assert env["PATH"] == "/usr/bin"
    assert env["FROM"] == "handler" and env["DOT"] == "yes"
    assert "INFERD_PORT" not in env and "NOTIFY_SOCKET" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and env["NVIDIA_VISIBLE_DEVICES"] == "2"
    assert env["PYTHONPATH"] == f"{tmp_path / 'lib'}:{tmp_path}:/extra"
    assert env["CORTEX_KIND"] == "RealtimeAPI" and env["CORTEX_SERVING_PROTOCOL"] == "http"


def test_gpu_env_cannot_be_overridden_by_handler_env(tmp_path: Path) -> None:
    spec = project(tmp_path, """
- name: api
  kind: RealtimeAPI
  handler:
    type: python
    path: handler.py
    env: {CUDA_VISIBLE_DEVICES: "0,1,2,3"}
""")
    env = worker_environment({}, spec, spec.api("api"), {}, ())
    assert env["CUDA_VISIBLE_DEVICES"] == ""


def test_deployment_pins_each_replica_to_its_gpus(tmp_path: Path) -> None:
    spec = project(tmp_path, """
- name: big
  kind: RealtimeAPI
  handler: {type: python, path: handler.py, processes_per_replica: 2}
  compute: {gpu: 1}
  autoscaling: {min_replicas: 2}
- name: cpu
  kind: RealtimeAPI
  handler: {type: python, path: handler.py}
""")
    inventory = (device(0, 10), device(1, 70))
    built = build_all(spec, inventory)
    slots = built["big"].pool.config.slots
    # replica 0 takes the device with most free memory; its two processes share it
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["1", "1", "0", "0"]
    cpu = built["cpu"].pool.config.slots
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in cpu] == [""]


def test_gpu_api_without_gpus_fails_alone(tmp_path: Path) -> None:
    spec = project(tmp_path, """
- name: gpu-api
  kind: RealtimeAPI
  handler: {type: python, path: handler.py}
  compute: {gpu: 1}
- name: cpu-api
  kind: RealtimeAPI
  handler: {type: python, path: handler.py}
""")
    built = build_all(spec, ())
    described = {name: runtime.describe() for name, runtime in built.items()}
    assert described["gpu-api"]["state"] == "failed"
    assert "no NVIDIA GPU is visible" in described["gpu-api"]["error"]
    assert built["cpu-api"].pool is not None


def test_init_frame_carries_handler_settings(tmp_path: Path) -> None:
    spec = project(tmp_path, """
- name: api
  kind: RealtimeAPI
  handler:
    type: python
    path: handler.py
    threads_per_process: 4
    config: {nested: {k: [1, 2]}}
    server_side_batching: {max_batch_size: 4, batch_interval: 250ms}
""")
    api = spec.api("api")
    kind = get_kind(api.kind)
    assert kind is not None
    context = KindContext(Settings(), Metrics(), None, tmp_path / "protos")
    runner, options = kind.runner(ApiRuntime(api, "digest", kind, None), context)
    frame, _ = init_message(spec, api, runner, options, 1024).encode()
    assert frame["runner"] == "inferd.worker.runners.http:HttpRunner"
    assert frame["config"] == {"nested": {"k": [1, 2]}}
    assert type(frame["config"]["nested"]) is dict
    assert frame["threads"] == 4
    assert frame["options"]["batching"] == {"max_batch_size": 4, "batch_interval": 0.25}
    assert frame["max_body_size"] == 1024
