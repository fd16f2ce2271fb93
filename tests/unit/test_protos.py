"""inferd.protos: compiling, caching and describing a gRPC API's proto."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import grpc_tools.protoc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from inferd.protos import (
    CompiledProto,
    ProtoError,
    compile_proto,
    descriptor_pool,
    file_descriptor_protos,
    load_pb2,
    message_classes,
    package_warning,
)

FOUR_SHAPES = """\
syntax = "proto3";

package iris_classifier;

service Classifier {
  rpc Predict (Sample) returns (Response);
  rpc Watch (Sample) returns (stream Response);
  rpc Upload (stream Sample) returns (Response);
  rpc Chat (stream Sample) returns (stream Response);
}

message Sample { string a = 1; }
message Response { string b = 1; }
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def service_proto(package: str, service: str = "Svc", body: str = "") -> str:
    pkg = f"package {package};\n" if package else ""
    return (f'syntax = "proto3";\n{pkg}service {service} {{ rpc Predict (Sample) returns (Response); }}\n'
            f"message Sample {{ string a = 1; }}\nmessage Response {{ string b = 1; }}\n{body}")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def compile_text(tmp_path: Path, cache: Path, text: str, name: str = "predictor.proto") -> CompiledProto:
    return compile_proto(write(tmp_path / "project", name, text), cache)


def test_four_shapes(tmp_path: Path, cache: Path) -> None:
    compiled = compile_text(tmp_path, cache, FOUR_SHAPES)
    assert compiled.stem == "predictor"
    assert compiled.package == "iris_classifier"
    assert compiled.service_name == "iris_classifier.Classifier"
    assert compiled.proto_path == (tmp_path / "project" / "predictor.proto").resolve()
    assert {m.name: (m.shape, m.full_path) for m in compiled.methods} == {
        "Predict": ("unary_unary", "/iris_classifier.Classifier/Predict"),
        "Watch": ("unary_stream", "/iris_classifier.Classifier/Watch"),
        "Upload": ("stream_unary", "/iris_classifier.Classifier/Upload"),
        "Chat": ("stream_stream", "/iris_classifier.Classifier/Chat"),
    }
    assert {(m.input_type, m.output_type) for m in compiled.methods} == {
        ("iris_classifier.Sample", "iris_classifier.Response")}
    assert compiled.out_dir == cache.resolve() / compiled.digest
    assert {"predictor_pb2.py", "predictor_pb2_grpc.py", "complete"} <= {p.name for p in compiled.out_dir.iterdir()}


def test_permissions_and_no_leftovers(tmp_path: Path, cache: Path) -> None:
    compiled = compile_text(tmp_path, cache, FOUR_SHAPES)
    assert stat.S_IMODE(compiled.out_dir.stat().st_mode) == 0o750
    for path in compiled.out_dir.iterdir():
        assert not path.stat().st_mode & stat.S_IWOTH, path
    assert [p.name for p in cache.iterdir()] == [compiled.digest]  # the temp dir was renamed


