"""From an API's spec to what its workers are started with: the init frame and environments.

Environment precedence, lowest first: the daemon's own environment (minus what belongs to the
daemon alone), the project's ``.env``, ``handler.env``, Cortex's ``CORTEX_*`` variables, and
last the GPU pinning, which nothing may override.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from inferd.gpu import visible_devices_env
from inferd.spec import ApiSpec, ProjectSpec
from inferd.spec.model import plain
from inferd.worker import protocol
from inferd.worker.pool import WorkerSlot

# Variables that describe the daemon's own supervision; a worker inheriting them would, e.g.,
# send sd_notify messages in the daemon's name.
DAEMON_ONLY = frozenset({"NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC", "LISTEN_FDS", "LISTEN_PID",
                         "LISTEN_FDNAMES", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"})


def read_dotenv(project_dir: Path) -> dict[str, str]:
    path = project_dir / ".env"
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def inherited_env(base: Mapping[str, str]) -> dict[str, str]:
    """The daemon's environment less what is the daemon's alone (``DAEMON_ONLY``, ``INFERD_*``)."""
    return {k: v for k, v in base.items() if k not in DAEMON_ONLY and not k.startswith("INFERD_")}


def cortex_variables(project: ProjectSpec, api: ApiSpec) -> dict[str, str]:
    handler = api.handler
    assert handler is not None
    concurrency = api.autoscaling.max_replica_concurrency if api.autoscaling else 1
    return {
        "CORTEX_KIND": api.kind,
        "CORTEX_API_NAME": api.name,
        "CORTEX_PROJECT_DIR": str(project.project_dir),
        "CORTEX_LOG_LEVEL": handler.log_level.upper(),
        "CORTEX_PROCESSES_PER_REPLICA": str(handler.processes_per_replica),
        "CORTEX_THREADS_PER_PROCESS": str(handler.threads_per_process),
        "CORTEX_MAX_REPLICA_CONCURRENCY": str(concurrency),
        "CORTEX_SERVING_PROTOCOL": "grpc" if api.is_grpc else "http",
    }


def worker_environment(base: Mapping[str, str], project: ProjectSpec, api: ApiSpec,
                       dotenv: Mapping[str, str], gpus: Sequence[int]) -> dict[str, str]:
    handler = api.handler
    assert handler is not None
    env = inherited_env(base)
    env.update(dotenv)
    env.update(handler.env)
    env.update(cortex_variables(project, api))
    paths = [str(project.project_dir)]
    if handler.python_path:
        paths.insert(0, str(project.project_dir / handler.python_path))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = ":".join(paths)
    env["PYTHONUNBUFFERED"] = "1"  # handler prints reach the log as they happen
    env.update(visible_devices_env(gpus))
    return env


def worker_slots(base: Mapping[str, str], project: ProjectSpec, api: ApiSpec,
                 devices: Sequence[tuple[int, ...]]) -> list[WorkerSlot]:
    dotenv = read_dotenv(project.project_dir)
    return [WorkerSlot(env=worker_environment(base, project, api, dotenv, gpus), gpus=tuple(gpus))
            for gpus in devices]


def container_slots(base: Mapping[str, str], project: ProjectSpec,
                    devices: Sequence[tuple[int, ...]]) -> list[WorkerSlot]:
    """A container API's replicas: the daemon's environment (less what is the daemon's alone),
    the project's ``.env`` and the replica's GPUs; each container adds its own
    (``inferd.containers.launch``)."""
    dotenv = read_dotenv(project.project_dir)
    inherited = inherited_env(base)
    return [WorkerSlot(env={**inherited, **dotenv, **visible_devices_env(gpus)}, gpus=tuple(gpus)) for gpus in devices]


def init_message(project: ProjectSpec, api: ApiSpec, runner: str, options: dict[str, Any],
                 max_body_size: int) -> protocol.Init:
    """The ``Init`` every worker of ``api`` receives; ``runner`` and ``options`` come from its kind."""
    handler = api.handler
    assert handler is not None
    python_path = str(project.project_dir / handler.python_path) if handler.python_path else None
    return protocol.Init(
        api=api.name,
        runner=runner,
        project_dir=str(project.project_dir),
        handler_path=handler.path,
        python_path=python_path,
        config=dict(plain(handler.config)),
        threads=handler.threads_per_process,
        log_level=handler.log_level,
        max_body_size=max_body_size,
        options=options,
    )
