"""The kinds of API inferd serves: one module each, named in one table.

As uvicorn's ``HTTP_PROTOCOLS``, the table maps a name to an import string and nothing
registers itself by being imported. Adding a kind is its module here, its worker runner
(``inferd.worker.runners``), its routes, a store migration if it keeps jobs, and one line below.
"""

from __future__ import annotations

import functools
import importlib

from inferd.kinds.base import Kind
from inferd.spec import ApiSpec

KINDS: dict[str, str] = {
    "RealtimeAPI": "inferd.kinds.realtime:RealtimeKind",
    "AsyncAPI": "inferd.kinds.asyncapi:AsyncKind",
    "RunPodAPI": "inferd.kinds.runpod:RunPodKind",
    "TrafficSplitter": "inferd.kinds.splitter:SplitterKind",
    "BatchAPI": "inferd.kinds.batch:BatchKind",
    "TaskAPI": "inferd.kinds.task:TaskKind",
}


@functools.cache
def get_kind(name: str) -> Kind | None:
    """The kind named ``name``, or None when this version of inferd cannot serve it."""
    target = KINDS.get(name)
    if target is None:
        return None
    module_name, _, attr = target.partition(":")
    kind_class: type[Kind] = getattr(importlib.import_module(module_name), attr)
    return kind_class()


def unsupported_kind(name: str) -> str:
    *others, last = KINDS
    return f"{name} is not supported by this version of inferd yet ({', '.join(others)} and {last} are)"


def unsupported_reason(api: ApiSpec) -> str | None:
    """Why this version of inferd cannot serve the API yet, or None when it can."""
    kind = get_kind(api.kind)
    return unsupported_kind(api.kind) if kind is None else kind.unsupported(api)


def needs_store(names: list[str]) -> bool:
    """Whether any of these kinds keeps jobs in the job store."""
    return any(kind is not None and kind.needs_store for kind in map(get_kind, names))


def has_workers(name: str) -> bool:
    """Whether APIs of this kind run worker processes of their own (a splitter does not)."""
    kind = get_kind(name)
    return kind is not None and kind.has_workers
