"""Loading the user's ``Handler`` class and calling it with the arguments it declares.

Cortex passes constructor and method arguments by keyword, only those the signature names;
we keep that contract so unchanged handler files behave the same here.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

HTTP_VERBS = ("post", "get", "put", "patch", "delete")
METHOD_PARAMS = frozenset({"payload", "query_params", "headers"})
CONSTRUCTOR_PARAMS = frozenset({"config", "metrics_client", "model_client", "proto_module_pb2", "module_proto_pb2"})
# Cortex's allowed constructor parameters differ by kind (spec §3.2); the others use the set above
CONSTRUCTOR_PARAMS_BY_KIND = {
    "BatchAPI": frozenset({"config", "job_spec", "metrics_client"}),
    "TaskAPI": frozenset({"metrics_client"}),
}


class HandlerLoadError(Exception):
    """The project's handler file cannot serve: the message is meant for the operator."""


def load_module(path: Path, module_name: str = "handler") -> Any:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise HandlerLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    # registered before exec so dataclasses/pickle-free introspection inside the module work
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def find_class(module: Any, class_name: str = "Handler") -> type:
    cls = getattr(module, class_name, None)
    if not inspect.isclass(cls):
        raise HandlerLoadError(f"{module.__file__}: class {class_name} is not defined")
    return cls


def declared_params(func: Callable[..., Any]) -> tuple[list[str], list[str]]:
    """(all named parameters, the required ones), ``self`` excluded."""
    params = list(inspect.signature(func).parameters.values())
    if params and params[0].name == "self":
        params = params[1:]
    names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    required = [p.name for p in params if p.default is p.empty and p.name in names]
    return names, required


def check_params(where: str, func: Callable[..., Any], allowed: frozenset[str]) -> list[str]:
    names, _ = declared_params(func)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise HandlerLoadError(
            f"{where}: unexpected parameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    return names


def construct(cls: type[Any], available: Mapping[str, Any], allowed: frozenset[str] = CONSTRUCTOR_PARAMS) -> Any:
    """Build the handler, passing by name each constructor argument it declares."""
    names = check_params(f"{cls.__name__}.__init__", cls.__init__, allowed)
    kwargs = {}
    for name in names:
        if name not in available:
            raise HandlerLoadError(f"{cls.__name__}.__init__ asks for {name!r}, which this API does not provide")
        kwargs[name] = available[name]
    return cls(**kwargs)


class BoundMethod:
    """One handler method with the keyword arguments it declared, resolved once at load."""

    __slots__ = ("func", "wants", "is_async")

    def __init__(self, func: Callable[..., Any], wants: tuple[str, ...]) -> None:
        self.func = func
        self.wants = wants
        self.is_async = inspect.iscoroutinefunction(func)

    def kwargs(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {name: values[name] for name in self.wants}


def http_methods(handler: Any) -> dict[str, BoundMethod]:
    methods = {}
    for verb in HTTP_VERBS:
        func = getattr(handler, f"handle_{verb}", None)
        if func is None:
            continue
        names = check_params(f"Handler.handle_{verb}", func, METHOD_PARAMS)
        methods[verb] = BoundMethod(func, tuple(names))
    if not methods:
        raise HandlerLoadError(
            "Handler defines none of handle_post, handle_get, handle_put, handle_patch, handle_delete"
        )
    return methods


def constructor_problem(handler_file: Path, kind: str = "", models: bool = False) -> str | None:
    """What a worker would refuse in ``Handler.__init__``'s parameters (and, with
    ``multi_model_reloading``, a missing ``load_model``), read without running the file
    (``inferd validate`` must not import the user's code); ``kind`` picks the allowed set."""
    allowed = CONSTRUCTOR_PARAMS_BY_KIND.get(kind, CONSTRUCTOR_PARAMS)
    try:
        tree = ast.parse(handler_file.read_bytes())
    except (OSError, SyntaxError, ValueError):
        return None  # the worker reports these itself, with the traceback
    body = next((node.body for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Handler"), None)
    if body is None:
        return None
    methods = {item.name: item for item in body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))}
    init = methods.get("__init__")
    params = [] if init is None else \
        [a.arg for a in init.args.posonlyargs + init.args.args][1:] + [a.arg for a in init.args.kwonlyargs]
    unknown = [name for name in params if name not in allowed]
    if unknown:
        return f"Handler.__init__ asks for {', '.join(unknown)}; inferd passes only {', '.join(sorted(allowed))}"
    return model_problem(params, "load_model" in methods, models)


def model_problem(init_params: Sequence[str], has_load_model: bool, models: bool) -> str | None:
    """Cortex's rule (§3.2): ``model_client`` and ``load_model`` come with multi_model_reloading, and only with it."""
    if models and "model_client" not in init_params:
        return "Handler.__init__ must take model_client: handler.multi_model_reloading is set"
    if models and not has_load_model:
        return "Handler must define load_model(self, model_path): handler.multi_model_reloading is set"
    if not models and "model_client" in init_params:
        return "Handler.__init__ asks for model_client, which needs handler.multi_model_reloading in cortex.yaml"
    return None
