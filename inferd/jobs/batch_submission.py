"""Parsing and validating a BatchAPI/TaskAPI job submission (spec cortex.md §4.3, §4.5), listing
its files, cutting its batches, and the job spec document (§4.6).

Errors are Cortex's 400 answers: ``SubmissionError(kind, message)`` with the kind strings and
message texts of Cortex v0.35's operator (``configreader.*``, ``job.*``, ``batchapi.*``, and
``error`` for anything that was not one of Cortex's own errors, such as malformed JSON).

parse_submission() is pure. make_batches() and dry_run() read the listed files through fsspec
(local paths and ``file://`` always; ``s3://``, ``gs://``, ... when the matching fsspec backend is
installed); they block, so the daemon calls them in a thread.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec  # type: ignore[import-untyped]  # ships no types

from inferd.spec.stores import URL, backend_need, url_scheme
from inferd.store.batch import DEFAULT_MAX_RECEIVE_COUNT

MAX_BODY_BYTES = 10 << 20  # the operator's http.MaxBytesReader limit
MAX_ITEM_BYTES = 250 * 1024  # an SQS message less 6 KiB kept for attributes
BATCH_API, TASK_API = "BatchAPI", "TaskAPI"
SOURCE_KEYS = ("item_list", "file_path_lister", "delimited_files")
BATCH_SCHEMA_HINT = "\n\njob submission schema can be found at https://docs.cortex.dev/v/0.35/"
TASK_SCHEMA_HINT = "\n\ntask job submission schema can be found at https://docs.cortex.dev/v/0.35/"
_MAX_INT64 = 2**63 - 1


class SubmissionError(ValueError):
    """A submission Cortex would have answered with 400 ``{"kind": ..., "message": ...}``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


@dataclass(frozen=True)
class DeadLetterQueue:
    arn: str
    max_receive_count: int


@dataclass(frozen=True)
class FileSource:
    """``file_path_lister`` (batches of paths) or ``delimited_files`` (batches of the items in
    the files, which are JSON values one after another, usually one per line)."""

    key: str  # "file_path_lister" | "delimited_files"
    paths: tuple[str, ...]
    includes: tuple[str, ...]
    excludes: tuple[str, ...]
    batch_size: int


@dataclass(frozen=True)
class Submission:
    kind: str  # BatchAPI | TaskAPI
    workers: int
    config: dict[str, Any] | None  # None when the body gave none (Cortex then answers "config": null)
    timeout: int | None  # seconds from submission
    dead_letter_queue: DeadLetterQueue | None
    items: tuple[str, ...] | None = None  # item_list: each item as compact JSON
    batch_size: int = 0  # item_list's
    files: FileSource | None = None

    @property
    def max_receive_count(self) -> int:
        """Claims a batch gets before it counts as failed."""
        return DEFAULT_MAX_RECEIVE_COUNT if self.dead_letter_queue is None else self.dead_letter_queue.max_receive_count


# --- parsing (pure) ---


def parse_submission(body: bytes, kind: str, *, max_workers: int | None = None, max_workers_reason: str = "") -> Submission:
    """The validated submission of a ``kind`` API, or SubmissionError. ``max_workers`` bounds
    ``workers`` (what this node can run at once; ``max_workers_reason`` says why, for the 400)."""
    if kind not in (BATCH_API, TASK_API):
        raise ValueError(f"job submissions are for {BATCH_API} and {TASK_API}, not {kind!r}")
    hint = BATCH_SCHEMA_HINT if kind == BATCH_API else TASK_SCHEMA_HINT
    if len(body) > MAX_BODY_BYTES:
        raise SubmissionError("error", "http: request body too large")
    document = _decode(body, hint)
    if kind == TASK_API:
        return _task(document, hint)
    submission = _batch(document, hint)
    _check_workers_bound(submission.workers, max_workers, max_workers_reason)
    return submission


