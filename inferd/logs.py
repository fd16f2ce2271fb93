"""structlog set-up shared by the daemon and its workers: one JSON event a line on stdout.

Standard-library logging (uvicorn, grpc, the user's own ``logging`` calls) is routed through
the same processors, so every line on stdout has one shape.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import structlog

CONSOLE = False  # True when lines are rendered for a person (a terminal), not as JSON
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _static_fields(fields: dict[str, Any]) -> structlog.types.Processor:
    def add(_logger: Any, _name: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        for key, value in fields.items():
            event.setdefault(key, value)
        return event

    return add


def _traceback_below(_logger: Any, _name: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
    """On a terminal a ``traceback`` field reads as Python printed it, below the event line,
    rather than as one escaped string (the console renderer prints ``exception`` that way)."""
    if isinstance(event.get("traceback"), str) and "exception" not in event:
        event["exception"] = event.pop("traceback").rstrip("\n")
    return event


def configure_logging(level: str = "info", json_output: bool | None = None, **fields: Any) -> None:
    """``json_output=None`` picks JSON unless stdout is a terminal (then a readable console)."""
    global CONSOLE
    if json_output is None:
        json_output = not sys.stdout.isatty()
    CONSOLE = not json_output
    renderers: list[structlog.types.Processor] = (
        [structlog.processors.JSONRenderer()] if json_output else [_traceback_below, structlog.dev.ConsoleRenderer()]
    )
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _static_fields(fields),
    ]
    if json_output:
        shared.append(structlog.processors.format_exc_info)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared[:-1], structlog.stdlib.ExtraAdder(), _static_fields(fields)],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderers],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def relay_event(line: str, event: dict[str, Any]) -> None:
    """A worker's JSON event on the daemon's stdout: as is, or re-rendered on a terminal."""
    if not CONSOLE:
        sys.stdout.write(line + "\n")
        return
    name, level, fields = _worker_fields(event)
    fields.pop("timestamp", None)
    getattr(structlog.get_logger("inferd.worker"), level)(name, **fields)


def _worker_fields(event: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """A worker event's name, level and other fields, whether structlog's or Cortex's JSON shape."""
    fields = dict(event)
    name = str(fields.pop("event", fields.pop("message", "")))
    level = str(fields.pop("level", fields.pop("levelname", "info"))).lower()
    fields.setdefault("component", "worker")
    return name, level if level in LEVELS else "info", fields


def console_line(line: str) -> str:
    """A stored worker log line (``inferd logs``) for a terminal, rendered as the daemon renders
    it there; a line that is not a JSON event stays as it is."""
    try:
        event = json.loads(line)
    except ValueError:
        return line
    if not isinstance(event, dict):
        return line
    name, level, fields = _worker_fields(event)
    stamp = fields.pop("timestamp", None) or fields.pop("asctime", None)  # asctime: Cortex's shape
    if stamp:
        fields["timestamp"] = stamp
    _traceback_below(None, level, fields)
    return str(structlog.dev.ConsoleRenderer()(None, level, {**fields, "event": name, "level": level}))


def get_logger(**bind: Any) -> Any:
    """A lazy logger: safe to create at import time, before ``configure_logging`` ran."""
    return structlog.get_logger("inferd", **bind)
