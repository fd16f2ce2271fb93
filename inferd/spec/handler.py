"""The handler generation's `handler:` (Realtime/Async/Batch) and `definition:` (Task) blocks."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import IMAGE_UNUSED, NOT_ENFORCED, NOT_INSTALLED
from .fields import Block, describe
from .model import EMPTY, BatchingSpec, DependenciesSpec, HandlerSpec, TaskDefinition
from .models import read_multi_model

LOG_LEVELS = ("debug", "info", "warning", "error")
HANDLER_TYPES = ("python", "tensorflow")
HANDLER_FIELDS = (
    "type", "path", "protobuf_path", "dependencies", "multi_model_reloading", "models",
    "server_side_batching", "processes_per_replica", "threads_per_process", "config",
    "python_path", "image", "tensorflow_serving_image", "env", "log_level", "shm_size",
    "request_timeout",  # inferd's own: Cortex had no per-request limit in the handler block
)
DEFINITION_FIELDS = (
    "path", "config", "dependencies", "python_path", "image", "env", "log_level", "shm_size",
)
_PROTO_NAME = re.compile(r"[a-zA-Z0-9_.]+")


def read_handler(parent: Block, kind: str, project_dir: Path) -> HandlerSpec:
    block = parent.sub("handler", HANDLER_FIELDS)
    handler_type = _handler_type(block)
    protobuf_path = _protobuf_path(block, kind, project_dir)
    batching = _batching(block, kind, protobuf_path)
    processes = block.integer("processes_per_replica", 1, 1, 100)
    threads = block.integer("threads_per_process", 1, 1)
    _single_process_kinds(block, kind, processes, threads)
    _type_specific(block, handler_type)
    models = read_multi_model(block, kind, processes, project_dir) if handler_type == "python" else None
    for key in ("models", "shm_size"):
        block.ignore(key, NOT_ENFORCED)
    for key in ("image", "tensorflow_serving_image"):
        block.ignore(key, IMAGE_UNUSED)
    return HandlerSpec(
        type=handler_type,
        path=code_path(block, project_dir),
        protobuf_path=protobuf_path,
        dependencies=read_dependencies(block),
        multi_model_reloading=models,
        models=block.free_map("models"),
        server_side_batching=batching,
        processes_per_replica=processes,
        threads_per_process=threads,
        config=block.free_map("config") or EMPTY,
        python_path=read_python_path(block, project_dir),
        image=block.string("image"),
        tensorflow_serving_image=block.string("tensorflow_serving_image"),
        env=block.env("env", ("CORTEX_",)),
        log_level=block.string("log_level", "info", choices=LOG_LEVELS) or "info",
        shm_size=block.quantity("shm_size", None, "0", '"64Mi" or "1Gi"'),
        request_timeout=block.number("request_timeout", None, 0, lo_open=True),
    )


def read_definition(parent: Block, project_dir: Path) -> TaskDefinition:
    block = parent.sub("definition", DEFINITION_FIELDS)
    block.ignore("shm_size", NOT_ENFORCED)
    block.ignore("image", IMAGE_UNUSED)
    return TaskDefinition(
        path=code_path(block, project_dir),
        config=block.free_map("config") or EMPTY,
        dependencies=read_dependencies(block),
        python_path=read_python_path(block, project_dir),
        image=block.string("image"),
        env=block.env("env", ("CORTEX_",)),
        log_level=block.string("log_level", "info", choices=LOG_LEVELS) or "info",
        shm_size=block.quantity("shm_size", None, "0", '"64Mi" or "1Gi"'),
    )


def _handler_type(block: Block) -> str:
    value = block.raw("type")
    if value == "onnx":
        block.issue("type", 'onnx handlers are not supported; use type: python and load the model '
                            'yourself (for example with onnxruntime)')
        return "python"
    return block.string("type", "python", choices=HANDLER_TYPES) or "python"


def _type_specific(block: Block, handler_type: str) -> None:
    if handler_type == "tensorflow":
        if not block.given("models"):
            block.missing("models")
        if block.has("multi_model_reloading"):
            block.issue("multi_model_reloading", "is for type: python; tensorflow handlers use models")
        return
    if block.has("models"):
        block.issue("models", "is for type: tensorflow; python handlers use multi_model_reloading")
    if block.has("tensorflow_serving_image"):
        block.issue("tensorflow_serving_image", "is for type: tensorflow only")


def _single_process_kinds(block: Block, kind: str, processes: int, threads: int) -> None:
    # Cortex's code rejects these for the queue-driven kinds; inferd keeps the same contract.
    if kind not in ("AsyncAPI", "BatchAPI"):
        return
    for key in ("multi_model_reloading", "server_side_batching"):
        if block.has(key):
            block.issue(key, f"is not supported for {kind}")
    if processes > 1:
        block.issue("processes_per_replica", f"must be 1 for {kind}, got {processes}")
    if threads > 1:
        block.issue("threads_per_process", f"must be 1 for {kind}, got {threads}")


def _batching(block: Block, kind: str, protobuf_path: str | None) -> BatchingSpec | None:
    if not block.given("server_side_batching"):
        return None
    if protobuf_path is not None:
        block.issue("server_side_batching", "cannot be used with protobuf_path (gRPC)")
    sub = block.sub("server_side_batching", ("max_batch_size", "batch_interval"))
    # max_batch_size is deliberately not tied to threads_per_process: inferd batches in the daemon.
    size = sub.integer("max_batch_size", 2, 2, 1024, required=True)
    interval = sub.duration("batch_interval", 0.0, positive=True, required=True)
    return BatchingSpec(max_batch_size=size, batch_interval=interval)


def read_dependencies(block: Block) -> DependenciesSpec:
    sub = block.sub("dependencies", ("pip", "conda", "shell"))
    for key in ("pip", "conda", "shell"):
        sub.ignore(key, NOT_INSTALLED)
    defaults = DependenciesSpec()
    return DependenciesSpec(
        pip=sub.string("pip", defaults.pip) or defaults.pip,
        conda=sub.string("conda", defaults.conda) or defaults.conda,
        shell=sub.string("shell", defaults.shell) or defaults.shell,
    )


def code_path(block: Block, project_dir: Path) -> str:
    path = block.string("path", "", required=True) or ""
    if not path:
        return ""
    if not path.endswith(".py"):
        block.issue("path", f"must be a Python file ending in .py, got {describe(path)}")
        return path
    check_inside(block, "path", path, project_dir, directory=False)
    return path


def read_python_path(block: Block, project_dir: Path) -> str | None:
    path = block.string("python_path")
    if path is None:
        return None
    if path.strip() in ("", ".", "./"):
        block.issue("python_path", "must name a subdirectory; the project directory is already on the path")
        return None
    check_inside(block, "python_path", path, project_dir, directory=True)
    return path


def _protobuf_path(block: Block, kind: str, project_dir: Path) -> str | None:
    path = block.string("protobuf_path")
    if path is None:
        return None
    if kind != "RealtimeAPI":
        block.issue("protobuf_path", f"is only supported for RealtimeAPI, not {kind}")
        return None
    if not _PROTO_NAME.fullmatch(path) or not path.endswith(".proto"):
        block.issue("protobuf_path", "must be a .proto file at the project root (letters, digits, "
                                     f"'_' and '.' only), got {describe(path)}")
        return None
    check_inside(block, "protobuf_path", path, project_dir, directory=False)
    return path


def check_inside(block: Block, key: str, path: str, project_dir: Path, *, directory: bool) -> bool:
    """Whether `path` names an existing file (or directory) inside the project, symlinks resolved."""
    if os.path.isabs(path) or path.startswith("~"):
        block.issue(key, f"must be relative to the project directory, got {describe(path)}")
        return False
    try:
        target = (project_dir / path).resolve()
        inside = target.is_relative_to(project_dir)
        exists = inside and (target.is_dir() if directory else target.is_file())
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL character, a name too long
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        block.issue(key, f"cannot be resolved ({reason}), got {describe(path)}")
        return False
    if not inside:
        block.issue(key, f"must stay inside the project directory, got {describe(path)}")
        return False
    if not exists:
        what = "directory" if directory else "file"
        block.issue(key, f"{what} {describe(path)} not found in the project directory")
        return False
    return True
