"""The control service's methods and message classes, compiled from the bundled proto."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from inferd.protos import CompiledProto, compile_proto, message_classes

PROTO = Path(__file__).with_name("control.proto")
SERVICE = "inferd.v1.Control"


class ControlSchema:
    def __init__(self, cache_root: Path) -> None:
        self.compiled: CompiledProto = compile_proto(PROTO, cache_root)
        self.messages: dict[str, type[Any]] = message_classes(self.compiled)
        self.methods = {m.name: m for m in self.compiled.methods}

    def message(self, short_name: str, **fields: Any) -> Any:
        return self.messages[f"inferd.v1.{short_name}"](**fields)

    def request_class(self, method: str) -> type[Any]:
        return self.messages[self.methods[method].input_type]

    def reply_class(self, method: str) -> type[Any]:
        return self.messages[self.methods[method].output_type]


@functools.cache
def load_schema(cache_root: Path) -> ControlSchema:
    return ControlSchema(cache_root)
