"""YAML to a tree of `Node`s that remember their line numbers.

PyYAML's constructed objects forget where they came from, so the document is composed (SafeLoader
only) and converted by hand; scalars still go through SafeLoader's own constructors so that
`yes`, `1e3`, `0x1f`, dates and the rest mean exactly what they mean in PyYAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from .errors import Collector

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
# Aliases can make a small file expand exponentially ("billion laughs"); no real config is this big.
MAX_NODES = 200_000


@dataclass(eq=False)
class Node:
    """A YAML value with its 1-based line: a dict of Nodes, a list of Nodes, or a scalar."""

    value: Any
    line: int
    key_lines: dict[Any, int] | None = None  # mappings only: line of each key

    @property
    def is_map(self) -> bool:
        return isinstance(self.value, dict)

    @property
    def is_seq(self) -> bool:
        return isinstance(self.value, list)

    def plain(self) -> Any:
        """The value as ordinary Python data (dicts, lists, scalars)."""
        if self.is_map:
            return {k: v.plain() for k, v in self.value.items()}
        if self.is_seq:
            return [v.plain() for v in self.value]
        return self.value


class _TooBig(Exception):
    pass


def compose(text: str, out: Collector) -> Node | None:
    """Parse one YAML document; problems go to `out`. None for an empty or unreadable document."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        return _Converter(loader, out).convert(root, "apis")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if problem.startswith("but ") and exc.context:  # "expected X" + "but found Y"
            problem = f"{exc.context}, {problem}"
        out.add(mark.line + 1 if mark else None, "", f"invalid YAML: {problem}")
    except yaml.YAMLError as exc:
        out.add(None, "", f"invalid YAML: {exc}")
    except _TooBig:
        out.add(None, "", f"document too large: more than {MAX_NODES} values after expanding aliases")
    finally:
        loader.dispose()
    return None


class _Converter:
    def __init__(self, loader: yaml.SafeLoader, out: Collector):
        self.loader = loader
        self.out = out
        self.count = 0
        self.active: set[int] = set()  # nodes being converted, to catch recursive aliases

    def convert(self, node: yaml.Node, path: str) -> Node:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig()
        line = node.start_mark.line + 1
        if id(node) in self.active:
            self.out.add(line, path, "recursive YAML alias is not supported")
            return Node(None, line)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path, line)
            if isinstance(node, yaml.SequenceNode):
                return self._sequence(node, path, line)
            return Node(self._scalar(node, path, line), line)
        finally:
            self.active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: str, line: int) -> Node:
        if node.tag != _MAP_TAG:
            self.out.add(line, path, f"unsupported YAML tag {node.tag!r}")
        self.loader.flatten_mapping(node)  # resolves `<<` merge keys, as SafeLoader would
        values: dict[Any, Node] = {}
        key_lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                self.out.add(key_line, path, "mapping keys must be plain values, not lists or mappings")
                continue
            key = self._scalar(key_node, path, key_line)
            child_path = f"{path}.{key}" if path else str(key)
            if key in key_lines:
                self.out.add(key_line, child_path, f"duplicate key (first on line {key_lines[key]})")
                continue
            key_lines[key] = key_line
            values[key] = self.convert(value_node, child_path)
        return Node(values, line, key_lines)

    def _sequence(self, node: yaml.SequenceNode, path: str, line: int) -> Node:
        if node.tag != _SEQ_TAG:
            self.out.add(line, path, f"unsupported YAML tag {node.tag!r}")
        items = [self.convert(child, f"{path}[{i}]") for i, child in enumerate(node.value)]
        return Node(items, line)

    def _scalar(self, node: yaml.Node, path: str, line: int) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError:
            self.out.add(line, path, f"unsupported YAML tag {node.tag!r}")
            return None
