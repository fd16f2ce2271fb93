"""``DaemonControl``: what the control socket asks of a running daemon."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferd.gpu import assign_gpus, gpu_request, read_inventory
from inferd.grpc.services import compile_project
from inferd.kinds import has_workers, unsupported_reason
from inferd.logbook import LogBook
from inferd.metrics import Metrics
from inferd.reload import ReloadReport
from inferd.spec import ApiSpec, SpecError, SpecIssue, load_project
from inferd.worker.handler_class import constructor_problem


@dataclass(frozen=True)
class Validation:
    """What ``inferd validate`` found. ``problems`` make the file invalid; the APIs in
    ``will_not_start`` are valid, but this version of inferd cannot serve them."""

    config_file: Path
    problems: list[str]
    will_not_start: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    valid: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.will_not_start

    def summary(self) -> str:
        if self.problems:
            return f"{len(self.problems)} problem(s) found"
        if self.will_not_start:
            return f"{len(self.will_not_start)} api(s) will not start"
        return f"{len(self.valid)} api(s) valid: {', '.join(self.valid)}"


def validate(project_dir: Path) -> Validation:
    """The project checked exactly as the daemon would load it, and which APIs would start."""
    config_file = project_dir.resolve() / "cortex.yaml"
    try:
        project = load_project(project_dir)
        with tempfile.TemporaryDirectory(prefix="inferd-validate-") as cache:
            compile_project(project, Path(cache))
    except SpecError as exc:
        return Validation(config_file, [str(issue) for issue in exc.issues])
    label = os.path.relpath(project.config_file, project.project_dir)
    blocked = {}
    for api in project.apis:
        reason = unsupported_reason(api)
        if reason is None and api.handler is not None:
            reason = constructor_problem(project.project_dir / api.handler.path, api.kind,
                                         api.handler.multi_model_reloading is not None)
        if reason is not None:
            blocked[api.name] = str(SpecIssue(label, api.line, "", f"api {json.dumps(api.name)}: {reason}"))
    shortfalls = gpu_shortfalls([api for api in project.apis if api.name not in blocked])
    for api in project.apis:
        if api.name in shortfalls:
            blocked[api.name] = str(SpecIssue(label, api.line, "compute.gpu", shortfalls[api.name]))
    return Validation(project.config_file, [], list(blocked.values()), list(project.ignored),
                      [api.name for api in project.apis if api.name not in blocked])


def gpu_shortfalls(apis: list[ApiSpec]) -> dict[str, str]:
    """APIs asking for more GPUs per replica than this machine has, as the daemon would refuse
    them (``inferd validate`` runs where the daemon will: it reads the same NVML inventory)."""
    wanting = [api for api in apis if api.gpus_per_replica and has_workers(api.kind)]
    if not wanting:
        return {}
    inventory = read_inventory()
    requests = [gpu_request(api, len(inventory))[0] for api in wanting]
    return dict(assign_gpus(inventory, requests).errors)


def recent_errors(lines: list[str], keep: int = 5) -> list[str]:
    errors = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("level") == "error" or event.get("levelname") == "ERROR":
            errors.append(f"{event.get('timestamp', event.get('asctime', ''))} {event.get('event') or event.get('message')}: "
                          f"{event.get('error') or event.get('exception') or ''}".strip())
    return errors[-keep:]


class DaemonControl:
    """The control service's view of a running daemon: the few parts it reads, passed in,
    so this module never imports the daemon (no cycle, and a test can pass fakes)."""

    def __init__(self, describe: Callable[[], list[dict[str, Any]]],
                 api_status: Callable[[str], Awaitable[dict[str, Any]]], metrics: Metrics, logbook: LogBook,
                 reload: Callable[[], Awaitable[ReloadReport]], project: Path,
                 meta: Callable[[], dict[str, Any]],
                 jobs: Callable[[str, str, int], Awaitable[dict[str, Any]]] | None = None) -> None:
        self.describe = describe
        self.api_status = api_status
        self.metrics = metrics
        self.logbook = logbook
        self.reload = reload
        self.project = project
        self.meta = meta
        self.jobs = jobs

    async def status_rows(self, api: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        rows = [row for row in self.describe() if not api or row["name"] == api]
        for row in rows:
            recorder = self.metrics.recorders.get(row["name"])
            if recorder is not None:
                row.update(recorder.summary())
            row.update(await self.api_status(row["name"]))
            row["recent_errors"] = recent_errors(self.logbook.recent(row["name"], 500))
        return rows, self.meta()

    async def request_reload(self) -> ReloadReport:
        return await self.reload()

    def validate_project(self, project: str) -> tuple[bool, list[str], list[str]]:
        found = validate(Path(project) if project else self.project)
        return found.ok, found.problems + found.will_not_start, [*found.ignored, found.summary()]

    def log_lines(self, api: str, follow: bool, tail: int) -> AsyncIterator[str]:
        # an API a reload removed is still known while the log book holds its lines
        known = any(row["name"] == api for row in self.describe()) or bool(self.logbook.recent(api, 1))
        if not known:
            raise LookupError(f"no api named {api!r}")
        return self.logbook.follow(api, tail, follow)

    async def job_report(self, api: str, job_id: str, limit: int) -> dict[str, Any]:
        if self.jobs is None:
            raise LookupError("this daemon reports no jobs")
        return await self.jobs(api, job_id, limit)
