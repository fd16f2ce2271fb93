"""TrafficSplitter: one endpoint in front of other RealtimeAPIs, each request routed to one of
them by weight, a share mirrored to a shadow (``inferd.http.splitter``). It has no workers of
its own: it is ready when the APIs it routes to are, and a reload that changes its weights
switches its front in place, so no request is dropped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from inferd.http.routing import BaseRoute, RouteTable
from inferd.http.splitter import SplitterEndpoint, make_split
from inferd.kinds.base import ApiRuntime, Front, Kind, KindContext, Peers, endpoint_mount
from inferd.spec import ApiSpec


class SplitterKind(Kind):
    name = "TrafficSplitter"
    has_workers = False

    def unsupported(self, api: ApiSpec) -> str | None:
        return None  # its members are checked as APIs of their own

    def front(self, runtime: ApiRuntime, context: KindContext, current: Front | None) -> Front | None:
        peers = context.peers
        if peers is None:
            return None
        runtime.extra["peers"] = peers  # describe() reads the members' states through it
        split = make_split(runtime.spec.traffic_splits)
        if isinstance(current, SplitterEndpoint):
            current.switch(split)
            front = current
        else:
            def lookup(name: str) -> tuple[str, RouteTable] | None:
                member, table = peers.runtime(name), peers.own_routes(name)
                return None if member is None or table is None else (member.endpoint, table)

            front = SplitterEndpoint(runtime.name, split, lookup, context.settings.max_body_size, context.metrics)
        runtime.extra["front"] = front
        return front

    def routes(self, runtime: ApiRuntime, front: Front) -> Sequence[BaseRoute]:
        if not isinstance(front, SplitterEndpoint):
            return ()
        # a mount: every path below the endpoint goes on to the same path below the member's
        return endpoint_mount(runtime, front)

    def describe(self, runtime: ApiRuntime) -> dict[str, Any]:
        """Its weights with each member's state; its own state is that of the APIs it routes to."""
        peers = runtime.extra.get("peers")
        states = {t.name: member_state(peers, t.name) for t in runtime.spec.traffic_splits}
        info: dict[str, Any] = {"apis": [{"name": t.name, "weight": t.weight, "shadow": t.shadow,
                                          "state": states[t.name][0]} for t in runtime.spec.traffic_splits]}
        # a shadow that is down costs the client nothing, so only the routed APIs count
        front = runtime.extra.get("front")
        if isinstance(front, SplitterEndpoint) and any(t.shadow for t in runtime.spec.traffic_splits):
            info["shadow_skipped"] = front.shadow_skipped  # mirrors dropped while the shadow was saturated
        routed = [t.name for t in runtime.spec.traffic_splits if not t.shadow and t.weight > 0]
        waiting = [name for name in routed if states[name][0] != "ready"]
        if waiting:
            name = waiting[0]
            state, error = states[name]
            info["state"] = "failed" if state == "failed" else "starting"
            info["error"] = f"api {name} is {state}" + (f": {error}" if error else "")
        return info


def member_state(peers: Peers | None, name: str) -> tuple[str, str | None]:
    member = peers.runtime(name) if peers is not None else None
    if member is None:
        return "missing", None
    row = member.describe()
    return row["state"], row.get("error")
