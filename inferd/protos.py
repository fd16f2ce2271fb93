"""Compiling and describing the ``.proto`` of a gRPC RealtimeAPI (``handler.protobuf_path``).

Used by two processes:

* the daemon compiles once (:func:`compile_proto`) and needs only descriptors: method
  paths and shapes (:class:`CompiledProto`), message classes from a private descriptor pool
  (:func:`message_classes`) and the pool for reflection (:func:`descriptor_pool`). It never
  imports generated code, so two APIs may both ship a ``predictor.proto``.
* the worker (one API per process) calls :func:`compile_proto` again, which is a cache hit,
  then :func:`load_pb2` to hand ``<stem>_pb2`` to the Handler as ``proto_module_pb2``.

Cache layout: ``cache_root/<digest>/`` holds ``<stem>_pb2.py``, ``<stem>_pb2_grpc.py`` (and
the same for any of the user's own imported protos), ``descriptor_set.pb`` (the
``FileDescriptorSet`` of the proto and its transitive imports, dependencies first) and the
``complete`` marker, written last.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import google.protobuf
from google.protobuf import descriptor_pb2, message_factory
from google.protobuf.descriptor_pool import DescriptorPool

log = logging.getLogger(__name__)

DESCRIPTOR_SET = "descriptor_set.pb"
MARKER = "complete"
# protobuf's own well-known types: identical in every compile of one grpcio-tools version and
# shipped as google.protobuf.*_pb2, so they are never generated nor renamed
_BUNDLED_PREFIX = "google/protobuf/"
_IMPORT = re.compile(rb'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)
# protoc is one C++ call per process that writes to fd 2: one compile at a time
_PROTOC_LOCK = threading.Lock()

_SHAPES = {(False, False): "unary_unary", (False, True): "unary_stream",
           (True, False): "stream_unary", (True, True): "stream_stream"}


class ProtoError(Exception):
    """The proto cannot be served; the message is for the operator and quotes protoc with
    file and line, e.g. ``predictor.proto:7:3: "Foo" is not defined.``"""


@dataclass(frozen=True)
class RpcMethod:
    name: str  # "Predict": also the Handler method Cortex calls
    full_path: str  # "/pkg.Service/Predict", the HTTP/2 :path of the call
    client_streaming: bool
    server_streaming: bool
    input_type: str  # full message name, no leading dot: "pkg.Sample"
    output_type: str

    @property
    def shape(self) -> str:
        """grpc's name for the call shape: ``unary_unary`` ... ``stream_stream``."""
        return _SHAPES[(self.client_streaming, self.server_streaming)]


@dataclass(frozen=True)
class CompiledProto:
    proto_path: Path  # absolute
    out_dir: Path  # cache_root/<digest>
    stem: str  # "predictor" -> predictor_pb2
    package: str  # "" when the proto declares none
    service_name: str  # "pkg.Service"
    methods: tuple[RpcMethod, ...]
    # sha256 over the proto's name and bytes, the user protos it imports and the
    # protoc/protobuf versions: anything that changes the generated code
    digest: str

    @property
    def file_name(self) -> str:
        """The proto's name inside protoc's descriptors (relative to its directory)."""
        return self.proto_path.name


def compile_proto(proto_path: Path, cache_root: Path, include_dirs: Sequence[Path] = ()) -> CompiledProto:
    """Compile ``proto_path`` into ``cache_root/<digest>/`` unless already there, and describe it.

    Imports resolve against the proto's directory, then ``include_dirs``, then the
    well-known types bundled with grpcio-tools. Compiling runs protoc in this process; it
    redirects fd 2 for a few milliseconds, so other threads' stderr output in that window
    is swallowed. Concurrent compiles (threads or processes) of the same proto are safe:
    each writes a private directory and renames it into place.
    """
    proto_path = Path(proto_path).resolve()
    search = [proto_path.parent, *(Path(d).resolve() for d in include_dirs)]
    digest = _digest(proto_path, search)
    out_dir = Path(cache_root).resolve() / digest
    if not (out_dir / MARKER).is_file():
        _build(proto_path, search, out_dir)
    return _describe(proto_path, out_dir, digest)


def load_pb2(compiled: CompiledProto) -> ModuleType:
    """Import and return ``<stem>_pb2`` from the cache (worker side: one API per process).

    ``out_dir`` goes first on ``sys.path`` because generated modules import each other by
    top-level name, and Handlers written for Cortex may ``import predictor_pb2`` themselves.
    Generated code registers its file in protobuf's default pool, which is why a process
    can hold only one proto of a given name.
    """
    name = f"{compiled.stem}_pb2"
    loaded = sys.modules.get(name)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve().parent == compiled.out_dir:
            return loaded
        raise ProtoError(f"cannot import {name} from {compiled.out_dir}: another {name} is already "
                         f"loaded in this process from {getattr(loaded, '__file__', '?')}")
    if str(compiled.out_dir) not in sys.path:
        sys.path.insert(0, str(compiled.out_dir))
    importlib.invalidate_caches()  # the directory may be newer than the import system's listing
    try:
        return importlib.import_module(name)
    except Exception as exc:  # e.g. TypeError: a different file of that name in the default pool
        raise ProtoError(f"cannot import {name} from {compiled.out_dir}: {exc}") from exc


