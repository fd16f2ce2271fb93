"""The HTTP routing table kinds declare: exact routes, prefix mounts, no silent overlap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferd.http.routing import DuplicateRoute, Mount, Route, RouteTable


async def app_a(scope, receive, send) -> None: ...
async def app_b(scope, receive, send) -> None: ...
async def app_c(scope, receive, send) -> None: ...


def test_exact_routes_ignore_a_trailing_slash_and_nothing_below() -> None:
    table = RouteTable([Route("/predict", app_a)])
    assert table.match("/predict") == (app_a, "")
    assert table.match("/predict/") == (app_a, "")
    assert table.match("/predict/x") == (None, "")
    assert table.match("/predictor") == (None, "")


def test_mounts_own_their_subtree_and_pass_the_rest_of_the_path() -> None:
    table = RouteTable([Mount("/v2/worker", app_a), Mount("/v2/worker/special", app_b), Route("/v2/worker/health", app_c)])
    assert table.match("/v2/worker") == (app_a, "")
    assert table.match("/v2/worker/status/abc-1") == (app_a, "status/abc-1")
    assert table.match("/v2/worker/special/run") == (app_b, "run")  # longest prefix wins
    assert table.match("/v2/worker/health") == (app_c, "")  # an exact route beats any mount
    assert table.match("/v2/workers") == (None, "")


def test_two_apis_on_one_path_are_refused() -> None:
    with pytest.raises(DuplicateRoute, match="/a"):
        RouteTable([Route("/a", app_a), Route("/a/", app_b)])
    with pytest.raises(DuplicateRoute):
        RouteTable([Mount("/m", app_a), Mount("/m/", app_b)])


@given(path=st.text(alphabet="/abv2-_.%x", max_size=30))
def test_any_path_routes_as_the_plain_rule_says(path: str) -> None:
    """Exact route first, else the longest mount that is the path or a parent of it."""
    table = RouteTable([Route("/a", app_a), Mount("/v2/x", app_b), Mount("/v2", app_c)])
    clean = path.rstrip("/") or "/"
    expected: tuple[object, str] = (None, "")
    if clean == "/a":
        expected = (app_a, "")
    else:
        for prefix, app in (("/v2/x", app_b), ("/v2", app_c)):
            if clean == prefix or clean.startswith(prefix + "/"):
                expected = (app, clean[len(prefix) + 1:])
                break
    assert table.match(path) == expected


def test_a_table_knows_once_whether_any_route_answers_directly() -> None:
    from inferd.http.cors import with_cors

    class Proxy:
        answers_directly = True

        async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
            pass

    async def plain(scope, receive, send):  # type: ignore[no-untyped-def]
        pass

    assert not RouteTable([Route("/a", plain), Mount("/b", with_cors(plain, [], "b"))]).has_direct
    assert RouteTable([Route("/a", plain), Mount("/web", with_cors(Proxy(), [], "web"))]).has_direct
