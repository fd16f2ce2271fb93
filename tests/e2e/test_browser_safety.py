"""What a web page can do with a local daemon: CORS only where an API allows origins, no call at
all from pages of other sites (Origin), and no answer to a Host name that is not this machine's
(DNS rebinding)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import PROJECTS, RunningDaemon, shared_daemon

APP = "https://app.example.com"
EVIL = "https://evil.example"
PREFLIGHT = {"access-control-request-method": "POST", "access-control-request-headers": "content-type,x-token"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    yield from shared_daemon("browser", tmp_path_factory)


def cors_headers(response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("access-control-")}


# -- CORS ----------------------------------------------------------------------------------------

def test_an_api_without_allow_origins_sends_no_cors_headers(daemon: RunningDaemon) -> None:
    reply = daemon.client.post("/closed", json=1)
    assert reply.status_code == 200 and reply.json() == {"hello": 1}
    assert cors_headers(reply) == {} and "vary" not in reply.headers
    own = daemon.client.post("/closed", json=1, headers={"origin": f"http://127.0.0.1:{daemon.port}"})
    assert own.status_code == 200 and own.json() == {"hello": 1}
    assert cors_headers(own) == {}


def test_a_page_of_another_site_cannot_make_the_browser_run_a_handler(daemon: RunningDaemon, tmp_path: Path) -> None:
    # what a form POST or fetch(..., {mode: "no-cors"}) on https://evil.example sends
    ran = tmp_path / "ran"
    for path in ("/closed", "/listed"):
        reply = daemon.client.post(path, content=f'{{"touch": "{ran}"}}', headers={"origin": EVIL, "content-type": "text/plain"})
        assert reply.status_code == 403 and cors_headers(reply) == {}
        api = path[1:]
        assert reply.json() == {"api": api, "error": (
            f"origin {EVIL} is not allowed to call api {api}: pages of other sites may not make a browser call it; "
            f'to let pages of {EVIL} call it, add "{EVIL}" to networking.allow_origins of api {api} in cortex.yaml')}
    assert not ran.exists()
    null = daemon.client.post("/closed", json={"touch": str(ran)}, headers={"origin": "null"})
    assert null.status_code == 403 and 'networking.allow_origins of api closed in cortex.yaml to ["*"]' in null.json()["error"]
    assert not ran.exists()
    # the same request from curl, an SDK or the daemon's own pages runs it
    assert daemon.client.post("/closed", json={"touch": str(ran)}).status_code == 200 and ran.exists()
    ran.unlink()
    own = daemon.client.post("/closed", json={"touch": str(ran)}, headers={"origin": f"http://localhost:{daemon.port}",
                                                                          "host": f"localhost:{daemon.port}"})
    assert own.status_code == 200 and ran.exists()


def test_a_foreign_preflight_gets_the_verbs_and_no_cors_headers(daemon: RunningDaemon) -> None:
    # no handler answers OPTIONS, so it is not refused; without CORS headers the browser goes no further
    for path, verbs in (("/closed", "POST, GET"), ("/listed", "POST, GET"), ("/jobs", "POST")):
        preflight = daemon.client.options(path, headers={"origin": EVIL, **PREFLIGHT})
        assert preflight.status_code == 204 and preflight.headers["allow"] == verbs
        assert cors_headers(preflight) == {}


def test_a_listed_origin_may_read_replies_without_credentials(daemon: RunningDaemon) -> None:
    reply = daemon.client.post("/listed", json=2, headers={"origin": APP})
    assert reply.status_code == 200 and reply.json() == {"hello": 2}
    assert cors_headers(reply) == {"access-control-allow-origin": APP}
    assert reply.headers["vary"] == "origin"
    # written in uppercase in cortex.yaml; browsers send origins in lowercase
    local = daemon.client.get("/listed", headers={"origin": "http://localhost:3000"})
    assert cors_headers(local) == {"access-control-allow-origin": "http://localhost:3000"}


def test_a_listed_origin_passes_the_preflight_with_the_apis_verbs(daemon: RunningDaemon) -> None:
    preflight = daemon.client.options("/listed", headers={"origin": APP, **PREFLIGHT})
    assert preflight.status_code == 204
    assert cors_headers(preflight) == {"access-control-allow-origin": APP,
                                       "access-control-allow-methods": "POST, GET",
                                       "access-control-allow-headers": "content-type,x-token"}


def test_an_unlisted_origin_is_refused_with_vary(daemon: RunningDaemon) -> None:
    reply = daemon.client.post("/listed", json=3, headers={"origin": EVIL})
    assert reply.status_code == 403 and cors_headers(reply) == {}
    assert reply.headers["vary"] == "origin"  # a cache must not give this answer to a listed origin


def test_any_origin_is_answered_with_a_star_and_never_credentials(daemon: RunningDaemon) -> None:
    reply = daemon.client.post("/anyone", json=4, headers={"origin": EVIL})
    assert reply.status_code == 200 and cors_headers(reply) == {"access-control-allow-origin": "*"}
    preflight = daemon.client.options("/anyone", headers={"origin": EVIL, **PREFLIGHT})
    assert "access-control-allow-credentials" not in preflight.headers
    assert preflight.headers["access-control-allow-origin"] == "*"


def test_async_api_answers_its_listed_origin_on_submit_poll_errors_and_preflight(daemon: RunningDaemon) -> None:
    submitted = daemon.client.post("/jobs", json={"n": 1}, headers={"origin": APP})
    assert submitted.status_code == 200
    assert cors_headers(submitted) == {"access-control-allow-origin": APP}
    polled = daemon.client.get(f"/jobs/{submitted.json()['id']}", headers={"origin": APP})
    assert polled.status_code == 200 and cors_headers(polled) == {"access-control-allow-origin": APP}
    refused = daemon.client.post("/jobs", content=b"{oops", headers={"origin": APP, "content-type": "application/json"})
    assert refused.status_code == 400 and cors_headers(refused) == {"access-control-allow-origin": APP}
    preflight = daemon.client.options("/jobs", headers={"origin": APP, **PREFLIGHT})
    assert preflight.status_code == 204 and preflight.headers["allow"] == "POST"
    assert cors_headers(preflight)["access-control-allow-methods"] == "POST"


def test_async_api_queues_no_job_for_a_page_of_another_site(daemon: RunningDaemon, tmp_path: Path) -> None:
    foreign, later = tmp_path / "foreign", tmp_path / "later"
    refused = daemon.client.post("/jobs", json={"touch": str(foreign)}, headers={"origin": EVIL})
    assert refused.status_code == 403 and "id" not in refused.json()
    assert refused.json()["error"].endswith(f'add "{EVIL}" to networking.allow_origins of api jobs in cortex.yaml')
    # a job submitted after it runs to the end; had the refused one been queued, it would have run too
    job_id = daemon.client.post("/jobs", json={"touch": str(later)}).json()["id"]
    deadline = time.monotonic() + 30
    while daemon.client.get(f"/jobs/{job_id}").json()["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.05)
    assert later.exists() and not foreign.exists()


# -- Host ----------------------------------------------------------------------------------------

def test_only_loopback_hosts_are_answered_on_every_route(daemon: RunningDaemon) -> None:
    for host in ("localhost", "api.localhost", "127.0.0.1", "127.1.2.3", "[::1]", "LocalHost."):
        assert daemon.client.get("/listed", headers={"host": f"{host}:{daemon.port}"}).json() == {"hello": "world"}
        assert daemon.client.get("/-/apis", headers={"host": host}).status_code == 200
    for path in ("/-/apis", "/listed", "/nowhere"):
        reply = daemon.client.get(path, headers={"host": f"evil.example:{daemon.port}"})
        assert reply.status_code == 403
        error = reply.json()["error"]
        assert error.startswith("host evil.example is not allowed") and "add it to allowed_hosts" in error


def test_allowed_hosts_adds_names(start_daemon) -> None:
    named = start_daemon(PROJECTS / "browser", env={"INFERD_ALLOWED_HOSTS": "inferd.lan, box.example:8888"})
    assert named.client.get("/-/healthz", headers={"host": "inferd.lan"}).status_code == 200
    assert named.client.get("/-/healthz", headers={"host": f"box.example:{named.port}"}).status_code == 200
    assert named.client.get("/-/healthz", headers={"host": "localhost"}).status_code == 200
    assert named.client.get("/-/healthz", headers={"host": "evil.example"}).status_code == 403

