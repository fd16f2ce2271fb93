"""structlog set-up shared by the daemon and its workers: one JSON event a line on stdout.

Standard-library logging (uvicorn, grpc, the user's own ``logging`` calls) is routed through
the same processors, so every line on stdout has one shape.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _static_fields(fields: dict[str, Any]) -> structlog.types.Processor:
    def add(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        for key, value in fields.items():
            event.setdefault(key, value)
        return event

    return add


def configure_logging(level: str = "info", json_output: bool | None = None, **fields: Any) -> None:
    """``json_output=None`` picks JSON unless stdout is a terminal (then a readable console)."""
    if json_output is None:
        json_output = not sys.stdout.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
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
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
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


def get_logger(**bind: Any) -> Any:
    """A lazy logger: safe to create at import time, before ``configure_logging`` ran."""
    return structlog.get_logger("inferd", **bind)
