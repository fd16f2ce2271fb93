"""``from cortex_internal.lib.log import logger``: Cortex's JSON logger, on inferd.

Each record is one JSON line in Cortex's shape (``asctime``, ``levelname``, ``message``,
``process``, then the ``extra=`` keys flattened one level), plus inferd's tags: the API, and
the request id of the call being handled.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TextIO

import structlog

RESERVED = {"asctime", "levelname", "message", "labels", "process"}
MAX_LINE = 5 * 1024 * 1024  # Cortex ignored lines over 5 MB
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class CortexJsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        line = {"asctime": f"{when},{int(record.msecs):03d}", "levelname": record.levelname,
                "message": record.getMessage(), "process": record.process}
        context = structlog.contextvars.get_contextvars()
        line["api"] = os.environ.get("CORTEX_API_NAME", "")
        if "request_id" in context:
            line["request_id"] = context["request_id"]
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in RESERVED:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        text = json.dumps(line, default=str)
        return text if len(text) <= MAX_LINE else ""


class _CortexHandler(logging.StreamHandler[TextIO]):
    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if text:
            self.stream.write(text + "\n")
            self.flush()


def _make_logger() -> logging.Logger:
    cortex = logging.getLogger("cortex")
    cortex.handlers[:] = []
    handler = _CortexHandler(sys.__stdout__)
    handler.setFormatter(CortexJsonFormatter())
    cortex.addHandler(handler)
    cortex.propagate = False  # one line per record, in Cortex's shape only
    cortex.setLevel(os.environ.get("CORTEX_LOG_LEVEL", "INFO").upper())
    return cortex


logger = _make_logger()
cortex_logger = logger
