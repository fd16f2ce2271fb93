"""Mutated cortex.yaml files: the loader either accepts one or raises SpecError, every message
located as `cortex.yaml:<line>:`; never another exception (issue 10, item 5).

The shipped example projects are the seeds; the CLI's view of the same failures (exit 1, no
traceback) is checked on fixed cases in test_validate_cli.py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferd.spec import SpecError, load_project

ROOT = Path(__file__).parent.parent.parent
SEEDS = sorted({*ROOT.glob("examples/*/cortex.yaml"), *ROOT.glob("tests/projects/*/cortex.yaml")})
LOCATED = re.compile(r"cortex\.yaml:(\d+): ")
# what breaks YAML readers: control and invalid bytes, flow and block syntax, anchors, tags, BOMs
FRAGMENTS = [
    b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x07", b"\x1b", b"\t", b"\r", b"\n", b"\xc2\x85",
    b"\xe2\x80\xa8", b"\xef\xbb\xbf", b" ", b"    ", b"- ", b": ", b"? ", b"[", b"]", b"{", b"}", b",",
    b"&a ", b"*a", b"*nowhere", b"<<: ", b"<<: *a\n", b"!!", b"!!int ", b"!!binary ", b"!!python/object:os.system ",
    b"!custom ", b"'", b'"', b'"\\0"', b"#", b"|", b">", b"%YAML 1.1\n", b"---\n", b"...\n", b"@", b"`",
    b"2021-13-45", b"1e999", b".nan", b"0x", b"9" * 5000, b"~", b"null", b"yes",
]

# values a field may be given in place of the one it has, to reach the checks behind the parser
VALUES = [
    b"-1", b"0", b"1", b"1e999", b".nan", b".inf", b"true", b"null", b"~", b"[]", b"{}", b"[1, 2]", b"{a: 1}",
    b'""', b'" "', b"2021-13-45", b"2021-01-01", b"!!binary AAAA", b"0o17", b"1_000", b"1.5", b"0x1f", b"10s",
    b"1Gi", b"-5m", b"../outside.py", b"/etc/passwd", b"handler.pickle", b"a.proto", b"RealtimeAPI", b"TaskAPI",
    b"TrafficSplitter", b"python", b"tensorflow", b"x" * 300, b"CORTEX_X", b"!!set {a}", b"&x 1", b"*x",
]
WORD = re.compile(rb"[A-Za-z0-9_./-]+")


def line_breaks(data: bytes) -> int:
    """Lines as YAML may count them: LF, CR, CRLF, NEL, LS, PS."""
    text = data.decode("utf-8", "replace").replace("\r\n", "\n")
    return sum(text.count(c) for c in "\n\r\x85\u2028\u2029")


def alias_bomb(width: int, depth: int, merge: bool) -> bytes:
    if merge:
        lines = ["- &b0 {k: v}"] + [f"- &b{i} {{<<: [{', '.join([f'*b{i - 1}'] * width)}]}}" for i in range(1, depth)]
    else:
        lines = ["- &b0 [lol]"] + [f"- &b{i} [{', '.join([f'*b{i - 1}'] * width)}]" for i in range(1, depth)]
    return ("\n".join(lines) + "\n").encode()


def deep_block(levels: int) -> bytes:
    return "".join(" " * i + f"k{i}:\n" for i in range(levels)).encode()


position = st.integers(min_value=0, max_value=1_000_000)
operation = st.one_of(
    st.tuples(st.just("insert"), position, st.one_of(st.sampled_from(FRAGMENTS), st.binary(min_size=1, max_size=6))),
    st.tuples(st.just("delete"), position, st.integers(min_value=1, max_value=40)),
    st.tuples(st.just("replace"), position, st.binary(min_size=1, max_size=1)),
    st.tuples(st.just("nest"), position, st.sampled_from([b"[", b"{a: ", b"- ", b"[{"]), st.integers(1, 5_000)),
    st.tuples(st.just("block"), position, st.integers(1, 3_000)),
    st.tuples(st.just("indent"), position, st.integers(min_value=-6, max_value=6)),
    st.tuples(st.just("word"), position, st.sampled_from(VALUES + FRAGMENTS)),
    st.tuples(st.just("bomb"), st.integers(2, 12), st.integers(2, 9), st.booleans()),
)


def mutate(data: bytes, op: tuple[Any, ...]) -> bytes:
    name, *args = op
    at = args[0] % (len(data) + 1) if name != "bomb" else 0
    if name == "insert":
        return data[:at] + args[1] + data[at:]
    if name == "delete":
        return data[:at] + data[at + args[1]:]
    if name == "replace":
        return data[:at] + args[1] + data[at + 1:]
    if name == "nest":
        return data[:at] + args[1] * args[2] + data[at:]
    if name == "block":
        return data[:at] + deep_block(args[1]) + data[at:]
    if name == "word":
        words = list(WORD.finditer(data))
        if not words:
            return data
        word = words[args[0] % len(words)]
        return data[:word.start()] + args[1] + data[word.end():]
    if name == "indent":
        lines = data.split(b"\n")
        i = args[0] % len(lines)
        lines[i] = b" " * args[1] + lines[i] if args[1] > 0 else lines[i][-args[1]:]
        return b"\n".join(lines)
    return data + alias_bomb(*args)


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, bytes]]:
    """A private copy of each seed project, so its handler and proto files exist when loaded."""
    copies = []
    for i, seed in enumerate(SEEDS):
        copy = tmp_path_factory.mktemp(f"seed{i}")
        shutil.copytree(seed.parent, copy, dirs_exist_ok=True)
        copies.append((copy, seed.read_bytes()))
    return copies


def test_there_are_seeds():
    assert len(SEEDS) >= 5


@settings(max_examples=150, deadline=None, database=None)
@given(seed=st.integers(min_value=0), ops=st.lists(operation, min_size=1, max_size=4))
def test_mutated_files_load_or_fail_with_located_errors(projects, seed, ops):
    root, data = projects[seed % len(projects)]
    for op in ops:
        data = mutate(data, op)
    (root / "cortex.yaml").write_bytes(data)
    try:
        load_project(root)
    except SpecError as exc:
        assert exc.issues
        for issue in exc.issues:
            located = LOCATED.match(str(issue))
            assert located, f"not located: {issue}"
            assert 1 <= int(located[1]) <= line_breaks(data) + 1, f"line out of the file: {issue}"