def message_classes(compiled: CompiledProto) -> dict[str, type[Any]]:
    """Full message name -> message class for every request and response type of the service.

    The classes come from this proto's private pool (:func:`descriptor_pool`), not from
    generated code: they serialize the same bytes, but are not the classes of ``<stem>_pb2``
    (a worker that shares messages with the Handler should use that module's classes).
    """
    pool = descriptor_pool(compiled)
    names = {t for m in compiled.methods for t in (m.input_type, m.output_type)}
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name)) for name in sorted(names)}


def file_descriptor_protos(compiled: CompiledProto) -> list[bytes]:
    """Serialized ``FileDescriptorProto`` of the proto and all it imports, dependencies first."""
    return [f.SerializeToString() for f in _descriptor_set(compiled.out_dir).file]


@functools.cache
def descriptor_pool(*compiled: CompiledProto, base_files: tuple[bytes, ...] = ()) -> DescriptorPool:
    """A private pool holding the given protos and their imports (cached: same args, same pool).

    For reflection on one gRPC server serving several APIs, pass all their protos at once::

        pool = descriptor_pool(*protos)
        names = [p.service_name for p in protos] + [reflection.SERVICE_NAME]
        grpc_reflection.v1alpha.reflection.enable_server_reflection(names, server, pool=pool)

    Two APIs may each have a ``predictor.proto``: when a file name is taken by different
    content, that proto's own files are renamed ``<digest[:12]>/<name>`` inside the pool
    (reflection clients follow the renamed dependencies). Two protos defining the same full
    symbol (e.g. the same ``pkg.Service``) cannot share a pool: ProtoError.
    """
    pool = DescriptorPool()
    added: dict[str, bytes] = {}
    for data in base_files:  # files the caller serves besides the protos (e.g. health, reflection)
        pool.AddSerializedFile(data)
        added[descriptor_pb2.FileDescriptorProto.FromString(data).name] = data
    for one in compiled:
        for data in _pool_files(one, added):
            try:
                pool.AddSerializedFile(data)
            except Exception as exc:  # TypeError from the C pool on a duplicate symbol
                raise ProtoError(f"{one.file_name}: cannot be served beside the other protos: {exc}") from exc
    return pool


def package_warning(compiled: CompiledProto, api_name: str) -> str | None:
    """Text for the operator where Cortex would have refused the package, else None.

    Cortex required ``package <api name with - as _>;``; inferd serves any package.
    """
    expected = api_name.replace("-", "_")
    if compiled.package == expected:
        return None
    found = f'declares package "{compiled.package}"' if compiled.package else "declares no package"
    return (f'{compiled.file_name} {found}; Cortex required "package {expected};" for API "{api_name}". '
            f"inferd serves it anyway as {compiled.service_name}, but the project will not deploy on Cortex")


# -- compiling -------------------------------------------------------------------------------


def _digest(proto_path: Path, search: list[Path]) -> str:
    """Cache key: everything that changes protoc's output for this file."""
    from grpc_tools import (
        grpc_version,  # tiny module; grpc_tools.protoc is imported only to compile
    )

    key = hashlib.sha256(f"grpcio-tools {grpc_version.VERSION}\0protobuf {google.protobuf.__version__}\0".encode())
    try:
        sources = list(_user_sources(proto_path, search))
    except OSError as exc:
        raise ProtoError(f"cannot read {proto_path}: {exc.strerror or exc}") from exc
    for name, data in sources:
        key.update(f"{len(name)}:{name}{len(data)}:".encode() + data)
    return key.hexdigest()


def _user_sources(proto_path: Path, search: list[Path]) -> Iterator[tuple[str, bytes]]:
    """The proto and, transitively, the imported protos found in ``search`` (name, bytes).

    A regex rather than a parse: an import inside a block comment only adds a file to the
    key. Imports not found (well-known types, typos) are left for protoc to judge.
    """
    todo, seen = [(proto_path.name, proto_path)], {proto_path.name}
    while todo:
        name, path = todo.pop(0)
        data = path.read_bytes()
        yield name, data
        for found in _IMPORT.findall(data):
            imported = found.decode(errors="replace")
            where = next((d / imported for d in search if (d / imported).is_file()), None)
            if where is not None and imported not in seen:
                seen.add(imported)
                todo.append((imported, where))


