"""Rules that span APIs: unique names, unique endpoints, traffic splitter members."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import Collector
from .fields import Block, describe
from .model import ApiSpec, TrafficTarget

API_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_NAME = 42


def name_problem(name: str) -> str | None:
    """Why `name` cannot name an API (as cortex.yaml reports it), or None when it can."""
    if not API_NAME.fullmatch(name):
        return ("must be lower-case letters, digits and '-', start with a letter and "
                f"end with a letter or digit, got {describe(name)}")
    if len(name) > MAX_NAME:
        return f"must be at most {MAX_NAME} characters, got {len(name)}"
    if name.startswith("b-"):
        return f'must not start with "b-", got {describe(name)}'
    return None


@dataclass
class Located:
    """Where an API's cross-checked values sit in the file."""

    api: ApiSpec
    path: str  # "apis[3]"
    name_line: int
    endpoint_line: int
    targets: list[tuple[TrafficTarget, int, str]] = field(default_factory=list)  # (target, line, path)


def read_splits(parent: Block) -> tuple[tuple[TrafficTarget, ...], list[tuple[TrafficTarget, int, str]]]:
    """A TrafficSplitter's ``apis``: Cortex's rules for each entry and for the list as a whole
    (names listed once, at most one shadow, non-shadow weights adding up to 100); the members
    themselves are checked against the other APIs by ``check_project``."""
    node = parent.node("apis")
    if node is None or node.value is None:
        parent.missing("apis")
        return (), []
    if not node.is_seq or not node.value:
        got = "an empty list" if node.is_seq else describe(node.value)
        parent.issue("apis", f"must be a non-empty list of {{name, weight, shadow}}, got {got}")
        return (), []
    located = []
    weights_ok = True
    for i, item in enumerate(node.value):
        block = Block(parent.out, item, f"{parent.child('apis')}[{i}]", ("name", "weight", "shadow"), item.line)
        name = block.string("name", "", required=True) or ""
        issues = parent.out.issues
        reported = len(issues)
        weight = block.integer("weight", 0, 0, 100, required=True)
        weight_ok, reported = len(issues) == reported, len(issues)
        target = TrafficTarget(name=name, weight=weight, shadow=block.boolean("shadow", False))
        # the sum counts this weight only if it was read, and only if it is known not to be the shadow's
        weights_ok = weights_ok and len(issues) == reported and (weight_ok or target.shadow)
        located.append((target, item.line, block.path))
    _check_split_totals(parent, located, weights_ok)
    return tuple(t for t, _, _ in located), located


def _check_split_totals(parent: Block, located: list[tuple[TrafficTarget, int, str]], weights_ok: bool) -> None:
    seen: dict[str, int] = {}
    shadow_line = None
    for target, line, path in located:
        if target.name and target.name in seen:
            parent.out.add(line, f"{path}.name",
                           f"{describe(target.name)} is listed twice (first on line {seen[target.name]})")
        seen.setdefault(target.name, line)
        if target.shadow and shadow_line is not None:
            parent.out.add(line, f"{path}.shadow", f"only one API can be the shadow (first on line {shadow_line})")
        if target.shadow and shadow_line is None:
            shadow_line = line
    total = sum(t.weight for t, _, _ in located if not t.shadow)
    if total != 100 and weights_ok:  # a non-shadow weight already reported as invalid would make the sum a guess
        # as in Cortex, a shadow's weight is the share of requests mirrored to it, outside the 100
        note = "; the shadow's weight is not counted: it is the percentage of requests mirrored to it" \
            if shadow_line is not None else ""
        parent.issue("apis", f"the weights of the non-shadow APIs must add up to 100, got {total}{note}")


def check_project(out: Collector, apis: list[Located]) -> None:
    _check_names(out, apis)
    _check_endpoints(out, apis)
    _check_runpod_routes(out, apis)
    _check_split_members(out, apis)


def _check_names(out: Collector, apis: list[Located]) -> None:
    first: dict[str, int] = {}
    for item in apis:
        name = item.api.name
        if not name:
            continue  # already reported as missing
        if name in first:
            out.add(item.name_line, f"{item.path}.name",
                    f"duplicate name {describe(name)} (first defined on line {first[name]})")
        else:
            first[name] = item.name_line


def _check_endpoints(out: Collector, apis: list[Located]) -> None:
    first: dict[str, Located] = {}
    for item in apis:
        endpoint = item.api.networking.endpoint
        other = first.get(endpoint)
        if other is None:
            first[endpoint] = item
            continue
        if other.api.name == item.api.name:
            continue  # a duplicate name, already reported
        out.add(item.endpoint_line, f"{item.path}.networking.endpoint",
                f"endpoint {endpoint} of API {describe(item.api.name)} collides with API "
                f"{describe(other.api.name)} (line {other.api.line})")


def _check_runpod_routes(out: Collector, apis: list[Located]) -> None:
    # A RunPodAPI's endpoint is a base: /run, /runsync, /status/<id>... live under it.
    for base in (item for item in apis if item.api.kind == "RunPodAPI"):
        prefix = base.api.networking.endpoint + "/"
        for item in apis:
            endpoint = item.api.networking.endpoint
            if item is not base and endpoint.startswith(prefix):
                out.add(item.endpoint_line, f"{item.path}.networking.endpoint",
                        f"endpoint {endpoint} of API {describe(item.api.name)} lies under the routes of "
                        f"RunPodAPI {describe(base.api.name)} ({prefix}run, {prefix}status/<id>, ...)")


def _check_split_members(out: Collector, apis: list[Located]) -> None:
    by_name = {item.api.name: item.api for item in reversed(apis)}  # first definition wins
    for item in apis:
        for target, line, path in item.targets:
            member = by_name.get(target.name)
            if not target.name:
                continue
            if member is None:
                out.add(line, f"{path}.name", f"no API named {describe(target.name)} in this file")
            elif member.kind != "RealtimeAPI":
                out.add(line, f"{path}.name", f"{describe(target.name)} is a {member.kind}; "
                                              "a TrafficSplitter can only route to RealtimeAPIs")
            elif member.is_grpc:
                out.add(line, f"{path}.name", f"{describe(target.name)} serves gRPC; "
                                              "a TrafficSplitter can only route to HTTP RealtimeAPIs")
