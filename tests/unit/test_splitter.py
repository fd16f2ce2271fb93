"""TrafficSplitter: the weighted choice (pure), the front against fake pools, and how the
deployment and a reload see a kind without workers."""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from inferd.deployment import Deployment, is_ready
from inferd.http.app import InferdApp
from inferd.http.cors import with_cors
from inferd.http.realtime import RealtimeEndpoint
from inferd.http.routing import Mount, Route, RouteTable
from inferd.http.splitter import Split, SplitterEndpoint, choose, make_split, mirrors, with_request_id
from inferd.kinds import get_kind
from inferd.kinds.base import KindContext
from inferd.kinds.realtime import model_info
from inferd.metrics import Metrics
from inferd.reload import _readiness, api_digests, plan_reload
from inferd.settings import Settings
from inferd.spec import TrafficTarget, parse_apis
from inferd.worker import protocol
from inferd.worker.backend import Response


def targets(*spec: tuple[str, int] | tuple[str, int, bool]) -> list[TrafficTarget]:
    return [TrafficTarget(*item) for item in spec]


# -- the weighted choice ------------------------------------------------------------------------

def test_a_split_keeps_the_routed_apis_in_order_and_the_shadow_apart() -> None:
    split = make_split(targets(("a", 70), ("shadow", 25, True), ("b", 30)))
    assert split == Split(("a", "b"), (70, 100), "shadow", 25)
    assert make_split(targets(("a", 100))).shadow is None


def test_each_api_owns_a_band_of_rolls_as_wide_as_its_weight() -> None:
    split = make_split(targets(("a", 70), ("b", 30)))
    assert [choose(split, roll) for roll in (0.0, 35.5, 69.999, 70.0, 99.999)] == ["a", "a", "a", "b", "b"]


def test_a_weight_of_zero_is_never_chosen() -> None:
    split = make_split(targets(("zero", 0), ("a", 50), ("none", 0), ("b", 50), ("last", 0)))
    rolls = [i / 10 for i in range(1000)] + [99.99999999999999]
    assert {choose(split, roll) for roll in rolls} == {"a", "b"}
    assert choose(make_split(targets(("off", 0), ("all", 100))), 0.0) == "all"


def test_the_shadow_weight_is_the_share_mirrored() -> None:
    assert all(mirrors(make_split(targets(("a", 100), ("s", 100, True))), roll) for roll in (0.0, 50.0, 99.999))
    assert not any(mirrors(make_split(targets(("a", 100), ("s", 0, True))), roll) for roll in (0.0, 50.0))
    quarter = make_split(targets(("a", 100), ("s", 25, True)))
    assert (mirrors(quarter, 24.999), mirrors(quarter, 25.0)) == (True, False)
    assert not mirrors(make_split(targets(("a", 100))), 0.0)


def test_random_rolls_follow_the_weights_within_a_binomial_bound() -> None:
    split = make_split(targets(("a", 70), ("b", 20), ("c", 10)))
    rng = random.Random(12)
    n = 100_000
    counts = Counter(choose(split, rng.random() * 100) for _ in range(n))
    for name, weight in (("a", 70), ("b", 20), ("c", 10)):
        p = weight / 100
        assert abs(counts[name] - n * p) < 4.5 * math.sqrt(n * p * (1 - p)), counts


def test_a_request_id_is_kept_when_usable_and_made_otherwise() -> None:
    kept = [(b"x-request-id", b"abc-1"), (b"accept", b"*/*")]
    assert with_request_id(kept) == ("abc-1", kept)
    rid, headers = with_request_id([(b"x-request-id", b"bad id!"), (b"accept", b"*/*")])
    assert len(rid) == 32 and headers == [(b"accept", b"*/*"), (b"x-request-id", rid.encode())]


# -- the front, over fake pools --------------------------------------------------------------------

class FakePool:
    def __init__(self, name: str, outcome: Any = None) -> None:
        self.info = {"verbs": {"post": ["payload", "headers"], "get": []}}
        self.name = name
        self.outcome = outcome
        self.calls: list[protocol.Call] = []

    async def wait_info(self) -> dict[str, Any]:
        return self.info

    async def call(self, call: protocol.Call) -> Response:
        self.calls.append(call)
        if isinstance(self.outcome, asyncio.Event):
            await self.outcome.wait()
        elif isinstance(self.outcome, Exception):
            raise self.outcome
        return Response(200, [["content-type", "text/plain"]], self.name.encode(), None)


