"""``DaemonControl``: what the control socket asks of a running daemon."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferd.grpc.services import compile_project
from inferd.spec import SpecError, load_project

if TYPE_CHECKING:
    from inferd.daemon import Daemon
    from inferd.reload import ReloadReport


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
    def __init__(self, daemon: "Daemon") -> None:
        self.daemon = daemon

    async def status_rows(self, api: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        daemon = self.daemon
        rows = [row for row in daemon.describe_apis() if not api or row["name"] == api]
        for row in rows:
            recorder = daemon.metrics.recorders.get(row["name"])
            if recorder is not None:
                row.update(recorder.summary())
            if row["kind"] == "AsyncAPI" and daemon.store is not None:
                row["queue_length"] = await daemon.store.queue_length(row["name"])
            row["recent_errors"] = recent_errors(daemon.logbook.recent(row["name"], 500))
        meta = {"pid": os.getpid(), "uptime": time.time() - daemon.started_at,
                "project": str(daemon.settings.project), "last_reload": daemon.last_reload}
        return rows, meta

    async def request_reload(self) -> "ReloadReport":
        return await self.daemon.request_reload()

    def validate_project(self, project: str) -> tuple[bool, list[str], list[str]]:
        return validate(Path(project) if project else self.daemon.settings.project)

    def log_lines(self, api: str, follow: bool, tail: int) -> AsyncIterator[str]:
        return self.daemon.logbook.follow(api, tail, follow)
