"""networking.allow_origins: how cortex.yaml spells it, and the CORS headers each request gets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from inferd.http.cors import CorsApp, with_cors
from inferd.http.responses import send_bytes
from inferd.spec import SpecError, parse_apis

APP = "https://app.example.com"


def networking(tmp_path: Path, origins: str) -> str:
    (tmp_path / "handler.py").write_text("class Handler:\n    pass\n")
    return (f"- name: iris\n  kind: RealtimeAPI\n  handler:\n    path: handler.py\n"
            f"  networking:\n    allow_origins: {origins}\n")


def origins(tmp_path: Path, written: str) -> tuple[str, ...]:
    return parse_apis(networking(tmp_path, written), tmp_path).api("iris").networking.allow_origins


def spec_errors(tmp_path: Path, written: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_apis(networking(tmp_path, written), tmp_path)
    return str(info.value)


# -- cortex.yaml --------------------------------------------------------------------------------

def test_no_origins_by_default(tmp_path: Path) -> None:
    (tmp_path / "handler.py").write_text("class Handler:\n    pass\n")
    spec = parse_apis("- name: iris\n  kind: RealtimeAPI\n  handler:\n    path: handler.py\n", tmp_path)
    assert spec.api("iris").networking.allow_origins == ()


def test_origins_are_kept_as_browsers_send_them(tmp_path: Path) -> None:
    written = '["HTTPS://App.Example.com", "http://localhost:3000", "https://a.example:443", "http://[::1]:80", "app://x"]'
    assert origins(tmp_path, written) == (APP, "http://localhost:3000", "https://a.example", "http://[::1]", "app://x")
    assert origins(tmp_path, '["*"]') == ("*",)
    assert origins(tmp_path, "[]") == ()


@pytest.mark.parametrize("written", ['"https://app.example.com/"', '"https://app.example.com/path"', '"app.example.com"',
                                     '"null"', '"https://a.example:99999"', '"https://*.example.com"', "1"])
def test_an_origin_that_is_not_scheme_host_port_names_file_line_and_entry(tmp_path: Path, written: str) -> None:
    text = spec_errors(tmp_path, f'["{APP}", {written}]')
    assert text.startswith('cortex.yaml:6: apis[0].networking.allow_origins[1]: must be an origin '
                           '"scheme://host[:port]" like "https://app.example.com" (no path, no trailing "/"), or "*", got ')


def test_allow_origins_must_be_a_list(tmp_path: Path) -> None:
    assert spec_errors(tmp_path, '"*"') == ('cortex.yaml:6: apis[0].networking.allow_origins: must be a list of '
                                            'origins like ["https://app.example.com"], got "*"')


def test_star_cannot_be_mixed_with_origins(tmp_path: Path) -> None:
    text = spec_errors(tmp_path, f'["*", "{APP}"]')
    assert text == 'cortex.yaml:6: apis[0].networking.allow_origins: "*" allows every origin: list it alone, or list origins without it'


# -- headers --------------------------------------------------------------------------------------

SERVED: list[str] = []  # the paths the front was called for: what reached the API


async def front(scope: Scope, receive: Receive, send: Send) -> None:
    """A front as inferd's are: OPTIONS answered with Allow, everything else with a body."""
    SERVED.append(scope["path"])
    if scope["method"] == "OPTIONS":
        await send_bytes(send, 204, [(b"allow", b"POST, GET")], b"")
    elif scope["path"] == "/own":  # a handler that sets its own CORS header
        await send_bytes(send, 200, [(b"Access-Control-Allow-Origin", b"https://own.example")], b"own")
    else:
        await send_bytes(send, 200, [(b"content-type", b"text/plain")], b"reply")


def call(allowed: tuple[str, ...], method: str, headers: dict[str, str], path: str = "/api") -> httpx.Response:
    """``method`` on ``path`` of API iris, with Host ``test`` (so its own pages are of origin http://test)."""
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=with_cors(front, allowed, "iris"))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, headers=headers)
    SERVED.clear()
    return asyncio.run(go())


def cors(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("access-control-")}


def refused(response: httpx.Response) -> str:
    """The error of a 403 the front never saw."""
    assert response.status_code == 403 and SERVED == []
    assert response.headers["content-type"] == "application/json" and response.json()["api"] == "iris"
    return str(response.json()["error"])


def test_without_origins_requests_without_origin_are_served_as_they_are() -> None:
    reply = call((), "POST", {})
    assert reply.text == "reply" and SERVED == ["/api"]
    assert cors(reply) == {} and "vary" not in reply.headers


def test_a_request_without_origin_reaches_the_front_with_the_servers_own_send() -> None:
    seen: list[object] = []

    async def recording(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(send)

    async def send(message: Message) -> None:
        pass

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "POST", "path": "/api", "headers": [(b"host", b"test")]}
    for origins in ((), ("*",)):  # nothing to add to the reply, so nothing wraps send
        asyncio.run(with_cors(recording, origins, "iris")(scope, receive, send))
    assert seen == [send, send]
    assert isinstance(with_cors(front, (), "iris"), CorsApp)  # the route is guarded all the same