class Stage:
    """Realtime fronts for the named fake pools, at /<name>, and a splitter in front of them."""

    def __init__(self, pools: dict[str, FakePool], split: list[TrafficTarget], origins: tuple[str, ...] = ()) -> None:
        metrics = Metrics()
        self.tables = {}
        for name, pool in pools.items():
            front = RealtimeEndpoint(name, pool, 1024, metrics)  # type: ignore[arg-type]
            self.tables[name] = RouteTable([Route(f"/{name}", with_cors(front, (), name)),
                                            Route(f"/{name}/info", with_cors(model_info, (), name))])
        self.splitter = SplitterEndpoint("split", make_split(split), self.lookup, 1024, metrics)
        self.app = InferdApp(system=self.splitter)
        self.app.set_routes(RouteTable([Mount("/split", with_cors(self.splitter, origins, "split"))]))

    def lookup(self, name: str) -> tuple[str, RouteTable] | None:
        table = self.tables.get(name)
        return None if table is None else (f"/{name}", table)

    def requests(self, *calls: tuple[str, str, dict[str, Any]], settle: bool = True) -> list[httpx.Response]:
        async def go() -> list[httpx.Response]:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                replies = [await client.request(method, path, **kwargs) for method, path, kwargs in calls]
            if settle:
                await asyncio.gather(*self.splitter.shadows)
            else:
                await asyncio.sleep(0.05)  # the mirrored calls get as far as they can
            for task in self.splitter.shadows:
                task.cancel()
            return replies
        return asyncio.run(go())


def test_a_request_reaches_the_chosen_api_as_it_was_sent_and_the_shadow_gets_a_copy() -> None:
    pools = {"a": FakePool("a"), "b": FakePool("b"), "s": FakePool("s")}
    stage = Stage(pools, targets(("a", 100), ("b", 0), ("s", 100, True)))
    [reply] = stage.requests(("POST", "/split?lang=en", {"content": b'{"x": 1}', "headers": {
        "content-type": "application/json", "x-request-id": "rid-7", "x-test": "v"}}))
    assert (reply.status_code, reply.text, reply.headers["x-request-id"]) == (200, "a", "rid-7")
    assert pools["b"].calls == []
    for name in ("a", "s"):
        [call] = pools[name].calls
        assert (call.verb, call.rid, call.query, call.content_type, call.body) == (
            "post", "rid-7", "lang=en", "application/json", b'{"x": 1}')
        assert ["x-test", "v"] in (call.headers or [])


def test_routed_and_mirrored_calls_share_a_request_id_the_client_did_not_send() -> None:
    pools = {"a": FakePool("a"), "s": FakePool("s")}
    [reply] = Stage(pools, targets(("a", 100), ("s", 100, True))).requests(("POST", "/split", {"content": b"x"}))
    assert pools["a"].calls[0].rid == pools["s"].calls[0].rid == reply.headers["x-request-id"]


def test_sub_paths_go_to_the_same_path_below_the_chosen_api() -> None:
    stage = Stage({"a": FakePool("a")}, targets(("a", 100)))
    info, missing, slash = stage.requests(("GET", "/split/info", {}), ("GET", "/split/nope", {}),
                                          ("GET", "/split/", {}))
    assert (info.status_code, info.json()) == (200, {})
    assert missing.status_code == 404 and missing.json() == {"error": "no api is served at /split/nope"}
    assert slash.status_code == 200 and slash.text == "a"


def test_a_failing_shadow_never_reaches_the_client() -> None:
    pools = {"a": FakePool("a"), "s": FakePool("s", RuntimeError("shadow blew up"))}
    replies = Stage(pools, targets(("a", 100), ("s", 100, True))).requests(
        *[("POST", "/split", {"content": b"x"})] * 3)
    assert [(r.status_code, r.text) for r in replies] == [(200, "a")] * 3
    assert len(pools["s"].calls) == 3


def test_a_slow_shadow_does_not_hold_the_answer() -> None:
    never = asyncio.Event()
    pools = {"a": FakePool("a"), "s": FakePool("s", never)}
    stage = Stage(pools, targets(("a", 100), ("s", 100, True)))
    [reply] = stage.requests(("POST", "/split", {"content": b"x"}), settle=False)
    assert reply.text == "a" and len(pools["s"].calls) == 1


def test_a_switch_changes_the_weights_of_the_next_requests() -> None:
    pools = {"a": FakePool("a"), "b": FakePool("b")}
    stage = Stage(pools, targets(("a", 100), ("b", 0)))
    assert {r.text for r in stage.requests(*[("POST", "/split", {})] * 5)} == {"a"}
    stage.splitter.switch(make_split(targets(("a", 0), ("b", 100))))
    assert {r.text for r in stage.requests(*[("POST", "/split", {})] * 5)} == {"b"}


def test_an_api_that_is_not_serving_is_a_503_naming_it() -> None:
    stage = Stage({"a": FakePool("a")}, targets(("gone", 100)))
    [reply] = stage.requests(("POST", "/split", {}))
    assert reply.status_code == 503
    assert reply.json() == {"error": "api gone, which split routed this request to, is not serving", "api": "split"}


def test_a_body_over_the_limit_is_refused_once_for_both() -> None:
    pools = {"a": FakePool("a"), "s": FakePool("s")}
    [reply] = Stage(pools, targets(("a", 100), ("s", 100, True))).requests(("POST", "/split", {"content": b"x" * 2000}))
    assert reply.status_code == 413 and pools["a"].calls == pools["s"].calls == []