def _build(proto_path: Path, search: list[Path], out_dir: Path) -> None:
    """Compile into a private directory, check it, then rename it to ``out_dir``."""
    out_dir.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name[:12]}-", dir=out_dir.parent))
    try:
        includes = [f"--proto_path={d}" for d in search] + [f"--proto_path={_bundled_dir()}"]
        _protoc([*includes, f"--descriptor_set_out={tmp / DESCRIPTOR_SET}", "--include_imports",
                 proto_path.name], search)
        # the user's own imported protos need Python modules too; the well-known ones ship with protobuf
        own = [f.name for f in _descriptor_set(tmp).file if not f.name.startswith(_BUNDLED_PREFIX)]
        _protoc([*includes, f"--python_out={tmp}", f"--grpc_python_out={tmp}", *own], search, warn=False)
        _describe(proto_path, tmp, out_dir.name)  # a proto we refuse is not cached
        (tmp / MARKER).write_text("")
        _restrict(tmp)
        _publish(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _protoc(args: list[str], search: list[Path], warn: bool = True) -> None:
    """Run protoc in-process; its messages (C++ stderr) are captured from fd 2.

    ``warn=False`` for the second pass over the same files, which repeats the first's warnings.
    """
    from grpc_tools import (
        protoc,  # imported late: it installs import hooks workers do not need
    )

    with _PROTOC_LOCK, tempfile.TemporaryFile() as err:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(err.fileno(), 2)
            code = protoc.main(["grpc_tools.protoc", *args])
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        text = err.read().decode(errors="replace").strip()
    # recent protoc names files by their disk path: quote them as the project names them
    for d in search:
        text = text.replace(f"{d}{os.sep}", "")
    if code != 0:
        raise ProtoError(text or f"protoc failed with exit code {code} ({' '.join(args)})")
    if text and warn:
        log.warning("protoc: %s", text)


@functools.lru_cache(maxsize=1)
def _bundled_dir() -> Path:
    """grpcio-tools' copy of google/protobuf/*.proto (what ``python -m grpc_tools.protoc`` adds)."""
    return Path(str(resources.files("grpc_tools") / "_proto"))


def _restrict(tmp: Path) -> None:
    for root, _dirs, files in os.walk(tmp):
        os.chmod(root, 0o750)
        for name in files:
            os.chmod(os.path.join(root, name), 0o640)


def _publish(tmp: Path, out_dir: Path) -> None:
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if (out_dir / MARKER).is_file():
            return  # a concurrent compile of the same proto won the race: same content
        # a directory without the marker was not made by us (we rename only complete ones)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.rename(tmp, out_dir)


# -- describing ------------------------------------------------------------------------------


def _descriptor_set(out_dir: Path) -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString((out_dir / DESCRIPTOR_SET).read_bytes())


def _describe(proto_path: Path, out_dir: Path, digest: str) -> CompiledProto:
    """Read the service from the descriptor set; Cortex serves exactly one service."""
    main = next(f for f in _descriptor_set(out_dir).file if f.name == proto_path.name)
    services = [f"{main.package}.{s.name}" if main.package else s.name for s in main.service]
    if len(services) != 1:
        listed = f" ({', '.join(services)})" if services else ""
        raise ProtoError(f"{proto_path.name}: defines {len(services)} services{listed}; "
                         "exactly one service is required")
    service = services[0]
    methods = tuple(RpcMethod(name=m.name, full_path=f"/{service}/{m.name}",
                              client_streaming=m.client_streaming, server_streaming=m.server_streaming,
                              input_type=m.input_type.lstrip("."), output_type=m.output_type.lstrip("."))
                    for m in main.service[0].method)
    return CompiledProto(proto_path=proto_path, out_dir=out_dir, stem=proto_path.stem, package=main.package,
                         service_name=service, methods=methods, digest=digest)


def _pool_files(compiled: CompiledProto, added: dict[str, bytes]) -> Iterator[bytes]:
    """Serialized files of ``compiled`` not yet in the pool, renamed if their name is taken."""
    files = list(_descriptor_set(compiled.out_dir).file)
    taken = any(added.get(f.name, f.SerializeToString()) != f.SerializeToString() for f in files)
    prefix = f"{compiled.digest[:12]}/" if taken else ""
    for f in files:
        if prefix and not f.name.startswith(_BUNDLED_PREFIX):
            f.name = prefix + f.name
        renamed = [d if d.startswith(_BUNDLED_PREFIX) or not prefix else prefix + d for d in f.dependency]
        del f.dependency[:]
        f.dependency.extend(renamed)
        if f.name not in added:  # else the same file (e.g. google/protobuf/empty.proto) is in already
            added[f.name] = f.SerializeToString()
            yield added[f.name]
