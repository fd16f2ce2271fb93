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
_MERGE_TAG = "tag:yaml.org,2002:merge"
# Aliases can make a small file expand exponentially ("billion laughs"); no real config is this big.
MAX_NODES = 200_000
# PyYAML composes (and we convert) recursively: a few thousand levels of `[` or of indentation
# would exhaust Python's stack. Real configs nest a handful of levels.
MAX_DEPTH = 100


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


class _Refused(Exception):
    """A document past one of the limits above: reading stops at `line`."""

    def __init__(self, line: int, message: str):
        self.line = line
        self.message = message


def _too_deep(line: int) -> _Refused:
    return _Refused(line, f"nested too deeply: more than {MAX_DEPTH} levels of lists and mappings")


class _Loader(yaml.SafeLoader):
    """SafeLoader that stops composing past MAX_DEPTH levels, long before the stack runs out."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                # through the class: the stubs leave peek_event unannotated (see pyproject's mypy note)
                raise _too_deep(yaml.SafeLoader.peek_event(self).start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def compose(text: str, out: Collector) -> Node | None:
    """Parse one YAML document; problems go to `out`. None for an empty or unreadable document."""
    loader = None
    try:
        loader = _Loader(text)  # checks every character first: may raise ReaderError
        root = loader.get_single_node()
        if root is None:
            return None
        return _Converter(loader, out).convert(root, "apis")
    except yaml.reader.ReaderError as exc:
        out.add(text.count("\n", 0, exc.position) + 1, "", _reader_problem(text, exc))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if problem.startswith("but ") and exc.context:  # "expected X" + "but found Y"
            problem = f"{exc.context}, {problem}"
        out.add(mark.line + 1 if mark else 1, "", f"invalid YAML: {problem}")
    except yaml.YAMLError as exc:
        out.add(1, "", f"invalid YAML: {exc}")
    except _Refused as exc:
        out.add(exc.line, "", exc.message)
    except RecursionError:  # the limits above should make this unreachable; a traceback is worse
        out.add(1, "", "nested too deeply to read")
    finally:
        if loader is not None:
            loader.dispose()
    return None


def _reader_problem(text: str, exc: yaml.reader.ReaderError) -> str:
    column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
    name = "a NUL byte (U+0000)" if exc.character == 0 else f"character U+{exc.character:04X}"
    return f"invalid YAML: {name} in column {column} is not allowed in a YAML file"


class _Converter:
    def __init__(self, loader: yaml.SafeLoader, out: Collector):
        self.loader = loader
        self.out = out
        self.count = 0
        self.active: list[int] = []  # ids of the nodes being converted: the depth, and recursive aliases

    def convert(self, node: yaml.Node, path: str) -> Node:
        line = node.start_mark.line + 1
        self.count += 1
        if self.count > MAX_NODES:
            raise _Refused(line, f"document too large: more than {MAX_NODES} values after expanding aliases")
        if len(self.active) >= MAX_DEPTH:  # aliases can nest deeper than the text does
            raise _too_deep(line)
        if id(node) in self.active:
            self.out.add(line, path, "recursive YAML alias is not supported")
            return Node(None, line)
        self.active.append(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path, line)
            if isinstance(node, yaml.SequenceNode):
                return self._sequence(node, path, line)
            return Node(self._scalar(node, path, line), line)
        finally:
            self.active.pop()

    def _mapping(self, node: yaml.MappingNode, path: str, line: int) -> Node:
        if node.tag != _MAP_TAG:
            self.out.add(line, path, f"unsupported YAML tag {node.tag!r}")
        values: dict[Any, Node] = {}
        key_lines: dict[Any, int] = {}
        merged: list[Node] = []
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                merged = self._merge_sources(value_node, path, key_line) + merged  # a later `<<` wins
                continue
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
        # `<<` as SafeLoader reads it (merged keys first; keys written here win, then earlier merged
        # mappings over later ones), but merging converted Nodes: PyYAML's flatten_mapping copies
        # every merged entry, so a chain of merges could grow past MAX_NODES unseen.
        inherited: dict[Any, Node] = {}
        inherited_lines: dict[Any, int] = {}
        for source in merged:
            for key, child in source.value.items():
                if key not in inherited:
                    inherited[key] = child
                    inherited_lines[key] = (source.key_lines or {}).get(key, child.line)
        return Node({**inherited, **values}, line, {**inherited_lines, **key_lines})

    def _merge_sources(self, node: yaml.Node, path: str, line: int) -> list[Node]:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        sources = []
        for item in items:
            if not isinstance(item, yaml.MappingNode):
                self.out.add(line, path, "a merge key (<<) takes a mapping or a list of mappings")
                continue
            sources.append(self.convert(item, path))
        return sources

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
        # SafeLoader's constructors trust their resolvers: on a date like 2021-13-45, an integer past
        # Python's 4300-digit limit or explicitly tagged text (`!!int abc`, `!!int ""`) they fail
        # with whatever Python raises
        except Exception as exc:
            self.loader.recursive_objects.pop(node, None)  # left set by the failed call; an alias reads it again
            kind = node.tag.rsplit(":", 1)[-1]
            reason = f" ({str(exc).split(';')[0]})" if isinstance(exc, ValueError) else ""
            self.out.add(line, path, f"{_shorten(node.value)} is not a valid {kind}{reason}")
            return node.value  # the text as written, so later checks do not also call it missing


def _shorten(value: Any, limit: int = 40) -> str:
    text = str(value)
    return repr(text if len(text) <= limit else text[:limit] + "...")