def test_the_splitters_origins_stand_in_for_the_targets() -> None:
    stage = Stage({"a": FakePool("a")}, targets(("a", 100)), origins=("https://app.example",))
    allowed, foreign = stage.requests(("POST", "/split", {"headers": {"origin": "https://app.example"}}),
                                      ("POST", "/split", {"headers": {"origin": "https://evil.example"}}))
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert foreign.status_code == 403


# -- in the deployment and on reload ------------------------------------------------------------------

HANDLER = "class Handler:\n    def __init__(self, config):\n        pass\n    def handle_post(self, payload):\n        return 1\n"
PROJECT = """\
- name: a
  kind: RealtimeAPI
  handler: {path: handler.py}
- name: b
  kind: RealtimeAPI
  handler: {path: handler.py}
- name: split
  kind: TrafficSplitter
  apis: [{name: a, weight: 70}, {name: b, weight: 30}]
"""


class ReadyPool:
    state = "ready"
    error = None
    info = None

    def describe(self) -> dict[str, Any]:
        return {"state": "ready", "desired_workers": 1, "ready_workers": 1, "restarts": 0, "workers": []}


class FailedPool(ReadyPool):
    state = "failed"
    error = "model weights not found"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "state": "failed", "ready_workers": 0}


def deployment(tmp_path: Path, text: str = PROJECT) -> tuple[Deployment, Any]:
    (tmp_path / "handler.py").write_text(HANDLER)
    (tmp_path / "cortex.yaml").write_text(text)
    spec = parse_apis(text, tmp_path)
    context = KindContext(Settings(), Metrics(), None, tmp_path / "protos")
    deploy = Deployment(context, {})
    built = deploy.build(spec, {}, (), api_digests(spec), [api.name for api in spec.apis])
    return deploy, built


def test_a_splitter_has_no_pool_and_is_ready_when_its_routed_apis_are(tmp_path: Path) -> None:
    deploy, built = deployment(tmp_path)
    assert built["split"].pool is None and built["split"].error is None and built["a"].pool is not None
    deploy.apis.update({"a": built["a"], "b": built["b"]})  # pools not started: "starting"
    deploy.install(built["split"])
    row = built["split"].describe()
    assert (row["kind"], row["endpoint"], row["state"], row["error"]) == (
        "TrafficSplitter", "/split", "starting", "api a is starting")
    assert row["apis"] == [{"name": "a", "weight": 70, "shadow": False, "state": "starting"},
                           {"name": "b", "weight": 30, "shadow": False, "state": "starting"}]
    assert (row["desired_workers"], row["workers"]) == (0, [])
    assert deploy.readiness()["split"] is False
    built["a"].pool = built["b"].pool = ReadyPool()
    assert built["split"].describe()["state"] == "ready" and is_ready(built["split"])
    assert deploy.readiness() == {"a": True, "b": True, "split": True}
    built["b"].pool = FailedPool()
    row = built["split"].describe()
    assert (row["state"], row["error"]) == ("failed", "api b is failed: model weights not found")
    assert not is_ready(built["split"])


def test_the_splitters_routes_forward_through_the_members_own_tables(tmp_path: Path) -> None:
    deploy, built = deployment(tmp_path)
    for name in ("a", "b"):
        deploy.apis[name] = built[name]
        deploy.fronts[name] = get_kind("RealtimeAPI").front(built[name], deploy.context, None)  # type: ignore[union-attr]
    deploy.install(built["split"])
    table = deploy.routes()
    assert table.mounts[0][0] == "/split" and set(table.exact) == {"/a", "/a/info", "/b", "/b/info"}
    assert set(deploy.tables) == {"a", "b", "split"} and deploy.own_routes("a").exact.keys() == {"/a", "/a/info"}


def test_a_weight_change_replaces_only_the_splitter_and_needs_no_start(tmp_path: Path) -> None:
    before = deployment(tmp_path)[1]
    after = deployment(tmp_path, PROJECT.replace("weight: 70}, {name: b, weight: 30", "weight: 10}, {name: b, weight: 90"))[1]
    plan = plan_reload({n: rt.digest for n, rt in before.items()}, {n: rt.digest for n, rt in after.items()})
    assert plan.replace == ("split",) and plan.keep == ("a", "b")
    assert asyncio.run(_readiness(after["split"], 1.0)) is None


@pytest.mark.parametrize("weights", [(70, 30), (0, 100)])
def test_the_front_survives_a_reload_with_the_new_weights(tmp_path: Path, weights: tuple[int, int]) -> None:
    deploy, built = deployment(tmp_path)
    deploy.install(built["split"])
    front = deploy.fronts["split"]
    text = PROJECT.replace("weight: 70}, {name: b, weight: 30", f"weight: {weights[0]}}}, {{name: b, weight: {weights[1]}")
    replacement = deployment(tmp_path, text)[1]["split"]
    previous = deploy.install(replacement)
    assert previous is built["split"] and deploy.fronts["split"] is front
    assert isinstance(front, SplitterEndpoint) and front.split.bounds == (weights[0], 100)
