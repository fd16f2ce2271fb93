"""Which names in the Host header the HTTP port answers: inferd's defence against DNS rebinding.

A site can make its own name resolve to 127.0.0.1; a browser showing one of its pages then sends
the page's requests to a local inferd, with the site's name in Host. So a daemon bound to a
loopback address answers only loopback names (``localhost``, ``*.localhost``, 127.0.0.0/8,
``::1``), as Jupyter and the Docker daemon do, plus the names in ``allowed_hosts``. Bound
elsewhere, it checks Host only when ``allowed_hosts`` is set; ``"*"`` turns the check off.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

ANY_HOST = "*"


@dataclass(frozen=True)
class HostPolicy:
    checked: bool
    allowed: frozenset[str] = frozenset()  # names from allowed_hosts, as host_name() gives them


UNCHECKED = HostPolicy(checked=False)


def host_name(host: str) -> str:
    """The name in a Host value: lowercase, without port, IPv6 brackets or a trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    if host.count(":") == 1:  # name:port; a bare IPv6 address (allowed_hosts) has several
        host = host.partition(":")[0]
    return host.rstrip(".")


def is_loopback(name: str) -> bool:
    """``localhost``, a name under it (RFC 6761 keeps those on this machine) or a loopback address."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_policy(bind_host: str, allowed_hosts: str) -> HostPolicy:
    """The policy for a daemon bound to ``bind_host`` with the ``allowed_hosts`` setting."""
    allowed = frozenset(filter(None, (host_name(entry) for entry in allowed_hosts.split(","))))
    if ANY_HOST in allowed:
        return UNCHECKED
    return HostPolicy(checked=is_loopback(host_name(bind_host)) or bool(allowed), allowed=allowed)


# Every request asks, with the same few Host values; parsing an address each time cost ~3 µs.
@functools.lru_cache(maxsize=256)
def host_refusal(policy: HostPolicy, host: bytes | None) -> str | None:
    """Why a request with this Host header is refused, or None when it is served.

    A request without Host (HTTP/1.0) is served: browsers always send one.
    """
    if not policy.checked or not host:
        return None
    name = host_name(host.decode("latin-1"))
    if is_loopback(name) or name in policy.allowed:
        return None
    return (f"host {name} is not allowed: inferd answers only localhost, loopback addresses and the names in "
            f"allowed_hosts, so that web pages cannot reach it through DNS rebinding; if clients use this name, "
            f"add it to allowed_hosts")
