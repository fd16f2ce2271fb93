"""A handler's return value that cannot become a response is a RenderError (the worker's 500
naming the handler's fault), never an exception that escapes as an inferd error."""

from __future__ import annotations

import pytest

from inferd.worker.render import RenderError, render, render_json


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("renderer", [render, render_json])
def test_too_deeply_nested_result_is_a_render_error(renderer) -> None:
    with pytest.raises(RenderError, match="nested too deeply"):
        renderer(nested(100_000))


@pytest.mark.parametrize("renderer", [render, render_json])
def test_unserialisable_result_is_a_render_error(renderer) -> None:
    with pytest.raises(RenderError, match="not JSON-serialisable"):
        renderer({"x": object()})
