"""Typed reads of one YAML mapping against a fixed set of field names.

Every read that fails records an issue (line + path) and returns the default, so checking carries
on and one pass reports every problem in the file.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from .errors import Collector
from .model import EMPTY, FrozenMap, freeze
from .units import parse_duration, parse_quantity
from .yamlnodes import Node

_Default = TypeVar("_Default", bound=float | None)


def describe(value: Any) -> str:
    """A value as the user would recognise it in their YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return str(value)


def bounds(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> str:
    """' between 1 and 100', ' >= 0', ' > 0 and < 1', or ''."""
    if lo is not None and hi is not None and not lo_open and not hi_open:
        return f" between {lo} and {hi}"
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    return (" " + " and ".join(parts)) if parts else ""


def within(value: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    if lo is not None and (value <= lo if lo_open else value < lo):
        return False
    return not (hi is not None and (value >= hi if hi_open else value > hi))


def is_number(value: Any) -> bool:
    # YAML `true` is a bool, and bool is an int in Python; Cortex never takes one for a number.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Block:
    """One mapping of the schema: unknown keys are reported when it is opened."""

    def __init__(self, out: Collector, node: Node | None, path: str, allowed: Iterable[str],
                 line: int, hints: Mapping[str, str] | None = None):
        self.out = out
        self.path = path
        self.line = line  # line of this block's key (or list entry); used for missing fields
        self.items: dict[Any, Node] = {}
        self.key_lines: dict[Any, int] = {}
        self.allowed = tuple(allowed)
        if node is None or node.value is None:
            return
        if not node.is_map:
            out.add(node.line, path, f"must be a mapping, got {describe(node.value)}")
            return
        self.items = node.value
        self.key_lines = node.key_lines or {}
        self._check_keys(hints or {})

    def _check_keys(self, hints: Mapping[str, str]) -> None:
        for key in list(self.items):
            if key in self.allowed:
                continue
            if key in hints:
                message = hints[key]
            else:
                message = f"unknown field {describe(key)} (allowed: {', '.join(self.allowed)})"
                close = difflib.get_close_matches(str(key), self.allowed, n=1)
                if close:
                    message += f"; did you mean {describe(close[0])}?"
            self.out.add(self.key_lines.get(key), self.child(key), message)
            del self.items[key]  # so nothing else reads it; the Node tree is ours to edit

    # -- locating -----------------------------------------------------------------------------

    def child(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else str(key)

    def has(self, key: str) -> bool:
        return key in self.items

    def given(self, key: str) -> bool:
        return key in self.items and self.items[key].value is not None

    def node(self, key: str) -> Node | None:
        return self.items.get(key)

    def line_of(self, key: str) -> int:
        """The value's line for scalars; the key's line for blocks, where the value starts below."""
        node = self.items.get(key)
        if node is None:
            return self.line
        if node.is_map or node.is_seq:
            return self.key_lines.get(key, node.line)
        return node.line

    def key_line(self, key: str) -> int:
        return self.key_lines.get(key, self.line)

    def issue(self, key: str, message: str) -> None:
        self.out.add(self.line_of(key), self.child(key), message)

    def line_at(self, *keys: str) -> int:
        """Line of a nested value (e.g. "networking", "endpoint"), or of its nearest present parent."""
        line, items = self.line, self.items
        for key in keys:
            node = items.get(key)
            if node is None:
                break
            line, items = node.line, (node.value if node.is_map else {})
        return line

    def issue_at(self, keys: tuple[str, ...], message: str) -> None:
        self.out.add(self.line_at(*keys), ".".join((self.path, *keys)), message)

    def missing(self, key: str) -> None:
        self.out.add(self.line, self.child(key), "is required")

    def ignore(self, key: str, reason: str) -> None:
        if key in self.items:
            self.out.ignore(self.child(key), reason)

    def sub(self, key: str, allowed: Iterable[str], hints: Mapping[str, str] | None = None) -> Block:
        return Block(self.out, self.items.get(key), self.child(key), allowed, self.key_line(key), hints)

    def raw(self, key: str) -> Any:
        """The value as written, or None when the key is absent or null (nothing is reported)."""
        return self._value(key, False)

    def _value(self, key: str, required: bool) -> Any:
        node = self.items.get(key)
        if node is None or node.value is None:
            if required:
                self.missing(key)
            return None
        return node.value

    # -- typed reads --------------------------------------------------------------------------

    def integer(self, key: str, default: int, lo: int | None = None, hi: int | None = None, *,
                lo_open: bool = False, required: bool = False) -> int:
        value = self._value(key, required)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or not within(value, lo, hi, lo_open, False):
            self.issue(key, f"must be an integer{bounds(lo, hi, lo_open=lo_open)}, got {describe(value)}")
            return default
        return value

    def number(self, key: str, default: _Default, lo: float | None = None,
               hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False) -> float | _Default:
        value = self._value(key, False)
        if value is None:
            return default
        if not is_number(value) or not within(value, lo, hi, lo_open, hi_open):
            text = bounds(lo, hi, lo_open=lo_open, hi_open=hi_open)
            self.issue(key, f"must be a number{text}, got {describe(value)}")
            return default
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._value(key, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.issue(key, f"must be true or false, got {describe(value)}")
            return default
        return value

    def string(self, key: str, default: str | None = None, *, required: bool = False,
               choices: Iterable[str] | None = None) -> str | None:
        value = self._value(key, required)
        if value is None:
            return default
        if not isinstance(value, str) or (required and not value.strip()):
            what = "a non-empty string" if required else "a string"
            self.issue(key, f"must be {what}, got {describe(value)}")
            return default
        if choices is not None and value not in choices:
            options = ", ".join(describe(c) for c in choices)
            self.issue(key, f"must be one of {options}, got {describe(value)}")
            return default
        return value

    def duration(self, key: str, default: float, *, minimum: float | None = None,
                 positive: bool = False, multiple_of: float | None = None,
                 required: bool = False) -> float:
        value = self._value(key, required)
        if value is None:
            return default
        if not isinstance(value, str):
            hint = " (add a unit: ms, s, m or h)" if is_number(value) else ""
            self.issue(key, f'must be a duration like "10s", "1m" or "1h30m", got {describe(value)}{hint}')
            return default
        try:
            seconds = parse_duration(value)
        except ValueError:
            self.issue(key, f'must be a duration like "10s", "1m" or "1h30m", got {describe(value)}')
            return default
        return self._check_duration(key, value, seconds, default, minimum, positive, multiple_of)

    def _check_duration(self, key: str, text: str, seconds: float, default: float,
                        minimum: float | None, positive: bool, multiple_of: float | None) -> float:
        if positive and seconds <= 0:
            self.issue(key, f"must be a duration > 0, got {describe(text)}")
            return default
        if minimum is not None and seconds < minimum:
            self.issue(key, f"must be a duration >= {minimum:g}s, got {describe(text)}")
            return default
        if multiple_of is not None and not math.isclose(seconds / multiple_of, round(seconds / multiple_of)):
            self.issue(key, f"must be a multiple of {multiple_of:g}s, got {describe(text)}")
            return default
        return seconds

    def quantity(self, key: str, default: str | None, minimum: str = "0",
                 example: str = '"512Mi" or "1G"') -> str | None:
        """A Kubernetes quantity kept as written (numbers become their string); null -> None."""
        node = self.items.get(key)
        if node is None:
            return default
        value = node.value
        if value is None:
            return None
        text = str(value) if is_number(value) else value
        if not isinstance(text, str):
            self.issue(key, f"must be a quantity like {example}, got {describe(value)}")
            return default
        try:
            amount = parse_quantity(text)
        except ValueError:
            self.issue(key, f"must be a quantity like {example}, got {describe(value)}")
            return default
        if amount < parse_quantity(minimum):
            self.issue(key, f"must be at least {minimum}, got {describe(value)}")
            return default
        return text

    def string_list(self, key: str, *, required: bool = False, non_empty: bool = False,
                    pattern: Any = None) -> tuple[str, ...] | None:
        value = self._value(key, required)
        if value is None:
            return None
        node = self.items[key]
        if not node.is_seq or (non_empty and not node.value):
            qualifier = "non-empty " if non_empty else ""
            self.issue(key, f"must be a {qualifier}list of strings, got {describe(value)}")
            return None
        result = []
        for i, item in enumerate(node.value):
            if not isinstance(item.value, str) or (pattern is not None and not pattern.fullmatch(item.value)):
                rule = f" matching {pattern.pattern}" if pattern is not None else ""
                self.out.add(item.line, f"{self.child(key)}[{i}]",
                             f"must be a string{rule}, got {describe(item.value)}")
                continue
            result.append(item.value)
        return tuple(result)

    def free_map(self, key: str) -> FrozenMap | None:
        """An arbitrary mapping with string keys (handler config and the like); null -> None."""
        value = self._value(key, False)
        if value is None:
            return None
        node = self.items[key]
        if not node.is_map:
            self.issue(key, f"must be a mapping, got {describe(value)}")
            return None
        key_lines = node.key_lines or {}  # every mapping Node has them
        for k in node.value:
            if not isinstance(k, str):
                self.out.add(key_lines[k], f"{self.child(key)}.{k}",
                             f"keys must be strings, got {describe(k)}")
        frozen: FrozenMap = freeze(node.plain())
        return frozen

    def env(self, key: str, reserved: tuple[str, ...]) -> FrozenMap:
        value = self._value(key, False)
        if value is None:
            return EMPTY
        node = self.items[key]
        if not node.is_map:
            self.issue(key, f"must be a mapping of variable names to strings, got {describe(value)}")
            return EMPTY
        result = {}
        for name, item in node.value.items():
            if self._env_entry_ok(key, node, name, item, reserved):
                result[name] = item.value
        return FrozenMap(result)

    def _env_entry_ok(self, key: str, node: Node, name: Any, item: Node, reserved: tuple[str, ...]) -> bool:
        path = f"{self.child(key)}.{name}"
        key_lines = node.key_lines or {}  # every mapping Node has them
        if not isinstance(name, str) or not name:
            self.out.add(key_lines[name], path, f"variable names must be strings, got {describe(name)}")
            return False
        if name.startswith(reserved):
            prefixes = " and ".join(reserved)
            self.out.add(key_lines[name], path, f"names starting with {prefixes} are reserved")
            return False
        if not isinstance(item.value, str):
            quotable = item.value is not None and not item.is_map and not item.is_seq
            hint = f' (quote it: "{describe(item.value)}")' if quotable else ""
            self.out.add(item.line, path, f"must be a string, got {describe(item.value)}{hint}")
            return False
        return True
