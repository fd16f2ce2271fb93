"""The payload parser: every body a client can send is either a payload or a PayloadError."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import FormData

from inferd.payload import PayloadError, is_form, parse_form, parse_payload

FORM = b'--xx\r\nContent-Disposition: form-data; name="field"\r\n\r\nvalue\r\n--xx--\r\n'


def parse(content_type: str, body: bytes) -> object:
    if is_form(content_type):
        return asyncio.run(parse_form(content_type, body, 1 << 20))
    return parse_payload(content_type, body)


def refusal(content_type: str, body: bytes) -> str:
    with pytest.raises(PayloadError) as caught:
        parse(content_type, body)
    return str(caught.value)


def test_json_nested_too_deeply_is_a_payload_error() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert refusal("application/json", deep) == "JSON body is nested too deeply to parse"
    assert refusal("application/json", b'{"a": ' * 100_000) == "JSON body is nested too deeply to parse"


def test_malformed_json_names_the_parse_error() -> None:
    assert refusal("application/json", b"{oops").startswith("malformed JSON body: Expecting property name")
    assert refusal("application/json", b"\xff\xfe\xfd").startswith("malformed JSON body:")
    assert refusal("application/json", b"").startswith("malformed JSON body:")
    assert parse("application/json; charset=idna", b'{"a": [1]}') == {"a": [1]}  # JSON has no charset


@pytest.mark.parametrize(("content_type", "body", "expected"), [
    ("text/plain", "café".encode(), "café"),
    ("text/plain; charset=latin-1", "café".encode("latin-1"), "café"),
    ('text/plain; charset="ISO-8859-1"', b"caf\xe9", "café"),
    ("text/plain; charset=utf-16", "hé".encode("utf-16"), "hé"),
    ("text/plain; charset=utf-7", "hé".encode("utf-7"), "hé"),
])
def test_text_in_its_charset(content_type: str, body: bytes, expected: str) -> None:
    assert parse(content_type, body) == expected


@pytest.mark.parametrize("name", ["idna", "IDNA", "punycode", "undefined", "unicode_escape", "raw_unicode_escape"])
def test_python_only_text_codecs_are_not_charsets(name: str) -> None:
    assert refusal(f"text/plain; charset={name}", b"a..b") == f"charset {name!r} in Content-Type is not a character set"


@pytest.mark.parametrize("name", ["rot13", "base64", "zlib", "hex"])
def test_bytes_codecs_are_not_charsets(name: str) -> None:
    assert refusal(f"text/plain; charset={name}", b"abcd") == f"charset {name!r} in Content-Type is not a character set"


def test_unknown_and_invalid_charset_names() -> None:
    assert refusal("text/plain; charset=foo", b"x") == "unknown charset 'foo' in Content-Type"
    assert refusal("text/plain; charset=utf\x008", b"x") == "charset 'utf\\x008' in Content-Type is not a valid charset name"
    long = refusal("text/plain; charset=" + "u" * 5000, b"x")
    assert long.endswith("'... in Content-Type is not a valid charset name") and len(long) < 200
    assert refusal("text/plain; charset=aliases", b"x") == "unknown charset 'aliases' in Content-Type"


def test_undecodable_text_names_its_charset() -> None:
    assert refusal("text/plain", b"\xff").startswith("body is not valid utf-8: 'utf-8' codec can't decode byte 0xff")
    assert refusal("text/plain; charset=utf-7", b"+\xff").startswith("body is not valid utf-7:")
    assert refusal("text/plain; charset=ascii", b"\x80").startswith("body is not valid ascii:")


def test_other_types_are_bytes_unparsed() -> None:
    assert parse("application/octet-stream", b"\x00\xff") == b"\x00\xff"
    assert parse("", b"[[[") == b"[[["
    assert parse("image/png; charset=idna", b"\x89PNG") == b"\x89PNG"


def test_forms_parse_and_malformed_ones_are_refused() -> None:
    form = parse("multipart/form-data; boundary=xx", FORM)
    assert isinstance(form, FormData) and form["field"] == "value"
    assert parse("application/x-www-form-urlencoded", b"a=1&b=%ff") == FormData([("a", "1"), ("b", "\ufffd")])
    assert refusal("multipart/form-data", FORM) == "malformed form body: Missing boundary in multipart."
    assert refusal("multipart/form-data; boundary=xx", b"garbage") == "malformed form body: Invalid multipart data."
    assert refusal("multipart/form-data; boundary=xx; charset=idna", FORM) == \
        "charset 'idna' in Content-Type is not a character set"
    assert refusal("multipart/form-data; boundary=xx; charset=nope", FORM) == "unknown charset 'nope' in Content-Type"
    assert parse("multipart/form-data; boundary=xx; charset=latin-1", FORM)["field"] == "value"  # type: ignore[index]


CONTENT_TYPES = st.sampled_from(["application/json", "text/plain", "multipart/form-data", "application/x-www-form-urlencoded",
                                 "application/octet-stream", "TEXT/Plain", ""])
PARAMETERS = st.lists(st.tuples(st.sampled_from(["charset", "Charset", "boundary", "charset*"]),
                                st.one_of(st.sampled_from(["utf-8", "idna", "utf-7", "foo", "rot13", "punycode", '"utf-16"', "xx", ""]),
                                          st.text(st.characters(max_codepoint=255), max_size=12))),
                      max_size=3)
BODIES = st.one_of(st.binary(max_size=300), st.just(b"[" * 5000), st.just(FORM),
                   st.builds(lambda head, data: b"--xx\r\n" + head + b"\r\n\r\n" + data + b"\r\n--xx--\r\n",
                             st.binary(max_size=60), st.binary(max_size=30)))


@settings(max_examples=300, deadline=None)
@given(CONTENT_TYPES, PARAMETERS, BODIES)
def test_any_body_is_a_payload_or_a_payload_error(kind: str, parameters: list[tuple[str, str]], body: bytes) -> None:
    content_type = kind + "".join(f"; {key}={value}" for key, value in parameters)
    try:
        parse(content_type, body)
    except PayloadError:
        pass
