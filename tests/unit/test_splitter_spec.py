"""kind: TrafficSplitter in cortex.yaml: every rule of spec §1 reported at its file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.kinds import unsupported_reason
from inferd.spec import ProjectSpec, SpecError, parse_apis

# lines 1-12: the APIs a splitter may name, and two it may not
MEMBERS = """\
- name: iris
  kind: RealtimeAPI
  handler: {path: handler.py}
- name: iris-v2
  kind: RealtimeAPI
  handler: {path: handler.py}
- name: queued
  kind: AsyncAPI
  handler: {path: handler.py}
- name: pod
  kind: RunPodAPI
  handler: {path: handler.py}
"""


def parse(tmp_path: Path, splitter: str, members: str = MEMBERS) -> ProjectSpec:
    (tmp_path / "handler.py").write_text("class Handler:\n    def __init__(self, config):\n        pass\n")
    return parse_apis(members + splitter, tmp_path)


def problems(tmp_path: Path, splitter: str, members: str = MEMBERS) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse(tmp_path, splitter, members)
    return str(info.value).splitlines()


def split(apis: str, extra: str = "") -> str:
    """A splitter at line 13 whose `apis:` key is on line 15 and first entry on line 16."""
    return f"- name: split\n  kind: TrafficSplitter\n  apis:\n{apis}{extra}"


def test_a_valid_splitter_answers_at_slash_name_and_keeps_its_weights(tmp_path: Path) -> None:
    members = MEMBERS + "- name: iris-v3\n  kind: RealtimeAPI\n  handler: {path: handler.py}\n"
    project = parse(tmp_path, split("    - {name: iris, weight: 70}\n    - {name: iris-v2, weight: 30}\n"
                                    "    - {name: iris-v3, weight: 100, shadow: true}\n"), members)
    api = project.api("split")
    assert api.networking.endpoint == "/split"
    assert [(t.name, t.weight, t.shadow) for t in api.traffic_splits] == [
        ("iris", 70, False), ("iris-v2", 30, False), ("iris-v3", 100, True)]
    assert api.handler is None and api.autoscaling is None
    assert unsupported_reason(api) is None  # inferd serves it: `inferd validate` exits 0


def test_an_explicit_endpoint_is_normalised(tmp_path: Path) -> None:
    project = parse(tmp_path, split("    - {name: iris, weight: 100}\n", "  networking:\n    endpoint: v1/iris/\n"))
    assert project.api("split").networking.endpoint == "/v1/iris"


def test_apis_is_required_and_a_non_empty_list(tmp_path: Path) -> None:
    assert problems(tmp_path, "- name: split\n  kind: TrafficSplitter\n") == ["cortex.yaml:13: apis[4].apis: is required"]
    assert problems(tmp_path, "- name: split\n  kind: TrafficSplitter\n  apis: []\n") == [
        "cortex.yaml:15: apis[4].apis: must be a non-empty list of {name, weight, shadow}, got an empty list"]
    assert problems(tmp_path, "- name: split\n  kind: TrafficSplitter\n  apis: {name: iris, weight: 100}\n") == [
        "cortex.yaml:15: apis[4].apis: must be a non-empty list of {name, weight, shadow}, got a mapping"]


def test_each_entry_is_a_mapping_of_known_fields(tmp_path: Path) -> None:
    found = problems(tmp_path, split("    - iris\n    - {name: iris-v2, weight: 100, weigth: 5}\n"))
    assert 'cortex.yaml:16: apis[4].apis[0]: must be a mapping, got "iris"' in found
    assert 'cortex.yaml:17: apis[4].apis[1].weigth: unknown field "weigth" (allowed: name, weight, shadow); did you mean "weight"?' in found


def test_name_and_weight_are_required(tmp_path: Path) -> None:
    found = problems(tmp_path, split("    - {weight: 100}\n    - {name: iris-v2}\n    - {name: '', weight: 0}\n"))
    assert "cortex.yaml:16: apis[4].apis[0].name: is required" in found
    assert "cortex.yaml:17: apis[4].apis[1].weight: is required" in found
    assert 'cortex.yaml:18: apis[4].apis[2].name: must be a non-empty string, got ""' in found


@pytest.mark.parametrize(("weight", "shown"), [("-1", "-1"), ("101", "101"), ("50.5", "50.5"), ("'50'", '"50"'),
                                               ("true", "true")])
def test_a_weight_is_an_integer_from_0_to_100(tmp_path: Path, weight: str, shown: str) -> None:
    found = problems(tmp_path, split(f"    - {{name: iris, weight: {weight}}}\n"))
    # the sum is not reported on top: with a weight unreadable it would be a guess
    assert found == [f"cortex.yaml:16: apis[4].apis[0].weight: must be an integer between 0 and 100, got {shown}"]


def test_shadow_is_a_boolean(tmp_path: Path) -> None:
    found = problems(tmp_path, split("    - {name: iris, weight: 100}\n    - {name: iris-v2, weight: 5, shadow: 'yes'}\n"))
    assert found == ['cortex.yaml:17: apis[4].apis[1].shadow: must be true or false, got "yes"']


def test_weights_of_the_routed_apis_add_up_to_100(tmp_path: Path) -> None:
    found = problems(tmp_path, split("    - {name: iris, weight: 70}\n    - {name: iris-v2, weight: 20}\n"))
    assert found == ["cortex.yaml:15: apis[4].apis: the weights of the non-shadow APIs must add up to 100, got 90"]


def test_the_shadow_weight_is_not_part_of_the_100(tmp_path: Path) -> None:
    parse(tmp_path, split("    - {name: iris, weight: 100}\n    - {name: iris-v2, weight: 100, shadow: true}\n"))
    found = problems(tmp_path, split("    - {name: iris, weight: 50}\n    - {name: iris-v2, weight: 50, shadow: true}\n"))
    assert found == ["cortex.yaml:15: apis[4].apis: the weights of the non-shadow APIs must add up to 100, got 50; "
                     "the shadow's weight is not counted: it is the percentage of requests mirrored to it"]


def test_at_most_one_shadow(tmp_path: Path) -> None:
    found = problems(tmp_path, split("    - {name: iris, weight: 100}\n    - {name: iris-v2, weight: 10, shadow: true}\n"
                                     "    - {name: queued, weight: 10, shadow: true}\n"))
    assert "cortex.yaml:18: apis[4].apis[2].shadow: only one API can be the shadow (first on line 17)" in found


def test_an_api_is_listed_once(tmp_path: Path) -> None:
    found = problems(tmp_path, split("    - {name: iris, weight: 50}\n    - {name: iris, weight: 50}\n"))
    assert found == ['cortex.yaml:17: apis[4].apis[1].name: "iris" is listed twice (first on line 16)']


def test_members_must_exist(tmp_path: Path) -> None:
    found = problems(tmp_path, split("    - {name: ghost, weight: 100}\n"))
    assert found == ['cortex.yaml:16: apis[4].apis[0].name: no API named "ghost" in this file']


@pytest.mark.parametrize(("member", "kind"), [("queued", "AsyncAPI"), ("pod", "RunPodAPI"), ("split", "TrafficSplitter")])
def test_members_must_be_realtime_apis(tmp_path: Path, member: str, kind: str) -> None:
    found = problems(tmp_path, split(f"    - {{name: {member}, weight: 100}}\n"))
    assert found == [f'cortex.yaml:16: apis[4].apis[0].name: "{member}" is a {kind}; '
                     "a TrafficSplitter can only route to RealtimeAPIs"]


def test_a_shadow_must_be_a_realtime_api_too(tmp_path: Path) -> None:
    found = problems(tmp_path, split("    - {name: iris, weight: 100}\n    - {name: queued, weight: 100, shadow: true}\n"))
    assert found == ['cortex.yaml:17: apis[4].apis[1].name: "queued" is a AsyncAPI; '
                     "a TrafficSplitter can only route to RealtimeAPIs"]


def test_grpc_members_are_refused(tmp_path: Path) -> None:
    (tmp_path / "grpc_api.proto").write_text('syntax = "proto3";\npackage grpc_api;\nservice S {}\n')
    members = MEMBERS.replace("- name: pod\n  kind: RunPodAPI\n  handler: {path: handler.py}\n",
                              "- name: grpc-api\n  kind: RealtimeAPI\n  handler: {path: handler.py, "
                              "protobuf_path: grpc_api.proto}\n")
    found = problems(tmp_path, split("    - {name: grpc-api, weight: 100}\n"), members)
    assert found == ['cortex.yaml:16: apis[4].apis[0].name: "grpc-api" serves gRPC; '
                     "a TrafficSplitter can only route to HTTP RealtimeAPIs"]


def test_handler_fields_do_not_belong_to_a_splitter(tmp_path: Path) -> None:
    found = problems(tmp_path, split("    - {name: iris, weight: 100}\n", "  handler: {path: handler.py}\n"
                                     "  autoscaling: {min_replicas: 2}\n"))
    assert found == ['cortex.yaml:17: apis[4].handler: unknown field "handler" (allowed: name, kind, apis, networking)',
                     "cortex.yaml:18: apis[4].autoscaling: is only supported for RealtimeAPI and AsyncAPI "
                     "(RunPodAPI takes autoscaling.min_replicas)"]


def test_its_endpoint_must_not_collide_with_a_member(tmp_path: Path) -> None:
    found = problems(tmp_path, split("    - {name: iris, weight: 100}\n", "  networking: {endpoint: /iris}\n"))
    assert found == ['cortex.yaml:17: apis[4].networking.endpoint: endpoint /iris of API "split" collides with '
                     'API "iris" (line 1)']


def test_apis_is_only_for_splitters(tmp_path: Path) -> None:
    found = problems(tmp_path, "- name: other\n  kind: RealtimeAPI\n  handler: {path: handler.py}\n"
                               "  apis: [{name: iris, weight: 100}]\n")
    assert found == ["cortex.yaml:16: apis[4].apis: is only used by TrafficSplitter"]
