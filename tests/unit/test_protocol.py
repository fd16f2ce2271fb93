"""The worker protocol: every message survives its own encoding, and nothing else decodes."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferd.worker import protocol
from inferd.worker.ipc import FrameProtocol, encode_frame

SAMPLES = [
    protocol.Init("api", "inferd.worker.runners.http:HttpRunner", "/p", "handler.py", None, {"k": [1]}, 4, "debug",
                  1024, {"batching": {"max_batch_size": 2, "batch_interval": 0.1}}),
    protocol.Ready(42, {"verbs": {"post": ["payload"]}}),
    protocol.InitFailed("RuntimeError: boom", "Traceback..."),
    protocol.Call(7, "rid-1", "post", "application/json", "a=1", [["x-k", "v"]], b'{"n": 1}'),
    protocol.Call(8, "rid-2", "get"),
    protocol.Reply(7, 200, [["content-type", "application/json"]], True, b"{}"),
    protocol.Sent(7, "rid-1"),
    protocol.Open(3, "rid", "Predict", [["k", "v"]], 1.5, "ipv4:127.0.0.1:1", b"\x00\x01"),
    protocol.Chunk(3, b"\xff" * 10),
    protocol.InputEnd(3),
    protocol.Credit(3, 2),
    protocol.Cancel(3),
    protocol.End(3, 13, "bad", True, b"reply"),
    protocol.Metric("hits", "increment", 1.0, {"a": "b"}),
    protocol.Models({"iris": {"versions": [1, 2], "loaded": [2], "latest": 2, "failed": {"1": "ValueError: x"}}}),
    protocol.Stop(),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_a_real_frame(message: protocol.Message) -> None:
    meta, body = message.encode()
    head, payload = encode_frame(meta, body)
    received: list = []
    parser = _parser(received)  # the real parser, fed the real bytes
    parser.data_received(head + payload)
    assert [protocol.decode(*frame) for frame in received] == [message]


def _parser(received: list) -> FrameProtocol:
    async def make() -> FrameProtocol:  # the parser wants a loop for threadsafe sends only
        return FrameProtocol(lambda meta, body: received.append((meta, body)), lambda exc: None)

    return asyncio.run(make())


@pytest.mark.parametrize("meta", [{}, {"t": "nope"}, {"t": "call"}, {"t": "reply", "id": 1, "status": "x", "h": []},
                                  {"t": "credit", "id": 1, "n": "many"}])
def test_frames_that_are_not_messages_raise_protocol_error(meta: dict) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(meta, b"")


def test_encoding_never_mutates_or_shares_the_callers_data() -> None:
    headers = [["a", "b"]]
    call = protocol.Call(1, "r", "post", headers=headers)
    meta, _ = call.encode()
    meta["id"] = 99
    assert call.id == 1 and json.dumps(call.encode()[0])


def test_every_message_type_is_registered_once() -> None:
    tags = [cls.TAG for cls in protocol.MESSAGES.values()]
    assert len(tags) == len(set(tags)) == 15


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(tag=st.sampled_from([*protocol.MESSAGES, "bogus"]),
       fields=st.dictionaries(st.sampled_from(["id", "rid", "verb", "status", "h", "n", "m", "md", "code", "name",
                                               "kind", "value", "api", "runner", "pid", "error", "deadline"]),
                              json_values, max_size=8),
       body=st.binary(max_size=16))
def test_any_frame_decodes_to_a_message_or_a_protocol_error(tag: str, fields: dict, body: bytes) -> None:
    """A peer's garbage never surfaces as anything but ProtocolError (the channel's to handle)."""
    try:
        message = protocol.decode({"t": tag, **fields}, body)
    except protocol.ProtocolError:
        return
    assert type(message).TAG == tag
