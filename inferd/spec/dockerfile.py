"""Which Python file a Dockerfile's CMD/ENTRYPOINT runs, and where that file sits in the project.

Only what RunPod worker images do is understood: exec and shell forms, `sh -c "..."`, python's
own flags, and the WORKDIR/COPY/ADD lines that put the file where the command finds it.
Nothing is built or run; a Dockerfile this cannot read simply names no file.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import re
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .runpod import SDK_VALUE_FLAGS, is_sdk_flag

PYTHON = re.compile(r"python(\d+(\.\d+)?)?")
SHELLS = ("sh", "bash", "dash", "ash")
# Where the command after the script ends, in a shell command line.
SHELL_OPERATORS = ("&&", "||", ";", "|", "&")
_REDIRECT = re.compile(r"\d*[<>].*")
_PYTHON_VALUE_OPTIONS = ("-W", "-X", "--check-hash-based-pycs")


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper-case: CMD, COPY...
    text: str  # the rest, continuation lines joined
    line: int  # where the instruction starts


@dataclass(frozen=True)
class Command:
    """The Python file the image runs, as the Dockerfile names it."""

    script: str  # as written: "/handler.py", "src/handler.py"
    args: tuple[str, ...]  # after the script; the RunPod SDK's own flags left out
    line: int  # the CMD or ENTRYPOINT that names it
    keyword: str


def read_instructions(text: str) -> list[Instruction]:
    result = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops these, inside a continuation too
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1].strip())
            continue
        pending.append(line)
        result.append(_instruction(" ".join(pending), start))
        pending = []
    if pending:
        result.append(_instruction(" ".join(pending), start))
    return result


def _instruction(text: str, line: int) -> Instruction:
    keyword, _, rest = text.partition(" ")
    return Instruction(keyword.upper(), rest.strip(), line)


def python_command(instructions: list[Instruction]) -> Command | None:
    """The Python file the image's command runs, or None when it runs something else."""
    entry = _last(instructions, "ENTRYPOINT")
    cmd = _last(instructions, "CMD")
    entry_words = _words(entry.text) if entry else []
    # A shell-form ENTRYPOINT ignores CMD; an exec-form one takes it as arguments.
    with_cmd = entry is None or _exec_form(entry.text) is not None
    cmd_words = _words(cmd.text) if cmd and with_cmd else []
    found = find_script(entry_words + cmd_words)
    if found is None:
        return None
    index, script, args = found
    source = entry if index < len(entry_words) else cmd
    assert source is not None
    return Command(script, args, source.line, source.keyword)


def _last(instructions: list[Instruction], keyword: str) -> Instruction | None:
    matching = [i for i in instructions if i.keyword == keyword]
    return matching[-1] if matching else None


def _exec_form(text: str) -> list[str] | None:
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _words(text: str) -> list[str]:
    words = _exec_form(text)
    return _unwrap_shell(words) if words is not None else _shell_words(text)


def _shell_words(text: str) -> list[str]:
    try:
        return _unwrap_shell(shlex.split(text, comments=True))
    except ValueError:  # unbalanced quotes
        return []


def _unwrap_shell(words: list[str]) -> list[str]:
    # ["sh", "-c", "python -u handler.py"]: the command is the string after -c.
    for i, word in enumerate(words[:-2]):
        if PurePosixPath(word).name in SHELLS and words[i + 1] == "-c":
            return words[:i] + _shell_words(words[i + 2])
    return words


def find_script(words: list[str]) -> tuple[int, str, tuple[str, ...]] | None:
    """(index, script, args) of the first `python ... file.py ...` in a command line."""
    for i, word in enumerate(words):
        if not PYTHON.fullmatch(PurePosixPath(word).name):
            continue
        at = _script_index(words, i + 1)
        if at is not None:
            script, args = _script_and_args(words[at:])
            if script.endswith(".py"):
                return at, script, args
    return None