def _decode(body: bytes, hint: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise SubmissionError("error", f"invalid JSON: {exc}{hint}") from None
    except RecursionError:  # nesting deeper than Python's parser goes
        raise SubmissionError("error", f"invalid JSON: nested too deeply{hint}") from None
    if document is None:  # Go decodes null into an empty struct
        return {}
    if not isinstance(document, dict):
        raise SubmissionError("error", f"json: cannot unmarshal {_json_type(document)} into the job submission object{hint}")
    return document


def _task(document: dict[str, Any], hint: str) -> Submission:
    workers = _int(document, "workers", hint, default=1)
    config, timeout = _config(document, hint), _optional_int(document, "timeout", hint)
    if workers != 1:
        raise SubmissionError("configreader.invalid_int", f"workers: invalid value (got {workers}, must be 1)")
    _check_timeout(timeout, hint)
    return Submission(TASK_API, 1, config, timeout, None)


def _batch(document: dict[str, Any], hint: str) -> Submission:
    # Decode every field first (Go's json.Unmarshal fails on a wrong type before any rule runs),
    # then apply the rules in Cortex's order.
    workers = _int(document, "workers", hint, default=0)
    config, timeout = _config(document, hint), _optional_int(document, "timeout", hint)
    queue = _dead_letter_queue(document, hint)
    sources = {key: _object(document, key, hint) for key in SOURCE_KEYS}
    given = [key for key in SOURCE_KEYS if sources[key] is not None]
    if not given:
        raise _schema_error("job.specify_exactly_one_key",
                            "specify exactly one of the following keys: item_list, file_path_lister, or delimited_files", hint)
    if len(given) > 1:
        raise _schema_error("job.conflicting_fields",
                            f"please specify either the {_or(given)} field (but not more than one at the same time)", hint)
    items, batch_size, files = None, 0, None
    if sources["item_list"] is not None:
        items, batch_size = _item_list(sources["item_list"], hint)
    else:
        files = _file_source(given[0], sources[given[0]], hint)  # type: ignore[arg-type]  # given[0] is set
    _check_at_least_one(workers, "workers", hint)
    _check_timeout(timeout, hint)
    if queue is not None:
        if not queue.arn:
            raise _schema_error("configreader.cannot_be_empty", "sqs_dead_letter_queue: arn: cannot be empty", hint)
        _check_at_least_one(queue.max_receive_count, "sqs_dead_letter_queue: max_receive_count", hint)
    return Submission(BATCH_API, workers, config, timeout, queue, items, batch_size, files)


def _item_list(section: dict[str, Any], hint: str) -> tuple[tuple[str, ...], int]:
    raw_items = _list(section, "items", "item_list: items", hint)
    batch_size = _int(section, "batch_size", hint, default=0, field="item_list: batch_size")
    if not raw_items:
        raise _schema_error("configreader.too_few_elements", "items: must contain at least 1 elements", hint)
    items = tuple(_compact(item) for item in raw_items)
    for index, item in enumerate(items):
        size = len(item.encode())
        if size > MAX_ITEM_BYTES:
            raise _schema_error("batchapi.item_size_exceeds_limit",
                                f"item {index} has size {size} bytes which exceeds the limit ({MAX_ITEM_BYTES} bytes)", hint)
    _check_at_least_one(batch_size, "item_list: batch_size", hint)
    return items, batch_size


def _file_source(key: str, section: dict[str, Any], hint: str) -> FileSource:
    paths, includes, excludes = (
        tuple(_strings(section, name, f"{key}: {name}", hint)) for name in ("s3_paths", "includes", "excludes")
    )
    batch_size = _int(section, "batch_size", hint, default=0, field=f"{key}: batch_size")
    _check_at_least_one(batch_size, f"{key}: batch_size", hint)
    # the lister's own checks come after the schema's, without the schema hint (as Cortex)
    if not paths:
        raise SubmissionError("configreader.too_few_elements", f"{key}: s3_paths: must contain at least 1 elements")
    for name, patterns in (("includes", includes), ("excludes", excludes)):
        for pattern in patterns:
            try:
                compile_glob(pattern)
            except GlobError as exc:
                raise SubmissionError("error", f"{key}: {name}: {pattern}: {exc}") from None
    for path in paths:
        if not (URL.match(path) or os.path.isabs(path)):
            raise SubmissionError("aws.invalid_s3_path", f"{key}: {path} is not a valid path (use an absolute path, a "
                                  "file:// URL, or an object store URL such as s3://bucket/prefix)")
    return FileSource(key, paths, includes, excludes, batch_size)


def _check_workers_bound(workers: int, max_workers: int | None, reason: str) -> None:
    if max_workers is not None and workers > max_workers:
        why = f" ({reason})" if reason else ""
        raise _schema_error("configreader.must_be_less_than_or_equal_to",
                            f"workers: {workers} must be less than or equal to {max_workers}{why}", BATCH_SCHEMA_HINT)


def _check_at_least_one(value: int, field: str, hint: str) -> None:
    if value < 1:
        message = f"{field}: {value} must be greater than or equal to 1"
        raise _schema_error("configreader.must_be_greater_than_or_equal_to", message, hint)


def _check_timeout(timeout: int | None, hint: str) -> None:
    if timeout is not None:
        _check_at_least_one(timeout, "timeout", hint)


def _schema_error(kind: str, message: str, hint: str) -> SubmissionError:
    return SubmissionError(kind, message + hint)


# --- typed field access: Go's json.Unmarshal into Cortex's structs (null = absent) ---


def _type_error(value: Any, field: str, go_type: str, hint: str) -> SubmissionError:
    return SubmissionError("error", f"json: cannot unmarshal {_json_type(value)} into field {field} of type {go_type}{hint}")


def _int(section: dict[str, Any], key: str, hint: str, *, default: int, field: str | None = None) -> int:
    value = section.get(key)
    if value is None:
        return default
    # bool is an int in Python, not in JSON; 2.0 is a valid Go int, 2.5 is not; Python's parser
    # accepts Infinity and NaN, Go's does not
    whole = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
    if isinstance(value, bool) or not whole or abs(value) > _MAX_INT64:
        raise _type_error(value, field or key, "int", hint)
    return int(value)


def _optional_int(section: dict[str, Any], key: str, hint: str) -> int | None:
    return None if section.get(key) is None else _int(section, key, hint, default=0)


def _object(section: dict[str, Any], key: str, hint: str, field: str | None = None) -> dict[str, Any] | None:
    value = section.get(key)
    if value is not None and not isinstance(value, dict):
        raise _type_error(value, field or key, "object", hint)
    return value


def _config(document: dict[str, Any], hint: str) -> dict[str, Any] | None:
    return _object(document, "config", hint)


def _list(section: dict[str, Any], key: str, field: str, hint: str) -> list[Any]:
    value = section.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _type_error(value, field, "array", hint)
    return value


def _strings(section: dict[str, Any], key: str, field: str, hint: str) -> list[str]:
    values = _list(section, key, field, hint)
    for value in values:
        if not isinstance(value, str):
            raise _type_error(value, field, "string", hint)
    return values


def _dead_letter_queue(document: dict[str, Any], hint: str) -> DeadLetterQueue | None:
    section = _object(document, "sqs_dead_letter_queue", hint)
    if section is None:
        return None
    arn = section.get("arn")
    if arn is not None and not isinstance(arn, str):
        raise _type_error(arn, "sqs_dead_letter_queue: arn", "string", hint)
    count = _int(section, "max_receive_count", hint, default=0, field="sqs_dead_letter_queue: max_receive_count")
    return DeadLetterQueue(arn or "", count)


def _json_type(value: Any) -> str:
    for python_type, name in ((bool, "bool"), (str, "string"), (list, "array"), (dict, "object"), (type(None), "null")):
        if isinstance(value, python_type):
            return name
    return "number"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _or(keys: Sequence[str]) -> str:
    """Cortex's StrsOr: "a", "a or b", "a, b, or c"."""
    if len(keys) <= 2:
        return " or ".join(keys)
    return ", ".join(keys[:-1]) + ", or " + keys[-1]


# --- globs: Cortex's gobwas/glob with '/' as the separator ---


class GlobError(ValueError):
    pass


def compile_glob(pattern: str) -> re.Pattern[str]:
    """``*`` any run of characters but '/', ``**`` any run at all, ``?`` one character but '/',
    ``[abc]`` ``[a-z]`` ``[!abc]`` one of (not one of), ``{a,b}`` either, ``\\x`` a literal x.
    The result must match a whole path (``fullmatch``)."""
    regex, end = _glob_regex(pattern, 0, nested=False)
    assert end == len(pattern)  # at the top level only the end of the pattern stops _glob_regex
    return re.compile(regex, re.DOTALL)


def _glob_regex(pattern: str, i: int, nested: bool) -> tuple[str, int]:
    """The regex for pattern[i:], up to the end (or, inside braces, a ',' or '}')."""
    out: list[str] = []
    while i < len(pattern):
        char = pattern[i]
        if nested and char in ",}":
            return "".join(out), i
        if char == "\\":
            if i + 1 == len(pattern):
                raise GlobError("unexpected end of pattern after \\")
            out.append(re.escape(pattern[i + 1]))
            i += 2
        elif char == "*":
            double = pattern.startswith("**", i)
            out.append(".*" if double else "[^/]*")
            i += 2 if double else 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            regex, i = _glob_class(pattern, i)
            out.append(regex)
        elif char == "{":
            regex, i = _glob_alternatives(pattern, i)
            out.append(regex)
        else:
            out.append(re.escape(char))
            i += 1
    if nested:
        raise GlobError("unclosed '{'")
    return "".join(out), i


def _glob_class(pattern: str, i: int) -> tuple[str, int]:
    end = pattern.find("]", i + 1)
    if end == -1:
        raise GlobError("unclosed '['")
    body = pattern[i + 1 : end]
    negate = body.startswith("!")
    body = body[1:] if negate else body
    if not body:
        raise GlobError("empty character class")
    chars = "".join("-" if char == "-" else re.escape(char) for char in body)
    return ("[^" if negate else "[") + chars + "]", end + 1


def _glob_alternatives(pattern: str, i: int) -> tuple[str, int]:
    alternatives = []
    while True:
        regex, i = _glob_regex(pattern, i + 1, nested=True)
        alternatives.append(regex)
        if pattern[i] == "}":
            return "(?:" + "|".join(alternatives) + ")", i + 1


# --- listing and batches (these read files) ---


def list_files(source: FileSource) -> list[str]:
    """Every file under each of ``source.paths`` (a file, a directory listed recursively, or a
    prefix), in path order per given path, that matches an ``includes`` glob (when any) and no
    ``excludes`` glob, each matched against the full path as the batch will carry it."""
    includes = [compile_glob(pattern) for pattern in source.includes]
    excludes = [compile_glob(pattern) for pattern in source.excludes]
    found = []
    for path in source.paths:
        for name in _files_under(source.key, path):
            if includes and not any(glob.fullmatch(name) for glob in includes):
                continue
            if any(glob.fullmatch(name) for glob in excludes):
                continue
            found.append(name)
    if not found:
        raise SubmissionError("batchapi.no_s3_files_found", f"{source.key}: no s3 files match search criteria")
    return found


def _files_under(key: str, path: str) -> list[str]:
    fs, root = _filesystem(key, path)
    try:
        if fs.isfile(root):
            names = [root]
        elif fs.isdir(root):
            names = sorted(fs.find(root))
        else:  # a prefix: the files of its parent whose path starts with it
            parent = root.rsplit("/", 1)[0] or "/"
            names = sorted(name for name in fs.find(parent) if name.startswith(root)) if fs.isdir(parent) else []
    except OSError as exc:
        raise SubmissionError("error", f"{key}: {path}: {exc}") from None
    return [_as_given(fs, path, name) for name in names]


def _filesystem(key: str, path: str) -> tuple[Any, str]:
    """The fsspec filesystem for ``path`` and the path within it; a 400 naming the package to
    install when the scheme's backend is missing."""
    scheme = url_scheme(path) or "file"
    try:
        fs, root = fsspec.core.url_to_fs(path)
    except ImportError as exc:
        need = backend_need(scheme, str(exc))
        raise SubmissionError("error", f"{key}: {path}: reading {scheme}:// paths needs {need}") from None
    except ValueError as exc:  # "Protocol not known"
        raise SubmissionError("error", f"{key}: {path}: {exc}") from None
    return fs, str(root).rstrip("/") or "/"


def _as_given(fs: Any, given: str, name: str) -> str:
    """``name`` (fsspec's path) in the form the user wrote: a plain local path stays plain."""
    if not URL.match(given):
        return str(name)
    return str(fs.unstrip_protocol(name))


def make_batches(submission: Submission) -> list[bytes]:
    """The job's batches in order, each a JSON array of at most batch_size items: item_list's
    items, file_path_lister's paths, or the JSON values read from delimited_files (batches run
    across file boundaries, as Cortex's enqueuer did). Reads files; raises SubmissionError."""
    if submission.items is not None:
        return list(_cut(iter(submission.items), submission.batch_size))
    if submission.files is None:
        return []  # a TaskAPI job
    names = list_files(submission.files)
    if submission.files.key == "file_path_lister":
        return list(_cut((_compact(name) for name in names), submission.files.batch_size))
    return list(_cut(_delimited_items(submission.files.key, names), submission.files.batch_size))


def _cut(items: Iterator[str], batch_size: int) -> Iterator[bytes]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield ("[" + ",".join(batch) + "]").encode()
            batch = []
    if batch:
        yield ("[" + ",".join(batch) + "]").encode()


def _delimited_items(key: str, names: Sequence[str]) -> Iterator[str]:
    decoder = json.JSONDecoder()
    for name in names:
        try:
            with fsspec.open(name, "rb") as file:
                text = file.read().decode()
        except (OSError, UnicodeDecodeError) as exc:
            raise SubmissionError("error", f"{key}: {name}: {exc}") from None
        position, index = _skip_space(text, 0), 0
        while position < len(text):
            try:
                value, position = decoder.raw_decode(text, position)
            except ValueError as exc:
                raise SubmissionError("error", f"{key}: {name}: item {index}: {exc}") from None
            item = _compact(value)
            if len(item.encode()) > MAX_ITEM_BYTES:
                raise SubmissionError("batchapi.message_exceeds_max_size", f"{key}: {name}: item {index}: cannot enqueue message "
                                      f"because its size of {len(item.encode())} bytes exceeds the {MAX_ITEM_BYTES} bytes limit; "
                                      "use a smaller batch size or reduce the size of each of item in the batch")
            yield item
            position, index = _skip_space(text, position), index + 1


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


# --- answers ---


def new_job_id(now_ns: int | None = None) -> str:
    """Cortex's job id: lowercase hex of 2^63-1 minus unix nanoseconds, so a newer job's id
    sorts first (fixed width until the year 2225)."""
    return f"{_MAX_INT64 - (time.time_ns() if now_ns is None else now_ns):016x}"


def start_time_text(moment: datetime) -> str:
    """Go's RFC 3339 (nano) form of a UTC time, as Cortex's JSON carried start_time."""
    moment = moment.astimezone(UTC)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def job_spec(
    submission: Submission,
    *,
    job_id: str,
    api_name: str,
    api_id: str,
    start_time: datetime,
    total_batch_count: int = 0,
    spec_id: str = "",
    handler_id: str = "",
) -> dict[str, Any]:
    """The job spec document (spec §4.3/§4.5/§4.6): the 200 answer to a submission, the file
    ``CORTEX_JOB_SPEC``/``CORTEX_TASK_SPEC`` names, and the handler's ``job_spec``; keys in
    Cortex's order."""
    document: dict[str, Any] = {"job_id": job_id, "api_name": api_name, "kind": submission.kind, "workers": submission.workers}
    if submission.kind == TASK_API:
        document.update(config=submission.config, timeout=submission.timeout, api_id=api_id, spec_id=spec_id,
                        handler_id=handler_id, start_time=start_time_text(start_time))
        return document
    queue = submission.dead_letter_queue
    document.update(
        sqs_dead_letter_queue=None if queue is None else {"arn": queue.arn, "max_receive_count": queue.max_receive_count},
        config=submission.config, timeout=submission.timeout, api_id=api_id, sqs_url="",
    )
    if total_batch_count:  # Go's omitempty
        document["total_batch_count"] = total_batch_count
    document["start_time"] = start_time_text(start_time)
    return document


def dry_run(submission: Submission) -> str:
    """The ``?dryRun=true`` answer (200, text/plain): one path per line for a file source, then
    ``validations passed``; nothing is stored. Reads the listing; raises SubmissionError."""
    names = [] if submission.files is None else list_files(submission.files)
    return "".join(name + "\n" for name in names) + "validations passed"


def dry_run_error(error: SubmissionError) -> str:
    """The body of a failed dry run (400, text/plain, not JSON)."""
    return "\n" + error.message + "\n"
