"""Reload: compare the running APIs with a freshly loaded project and reconcile.

An API is *kept* when its digest (its cortex.yaml entry, its handler file, its proto, the
project's .env and the project's other files) is unchanged; otherwise it is
*replaced*: new workers start on the new code, routing switches once every new worker is
ready, and the old workers drain. A replacement that fails to start leaves the old version
serving and reports why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from inferd.deployment import Deployment
from inferd.gpu import GpuDevice
from inferd.kinds.base import ApiRuntime
from inferd.logs import get_logger
from inferd.protos import CompiledProto
from inferd.spec import ProjectSpec

log = get_logger()


@dataclass(frozen=True)
class ReloadPlan:
    start: tuple[str, ...] = ()
    replace: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()


@dataclass
class ReloadReport:
    plan: ReloadPlan = field(default_factory=ReloadPlan)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        parts = [f"{verb} {', '.join(names)}" for verb, names in
                 (("started", self.plan.start), ("replaced", tuple(n for n in self.plan.replace if n not in self.errors)),
                  ("stopped", self.plan.stop), ("kept", self.plan.keep)) if names]
        text = "; ".join(parts) or "nothing to do"
        if self.errors:
            text += "; FAILED: " + "; ".join(f"{name}: {error}" for name, error in self.errors.items())
        return text


def _project_files(root: Path) -> list[Path]:
    """Files Cortex would have uploaded: no dotfiles or dot dirs, no bytecode."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix not in (".pyc", ".pyo", ".pyd")
                  and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(root).parts))


def _fingerprint(path: Path) -> bytes:
    """Source by content; anything else (data, weights: possibly gigabytes) by size and mtime."""
    if path.suffix == ".py":
        return _read(path)
    try:
        info = path.stat()
    except OSError:  # deleted since the directory was listed (a handler's temp file)
        return b"gone"
    return f"{info.st_size}:{info.st_mtime_ns}".encode()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def model_roots(project: ProjectSpec) -> tuple[Path, ...]:
    """The local ``multi_model_reloading`` directories: a worker reloads what changes there
    itself, so a new model version is no change to the project (no API is replaced for it)."""
    return tuple(Path(root) for api in project.apis if api.handler and api.handler.multi_model_reloading
                 for root in api.handler.multi_model_reloading.local_roots())


def under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def api_digests(project: ProjectSpec) -> dict[str, str]:
    """api name -> digest of everything that, changed, needs new workers for that API."""
    root = project.project_dir
    models = model_roots(project)
    own = {name: [root / block.path for block in (api.handler, api.definition) if block is not None]
           for name, api in ((a.name, a) for a in project.apis)}
    # each API's own files count for it alone; cortex.yaml is compared entry by entry
    per_api = {path for paths in own.values() for path in paths} | {project.config_file}
    per_api |= {root / a.handler.protobuf_path for a in project.apis if a.handler and a.handler.protobuf_path}
    shared = hashlib.sha256(_read(root / ".env"))
    for path in _project_files(root):
        if path not in per_api and not under(path, models):
            shared.update(str(path.relative_to(root)).encode() + b"\0" + _fingerprint(path))
    digests = {}
    for api in project.apis:
        digest = hashlib.sha256(shared.digest())
        digest.update(repr(dataclasses.replace(api, line=0)).encode())  # moving an entry is no change
        for path in own[api.name]:
            digest.update(_read(path))
        if api.handler is not None and api.handler.protobuf_path:
            digest.update(_read(root / api.handler.protobuf_path))
        digests[api.name] = digest.hexdigest()
    return digests


def plan_reload(old: Mapping[str, str], new: Mapping[str, str]) -> ReloadPlan:
    """A pure comparison of digests: which APIs start, are replaced, stop or are kept."""
    return ReloadPlan(
        start=tuple(n for n in new if n not in old),
        replace=tuple(n for n in new if n in old and old[n] != new[n]),
        stop=tuple(n for n in old if n not in new),
        keep=tuple(n for n in new if n in old and old[n] == new[n]),
    )


async def apply_reload(deployment: Deployment, project: ProjectSpec, protos: Mapping[str, CompiledProto],
                       inventory: tuple[GpuDevice, ...], ready_timeout: float) -> tuple[ReloadReport, list[ApiRuntime]]:
    """Reconcile ``deployment`` with ``project``; returns the report and the runtimes to retire
    (old versions, stopped APIs, failed candidates), which no longer receive calls."""
    digests = api_digests(project)
    plan = plan_reload({name: rt.digest for name, rt in deployment.apis.items()}, digests)
    report = ReloadReport(plan)
    built = deployment.build(project, protos, inventory, digests, plan.start + plan.replace)
    candidates = {name: built[name] for name in plan.replace}
    for runtime in candidates.values():
        if runtime.pool is not None:
            runtime.pool.start()
    problems = await asyncio.gather(*(_readiness(rt, ready_timeout) for rt in candidates.values()))
    retiring: list[ApiRuntime] = []
    for (name, runtime), problem in zip(candidates.items(), problems, strict=True):
        if problem is not None:
            report.errors[name] = problem
            deployment.apis[name].error = f"reload failed, still serving the previous version: {problem}"
            retiring.append(runtime)
            continue
        previous = deployment.install(runtime)
        if previous is not None:
            retiring.append(previous)
    for name in plan.start:
        deployment.install(built[name])
    for name in plan.stop:
        removed = deployment.remove(name)
        if removed is not None:
            retiring.append(removed)
    log.info("reload_applied", ok=report.ok, summary=report.summary())
    return report, retiring


async def _readiness(runtime: ApiRuntime, timeout: float) -> str | None:
    if runtime.pool is None:
        if runtime.workerless:
            return None  # nothing to start (a splitter): installing it switches its front at once
        return runtime.error or "the API cannot start"
    return await runtime.pool.wait_all_ready(timeout)
