"""From one container's spec to what is started for it in one replica: its argv, environment
and working directory, as a local process or in the container engine.

Environment, lowest first: for a local process the slot's environment (the daemon's, minus what
is the daemon's alone, the project's ``.env``, the replica's GPU pinning); then the container's
``env``; then Cortex's variables (``CORTEX_PORT`` = the replica's port, ``CORTEX_VERSION``,
``CORTEX_LOG_LEVEL``) and inferd's (``CORTEX_API_BASE_URL``: where the APIs of this daemon are
reached, ``CORTEX_SCRATCH_DIR``: the replica's scratch directory, the seeds' ``/mnt``); last the
container's own GPUs. An engine container gets only the container's ``env`` and the variables.
A job's containers (BatchAPI, TaskAPI) also get the job spec file in ``CORTEX_JOB_SPEC`` (and
``CORTEX_TASK_SPEC``): its path here, or ``/cortex/spec/job.json`` (Cortex's) in an engine.
``$(VAR)`` in command and args expands against the container's ``env`` and the variables, as
Kubernetes expands against the declared environment.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferd.containers.engine import JOB_SPEC_MOUNT, SCRATCH_MOUNT, Engine, EngineRun, exec_argv, run_argv
from inferd.containers.expand import expand_all
from inferd.gpu import visible_devices_env
from inferd.spec.model import ContainerSpec

CORTEX_VERSION = "0.42.0"  # the container generation's last release, whose contracts inferd keeps
BASE_URL_ENV = "CORTEX_API_BASE_URL"
SCRATCH_ENV = "CORTEX_SCRATCH_DIR"


@dataclass(frozen=True)
class JobFiles:
    """A job replica's job spec document, and the variables that name it."""

    spec_file: Path
    spec_envs: tuple[str, ...]


@dataclass(frozen=True)
class ReplicaPlace:
    """What one replica's containers share."""

    api: str
    port: int                 # the replica's port, standing in for pod.port
    base_url: str             # http://127.0.0.1:<daemon port>
    project_dir: Path
    scratch_dir: Path
    base_env: Mapping[str, str] = field(default_factory=dict)  # the slot's environment
    job: JobFiles | None = None  # a BatchAPI's or TaskAPI's replica


@dataclass(frozen=True)
class ContainerLaunch:
    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    engine_name: str | None = None  # the engine's container name, when it runs in one
    image_unused: bool = False       # an image given, but run as a local process

    def exec_argv(self, engine: Engine | None, command: Sequence[str]) -> list[str]:
        """An exec probe or pre_stop for this container."""
        if engine is not None and self.engine_name is not None:
            return exec_argv(engine, self.engine_name, command)
        return list(command)


def cortex_variables(place: ReplicaPlace, in_engine: bool) -> dict[str, str]:
    variables = {
        "CORTEX_PORT": str(place.port),
        "CORTEX_VERSION": CORTEX_VERSION,
        "CORTEX_LOG_LEVEL": "INFO",
        BASE_URL_ENV: place.base_url,
        SCRATCH_ENV: SCRATCH_MOUNT if in_engine else str(place.scratch_dir),
    }
    if place.job is not None:
        spec = JOB_SPEC_MOUNT if in_engine else str(place.job.spec_file)
        variables.update(dict.fromkeys(place.job.spec_envs, spec))
    return variables


def plan_container(container: ContainerSpec, place: ReplicaPlace, gpus: Sequence[int], engine: Engine | None,
                   slot: int, nonce: str) -> ContainerLaunch:
    in_engine = bool(container.image) and engine is not None
    declared = {**container.env, **cortex_variables(place, in_engine)}
    command = expand_all(container.command, declared) if container.command is not None else None
    args = expand_all(container.args, declared) if container.args is not None else None
    if in_engine:
        assert engine is not None
        engine_name = f"inferd-{place.api}-{slot}-{container.name}-{nonce}"
        run = EngineRun(engine_name, container.image, command, args, declared, place.project_dir,
                        place.scratch_dir, tuple(gpus), container.compute.shm,
                        {"inferd.api": place.api, "inferd.slot": str(slot)},
                        place.job.spec_file if place.job is not None else None)
        # the CLI reads the values of -e NAME from its own environment
        return ContainerLaunch(container.name, run_argv(engine, run), {**place.base_env, **declared},
                               place.project_dir, engine_name=engine_name)
    if command is None:
        raise ValueError(f"container {container.name} has an image ({container.image}) and no command, and no "
                         "container engine (podman or docker) can run images on this host")
    env = {**place.base_env, **declared, **visible_devices_env(gpus)}
    return ContainerLaunch(container.name, [*command, *(args or [])], env, place.project_dir,
                           image_unused=bool(container.image))


def split_gpus(gpus: Sequence[int], containers: Sequence[ContainerSpec]) -> list[tuple[int, ...]]:
    """The replica's GPUs dealt out to its containers, in order, each its compute.gpu."""
    shares, start = [], 0
    for container in containers:
        shares.append(tuple(gpus[start:start + container.compute.gpu]))
        start += container.compute.gpu
    return shares


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, picked by the kernel (a replica's, standing in for pod.port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def scratch_root(state_dir: Path) -> Path:
    """Where the replicas' scratch directories (the seeds' ``/mnt``) are made."""
    return state_dir / "scratch"


def sweep_scratch(state_dir: Path) -> int:
    """Remove the scratch directories a daemon that was killed (SIGKILL, a power cut) could not
    remove itself; called at start, once the control socket shows no other daemon uses this state
    directory. Returns how many there were."""
    root = scratch_root(state_dir)
    if not root.is_dir():
        return 0
    left = [entry for entry in root.iterdir() if entry.is_dir() and not entry.is_symlink()]
    for entry in left:
        shutil.rmtree(entry, ignore_errors=True)
    return len(left)


_image_noted: set[tuple[str, str]] = set()


def note_unused_image(api: str, container: ContainerSpec, launch: ContainerLaunch, log: Any) -> None:
    """Once per container of an API: its image is not used (no engine runs images here)."""
    key = (api, container.name)
    if launch.image_unused and key not in _image_noted:
        _image_noted.add(key)
        log.warning("container_image_not_used", container=container.name, image=container.image,
                    detail="no container engine (podman or docker) can run images here: its command "
                           "runs as a local process in the project directory")
