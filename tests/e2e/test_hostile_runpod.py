"""Whatever a client sends to a RunPod endpoint's /run and /runsync (bodies, content types,
policies, webhooks, ?wait= queries), whole in one write (the direct road) or as httpx sends it,
it gets RunPod's JSON: a job, or a 4xx naming the problem; never a 5xx, never a dead worker,
never an exception in the daemon's log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RunningDaemon, raw_answers, shared_daemon
from tests.e2e.test_hostile_payloads import BODIES, JSON_VALUES, MEDIA_TYPES, assert_no_daemon_fault

EXAMPLES = settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = st.sampled_from(["input", "webhook", "policy", "executionTimeout", "ttl", "s3Config"])
POLICY = st.dictionaries(st.sampled_from(["executionTimeout", "ttl", "lowPriority"]), JSON_VALUES, max_size=3)
# job bodies built from RunPod's own field names, so the parser's deeper rules are reached; an
# input never holds the echo handler's own keys (sleep, wait_file) that would hold its worker
INPUTS = JSON_VALUES.filter(lambda v: not (isinstance(v, dict) and {"sleep", "wait_file", "not_json"} & v.keys()))
JOBS = st.fixed_dictionaries({"input": INPUTS}, optional={
    "webhook": st.one_of(JSON_VALUES, st.sampled_from(["http://127.0.0.1:9/hook", "ftp://x", "https://"])),
    "policy": st.one_of(POLICY, JSON_VALUES),
}).map(lambda job: json.dumps(job).encode())
RANDOM_FIELDS = st.dictionaries(FIELDS, JSON_VALUES, max_size=3).map(lambda v: json.dumps(v).encode())
QUERIES = st.one_of(st.just(""), st.integers(-5, 400_000).map(lambda n: f"?wait={n}"),
                    st.text(max_size=12).map(lambda t: "?wait=" + quote(t, safe="")), st.just("?wait=1000&wait=2"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    yield from shared_daemon("runpod", tmp_path_factory)


def assert_runpod_answer(status: int, content_type: str, body: bytes) -> None:
    assert status < 500, (status, body[:300])
    assert content_type.startswith("application/json"), (status, content_type)
    answer = json.loads(body)
    if status == 200:
        assert isinstance(answer["id"], str) and answer["status"] in (
            "IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"), answer
        return
    assert status in (400, 413), (status, answer)
    assert isinstance(answer["error"], str) and answer["error"] and answer["api"] == "sync", answer


def test_any_job_body_gets_a_runpod_answer_on_both_roads(daemon: RunningDaemon) -> None:
    pid = daemon.api("sync")["workers"][0]["pid"]
    host = daemon.url.removeprefix("http://")

    @EXAMPLES
    @given(route=st.sampled_from(["run", "runsync"]), query=QUERIES, body=st.one_of(JOBS, RANDOM_FIELDS, BODIES),
           media_type=MEDIA_TYPES, whole=st.booleans())
    def check(route: str, query: str, body: bytes, media_type: str, whole: bool) -> None:
        query = query if route == "runsync" else ""
        if whole:  # one write: the request is offered to the direct road
            head = (f"POST /v2/sync/{route}{query} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {media_type}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n")
            [(status_line, headers, answer)], _ = raw_answers(daemon, head.encode() + body)
            assert_runpod_answer(int(status_line.split()[1]), headers.get("content-type", ""), answer)
        else:
            reply = daemon.client.post(f"/v2/sync/{route}{query}", content=body, headers={"content-type": media_type})
            assert_runpod_answer(reply.status_code, reply.headers.get("content-type", ""), reply.content)

    check()
    assert daemon.api("sync")["workers"][0]["pid"] == pid  # no job killed its worker
    assert_no_daemon_fault(daemon)
