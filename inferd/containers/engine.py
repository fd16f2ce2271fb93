"""The container engine that runs image containers on this host, and its exact command line.

An engine is podman or docker whose CLI is on PATH and whose ``info`` succeeds (a docker CLI
without a reachable daemon is no engine). ``INFERD_CONTAINER_ENGINE`` chooses: ``podman``,
``docker`` (or a path to either), or ``none`` to run every container as a local process.
The answer is looked up once per process.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ENGINES = ("podman", "docker")
CHOICE_ENV = "INFERD_CONTAINER_ENGINE"
INFO_TIMEOUT = 10.0
SCRATCH_MOUNT = "/mnt"  # the seeds' shared /mnt: one scratch directory per replica
JOB_SPEC_MOUNT = "/cortex/spec/job.json"  # where Cortex's job containers find the job spec


@dataclass(frozen=True)
class Engine:
    name: str  # "podman" or "docker"
    path: str  # the CLI


@functools.cache
def find_engine(choice: str | None = None) -> Engine | None:
    wanted = os.environ.get(CHOICE_ENV, "") if choice is None else choice
    if wanted.strip().lower() == "none":
        return None
    candidates = [wanted] if wanted.strip() else list(ENGINES)
    for candidate in candidates:
        path = shutil.which(candidate)
        if path is None:
            continue
        name = "podman" if "podman" in Path(candidate).name else "docker"
        try:
            works = subprocess.run([path, "info"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, timeout=INFO_TIMEOUT, check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            works = False
        if works:
            return Engine(name, path)
    return None


@dataclass(frozen=True)
class EngineRun:
    """What ``<engine> run`` needs for one container of one replica."""

    container_name: str        # the engine's name for it (unique per replica start)
    image: str
    command: Sequence[str] | None  # already $(VAR)-expanded; overrides the ENTRYPOINT
    args: Sequence[str] | None     # already expanded; overrides the CMD
    env: Mapping[str, str]     # passed by name (-e NAME): values never appear in the process list
    project_dir: Path
    scratch_dir: Path
    gpus: Sequence[int] = ()
    shm: str | None = None
    labels: Mapping[str, str] | None = None
    job_spec: Path | None = None  # a job's spec document, mounted read-only at JOB_SPEC_MOUNT


def run_argv(engine: Engine, run: EngineRun) -> list[str]:
    """``<engine> run`` in the foreground (its output is the container's, SIGTERM is proxied to
    it), removed when it exits; host networking so the replica's port is the host's; the project
    read-only at its own path, the replica's scratch directory at /mnt. As in Kubernetes,
    ``command`` replaces the image's ENTRYPOINT (and with it the CMD) and ``args`` its CMD."""
    argv = [engine.path, "run", "--rm", "--init", "--name", run.container_name, "--network", "host",
            "--sig-proxy=true", "--volume", f"{run.project_dir}:{run.project_dir}:ro",
            "--volume", f"{run.scratch_dir}:{SCRATCH_MOUNT}:rw"]
    if run.job_spec is not None:
        argv += ["--volume", f"{run.job_spec}:{JOB_SPEC_MOUNT}:ro"]
    for key, value in (run.labels or {}).items():
        argv += ["--label", f"{key}={value}"]
    for name in sorted(run.env):
        argv += ["--env", name]
    if run.gpus:
        listed = ",".join(str(gpu) for gpu in run.gpus)
        if engine.name == "docker":
            argv += ["--gpus", f"\"device={listed}\""]
        else:
            for gpu in run.gpus:
                argv += ["--device", f"nvidia.com/gpu={gpu}"]
    if run.shm:
        argv += ["--shm-size", run.shm]
    command = list(run.command) if run.command else []
    if command:
        argv += ["--entrypoint", command[0]]
    argv.append(run.image)
    argv += command[1:]
    argv += list(run.args or [])
    return argv


def exec_argv(engine: Engine, container_name: str, command: Sequence[str]) -> list[str]:
    """An exec probe or pre_stop inside the running container."""
    return [engine.path, "exec", container_name, *command]


def kill_argv(engine: Engine, container_name: str) -> list[str]:
    """What ends a container whose CLI did not stop it in time."""
    return [engine.path, "rm", "--force", container_name]
