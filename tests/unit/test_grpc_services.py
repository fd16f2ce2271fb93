"""Protos as part of project validation: duplicate services, package warnings, cache reuse."""

from pathlib import Path

import pytest

from inferd.grpc.services import compile_project
from inferd.spec import SpecError, parse_apis

PROTO = 'syntax = "proto3";\npackage {pkg};\nservice S {{ rpc Go (M) returns (M); }}\nmessage M {{ string t = 1; }}\n'
HANDLER = "class Handler:\n    def __init__(self, config, proto_module_pb2):\n        pass\n"


def make(tmp_path: Path, packages: dict[str, str]):
    (tmp_path / "handler.py").write_text(HANDLER)
    yaml = ""
    for api, pkg in packages.items():
        (tmp_path / f"{api.replace('-', '_')}.proto").write_text(PROTO.format(pkg=pkg))
        yaml += (f"- name: {api}\n  kind: RealtimeAPI\n  handler:\n    type: python\n    path: handler.py\n"
                 f"    protobuf_path: {api.replace('-', '_')}.proto\n")
    return parse_apis(yaml, tmp_path)


def test_two_apis_exporting_one_service_is_an_error(tmp_path: Path) -> None:
    project = make(tmp_path, {"first": "shared", "second": "shared"})
    with pytest.raises(SpecError) as err:
        compile_project(project, tmp_path / "cache")
    assert "cortex.yaml:7: apis[1].handler.protobuf_path: service shared.S is already served by api 'first'" in str(err.value)


def test_any_package_is_served(tmp_path: Path) -> None:
    project = make(tmp_path, {"my-api": "my_api", "other": "not_the_name"})
    compiled = compile_project(project, tmp_path / "cache")
    assert compiled["my-api"].service_name == "my_api.S"
    assert compiled["other"].service_name == "not_the_name.S"
    assert [m.full_path for m in compiled["other"].methods] == ["/not_the_name.S/Go"]


def test_unchanged_proto_is_not_recompiled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make(tmp_path, {"api": "api"})
    first = compile_project(project, tmp_path / "cache")
    import grpc_tools.protoc

    monkeypatch.setattr(grpc_tools.protoc, "main", lambda *a, **k: pytest.fail("recompiled an unchanged proto"))
    assert compile_project(project, tmp_path / "cache")["api"].out_dir == first["api"].out_dir


def test_two_protos_defining_one_message_name_are_refused(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text(HANDLER)
    yaml = ""
    for api, service in (("first", "S1"), ("second", "S2")):
        (tmp_path / f"{api}.proto").write_text(
            f'syntax = "proto3";\npackage shared;\nservice {service} {{ rpc Go (M) returns (M); }}\n'
            'message M { string t = 1; }\n')
        yaml += (f"- name: {api}\n  kind: RealtimeAPI\n  handler:\n    type: python\n    path: handler.py\n"
                 f"    protobuf_path: {api}.proto\n")
    with pytest.raises(SpecError) as err:
        compile_project(parse_apis(yaml, tmp_path), tmp_path / "cache")
    assert "apis[1].handler.protobuf_path" in str(err.value) and "shared.M" in str(err.value)
