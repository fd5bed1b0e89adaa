"""The connection to a backend that carries one client's requests.

It is kept between requests of a keep-alive client while they go to the
same start of the same app, and dropped as soon as it could carry anything
but a clean next exchange: the backend closed it, bytes arrived that answer
nothing, or RPH passed a client's half-close on through it.
"""

from __future__ import annotations

import contextlib

import trio

from rph.errors import BackendFailed
from rph.net import fastio
from rph.proc.readiness import Endpoint

# Below this the head and body go out in one write (one segment on the
# wire); above it, joining them would copy a large body for nothing.
JOIN_BELOW = 64 * 1024

BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class UpstreamClosed(BackendFailed):
    """The backend closed or reset the connection before any response byte.

    On a kept connection this is a backend's idle timeout racing the next
    request: the request never reached it, and may go again on a new one.
    """


def ended_before_answer(upstream: Upstream, what: str) -> BackendFailed:
    """The error for a backend that closed or reset (`what`) before its
    response head was whole: UpstreamClosed if it sent nothing at all."""
    if upstream.buffer:
        return BackendFailed(what)
    return UpstreamClosed(what)


class Upstream:
    """A connection to one start of a backend, reusable between requests."""

    def __init__(self, stream: trio.SocketStream, owner: Endpoint) -> None:
        self.stream, raw = fastio.adopt(stream)
        self.fast = fastio.FastSocket(raw)
        self.owner = owner  # the start it belongs to; a new start, a new socket
        self.buffer = bytearray()
        self.uses = 0
        self.half_closed = False

    def __repr__(self) -> str:
        return f"<Upstream uses={self.uses} half_closed={self.half_closed}>"

    def is_fit_for(self, endpoint: Endpoint) -> bool:
        """Whether the next request for `endpoint` may use this connection.

        Between exchanges a good connection has nothing to read: a readable
        one holds the backend's EOF or reset, or bytes that answer nothing.
        """
        if self.owner is not endpoint or self.half_closed or self.buffer:
            return False
        return not self.stream.socket.is_readable()

    async def aclose(self) -> None:
        with contextlib.suppress(*BROKEN):
            await self.stream.aclose()

    def close_now(self) -> None:
        """Close from a thread; no task of the run loop may wait on it."""
        self.fast.raw.close()


async def open_upstream(endpoint: Endpoint) -> Upstream:
    """A new connection to `endpoint`; raises BackendFailed (502) if refused."""
    try:
        stream = await endpoint.connect()
    except OSError as exc:
        raise BackendFailed(f"the backend refused the connection: {exc}") from None
    return Upstream(stream, endpoint)


async def send_request(
    upstream: Upstream, head: bytes, body: bytes | bytearray
) -> None:
    """Send the rebuilt head and the buffered body; raises UpstreamClosed."""
    upstream.uses += 1
    try:
        if len(body) < JOIN_BELOW:
            await upstream.fast.send_all(head + body)
        else:
            await upstream.fast.send_all(head)
            await upstream.fast.send_all(body)
    except BROKEN as exc:
        raise UpstreamClosed(f"the backend closed the connection: {exc}") from None


async def half_close(upstream: Upstream) -> None:
    """Pass a client's half-close on: the backend reads EOF, may still answer."""
    upstream.half_closed = True
    with contextlib.suppress(*BROKEN):
        await upstream.stream.send_eof()