def _script_index(words: list[str], start: int) -> int | None:
    """Where python's own options end; None for `-c code` and `-m module`, which run no file."""
    i = start
    while i < len(words):
        word = words[i]
        if word in ("-c", "-m") or word in SHELL_OPERATORS:
            return None
        if word in _PYTHON_VALUE_OPTIONS:
            i += 2
        elif word.startswith("-"):
            i += 1
        else:
            return i
    return None


def _script_and_args(words: list[str]) -> tuple[str, tuple[str, ...]]:
    script, ends = _strip_semicolon(words[0])
    args: list[str] = []
    skip_value = False
    for word in [] if ends else words[1:]:
        if word in SHELL_OPERATORS or _REDIRECT.fullmatch(word):
            break
        word, ends = _strip_semicolon(word)
        if skip_value:
            skip_value = False
        elif is_sdk_flag(word):
            skip_value = word in SDK_VALUE_FLAGS  # "--rp_log_level DEBUG"; "--rp_log_level=DEBUG" is one word
        else:
            args.append(word)
        if ends:
            break
    return script, tuple(args)


def _strip_semicolon(word: str) -> tuple[str, bool]:
    return (word[:-1], True) if word.endswith(";") else (word, False)


def project_candidates(script: str, instructions: list[Instruction], root: Path) -> list[str]:
    """Project-relative paths the image's `script` may have been copied from, likeliest first."""
    image_path, copies = _image_layout(script, instructions)
    found = []
    for sources, dest in reversed(copies):  # a later COPY overwrites an earlier one
        for source in sources:
            candidate = _copied_from(image_path, source, dest, root)
            if candidate is not None:
                found.append(candidate)
    # Else the file sits in the project as the image path ends: /app/src/handler.py may be
    # app/src/handler.py, src/handler.py or handler.py.
    parts = image_path.parts[1:]
    found += ["/".join(parts[i:]) for i in range(len(parts))]
    return list(dict.fromkeys(found))


def _image_layout(script: str, instructions: list[Instruction]) -> tuple[PurePosixPath, list[tuple[list[str], PurePosixPath]]]:
    """The script's absolute path in the image, and the final stage's COPY/ADD (sources, destination)."""
    workdir = PurePosixPath("/")
    copies: list[tuple[list[str], PurePosixPath]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            workdir, copies = PurePosixPath("/"), []
        elif ins.keyword == "WORKDIR" and ins.text:
            workdir = _normal(workdir / ins.text)
        elif ins.keyword in ("COPY", "ADD"):
            copy = _copy(ins.text, workdir)
            if copy is not None:
                copies.append(copy)
    return _normal(workdir / script), copies


def _copy(text: str, workdir: PurePosixPath) -> tuple[list[str], PurePosixPath] | None:
    words = _exec_form(text)
    if words is None:
        try:
            words = shlex.split(text)
        except ValueError:
            return None
    if any(w.startswith("--from") for w in words):
        return None  # from another stage or image, not from the project
    words = [w for w in words if not w.startswith("--")]
    if len(words) < 2:
        return None
    sources = [s for s in words[:-1] if "://" not in s]
    return sources, _normal(workdir / words[-1])


def _copied_from(image_path: PurePosixPath, source: str, dest: PurePosixPath, root: Path) -> str | None:
    """The project file that `COPY source dest` puts at image_path, if it does."""
    source = posixpath.normpath(source.lstrip("/"))
    if source == ".." or source.startswith("../"):
        return None
    if source == "." or (root / source).is_dir():  # a directory's contents go into dest
        if image_path == dest or not image_path.is_relative_to(dest):
            return None
        return posixpath.normpath(posixpath.join(source, str(image_path.relative_to(dest))))
    name = PurePosixPath(source).name
    if image_path == dest and not _is_pattern(source):
        return source
    if image_path.parent == dest and fnmatch.fnmatchcase(image_path.name, name):
        return posixpath.join(posixpath.dirname(source), image_path.name)
    return None


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def _normal(path: PurePosixPath) -> PurePosixPath:
    return PurePosixPath(posixpath.normpath(str(path)))
