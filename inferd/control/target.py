"""``DaemonControl``: what the control socket asks of a running daemon."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from inferd.grpc.services import compile_project
from inferd.logbook import LogBook
from inferd.metrics import Metrics
from inferd.reload import ReloadReport
from inferd.spec import SpecError, load_project


def validate(project_dir: Path) -> tuple[bool, list[str], list[str]]:
    """(ok, problems, notes) for a project, exactly as the daemon would load it."""
    try:
        project = load_project(project_dir)
        with tempfile.TemporaryDirectory(prefix="inferd-validate-") as cache:
            compile_project(project, Path(cache))
    except SpecError as exc:
        return False, [str(issue) for issue in exc.issues], []
    notes = list(project.ignored) + [f"{len(project.apis)} api(s) valid: {', '.join(a.name for a in project.apis)}"]
    return True, [], notes


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
                 meta: Callable[[], dict[str, Any]]) -> None:
        self.describe = describe
        self.api_status = api_status
        self.metrics = metrics
        self.logbook = logbook
        self.reload = reload
        self.project = project
        self.meta = meta

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
        return validate(Path(project) if project else self.project)

    def log_lines(self, api: str, follow: bool, tail: int) -> AsyncIterator[str]:
        return self.logbook.follow(api, tail, follow)
