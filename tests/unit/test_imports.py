"""Imports go one way: no inferd module imports one that (transitively) imports it back,
counting imports under TYPE_CHECKING too; and no kind name is compared outside inferd.kinds."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "inferd"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every inferd module named by an import statement anywhere in the file."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: imports_of(path, known) - {name} for name, path in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_no_module_imports_one_that_imports_it_back() -> None:
    edges = graph()
    # a package's __init__ re-exporting its own modules is how packages work, not a cycle
    for name in edges:
        edges[name] = {dep for dep in edges[name] if not (name.startswith(dep + ".") and dep in edges)}
    assert cycles(edges) == []


def test_the_worker_process_side_never_imports_the_daemon_side() -> None:
    edges = graph()
    child = [name for name in edges if name.startswith("inferd.worker.runners") or name == "inferd.worker.child"]
    daemon_side = ("inferd.daemon", "inferd.deployment", "inferd.http", "inferd.grpc.bridge", "inferd.grpc.server",
                   "inferd.kinds", "inferd.jobs", "inferd.store", "inferd.worker.pool")
    leaks = {name: sorted(d for d in edges[name] if d.startswith(daemon_side)) for name in child}
    assert {k: v for k, v in leaks.items() if v} == {}


def test_kind_names_are_compared_only_in_the_kinds_package_and_the_spec() -> None:
    pattern = re.compile(r"""[=!]=\s*["'](RealtimeAPI|AsyncAPI|BatchAPI|TaskAPI|TrafficSplitter)["']|"""
                         r"""["'](RealtimeAPI|AsyncAPI|BatchAPI|TaskAPI|TrafficSplitter)["']\s*[=!]=|"""
                         r"""\bin\s*\(["'](RealtimeAPI|AsyncAPI)""")
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if pattern.search(p.read_text()) and p.relative_to(PACKAGE).parts[0] not in ("kinds", "spec")]
    assert offenders == []
