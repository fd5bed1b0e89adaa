"""Noticing, within tens of milliseconds, that a backend can take requests.

Ready means the endpoint accepts a TCP connection and, when the app has a
`health` path, that path answers 2xx (llama-server binds its port at once
and answers 503 there while the model loads). A refused connection costs
microseconds on loopback, so polling often is cheap and lets the waiting
requests go the moment the backend is up, where polling once a second would
add half a second to every cold start on average.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

import trio

from rph.hosts import bracketed

# The design's budget is 50 ms from ready to noticed; polling at 20 ms
# leaves room for the health request and the first forward.
POLL_INTERVAL = 0.02

# A health probe that gets no answer in this long is tried again: a backend
# busy loading may accept and then never answer that one connection.
HEALTH_PROBE_DEADLINE = 2.0

# A health answer's status line arrives in one read on loopback; a backend
# that answers with more than this before a line end is not answering HTTP.
_STATUS_LINE_LIMIT = 4096


@dataclass(frozen=True)
class Endpoint:
    """Where a ready backend listens, resolved once per start."""

    family: socket.AddressFamily
    address: tuple[str, int] | tuple[str, int, int, int]
    host_header: str

    async def connect(self) -> trio.SocketStream:
        """Open a connection to the backend; raises OSError when refused."""
        sock = trio.socket.socket(self.family, socket.SOCK_STREAM)
        try:
            await sock.connect(self.address)
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)


async def resolve(host: str, port: int) -> list[Endpoint]:
    """Every address `host` names, in the order the resolver prefers."""
    infos = await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    host_header = f"{bracketed(host)}:{port}"
    return [
        Endpoint(family, addr, host_header)  # type: ignore[arg-type]
        for family, _, _, _, addr in infos
    ]


async def accepts_connections(candidates: list[Endpoint]) -> Endpoint | None:
    """The first candidate that accepts a TCP connection, or None."""
    for endpoint in candidates:
        try:
            stream = await endpoint.connect()
        except OSError:
            continue
        await stream.aclose()
        return endpoint
    return None


async def wait_ready(host: str, port: int, health: str | None) -> Endpoint:
    """Poll until the backend is ready; returns the endpoint that answered.

    Never returns on its own if the backend never becomes ready: the
    caller bounds it with the app's start timeout and watches the child.
    """
    while True:
        try:
            candidates = await resolve(host, port)
        except OSError:
            candidates = []  # a name that does not resolve yet is not ready
        endpoint = await accepts_connections(candidates)
        if endpoint and (health is None or await _answers_healthy(endpoint, health)):
            return endpoint
        await trio.sleep(POLL_INTERVAL)


async def _answers_healthy(endpoint: Endpoint, path: str) -> bool:
    """One health probe; a backend that accepts but stays silent is not ready."""
    with trio.move_on_after(HEALTH_PROBE_DEADLINE):
        return await _is_healthy(endpoint, path)
    return False


async def _is_healthy(endpoint: Endpoint, path: str) -> bool:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {endpoint.host_header}\r\n"
        "Connection: close\r\nUser-Agent: rph-health\r\n\r\n"
    ).encode()
    try:
        stream = await endpoint.connect()
    except OSError:
        return False
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError, OSError):
            await stream.send_all(request)
            head = b""
            while b"\n" not in head and len(head) < _STATUS_LINE_LIMIT:
                chunk = await stream.receive_some(_STATUS_LINE_LIMIT)
                if not chunk:
                    break
                head += chunk
            parts = head.split(b" ", 2)
            return len(parts) >= 2 and parts[1][:1] == b"2"
    return False
