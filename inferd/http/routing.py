"""A routing table in starlette's shape: ``Route`` for one path, ``Mount`` for a subtree.

Built once per reload from what each kind declares and swapped whole, so a request sees one
consistent table. Exact paths are one dict lookup (the hot path); mounts are tried longest
prefix first, and the app of a mount sees the rest of the path in ``scope["path_params"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Scope

from inferd.http.protocol import DirectHandler


@dataclass(frozen=True)
class Route:
    """Exactly ``path`` (a trailing slash is ignored)."""

    path: str
    app: ASGIApp


@dataclass(frozen=True)
class Mount:
    """``prefix`` itself and every path below it (``/<endpoint>/<id>``, ``/v2/<api>/status/<id>``)."""

    prefix: str
    app: ASGIApp


BaseRoute = Route | Mount


class DuplicateRoute(ValueError):
    pass


class RouteTable:
    def __init__(self, routes: Iterable[BaseRoute] = ()) -> None:
        self.exact: dict[str, ASGIApp] = {}
        mounts: dict[str, ASGIApp] = {}
        for route in routes:
            if isinstance(route, Route):
                path = route.path.rstrip("/") or "/"
                if path in self.exact:
                    raise DuplicateRoute(f"two APIs are routed at {path}")
                self.exact[path] = route.app
            else:
                prefix = route.prefix.rstrip("/")
                if prefix in mounts:
                    raise DuplicateRoute(f"two APIs are mounted at {prefix}")
                mounts[prefix] = route.app
        self.mounts = sorted(mounts.items(), key=lambda item: len(item[0]), reverse=True)
        # the direct finder of each exact route that has one: a request on the direct road looks up once
        self.direct_exact: dict[str, DirectFinder] = {
            path: app.direct for path, app in self.exact.items() if answers_directly(app) and hasattr(app, "direct")}
        # decided once per table: with no such route, requests are never looked up twice
        self.has_direct = any(answers_directly(app) for app in (*self.exact.values(), *mounts.values()))

    def match(self, path: str) -> tuple[ASGIApp | None, str]:
        """The app for ``path`` and the part of the path below its mount ('' for exact routes)."""
        path = path.rstrip("/") or "/"
        app = self.exact.get(path)
        if app is not None:
            return app, ""
        for prefix, mounted in self.mounts:
            if path == prefix:
                return mounted, ""
            if path.startswith(prefix) and path[len(prefix)] == "/":
                return mounted, path[len(prefix) + 1:]
        return None, ""


def answers_directly(app: ASGIApp) -> bool:
    """Whether ``app``, or an app it wraps (``.app``), may answer requests directly: it says so
    with a true ``answers_directly`` class attribute."""
    current: object = app
    while current is not None:
        if getattr(type(current), "answers_directly", False):
            return True
        current = getattr(current, "app", None)
    return False


DirectFinder = Callable[[Scope], DirectHandler | None]


def direct_handler(app: ASGIApp, scope: Scope) -> DirectHandler | None:
    """The handler of ``app`` that answers this request without an ASGI task, if it has one: an
    app offers it through a ``direct(scope)`` method (wrappers such as CORS pass it on or not)."""
    direct = getattr(app, "direct", None)
    return direct(scope) if direct is not None else None
