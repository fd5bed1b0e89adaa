"""Host names as RPH compares and writes them.

A user may name this machine "localhost", "127.0.0.1" or "::1", and an
IPv6 address needs brackets wherever a port follows it; these answers are
kept in one place so that the config checks, the listeners, the readiness
probe and the messages agree.
"""

import ipaddress

# Listening on these takes every address of the machine, loopback included.
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})
# The names a user writes for this machine; "localhost" resolves to either.
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def bracketed(host: str) -> str:
    """`host` as it goes before ":port" in a URL or a Host header."""
    return f"[{host}]" if ":" in host else host


def is_loopback_name(host: str) -> bool:
    """Whether `host` names this machine only (a name or an address)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def same_address(one: str, other: str) -> bool:
    """Whether two hosts are one address however written."""
    return _address(one) == _address(other)


def reaches(host: str, listening: str) -> bool:
    """Whether connecting to `host` can reach a socket bound to `listening`."""
    bound = _address(listening)
    return bound in _WILDCARD_HOSTS or _address(host) == bound


def _address(host: str) -> str:
    """One spelling per address: "localhost", "127.0.0.1" and "::1" are one."""
    try:
        text = str(ipaddress.ip_address(host))
    except ValueError:
        text = host.lower()
    return "localhost" if text in _LOOPBACK else text
