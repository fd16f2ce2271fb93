"""inferd.jobs.batch_submission: Cortex's job submission rules (spec cortex.md §4.3, §4.5), file
listing through fsspec, batches, the job spec document and dry runs."""

from __future__ import annotations

import importlib.util
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferd.jobs.batch_submission import (
    BATCH_API,
    BATCH_SCHEMA_HINT,
    MAX_BODY_BYTES,
    MAX_ITEM_BYTES,
    TASK_API,
    TASK_SCHEMA_HINT,
    Submission,
    SubmissionError,
    compile_glob,
    dry_run,
    dry_run_error,
    job_spec,
    list_files,
    make_batches,
    new_job_id,
    parse_submission,
)

H = BATCH_SCHEMA_HINT
ITEMS = {"items": [1, 2, 3], "batch_size": 2}


def parse(document: Any, kind: str = BATCH_API, **kwargs: Any) -> Submission:
    return parse_submission(json.dumps(document).encode(), kind, **kwargs)


def error_of(document: Any, kind: str = BATCH_API, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(SubmissionError) as caught:
        parse(document, kind, **kwargs)
    return caught.value.kind, caught.value.message


@pytest.mark.parametrize(
    ("document", "kind", "message"),
    [
        ({"workers": 1}, "job.specify_exactly_one_key",
         "specify exactly one of the following keys: item_list, file_path_lister, or delimited_files" + H),
        (None, "job.specify_exactly_one_key",
         "specify exactly one of the following keys: item_list, file_path_lister, or delimited_files" + H),
        ({"workers": 1, "item_list": ITEMS, "delimited_files": {}}, "job.conflicting_fields",
         "please specify either the item_list or delimited_files field (but not more than one at the same time)" + H),
        ({"workers": 1, "item_list": ITEMS, "file_path_lister": {}, "delimited_files": {}}, "job.conflicting_fields",
         "please specify either the item_list, file_path_lister, or delimited_files field (but not more than one at the same time)" + H),
        ({"workers": 1, "item_list": {"items": [], "batch_size": 1}}, "configreader.too_few_elements",
         "items: must contain at least 1 elements" + H),
        ({"workers": 1, "item_list": {"items": [1]}}, "configreader.must_be_greater_than_or_equal_to",
         "item_list: batch_size: 0 must be greater than or equal to 1" + H),
        ({"workers": 1, "item_list": {"items": ["ok", "x" * MAX_ITEM_BYTES]}, "batch_size": 1},
         "batchapi.item_size_exceeds_limit", f"item 1 has size {MAX_ITEM_BYTES + 2} bytes which exceeds the limit (256000 bytes)" + H),
        ({"item_list": ITEMS}, "configreader.must_be_greater_than_or_equal_to", "workers: 0 must be greater than or equal to 1" + H),
        ({"workers": -2, "item_list": ITEMS}, "configreader.must_be_greater_than_or_equal_to",
         "workers: -2 must be greater than or equal to 1" + H),
        ({"workers": 1, "item_list": ITEMS, "timeout": 0}, "configreader.must_be_greater_than_or_equal_to",
         "timeout: 0 must be greater than or equal to 1" + H),
        ({"workers": 1, "item_list": ITEMS, "sqs_dead_letter_queue": {"max_receive_count": 3}}, "configreader.cannot_be_empty",
         "sqs_dead_letter_queue: arn: cannot be empty" + H),
        ({"workers": 1, "item_list": ITEMS, "sqs_dead_letter_queue": {"arn": "a", "max_receive_count": 0}},
         "configreader.must_be_greater_than_or_equal_to", "sqs_dead_letter_queue: max_receive_count: 0 must be greater than or equal to 1" + H),
        ({"workers": 1, "file_path_lister": {"s3_paths": ["/d"]}}, "configreader.must_be_greater_than_or_equal_to",
         "file_path_lister: batch_size: 0 must be greater than or equal to 1" + H),
        ({"workers": 1, "delimited_files": {"batch_size": 1}}, "configreader.too_few_elements",
         "delimited_files: s3_paths: must contain at least 1 elements"),
        ({"workers": 1, "delimited_files": {"s3_paths": ["data/x"], "batch_size": 1}}, "aws.invalid_s3_path",
         "delimited_files: data/x is not a valid path (use an absolute path, a file:// URL, or an object store URL such as s3://bucket/prefix)"),
        ({"workers": 1, "file_path_lister": {"s3_paths": ["/d"], "includes": ["[ab"], "batch_size": 1}}, "error",
         "file_path_lister: includes: [ab: unclosed '['"),
        ({"workers": 1, "file_path_lister": {"s3_paths": ["/d"], "excludes": ["{a,b"], "batch_size": 1}}, "error",
         "file_path_lister: excludes: {a,b: unclosed '{'"),
        ({"workers": "2", "item_list": ITEMS}, "error", "json: cannot unmarshal string into field workers of type int" + H),
        ({"workers": 1.5, "item_list": ITEMS}, "error", "json: cannot unmarshal number into field workers of type int" + H),
        ({"workers": True, "item_list": ITEMS}, "error", "json: cannot unmarshal bool into field workers of type int" + H),
        ({"workers": 1, "item_list": ITEMS, "config": [1]}, "error", "json: cannot unmarshal array into field config of type object" + H),
        ({"workers": 1, "item_list": {"items": {"a": 1}, "batch_size": 1}}, "error",
         "json: cannot unmarshal object into field item_list: items of type array" + H),
        ({"workers": 1, "file_path_lister": {"s3_paths": [1], "batch_size": 1}}, "error",
         "json: cannot unmarshal number into field file_path_lister: s3_paths of type string" + H),
        ([1, 2], "error", "json: cannot unmarshal array into the job submission object" + H),
        ({"workers": float("inf"), "item_list": ITEMS}, "error", "json: cannot unmarshal number into field workers of type int" + H),
        ({"workers": 2**63, "item_list": ITEMS}, "error", "json: cannot unmarshal number into field workers of type int" + H),
    ],
)
def test_bad_batch_submissions_get_cortexs_400(document: Any, kind: str, message: str) -> None:
    assert error_of(document) == (kind, message)


def test_malformed_json_and_oversized_body() -> None:
    with pytest.raises(SubmissionError) as caught:
        parse_submission(b'{"workers": ', BATCH_API)
    assert caught.value.kind == "error" and caught.value.message.startswith("invalid JSON: ")
    assert caught.value.message.endswith(H)
    with pytest.raises(SubmissionError, match="nested too deeply"):
        parse_submission(b"[" * 100_000, BATCH_API)
    with pytest.raises(SubmissionError) as caught:
        parse_submission(b" " * (MAX_BODY_BYTES + 1), BATCH_API)
    assert caught.value.to_json() == {"kind": "error", "message": "http: request body too large"}


def test_workers_bound_says_why() -> None:
    assert parse({"workers": 4, "item_list": ITEMS}, max_workers=4).workers == 4
    assert error_of({"workers": 5, "item_list": ITEMS}, max_workers=4, max_workers_reason="this node has 4 GPUs") == (
        "configreader.must_be_less_than_or_equal_to", "workers: 5 must be less than or equal to 4 (this node has 4 GPUs)" + H)


def test_a_valid_item_list_and_its_batches() -> None:
    submission = parse({"workers": 2, "item_list": {"items": [{"a": 1}, "é", [1, 2], None, 5], "batch_size": 2},
                        "config": {"k": "v"}, "timeout": 60, "sqs_dead_letter_queue": {"arn": "arn:x", "max_receive_count": 3},
                        "unknown_key": "ignored, as Go's json does"})
    assert (submission.kind, submission.workers, submission.config, submission.timeout) == (BATCH_API, 2, {"k": "v"}, 60)
    assert submission.max_receive_count == 3
    assert make_batches(submission) == [b'[{"a":1},"\xc3\xa9"]', b"[[1,2],null]", b"[5]"]
    assert parse({"workers": 1, "item_list": ITEMS}).max_receive_count == 2  # default: one retry
    assert parse({"workers": 1.0, "item_list": ITEMS, "config": None, "timeout": None}).config is None


def test_task_submissions() -> None:
    task = parse({"config": {"x": 1}, "timeout": 5}, TASK_API)
    assert (task.kind, task.workers, task.config, task.timeout) == (TASK_API, 1, {"x": 1}, 5)
    assert parse({}, TASK_API).workers == 1 and parse({"workers": 1}, TASK_API).workers == 1
    assert make_batches(parse({}, TASK_API)) == []
    assert error_of({"workers": 2}, TASK_API) == ("configreader.invalid_int", "workers: invalid value (got 2, must be 1)")
    assert error_of({"config": "x"}, TASK_API) == ("error", "json: cannot unmarshal string into field config of type object" + TASK_SCHEMA_HINT)


def tree(root: Path) -> Path:
    for name in ("a/1.json", "a/2.txt", "a/b/3.json", "a/b/c/4.json", "ab.json", "z.json"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("{}\n")
    return root


def lister(paths: list[str], **extra: Any) -> Submission:
    return parse({"workers": 1, "file_path_lister": {"s3_paths": paths, "batch_size": 2, **extra}})


def test_a_directory_is_listed_recursively_then_filtered(tmp_path: Path) -> None:
    root = tree(tmp_path)
    everything = [f"{root}/a/1.json", f"{root}/a/2.txt", f"{root}/a/b/3.json", f"{root}/a/b/c/4.json"]
    assert list_files(lister([f"{root}/a"]).files) == everything  # type: ignore[arg-type]
    assert list_files(lister([f"{root}/a/"]).files) == everything  # type: ignore[arg-type]
    # includes first (any of them), then excludes; '*' stops at '/', '**' crosses it; full paths
    only_json = lister([f"{root}/a"], includes=[f"{root}/**.json"], excludes=[f"{root}/a/b/c/*"])
    assert list_files(only_json.files) == [f"{root}/a/1.json", f"{root}/a/b/3.json"]  # type: ignore[arg-type]
    one_level = lister([f"{root}/a"], includes=[f"{root}/a/*.json", f"{root}/a/*/?.json"])
    assert list_files(one_level.files) == [f"{root}/a/1.json", f"{root}/a/b/3.json"]  # type: ignore[arg-type]
    assert make_batches(only_json) == [json.dumps([f"{root}/a/1.json", f"{root}/a/b/3.json"], separators=(",", ":")).encode()]


def test_a_prefix_a_single_file_and_file_urls(tmp_path: Path) -> None:
    root = tree(tmp_path)
    assert list_files(lister([f"{root}/a"]).files)[0] == f"{root}/a/1.json"  # type: ignore[arg-type]
    assert list_files(lister([f"{root}/a", f"{root}/z.json"]).files)[-1] == f"{root}/z.json"  # type: ignore[arg-type]
    # "ab" names no file or directory: a prefix, matching ab.json but not a/
    assert list_files(lister([f"{root}/ab"]).files) == [f"{root}/ab.json"]  # type: ignore[arg-type]
    urls = list_files(lister([f"file://{root}/a/b"], includes=["file://**/c/*"]).files)  # type: ignore[arg-type]
    assert urls == [f"file://{root}/a/b/c/4.json"]


def test_no_matching_file_is_a_400_and_dry_run_lists_them(tmp_path: Path) -> None:
    root = tree(tmp_path)
    nothing = lister([f"{root}/a"], includes=["*.csv"])
    with pytest.raises(SubmissionError) as caught:
        make_batches(nothing)
    assert caught.value.to_json() == {"kind": "batchapi.no_s3_files_found", "message": "file_path_lister: no s3 files match search criteria"}
    assert dry_run_error(caught.value) == "\nfile_path_lister: no s3 files match search criteria\n"
    with pytest.raises(SubmissionError):
        make_batches(lister([f"{root}/missing/dir"]))
    assert dry_run(lister([f"{root}/a/b"])) == f"{root}/a/b/3.json\n{root}/a/b/c/4.json\nvalidations passed"
    assert dry_run(parse({"workers": 1, "item_list": ITEMS})) == "validations passed"


def test_delimited_files_are_json_lines_batched_across_files(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d/1.jsonl").write_text('{"n": 1}\n{"n": 2}\n\n{"n": 3}\n')
    (tmp_path / "d/2.jsonl").write_text('{"n": 4}\r\n"five"')
    submission = parse({"workers": 1, "delimited_files": {"s3_paths": [f"file://{tmp_path}/d"], "batch_size": 2}})
    assert make_batches(submission) == [b'[{"n":1},{"n":2}]', b'[{"n":3},{"n":4}]', b'["five"]']
    (tmp_path / "d/3.jsonl").write_text('{"n": 6}\n{"n": \n')
    with pytest.raises(SubmissionError) as caught:
        make_batches(submission)
    assert caught.value.kind == "error" and caught.value.message.startswith(f"delimited_files: file://{tmp_path}/d/3.jsonl: item 1: ")
    (tmp_path / "d/3.jsonl").write_text(json.dumps("x" * MAX_ITEM_BYTES))
    with pytest.raises(SubmissionError) as caught:
        make_batches(submission)
    assert caught.value.kind == "batchapi.message_exceeds_max_size" and "item 0: cannot enqueue message" in caught.value.message


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed here")
def test_an_object_store_without_its_backend_names_the_package() -> None:
    with pytest.raises(SubmissionError) as caught:
        make_batches(lister(["s3://bucket/prefix"]))
    assert caught.value.to_json() == {
        "kind": "error", "message": "file_path_lister: s3://bucket/prefix: reading s3:// paths needs the s3fs package (pip install s3fs)"}
    with pytest.raises(SubmissionError, match="Protocol not known: nope"):
        make_batches(lister(["nope://bucket/x"]))


def test_globs() -> None:
    assert compile_glob("s3://b/*.json").fullmatch("s3://b/x.json")
    assert not compile_glob("s3://b/*.json").fullmatch("s3://b/d/x.json")
    assert compile_glob("s3://b/**.json").fullmatch("s3://b/d/e/x.json")
    assert compile_glob("s3://b/{x,y}[0-9][!a].?").fullmatch("s3://b/y7b.c")
    assert not compile_glob("s3://b/x?").fullmatch("s3://b/x/")
    assert compile_glob(r"s3://b/\*").fullmatch("s3://b/*") and not compile_glob(r"s3://b/\*").fullmatch("s3://b/x")


def test_job_spec_documents_and_ids() -> None:
    moment = datetime(2021, 6, 1, 12, 0, 0, 250000, tzinfo=UTC)
    batch = parse({"workers": 2, "item_list": ITEMS, "sqs_dead_letter_queue": {"arn": "arn:q", "max_receive_count": 2}})
    document = job_spec(batch, job_id="69b183ed6bdf3e9b", api_name="x", api_id="abc", start_time=moment, total_batch_count=2)
    assert list(document.items()) == [
        ("job_id", "69b183ed6bdf3e9b"), ("api_name", "x"), ("kind", "BatchAPI"), ("workers", 2),
        ("sqs_dead_letter_queue", {"arn": "arn:q", "max_receive_count": 2}), ("config", None), ("timeout", None),
        ("api_id", "abc"), ("sqs_url", ""), ("total_batch_count", 2), ("start_time", "2021-06-01T12:00:00.25Z")]
    assert "total_batch_count" not in job_spec(batch, job_id="i", api_name="x", api_id="a", start_time=moment.replace(microsecond=0))
    task = job_spec(parse({"config": {"k": 1}}, TASK_API), job_id="i", api_name="t", api_id="a", start_time=moment.replace(microsecond=0),
                    spec_id="s", handler_id="h")
    assert list(task) == ["job_id", "api_name", "kind", "workers", "config", "timeout", "api_id", "spec_id", "handler_id", "start_time"]
    assert (task["kind"], task["workers"], task["config"], task["start_time"]) == ("TaskAPI", 1, {"k": 1}, "2021-06-01T12:00:00Z")

    # Cortex's id: 2^63-1 - unix ns in hex; later submissions sort first
    assert new_job_id(1_622_548_800_000_000_000) == f"{2**63 - 1 - 1_622_548_800_000_000_000:016x}"
    ids = [new_job_id(ns) for ns in (1_600_000_000_000_000_000, 1_700_000_000_000_000_000, 1_700_000_000_000_000_001)]
    assert sorted(ids) == list(reversed(ids)) and {len(i) for i in ids} == {16}
    assert len(new_job_id()) == 16


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
submission_keys = st.sampled_from(["workers", "item_list", "file_path_lister", "delimited_files", "config", "timeout",
                                   "sqs_dead_letter_queue", "items", "batch_size", "s3_paths", "includes", "excludes",
                                   "arn", "max_receive_count"])
shaped = st.recursive(json_values, lambda children: st.dictionaries(submission_keys, children, max_size=5), max_leaves=15)


@settings(max_examples=300, deadline=None)
@given(document=shaped | json_values, kind=st.sampled_from([BATCH_API, TASK_API]))
def test_any_json_body_parses_or_raises_submission_error_only(document: Any, kind: str) -> None:
    try:
        submission = parse(document, kind, max_workers=8)
    except SubmissionError as exc:
        assert exc.kind and exc.message
        return
    assert submission.workers >= 1
    if submission.items is not None:
        assert all(json.loads(batch) for batch in make_batches(submission))
