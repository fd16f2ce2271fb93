"""The CLI's side of ``inferd.v1.Control``: calls over the daemon's Unix socket, and the
tables ``inferd status`` prints."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from inferd.control.jobs_view import progress_lines, status_progress, text_table
from inferd.control.schema import SERVICE, ControlSchema, load_schema


class DaemonNotRunning(Exception):
    pass


class NoSuchApi(LookupError):
    pass


class ControlClient:
    def __init__(self, socket_path: Path, timeout: float = 300.0) -> None:
        if not socket_path.exists():
            raise DaemonNotRunning(f"inferd is not running: no control socket at {socket_path} "
                                   "(start it with `inferd run`, or point --socket/--config at the right daemon)")
        self.path = socket_path
        self.timeout = timeout
        self.schema: ControlSchema = load_schema(Path(tempfile.gettempdir()) / f"inferd-cli-{os.getuid()}")
        self.channel = grpc.insecure_channel(f"unix:{socket_path}")

    def _call(self, method: str, request: Any, stream: bool = False) -> Any:
        path = f"/{SERVICE}/{method}"
        make = self.channel.unary_stream if stream else self.channel.unary_unary
        call = make(path, request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=self.schema.reply_class(method).FromString)
        try:
            return call(request, timeout=None if stream else self.timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise DaemonNotRunning(f"inferd is not answering on {self.path}: {exc.details()}") from None
            raise

    def status(self, api: str = "") -> Any:
        return self._call("Status", self.schema.request_class("Status")(api=api))

    def reload(self) -> Any:
        return self._call("Reload", self.schema.request_class("Reload")())

    def jobs(self, api: str, job_id: str = "", limit: int = 20) -> dict[str, Any]:
        """``{"jobs": [...]}`` or ``{"job": {...}}``; NoSuchApi for an unknown API or job."""
        reply = self._call("Jobs", self.schema.request_class("Jobs")(api=api, job_id=job_id, limit=limit))
        report: dict[str, Any] = json.loads(reply.json)
        if "error" in report:
            raise NoSuchApi(report["error"])
        return report

    def logs(self, api: str, follow: bool, tail: int) -> Iterator[str]:
        try:
            for line in self._call("Logs", self.schema.request_class("Logs")(api=api, follow=follow, tail=tail), True):
                yield line.line
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NoSuchApi(exc.details()) from None
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise


COLUMNS = ("API", "KIND", "ENDPOINT", "WORKERS", "GPUS", "REQ/S", "P50 MS", "P99 MS", "QUEUE", "STATE", "LAST ERROR")


def status_table(reply: Any) -> str:
    rows = [(a.name, a.kind, a.endpoint, f"{a.ready_workers}/{a.desired_workers}",
             ",".join(map(str, a.gpus)) or "-", f"{a.requests_per_second:.1f}", f"{a.p50_ms:.1f}",
             f"{a.p99_ms:.1f}", str(a.queue_length) if a.HasField("queue_length") else "-", a.state,
             (a.last_error or "-")[:60]) for a in reply.apis]
    footer = (f"\ninferd pid {reply.pid}, up {reply.uptime_seconds:.0f}s, project {reply.project}"
              f"\nlast reload: {reply.last_reload}")
    return text_table(COLUMNS, rows) + status_progress([json.loads(a.detail_json) for a in reply.apis]) + footer


def model_lines(models: dict[str, Any]) -> list[str]:
    """multi_model_reloading: each model's versions, those in memory, and the ones that failed."""
    def listed(versions: list[int]) -> str:
        return ", ".join(map(str, versions)) or "none"

    lines = []
    for name, model in models.items():
        lines.append(f"  model {name}: latest {model.get('latest') or '-'}, loaded {listed(model.get('loaded', []))}, "
                     f"versions {listed(model.get('versions', []))}")
        lines.extend(f"    version {version} failed: {error}" for version, error in model.get("failed", {}).items())
    return lines


def status_detail(reply: Any) -> str:
    api = reply.apis[0]
    detail = json.loads(api.detail_json)
    lines = [f"{api.name} ({api.kind}) at {api.endpoint}: {api.state}",
             f"workers {api.ready_workers}/{api.desired_workers} ready, {api.restarts} restart(s)",
             f"requests/s {api.requests_per_second:.1f}, p50 {api.p50_ms:.1f} ms, p99 {api.p99_ms:.1f} ms"]
    if api.HasField("queue_length"):
        lines.append(f"queue length {api.queue_length}")
    if "running_jobs" in detail:  # kinds that run queued jobs say how many are running
        lines.append(f"running jobs {detail['running_jobs']}")
    for member in detail.get("apis", []):  # a TrafficSplitter's weights over its APIs
        role = "shadow, mirrors" if member["shadow"] else "routes"
        lines.append(f"  {role} {member['weight']}% to {member['name']} ({member['state']})")
    lines.extend(progress_lines(api.name, detail.get("jobs") or []))  # BatchAPI/TaskAPI: running jobs
    for worker in detail.get("workers", []):
        lines.append(f"  worker slot {worker['slot']}: pid {worker['pid']} {worker['state']} "
                     f"gpus {worker['gpus'] or '-'} in flight {worker['in_flight']}")
    lines.extend(model_lines(detail.get("models") or {}))
    lines.append(f"last error: {api.last_error or '-'}")
    if api.recent_errors:
        lines.append("recent errors:")
        lines.extend(f"  {error}" for error in api.recent_errors)
    return "\n".join(lines)
