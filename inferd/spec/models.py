"""``handler.multi_model_reloading`` (Cortex §2.1, §3.9): where the models live and how many
are kept loaded."""

from __future__ import annotations

import os
from pathlib import Path

from .fields import Block, describe
from .model import SINGLE_MODEL, ModelPath, MultiModelSpec
from .stores import backend_need, missing_backend, url_scheme

MODEL_FIELDS = ("path", "paths", "dir", "cache_size", "disk_cache_size")
SOURCES = ("path", "paths", "dir")
REMOTE_SCHEMES = ("s3", "gs")


def read_multi_model(parent: Block, kind: str, processes: int, project_dir: Path) -> MultiModelSpec | None:
    """None when absent, or when the API cannot have one (the caller reports why)."""
    if not parent.given("multi_model_reloading") or kind != "RealtimeAPI":
        return None
    block = parent.sub("multi_model_reloading", MODEL_FIELDS)
    form = _form(parent, block)
    cache_size, disk_cache_size = _cache_sizes(block, processes)
    if form is None:
        return None
    if form == "paths":
        models = _named_paths(block, project_dir)
        return MultiModelSpec(form=form, models=models, cache_size=cache_size, disk_cache_size=disk_cache_size)
    location = model_location(block, form, project_dir)
    if form == "dir":
        return MultiModelSpec(form=form, dir=location, cache_size=cache_size, disk_cache_size=disk_cache_size)
    models = (ModelPath(SINGLE_MODEL, location),) if location else ()
    return MultiModelSpec(form=form, models=models, cache_size=cache_size, disk_cache_size=disk_cache_size)


def _form(parent: Block, block: Block) -> str | None:
    given = [key for key in SOURCES if block.given(key)]
    if not given:
        parent.issue("multi_model_reloading", "needs exactly one of path (one model), paths or dir (named models)")
        return None
    for extra in given[1:]:
        block.issue(extra, f"cannot be used together with {given[0]}: give exactly one of path, paths or dir")
    return given[0]


def _cache_sizes(block: Block, processes: int) -> tuple[int | None, int | None]:
    cache = block.integer("cache_size", 0, 1) if block.given("cache_size") else None
    disk = block.integer("disk_cache_size", 0, 1) if block.given("disk_cache_size") else None
    if (cache is None) != (disk is None):
        missing, present = ("disk_cache_size", "cache_size") if disk is None else ("cache_size", "disk_cache_size")
        block.issue(present, f"needs {missing} too: cache_size and disk_cache_size are set together or not at all")
        return None, None
    if cache is None or disk is None:
        return None, None
    if cache > disk:
        block.issue("disk_cache_size", f"must be >= cache_size ({cache}), got {disk}")
    if processes != 1:
        block.issue("cache_size", f"needs processes_per_replica: 1 (each process would keep its own cache), "
                                  f"got processes_per_replica {processes}")
    return cache, disk


def _named_paths(block: Block, project_dir: Path) -> tuple[ModelPath, ...]:
    node = block.node("paths")
    if node is None or not node.is_seq or not node.value:
        block.issue("paths", "must be a non-empty list of {name, path}, got "
                             + ("an empty list" if node is not None and node.is_seq else describe(block.raw("paths"))))
        return ()
    models: list[ModelPath] = []
    first: dict[str, int] = {}
    for i, item in enumerate(node.value):
        entry = Block(block.out, item, f"{block.child('paths')}[{i}]", ("name", "path"), item.line)
        name = entry.string("name", "", required=True) or ""
        if name and not _name_ok(entry, name, first, item.line):
            continue
        location = model_location(entry, "path", project_dir)
        if name and location:
            models.append(ModelPath(name, location))
    return tuple(models)


def _name_ok(entry: Block, name: str, first: dict[str, int], line: int) -> bool:
    if "/" in name or name.strip() != name:
        entry.issue("name", f"must not contain '/' or surrounding spaces, got {describe(name)}")
        return False
    if name in first:
        entry.issue("name", f"{describe(name)} is listed twice (first on line {first[name]})")
        return False
    first[name] = line
    return True


def model_location(block: Block, key: str, project_dir: Path) -> str | None:
    """A local directory (relative to the project, or absolute) made absolute, or an s3:// or
    gs:// URL whose fsspec backend is installed; None after reporting why not."""
    value = block.string(key, "", required=True) or ""
    if not value:
        return None
    scheme = url_scheme(value)
    if scheme is not None:
        return _remote(block, key, value, scheme)
    try:
        # absolute, but not resolved: a symlink swapped to a new release is followed (by the watcher too)
        target = Path(os.path.abspath(project_dir / Path(value).expanduser()))
        found = target.is_dir()
    except (OSError, RuntimeError, ValueError) as exc:
        block.issue(key, f"cannot be resolved ({exc}), got {describe(value)}")
        return None
    if not found:
        block.issue(key, f"directory {describe(value)} not found (relative paths start at the project directory)")
        return None
    return str(target)


def _remote(block: Block, key: str, value: str, scheme: str) -> str | None:
    if scheme not in REMOTE_SCHEMES:
        block.issue(key, f"must be a local directory or an s3:// or gs:// URL, got {describe(value)}")
        return None
    if missing_backend(scheme):
        block.issue(key, f"reading {scheme}:// models needs {backend_need(scheme)}, got {describe(value)}")
        return None
    if not value.split("://", 1)[1].strip("/"):
        block.issue(key, f"must name a bucket, got {describe(value)}")
        return None
    return value.rstrip("/")
