"""Whatever body and Content-Type a client sends, a RealtimeAPI and an AsyncAPI answer it: a
payload, or 400 JSON naming what is wrong with it; never a 5xx of inferd's own, never a dead
worker, never an exception in the daemon's log."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import INTERNAL_FAULTS, RunningDaemon, shared_daemon

EXAMPLES = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
HANDLER_FAILURE = "ValueError: the handler's own failure"

MEDIA_TYPES = st.sampled_from(["application/json", "text/plain", "multipart/form-data", "application/x-www-form-urlencoded",
                               "application/octet-stream", "Application/JSON", "text/html", "x/y", "garbage", ""])
TOKEN = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters=';"\\'), min_size=1, max_size=12)
CHARSETS = st.one_of(st.sampled_from(["utf-8", "latin-1", "utf-16", "utf-7", "idna", "punycode", "undefined", "unicode_escape",
                                      "rot13", "base64", "foo", "UTF-8", '"utf-8"', ""]), TOKEN)
PARAMETERS = st.lists(st.one_of(st.tuples(st.just("charset"), CHARSETS), st.tuples(st.just("boundary"), TOKEN),
                                st.tuples(TOKEN, TOKEN)), max_size=3)
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=20)
# far below or far above the recursion limit: near it, a body may parse in the daemon and not in the worker
DEPTHS = st.sampled_from([10, 200, 5_000, 100_000])
DEEP_JSON = st.builds(lambda depth, brace: (b'{"a":' if brace else b"[") * depth + (b"}" if brace else b"]") * depth,
                      DEPTHS, st.booleans())
MULTIPART = st.builds(lambda name, data: b'--xx\r\nContent-Disposition: form-data; name="' + name + b'"\r\n\r\n' + data + b"\r\n--xx--\r\n",
                      st.binary(max_size=20), st.binary(max_size=40))
BODIES = st.one_of(st.binary(max_size=400), JSON_VALUES.map(lambda v: json.dumps(v).encode()), DEEP_JSON, MULTIPART,
                   st.text(max_size=100).map(lambda t: t.encode("utf-8")), st.text(max_size=100).map(lambda t: t.encode("utf-16")),
                   st.just(b"a=1&b=%ff&&=&c"))


def content_type(media_type: str, parameters: list[tuple[str, str]]) -> str:
    return media_type + "".join(f"; {key}={value}" for key, value in parameters)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    yield from shared_daemon("hostile", tmp_path_factory)


def worker_pids(daemon: RunningDaemon, api: str) -> list[int]:
    return [worker["pid"] for worker in daemon.api(api)["workers"]]


def assert_no_daemon_fault(daemon: RunningDaemon, handler_events: tuple[str, ...] = ("handler_exception",)) -> None:
    """No traceback but a handler's own: a handler exception logs one, nothing else may."""
    for line in daemon.logs().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            assert "Traceback" not in line, line
            continue
        name = str(event.get("event"))
        assert name not in INTERNAL_FAULTS and "Exception in ASGI application" not in name, event
        if name not in handler_events:
            assert "exception" not in event and "exc_info" not in event, event


def assert_answered(reply: Any, handler_failed: bool) -> None:
    if reply.status_code >= 500:
        assert handler_failed and reply.status_code == 500, reply.text
        assert reply.json()["error"] == HANDLER_FAILURE
    elif reply.status_code >= 400:
        assert reply.status_code == 400, reply.text
        assert reply.headers["content-type"] == "application/json"
        error = reply.json()
        assert error["api"] in ("sink", "queue") and error["error"], error


def test_realtime_answers_every_payload(daemon: RunningDaemon) -> None:
    pids = worker_pids(daemon, "sink")

    @EXAMPLES
    @given(MEDIA_TYPES, PARAMETERS, BODIES, st.booleans())
    def post(media_type: str, parameters: list[tuple[str, str]], body: bytes, fail: bool) -> None:
        reply = daemon.client.post("/sink", params={"fail": "1"} if fail else {}, content=body,
                                   headers={"content-type": content_type(media_type, parameters)})
        assert_answered(reply, fail)
        if reply.status_code == 200:
            assert reply.json()["pid"] in pids

    post()
    assert worker_pids(daemon, "sink") == pids
    assert daemon.client.post("/sink", json={"after": "fuzzing"}).json()["got"] == {"type": "dict"}
    assert_no_daemon_fault(daemon)


def test_asyncapi_refuses_what_its_worker_could_not_parse(daemon: RunningDaemon) -> None:
    pids = worker_pids(daemon, "queue")
    accepted: list[str] = []

    @EXAMPLES
    @given(MEDIA_TYPES, PARAMETERS, BODIES)
    def submit(media_type: str, parameters: list[tuple[str, str]], body: bytes) -> None:
        reply = daemon.client.post("/queue", content=body, headers={"content-type": content_type(media_type, parameters)})
        assert_answered(reply, handler_failed=False)
        if reply.status_code == 200:
            accepted.append(reply.json()["id"])

    submit()
    deadline = time.monotonic() + 30
    for job_id in accepted:  # a submission the daemon accepted, its worker parses
        while (job := daemon.client.get(f"/queue/{job_id}").json())["status"] not in ("completed", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.02)
        assert job["status"] == "completed", job
    assert worker_pids(daemon, "queue") == pids
    assert_no_daemon_fault(daemon)


@pytest.mark.parametrize(("api", "body", "content_type", "error"), [
    ("sink", b"[" * 100_000 + b"]" * 100_000, "application/json", "JSON body is nested too deeply to parse"),
    ("queue", b"[" * 100_000 + b"]" * 100_000, "application/json", "JSON body is nested too deeply to parse"),
    ("sink", b"a..b", "text/plain; charset=idna", "charset 'idna' in Content-Type is not a character set"),
    ("queue", b"\xff", "text/plain; charset=idna", "charset 'idna' in Content-Type is not a character set"),
    ("sink", b"x", "text/plain; charset=undefined", "charset 'undefined' in Content-Type is not a character set"),
    ("queue", b"\xff", "text/plain; charset=utf-8", "body is not valid utf-8: 'utf-8' codec can't decode byte 0xff in "
                                                    "position 0: invalid start byte"),
    ("sink", b"--xx\r\n", "multipart/form-data; boundary=xx; charset=idna",
     "charset 'idna' in Content-Type is not a character set"),
], ids=["deep-json-realtime", "deep-json-async", "idna-realtime", "idna-async", "undefined-realtime", "bad-utf8-async",
        "idna-multipart-realtime"])
def test_known_hostile_payloads_are_400(daemon: RunningDaemon, api: str, body: bytes, content_type: str, error: str) -> None:
    reply = daemon.client.post(f"/{api}", content=body, headers={"content-type": content_type})
    assert reply.status_code == 400, reply.text
    assert reply.json() == {"error": error, "api": api}
    assert_no_daemon_fault(daemon)
