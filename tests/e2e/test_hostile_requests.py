"""Property-based attack on the HTTP connection itself: request lines, header names and values,
and framing a careless or hostile client can send, written raw to the socket.

Every answer inferd gives is a complete HTTP response below 500 (a 4xx carries a JSON body
naming the problem), the worker never dies, and the daemon logs no exception."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import INTERNAL_FAULTS, PROJECTS, RunningDaemon

METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"HEAD", b"BREW", b"G\x00T", b""])
PATHS = st.one_of(
    st.sampled_from([b"/echo", b"/echo/", b"/-/apis", b"/-/ready/echo", b"/nosuch", b"*", b"/echo?x=1&x=2",
                     b"/%ff%fe", b"/echo/%2e%2e/%2e%2e", b"//echo", b"/" + b"a" * 5000]),
    st.binary(min_size=1, max_size=40).map(lambda raw: b"/" + raw.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"")),
)
VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 extra", b"http/1.1", b""])
HEADER_NAMES = st.one_of(
    st.sampled_from([b"Host", b"Content-Type", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Expect",
                     b"Origin", b"X-Request-Id", b"Upgrade", b"Cookie"]),
    st.binary(min_size=0, max_size=20),
)
HEADER_VALUES = st.one_of(
    st.sampled_from([b"localhost", b"evil.example", b"application/json", b"text/plain; charset=idna", b"chunked",
                     b"gzip, chunked", b"-1", b"99999999999999999999", b"0", b"close", b"100-continue", b"websocket",
                     b"null", b"\xff\xfe", b"a" * 3000]),
    st.binary(min_size=0, max_size=60),
)
BODIES = st.one_of(st.just(b""), st.binary(max_size=300), st.just(b"0\r\n\r\n"), st.just(b"5\r\nhello\r\n0\r\n\r\n"))


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    line = draw(METHODS) + b" " + draw(PATHS) + b" " + draw(VERSIONS)
    headers = [(b"Host", b"localhost")] if draw(st.booleans()) else []
    headers += draw(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=8))
    head = line + b"\r\n" + b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return head + b"\r\n" + draw(BODIES)


def exchange(daemon: RunningDaemon, raw: bytes) -> bytes:
    """What the server answers before it closes or goes quiet (keep-alive) for a moment."""
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)  # no more is coming: a short body must not wait body_timeout
        except OSError:
            pass  # the server answered and closed while we were still writing
        data = b""
        sock.settimeout(3)
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return data


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    running = RunningDaemon(PROJECTS / "realtime", tmp_path_factory.mktemp("hostile-requests"),
                            env={"INFERD_HEADER_TIMEOUT": "2", "INFERD_BODY_TIMEOUT": "2"})
    running.wait_ready(["echo"])
    yield running
    running.stop()
    logs = running.logs()
    assert "Exception in ASGI application" not in logs
    assert "Traceback" not in logs
    faults = [e for e in running.log_events() if e.get("event") in INTERNAL_FAULTS]
    assert not faults, faults[:3]


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=raw_requests())
def test_raw_requests_get_a_well_formed_answer_below_500(daemon: RunningDaemon, raw: bytes) -> None:
    before = [w["pid"] for w in daemon.api("echo")["workers"]]
    answer = exchange(daemon, raw)
    if answer:  # a connection may also just be closed (a request cut short by our shutdown)
        head, _, body = answer.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1.1 "), answer[:200]
        status = int(status_line.split(b" ")[1])
        assert status < 500, answer[:500]
        headers = head.lower()
        if 400 <= status and b"application/json" in headers and body:
            assert "error" in json.loads(body.split(b"\r\n")[0] if b"chunked" in headers else body)
    assert [w["pid"] for w in daemon.api("echo")["workers"]] == before
    assert daemon.client.get("/-/healthz").status_code == 200
