"""Whatever a client sends to a BatchAPI or TaskAPI endpoint (bodies, content types, jobID query
strings, verbs), it gets Cortex's JSON error naming the problem, or a job spec when it happened
to send a valid submission; never a 5xx, never an exception in the daemon's log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RunningDaemon, shared_daemon
from tests.e2e.test_hostile_payloads import BODIES, JSON_VALUES, MEDIA_TYPES, assert_no_daemon_fault

EXAMPLES = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = st.sampled_from(["workers", "item_list", "file_path_lister", "delimited_files", "config", "timeout",
                          "sqs_dead_letter_queue", "items", "batch_size", "s3_paths", "includes", "excludes"])
# objects built from the submission's own field names, so the parser's deeper rules are reached
SUBMISSIONS = st.recursive(JSON_VALUES, lambda inner: st.dictionaries(FIELDS, inner, max_size=4), max_leaves=12)
QUERIES = st.one_of(st.just(""), st.text(max_size=30).map(lambda t: "?jobID=" + quote(t, safe="")),
                    st.builds(lambda k, v: f"?{quote(k, safe='')}={quote(v, safe='')}", st.text(max_size=10), st.text(max_size=10)),
                    st.just("?jobID=a&jobID=b"), st.just("?dryRun=maybe"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    yield from shared_daemon("jobs", tmp_path_factory)


# a valid submission runs the project's own code, which may raise on a config it never expected
HANDLER_FAILURES = ("task_failed", "handle_batch_failed", "on_job_complete_failed")


def assert_cortex_answer(reply: Any, api: str) -> None:
    assert reply.status_code < 500, (reply.status_code, reply.text)
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    body = reply.json()
    if reply.status_code == 200:  # a valid submission, a listing, a status or a stop
        assert body.get("api_name") == api or {"jobs"} <= body.keys() or "job_status" in body or "message" in body, body
        return
    assert reply.status_code in (400, 404, 405, 413), (reply.status_code, body)
    message = body.get("message") or body.get("error")
    assert isinstance(message, str) and message, body


@pytest.mark.parametrize("api", ["batch", "task"])
def test_any_submission_gets_a_named_answer(daemon: RunningDaemon, api: str) -> None:
    @EXAMPLES
    @given(body=st.one_of(BODIES, SUBMISSIONS.map(lambda v: json.dumps(v).encode())), media_type=MEDIA_TYPES)
    def check(body: bytes, media_type: str) -> None:
        reply = daemon.client.post(f"/{api}", content=body, headers={"content-type": media_type})
        assert_cortex_answer(reply, api)

    check()
    assert_no_daemon_fault(daemon, HANDLER_FAILURES)


def test_any_job_query_and_verb_gets_a_named_answer(daemon: RunningDaemon) -> None:
    @EXAMPLES
    @given(api=st.sampled_from(["batch", "task"]), method=st.sampled_from(["GET", "DELETE", "PUT", "PATCH"]), query=QUERIES)
    def check(api: str, method: str, query: str) -> None:
        reply = daemon.client.request(method, f"/{api}{query}")
        assert_cortex_answer(reply, api)

    check()
    assert_no_daemon_fault(daemon, HANDLER_FAILURES)
