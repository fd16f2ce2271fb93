"""The Host check: which Host headers a daemon answers, for each bind address and allowed_hosts."""

from __future__ import annotations

import pytest

from inferd.http.hosts import host_name, host_policy, host_refusal


@pytest.mark.parametrize("value, name", [
    ("localhost:8888", "localhost"), ("LocalHost.", "localhost"), ("[::1]:8888", "::1"), ("[::1]", "::1"),
    ("::1", "::1"), ("127.0.0.1:80", "127.0.0.1"), (" api.example ", "api.example"),
])
def test_host_name_drops_port_brackets_case_and_trailing_dot(value: str, name: str) -> None:
    assert host_name(value) == name


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
@pytest.mark.parametrize("host", [b"localhost", b"localhost:8888", b"app.localhost:1", b"127.0.0.1:8888",
                                  b"127.9.9.9", b"[::1]:8888", b"LOCALHOST"])
def test_loopback_bind_serves_loopback_names(bind: str, host: bytes) -> None:
    assert host_refusal(host_policy(bind, ""), host) is None


@pytest.mark.parametrize("host", [b"evil.example", b"evil.example:8888", b"localhost.evil.example",
                                  b"10.0.0.5:8888", b"[fe80::1]", b"[::1", b"127.0.0.1.evil.example"])
def test_loopback_bind_refuses_other_names(host: bytes) -> None:
    refusal = host_refusal(host_policy("127.0.0.1", ""), host)
    assert refusal is not None and "add it to allowed_hosts" in refusal


def test_refusal_names_the_host_without_its_port() -> None:
    refusal = host_refusal(host_policy("127.0.0.1", ""), b"Evil.Example:8888")
    assert refusal is not None and refusal.startswith("host evil.example is not allowed")


def test_a_request_without_host_is_served() -> None:
    policy = host_policy("127.0.0.1", "")
    assert host_refusal(policy, None) is None and host_refusal(policy, b"") is None


def test_allowed_hosts_adds_names_written_with_or_without_port() -> None:
    policy = host_policy("127.0.0.1", "inferd.lan, Box.Example:8888,,[fe80::1]")
    for host in (b"inferd.lan", b"box.example:9999", b"[fe80::1]:8888", b"localhost"):
        assert host_refusal(policy, host) is None
    assert host_refusal(policy, b"sub.inferd.lan") is not None


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "", "192.168.1.5"])
def test_other_binds_check_nothing_until_allowed_hosts_is_set(bind: str) -> None:
    assert host_refusal(host_policy(bind, ""), b"evil.example") is None
    policy = host_policy(bind, "api.example")
    assert host_refusal(policy, b"api.example") is None and host_refusal(policy, b"localhost") is None
    assert host_refusal(policy, b"evil.example") is not None


def test_star_accepts_any_host() -> None:
    assert host_refusal(host_policy("127.0.0.1", "*"), b"evil.example") is None
    assert host_refusal(host_policy("127.0.0.1", "api.example, *"), b"evil.example") is None
