"""kind: TrafficSplitter against a real daemon: weights, the shadow, forwarding, status, reload."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import PROJECTS, RunningDaemon, shared_daemon


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    yield from shared_daemon("splitter", tmp_path_factory)


def count(daemon: RunningDaemon, api: str) -> int:
    """POSTs the API's worker has received, routed or mirrored (its handle_get says)."""
    return int(daemon.client.get(f"/{api}").json()["count"])


def wait_for_count(daemon: RunningDaemon, api: str, expected: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    seen = count(daemon, api)
    while seen < expected and time.monotonic() < deadline:
        time.sleep(0.1)
        seen = count(daemon, api)
    return seen


def post_many(url: str, path: str, n: int, threads: int = 8) -> list[httpx.Response]:
    local = threading.local()

    def post(i: int) -> httpx.Response:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=30)
        return local.client.post(path, json={"i": i})

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(post, range(n)))


def test_2000_requests_split_70_30_and_the_shadow_sees_every_one(daemon: RunningDaemon) -> None:
    mirrored_before = count(daemon, "mirror")
    n = 2000
    replies = post_many(daemon.url, "/split", n)
    assert {r.status_code for r in replies} == {200}
    counts = Counter(r.json()["api"] for r in replies)
    assert set(counts) == {"a", "b"}
    p = 0.7
    bound = 4.5 * math.sqrt(n * p * (1 - p))  # 4.5 sigma of Binomial(2000, 0.7): about 92
    assert abs(counts["a"] - n * p) < bound, counts
    # the shadow (weight 100) got a copy of every request, none twice
    assert wait_for_count(daemon, "mirror", mirrored_before + n) == mirrored_before + n
    time.sleep(0.3)
    assert count(daemon, "mirror") == mirrored_before + n


def test_a_failing_slow_shadow_never_reaches_the_client(daemon: RunningDaemon) -> None:
    received_before = count(daemon, "broken")
    started = time.monotonic()
    replies = [daemon.client.post("/v1/careful", json={"k": k}) for k in range(3)]
    elapsed = time.monotonic() - started
    # each copy takes the shadow 1 s and then raises: the client waits for neither
    assert [(r.status_code, r.json()["api"], r.json()["payload"]) for r in replies] == [
        (200, "a", {"k": 0}), (200, "a", {"k": 1}), (200, "a", {"k": 2})]
    assert elapsed < 2.5, elapsed
    assert wait_for_count(daemon, "broken", received_before + 3, timeout=30) == received_before + 3
    # the shadow did fail: the handler raised, and its own API answered 500 to the mirror
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and 'code="500"' not in metrics_of(daemon, "broken"):
        time.sleep(0.1)
    assert 'code="500"' in metrics_of(daemon, "broken")
    assert 'code="500"' not in metrics_of(daemon, "careful")


def metrics_of(daemon: RunningDaemon, api: str) -> str:
    return "\n".join(line for line in daemon.client.get("/-/metrics").text.splitlines() if f'api="{api}"' in line)


def test_verbs_query_headers_and_sub_paths_reach_the_api_as_sent(daemon: RunningDaemon) -> None:
    reply = daemon.client.post("/split", json={"x": 1}, headers={"x-test": "t1", "x-request-id": "split-rid-1"})
    assert reply.json()["payload"] == {"x": 1} and reply.json()["header"] == "t1"
    assert reply.headers["x-request-id"] == "split-rid-1"
    got = daemon.client.get("/split?lang=en&n=2")
    assert got.status_code == 200 and got.json()["query"] == {"lang": "en", "n": "2"}
    assert daemon.client.put("/split", json={}).status_code == 405  # as the API itself answers it
    info = daemon.client.get("/split/info")
    assert (info.status_code, info.json()) == (200, {})
    assert daemon.client.get("/split/nothing/here").status_code == 404


def test_it_shows_in_apis_ready_and_status_with_its_weights(daemon: RunningDaemon) -> None:
    row = daemon.api("split")
    assert (row["kind"], row["endpoint"], row["state"], row["workers"]) == ("TrafficSplitter", "/split", "ready", [])
    assert row["apis"] == [{"name": "a", "weight": 70, "shadow": False, "state": "ready"},
                           {"name": "b", "weight": 30, "shadow": False, "state": "ready"},
                           {"name": "mirror", "weight": 100, "shadow": True, "state": "ready"}]
    assert daemon.client.get("/-/ready/split").json() == {"api": "split", "ready": True, "state": "ready"}
    table = cli(daemon, "status")
    assert table.returncode == 0 and any(line.split()[:3] == ["split", "TrafficSplitter", "/split"]
                                         for line in table.stdout.splitlines())
    detail = cli(daemon, "status", "split")
    assert detail.returncode == 0, detail.stderr
    assert "  routes 70% to a (ready)\n  routes 30% to b (ready)\n  shadow, mirrors 100% to mirror (ready)" in detail.stdout


def cli(daemon: RunningDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inferd", *args, "--state-dir", str(daemon.state_dir)],
                          capture_output=True, text=True, timeout=120)


RELOADED = """\
- name: a
  kind: RealtimeAPI
  handler: {path: member.py, threads_per_process: 4, config: {name: a}}
- name: b
  kind: RealtimeAPI
  handler: {path: member.py, threads_per_process: 4, config: {name: b}}
- name: split
  kind: TrafficSplitter
  apis: [{name: a, weight: 70}, {name: b, weight: 30}]
"""


def test_a_reload_changes_the_weights_under_load_and_drops_nothing(tmp_path: Path, start_daemon) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(PROJECTS / "splitter" / "member.py", project)
    (project / "cortex.yaml").write_text(RELOADED)
    daemon = start_daemon(project)
    daemon.wait_ready()
    pids = {name: daemon.api(name)["workers"][0]["pid"] for name in ("a", "b")}
    outcomes: list[tuple[float, int, str | None]] = []
    errors: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=daemon.url, timeout=30) as client:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    reply = client.post("/split", json={})
                    outcomes.append((sent, reply.status_code, reply.json().get("api")))
                except (httpx.HTTPError, ValueError) as exc:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        edited = time.monotonic()
        (project / "cortex.yaml").write_text(RELOADED.replace("weight: 70}, {name: b, weight: 30",
                                                              "weight: 0}, {name: b, weight: 100"))
        result = cli(daemon, "reload")
        reloaded = time.monotonic()
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert result.returncode == 0, result.stderr
    assert "replaced split" in result.stdout and "kept a, b" in result.stdout
    assert errors == []
    assert {status for _, status, _ in outcomes} == {200}
    before = Counter(api for sent, _, api in outcomes if sent < edited)
    during = [api for sent, _, api in outcomes if edited <= sent <= reloaded]
    after = Counter(api for sent, _, api in outcomes if sent > reloaded)
    assert before["a"] > 0 and before["b"] > 0, before
    assert during, "no request was sent while the reload ran"
    assert set(after) == {"b"} and after["b"] > 10, after
    assert {name: daemon.api(name)["workers"][0]["pid"] for name in ("a", "b")} == pids  # members untouched
    assert daemon.api("split")["apis"][1] == {"name": "b", "weight": 100, "shadow": False, "state": "ready"}
