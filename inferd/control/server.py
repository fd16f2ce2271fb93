"""``ControlServer``: the daemon side of ``inferd.v1.Control`` on a Unix socket (mode 0660)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import grpc

from inferd.control.schema import SERVICE, ControlSchema
from inferd.logs import get_logger

log = get_logger()
TEXT_FIELDS = ("name", "kind", "endpoint", "state")
NUMBER_FIELDS = ("ready_workers", "desired_workers", "restarts", "requests_per_second", "p50_ms", "p99_ms")


class ControlTarget(Protocol):
    """What the daemon offers its operators; the server only translates to and from protobuf."""

    async def status_rows(self, api: str) -> tuple[list[dict[str, Any]], dict[str, Any]]: ...
    async def request_reload(self) -> Any: ...
    def validate_project(self, project: str) -> tuple[bool, list[str], list[str]]: ...
    def log_lines(self, api: str, follow: bool, tail: int) -> AsyncIterator[str]:
        """Raises LookupError, before any line, for an API the daemon does not know."""
        ...
    async def job_report(self, api: str, job_id: str, limit: int) -> dict[str, Any]:
        """Raises LookupError for an unknown API or job, or an API without jobs."""
        ...


class SocketInUse(OSError):
    pass


def clear_stale_socket(path: Path) -> None:
    """A socket file left by a daemon that died is removed; a live one means we are not alone."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:  # nobody listens: a dead daemon's leftover
        path.unlink(missing_ok=True)
        return
    except OSError as exc:  # e.g. permission denied: we cannot tell, so we do not delete it
        raise SocketInUse(f"cannot check the existing control socket {path}: {exc}") from None
    finally:
        probe.close()
    raise SocketInUse(f"another inferd is listening on {path}; to run a second daemon beside it, give this one "
                      "its own --state-dir (and pass that --state-dir to inferd status, logs and reload too)")


class ControlServer:
    def __init__(self, path: Path, schema: ControlSchema, target: ControlTarget) -> None:
        self.path = path
        self.schema = schema
        self.target = target
        self.server = grpc.aio.server()
        self.listening = False
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, self._handlers()),))

    def _handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        def unary(func: Callable[[Any], Awaitable[Any]], method: str) -> grpc.RpcMethodHandler:
            async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
                return await func(request)

            return grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=self.schema.request_class(method).FromString,
                response_serializer=lambda message: message.SerializeToString())

        return {
            "Status": unary(self._status, "Status"),
            "Reload": unary(self._reload, "Reload"),
            "Validate": unary(self._validate, "Validate"),
            "Jobs": unary(self._jobs, "Jobs"),
            "Logs": grpc.unary_stream_rpc_method_handler(
                self._logs, request_deserializer=self.schema.request_class("Logs").FromString,
                response_serializer=lambda message: message.SerializeToString()),
        }

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        clear_stale_socket(self.path)
        self.server.add_insecure_port(f"unix:{self.path}")
        # created 0660 from the start (no window in which others could connect), then made sure
        previous = os.umask(0o117)
        try:
            await self.server.start()
        finally:
            os.umask(previous)
        self.listening = True
        os.chmod(self.path, 0o660)
        log.info("control_socket_listening", path=str(self.path))

    async def stop(self) -> None:
        await self.server.stop(1)
        if self.listening:  # a server that never started must not delete another daemon's socket
            self.path.unlink(missing_ok=True)

    async def _status(self, request: Any) -> Any:
        rows, meta = await self.target.status_rows(request.api)
        reply = self.schema.reply_class("Status")(pid=meta["pid"], uptime_seconds=meta["uptime"],
                                                  project=meta["project"], last_reload=meta["last_reload"])
        for row in rows:
            item = reply.apis.add()
            for key in TEXT_FIELDS:
                setattr(item, key, str(row.get(key) or ""))
            for key in NUMBER_FIELDS:
                setattr(item, key, row.get(key) or 0)
            if "queue_length" in row:  # only kinds with a queue report one
                item.queue_length = row["queue_length"]
            item.last_error = row.get("error") or ""
            item.gpus.extend(sorted({g for w in row.get("workers", []) for g in w["gpus"]}))
            item.recent_errors.extend(row.get("recent_errors", []))
            item.detail_json = json.dumps(row, default=str)
        return reply

    async def _reload(self, request: Any) -> Any:
        report = await self.target.request_reload()
        return self.schema.reply_class("Reload")(ok=report.ok, summary=report.summary(), errors=report.errors)

    async def _validate(self, request: Any) -> Any:
        ok, problems, notes = self.target.validate_project(request.project)
        return self.schema.reply_class("Validate")(ok=ok, problems=problems, notes=notes)

    async def _jobs(self, request: Any) -> Any:
        try:
            report = await self.target.job_report(request.api, request.job_id, request.limit or 20)
        except LookupError as exc:
            report = {"error": str(exc)}  # the CLI prints it and exits 1
        return self.schema.reply_class("Jobs")(json=json.dumps(report, default=str))

    async def _logs(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        line_class = self.schema.reply_class("Logs")
        try:
            lines = self.target.log_lines(request.api, request.follow, request.tail or 100)
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            return
        async for line in lines:
            yield line_class(line=line)