def test_without_origins_a_page_of_another_site_is_refused_and_told_how_to_allow_it() -> None:
    for method in ("POST", "GET", "PUT"):
        error = refused(call((), method, {"origin": "https://evil.example", "content-type": "text/plain"}))
        assert error == ('origin https://evil.example is not allowed to call api iris: pages of other sites may not make '
                         'a browser call it; to let pages of https://evil.example call it, add "https://evil.example" '
                         'to networking.allow_origins of api iris in cortex.yaml')


def test_the_daemons_own_pages_are_served_without_cors_headers() -> None:
    reply = call((), "POST", {"origin": "http://test"})
    assert reply.text == "reply" and cors(reply) == {} and "vary" not in reply.headers
    listed = call((APP,), "POST", {"origin": "http://test"})
    assert listed.text == "reply" and cors(listed) == {} and listed.headers["vary"] == "origin"


@pytest.mark.parametrize(("host", "origin", "served"), [
    ("LocalHost:8888", "http://localhost:8888", True),  # names compare case-insensitively
    ("127.0.0.1:8888", "HTTP://127.0.0.1:8888", True),
    ("[::1]:8888", "http://[::1]:8888", True),
    ("localhost", "http://localhost", True),  # port 80: left out of both
    ("localhost:8888", "https://localhost:8888", False),  # the daemon speaks http only
    ("localhost:8888", "http://localhost:9999", False),  # another local server is another site
    ("localhost:8888", "http://localhost", False),
    ("localhost:8888", "http://127.0.0.1:8888", False),  # the page was loaded under another name
])
def test_own_origin_is_http_and_the_host_header(host: str, origin: str, served: bool) -> None:
    reply = call((), "POST", {"host": host, "origin": origin})
    assert reply.status_code == (200 if served else 403) and SERVED == (["/api"] if served else [])


def test_origin_null_is_refused_unless_every_origin_is_allowed() -> None:
    error = refused(call((APP,), "POST", {"origin": "null"}))
    assert error.startswith("origin null is not allowed to call api iris: ")
    assert error.endswith('; to let sandboxed pages and local files call it, set networking.allow_origins of api iris in cortex.yaml to ["*"]')
    assert cors(call(("*",), "POST", {"origin": "null"})) == {"access-control-allow-origin": "*"}


def test_a_listed_origin_is_echoed_with_vary_and_no_credentials() -> None:
    reply = call((APP,), "POST", {"origin": APP})
    assert reply.text == "reply" and cors(reply) == {"access-control-allow-origin": APP}
    assert reply.headers["vary"] == "origin"


def test_with_listed_origins_a_reply_without_origin_still_varies_on_it() -> None:
    # a cache that kept it must not hand it to a listed origin, which needs Access-Control-Allow-Origin
    reply = call((APP,), "POST", {})
    assert reply.text == "reply" and cors(reply) == {} and reply.headers["vary"] == "origin"


def test_preflight_of_a_listed_origin_gets_the_fronts_verbs_and_its_own_headers_back() -> None:
    reply = call((APP,), "OPTIONS", {"origin": APP, "access-control-request-method": "PUT",
                                     "access-control-request-headers": "authorization,x-token"})
    assert reply.status_code == 204
    assert cors(reply) == {"access-control-allow-origin": APP, "access-control-allow-methods": "POST, GET",
                           "access-control-allow-headers": "authorization,x-token"}


def test_an_unlisted_origin_is_refused_with_vary() -> None:
    reply = call((APP,), "POST", {"origin": "https://evil.example"})
    assert refused(reply).startswith("origin https://evil.example is not allowed to call api iris")
    assert cors(reply) == {} and reply.headers["vary"] == "origin"  # a cache must not give it to a listed origin


@pytest.mark.parametrize("allowed", [(), (APP,)])
def test_a_foreign_preflight_is_answered_by_the_front_without_cors_headers(allowed: tuple[str, ...]) -> None:
    # the front answers OPTIONS itself, no handler runs; without CORS headers the browser goes no further
    reply = call(allowed, "OPTIONS", {"origin": "https://evil.example", "access-control-request-method": "POST",
                                      "access-control-request-headers": "x-token"})
    assert reply.status_code == 204 and reply.headers["allow"] == "POST, GET" and cors(reply) == {}


def test_star_answers_any_origin_with_star_and_never_credentials() -> None:
    reply = call(("*",), "OPTIONS", {"origin": "https://evil.example", "access-control-request-method": "POST"})
    assert cors(reply) == {"access-control-allow-origin": "*", "access-control-allow-methods": "POST, GET"}
    assert "vary" not in reply.headers


def test_an_options_that_is_not_a_preflight_gets_no_preflight_headers() -> None:
    reply = call((APP,), "OPTIONS", {"origin": APP, "access-control-request-headers": "x-token"})
    assert cors(reply) == {"access-control-allow-origin": APP}


def test_a_handlers_own_cors_header_is_not_doubled() -> None:
    reply = call((APP,), "GET", {"origin": APP}, path="/own")
    assert reply.headers.get_list("access-control-allow-origin") == ["https://own.example"]
