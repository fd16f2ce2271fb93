"""Compiling a project's protos at load, as part of validation.

A proto that does not compile, that does not define exactly one service, or whose service
another API already exports, is a config error in the same form as cortex.yaml's own
(file, line, field path), so ``inferd validate`` and the daemon report it alike.
"""

from __future__ import annotations

from pathlib import Path

from inferd.logs import get_logger
from inferd.protos import (
    CompiledProto,
    ProtoError,
    compile_proto,
    descriptor_pool,
    package_warning,
)
from inferd.spec import ProjectSpec, SpecError, SpecIssue

log = get_logger()


def compile_project(project: ProjectSpec, cache_root: Path) -> dict[str, CompiledProto]:
    """api name -> its compiled proto, for every gRPC API; raises SpecError listing all problems."""
    compiled: dict[str, CompiledProto] = {}
    issues: list[SpecIssue] = []
    owners: dict[str, str] = {}
    label = project.config_file.name
    for index, api in enumerate(project.apis):
        handler = api.handler
        if handler is None or handler.protobuf_path is None:  # what api.is_grpc checks, kept for mypy
            continue
        path = f"apis[{index}].handler.protobuf_path"
        try:
            result = compile_proto(project.project_dir / handler.protobuf_path, cache_root)
        except ProtoError as exc:
            issues.append(SpecIssue(label, api.line, path, str(exc)))
            continue
        if result.service_name in owners:
            issues.append(SpecIssue(label, api.line, path, f"service {result.service_name} is already served by "
                                    f"api '{owners[result.service_name]}'; two APIs cannot export the same service"))
            continue
        owners[result.service_name] = api.name
        compiled[api.name] = result
        warning = package_warning(result, api.name)
        if warning:
            log.warning("proto_package_differs", api=api.name, detail=warning)
    if not issues and len(compiled) > 1:
        issues.extend(_shared_pool_issues(project, compiled))
    if issues:
        raise SpecError(issues)
    return compiled


def _shared_pool_issues(project: ProjectSpec, compiled: dict[str, CompiledProto]) -> list[SpecIssue]:
    """All services are reflected from one descriptor pool: two protos defining the same full
    symbol (say both ``predictor.Sample``) cannot both be served."""
    try:
        descriptor_pool(*compiled.values())
    except ProtoError as exc:
        last = project.api(list(compiled)[-1])
        index = project.apis.index(last)
        return [SpecIssue(project.config_file.name, last.line, f"apis[{index}].handler.protobuf_path", str(exc))]
    return []