def test_cache_hit_compiles_nothing(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = compile_text(tmp_path, cache, FOUR_SHAPES)

    def refuse(args: list[str]) -> int:
        raise AssertionError(f"protoc ran on a cache hit: {args}")

    monkeypatch.setattr(grpc_tools.protoc, "main", refuse)
    assert compile_proto(first.proto_path, cache) == first


def test_changed_content_new_dir(tmp_path: Path, cache: Path) -> None:
    first = compile_text(tmp_path, cache, FOUR_SHAPES)
    second = compile_text(tmp_path, cache, FOUR_SHAPES.replace("string b = 1", "string c = 1"))
    assert second.digest != first.digest and second.out_dir != first.out_dir
    assert (first.out_dir / "complete").is_file() and (second.out_dir / "complete").is_file()


def test_same_content_other_name_is_another_entry(tmp_path: Path, cache: Path) -> None:
    # the generated module names follow the file name, so the cache key must too
    a = compile_text(tmp_path, cache, FOUR_SHAPES, "predictor.proto")
    b = compile_text(tmp_path, cache, FOUR_SHAPES, "other.proto")
    assert a.out_dir != b.out_dir and (b.out_dir / "other_pb2.py").is_file()


def test_sibling_import(tmp_path: Path, cache: Path) -> None:
    project = tmp_path / "project"
    write(project, "common.proto", 'syntax = "proto3";\npackage shared;\nmessage Sample { string a = 1; }\n')
    main = write(project, "predictor.proto",
                 'syntax = "proto3";\nimport "common.proto";\npackage p;\n'
                 "service S { rpc Predict (shared.Sample) returns (shared.Sample); }\n")
    compiled = compile_proto(main, cache)
    assert compiled.methods[0].input_type == "shared.Sample"
    assert (compiled.out_dir / "common_pb2.py").is_file()  # predictor_pb2 imports it
    assert set(message_classes(compiled)) == {"shared.Sample"}
    # editing the imported file changes the generated code: a new cache entry
    write(project, "common.proto", 'syntax = "proto3";\npackage shared;\nmessage Sample { int32 a = 1; }\n')
    assert compile_proto(main, cache).out_dir != compiled.out_dir


def test_syntax_error_quotes_file_and_line(tmp_path: Path, cache: Path, capfd: pytest.CaptureFixture[str]) -> None:
    broken = FOUR_SHAPES.replace("message Sample { string a = 1; }", "message Sample { string a = 1 }")
    with pytest.raises(ProtoError) as info:
        compile_text(tmp_path, cache, broken)
    assert str(info.value).startswith("predictor.proto:12:")
    assert "Expected" in str(info.value)
    assert "Expected" not in capfd.readouterr().err  # captured, not leaked to the daemon's stderr
    assert not cache.exists() or not any(cache.iterdir())  # nothing cached, no temp dir left


def test_undefined_type(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(ProtoError, match=r'predictor\.proto:6:\d+: "Foo" is not defined'):
        compile_text(tmp_path, cache, FOUR_SHAPES.replace("returns (Response);\n  rpc Watch",
                                                          "returns (Foo);\n  rpc Watch"))


def test_missing_file(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(ProtoError, match="cannot read"):
        compile_proto(tmp_path / "nope.proto", cache)


def test_zero_services(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(ProtoError, match="defines 0 services; exactly one"):
        compile_text(tmp_path, cache, 'syntax = "proto3";\nmessage Sample { string a = 1; }\n')


def test_two_services(tmp_path: Path, cache: Path) -> None:
    text = service_proto("p", "First", "service Second { rpc Other (Sample) returns (Response); }\n")
    with pytest.raises(ProtoError, match=r"defines 2 services \(p\.First, p\.Second\)"):
        compile_text(tmp_path, cache, text)
    assert not any(cache.iterdir())  # a refused proto is not cached


def test_well_known_types(tmp_path: Path, cache: Path) -> None:
    text = ('syntax = "proto3";\nimport "google/protobuf/empty.proto";\npackage p;\n'
            "service S { rpc Ping (google.protobuf.Empty) returns (Reply); }\nmessage Reply { string b = 1; }\n")
    compiled = compile_text(tmp_path, cache, text)
    assert compiled.methods[0].input_type == "google.protobuf.Empty"
    classes = message_classes(compiled)
    assert set(classes) == {"google.protobuf.Empty", "p.Reply"}
    assert classes["google.protobuf.Empty"].FromString(b"").SerializeToString() == b""
    names = [descriptor_pb2.FileDescriptorProto.FromString(b).name for b in file_descriptor_protos(compiled)]
    assert names == ["google/protobuf/empty.proto", "predictor.proto"]  # dependencies first
    assert not (compiled.out_dir / "google").exists()  # well-known types ship with protobuf


def test_same_stem_two_packages_in_one_process(tmp_path: Path, cache: Path) -> None:
    a = compile_proto(write(tmp_path / "a", "predictor.proto", service_proto("api_a")), cache)
    b = compile_proto(write(tmp_path / "b", "predictor.proto", service_proto("api_b", body="message X {}\n")), cache)
    ca, cb = message_classes(a), message_classes(b)
    assert set(ca) == {"api_a.Sample", "api_a.Response"} and set(cb) == {"api_b.Sample", "api_b.Response"}
    assert cb["api_b.Sample"].FromString(ca["api_a.Sample"](a="x").SerializeToString()).a == "x"
    assert message_classes(a)["api_a.Sample"] is ca["api_a.Sample"]  # stable classes


def test_descriptor_pool_and_file_descriptor_protos(tmp_path: Path, cache: Path) -> None:
    compiled = compile_text(tmp_path, cache, FOUR_SHAPES)
    service = descriptor_pool(compiled).FindServiceByName("iris_classifier.Classifier")
    assert [m.name for m in service.methods] == ["Predict", "Watch", "Upload", "Chat"]
    files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in file_descriptor_protos(compiled)]
    assert [f.name for f in files] == ["predictor.proto"]
    assert [s.name for s in files[0].service] == ["Classifier"]


def reflect(pool: object, names: list[str], request: reflection_pb2.ServerReflectionRequest
            ) -> reflection_pb2.ServerReflectionResponse:
    servicer = reflection.ReflectionServicer(names, pool=pool)
    return next(servicer.ServerReflectionInfo(iter([request]), None))


def test_reflection_over_several_protos(tmp_path: Path, cache: Path) -> None:
    # two APIs with a predictor.proto each, on one server: one pool, clashing file renamed
    a = compile_proto(write(tmp_path / "a", "predictor.proto", service_proto("api_a", "A")), cache)
    b = compile_proto(write(tmp_path / "b", "predictor.proto", service_proto("api_b", "B")), cache)
    pool = descriptor_pool(a, b)
    names = [a.service_name, b.service_name, reflection.SERVICE_NAME]
    listed = reflect(pool, names, reflection_pb2.ServerReflectionRequest(list_services=""))
    assert [s.name for s in listed.list_services_response.service] == sorted(names)
    for compiled in (a, b):
        found = reflect(pool, names, reflection_pb2.ServerReflectionRequest(
            file_containing_symbol=compiled.service_name))
        protos = [descriptor_pb2.FileDescriptorProto.FromString(x)
                  for x in found.file_descriptor_response.file_descriptor_proto]
        assert [s.name for p in protos for s in p.service] == [compiled.service_name.split(".")[1]]
    assert pool.FindFileByName("predictor.proto").package == "api_a"
    assert pool.FindFileByName(f"{b.digest[:12]}/predictor.proto").package == "api_b"


def test_same_service_twice_cannot_share_a_pool(tmp_path: Path, cache: Path) -> None:
    a = compile_proto(write(tmp_path / "a", "predictor.proto", service_proto("same")), cache)
    b = compile_proto(write(tmp_path / "b", "other.proto", service_proto("same")), cache)
    with pytest.raises(ProtoError, match="other.proto"):
        descriptor_pool(a, b)


def test_load_pb2_round_trip(tmp_path: Path, cache: Path) -> None:
    # a stem of its own: generated code lands in protobuf's process-wide default pool
    compiled = compile_text(tmp_path, cache, service_proto("loadpb2_rt"), "loadpb2_roundtrip.proto")
    module = load_pb2(compiled)
    assert load_pb2(compiled) is module
    message = module.Sample(a="text")
    assert module.Sample.FromString(message.SerializeToString()) == message
    assert module.DESCRIPTOR.services_by_name["Svc"].full_name == compiled.service_name
    # the same bytes decode with the daemon-side classes
    assert message_classes(compiled)["loadpb2_rt.Sample"].FromString(message.SerializeToString()).a == "text"


def test_load_pb2_refuses_a_second_module_of_the_same_name(tmp_path: Path, cache: Path) -> None:
    first = compile_proto(write(tmp_path / "a", "loadpb2_twice.proto", service_proto("twice_a")), cache)
    second = compile_proto(write(tmp_path / "b", "loadpb2_twice.proto", service_proto("twice_b")), cache)
    load_pb2(first)
    with pytest.raises(ProtoError, match="already loaded"):
        load_pb2(second)


def test_concurrent_compiles_agree(tmp_path: Path, cache: Path) -> None:
    path = write(tmp_path / "project", "predictor.proto", FOUR_SHAPES)
    results: list[CompiledProto] = []
    threads = [threading.Thread(target=lambda: results.append(compile_proto(path, cache))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert [p.name for p in cache.iterdir()] == [results[0].digest]


@pytest.mark.parametrize(("package", "api", "warned"), [
    ("iris_classifier", "iris-classifier", False),
    ("iris", "iris", False),
    ("iris", "iris-classifier", True),
    ("", "iris", True),
])
def test_package_warning(tmp_path: Path, cache: Path, package: str, api: str, warned: bool) -> None:
    compiled = compile_text(tmp_path, cache, service_proto(package))
    warning = package_warning(compiled, api)
    assert (warning is not None) == warned
    if warned:
        assert f"package {api.replace('-', '_')};" in warning and "Cortex" in warning


def test_protoc_warnings_logged_once(tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = service_proto("p").replace("package p;", 'import "google/protobuf/empty.proto";\npackage p;')
    with caplog.at_level("WARNING", logger="inferd.protos"):
        compile_text(tmp_path, cache, text)
    assert [r.getMessage() for r in caplog.records] == [
        "protoc: predictor.proto:2:1: warning: Import google/protobuf/empty.proto is unused."]
