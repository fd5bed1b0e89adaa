"""Forwarding one request and relaying its response, byte for byte.

The response's bytes reach the client exactly as the backend wrote them,
each piece as soon as it is read; the one thing RPH may change is the
`Connection` header, when it will close the client connection afterwards
and the client could not otherwise tell. A `101 Switching Protocols` turns
the connection into a tunnel until both sides have closed.

While the backend works, the client socket is watched: a client that goes
away closes the backend connection at once, so the backend stops
generating; a client that only half-closes after its request has that
half-close passed on.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass

import trio

from rph.errors import BackendFailed
from rph.net.framing import (
    RESPONSE_HEAD_LIMIT,
    ChunkedTracker,
    Framing,
    ResponseHead,
    find_head_end,
    parse_response_head,
)
from rph.net.http import ClientConnection, Request

# One read from the backend; a streamed token is far smaller, a download
# moves in pieces this size.
RELAY_READ = 256 * 1024

# Below this the head and body go out in one write (one segment on the
# wire); above it, joining them would copy a large body for nothing.
_JOIN_BELOW = 64 * 1024

# Pipelined requests read while watching the client are kept up to this;
# beyond it the client is plainly alive and the watch pauses.
PIPELINE_BUFFER_LIMIT = 1024 * 1024

_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class ClientAborted(Exception):
    """The client went away while its request was being answered."""


class Upstream:
    """A connection to one start of a backend, reusable between requests."""

    def __init__(self, stream: trio.SocketStream, owner: object) -> None:
        self.stream = stream
        self.owner = owner  # the start it belongs to; a new start, a new socket
        self.buffer = bytearray()

    def is_stale(self) -> bool:
        """True if the backend closed this idle connection meanwhile."""
        # trio's sockets are non-blocking: a peek with nothing to read raises.
        try:
            self.stream.socket.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False  # nothing to read: the connection is as it was left
        except OSError:
            return True
        # EOF, or bytes that answer nothing: either way it is not fit to reuse.
        return True

    async def aclose(self) -> None:
        with contextlib.suppress(*_BROKEN):
            await self.stream.aclose()


@dataclass
class Outcome:
    status: int = 0
    client_keeps: bool = False
    upstream_reusable: bool = False
    bytes_down: int = 0
    first_byte_at: float | None = None
    tunnel: bool = False


class ClientWatch:
    """Reads the client socket while its request is being answered.

    Bytes read are kept for the next (pipelined) request. An EOF before the
    request was forwarded means the client left: the exchange is cancelled.
    After it was forwarded, EOF is passed on as a half-close; a reset
    cancels the exchange.
    """

    def __init__(self, conn: ClientConnection, scope: trio.CancelScope) -> None:
        self.conn = conn
        self.scope = scope
        self.upstream: Upstream | None = None
        self.gone = False
        self._own_scope = trio.CancelScope()
        self._stopped = trio.Event()
        self._started = False

    def start(self, nursery: trio.Nursery) -> None:
        """Watch in `nursery` until stopped, the client leaves, or EOF."""
        if not self.conn.eof:
            self._started = True
            nursery.start_soon(self._run)

    async def _run(self) -> None:
        try:
            with self._own_scope:
                await self._watch()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Stop watching; returns once the socket is no longer being read."""
        self._own_scope.cancel()
        if self._started:
            await self._stopped.wait()

    async def _watch(self) -> None:
        conn = self.conn
        while not conn.eof and len(conn.buffer) < PIPELINE_BUFFER_LIMIT:
            try:
                data = await conn.stream.receive_some(RELAY_READ)
            except _BROKEN:
                self._client_gone()
                return
            if data:
                conn.buffer += data
                continue
            conn.eof = True
            if self.upstream is None:
                self._client_gone()
            else:
                await half_close(self.upstream)

    def forwarded(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def _client_gone(self) -> None:
        self.gone = True
        self.scope.cancel()


async def half_close(upstream: Upstream) -> None:
    with contextlib.suppress(*_BROKEN):
        await upstream.stream.send_eof()


async def send_request(upstream: Upstream, head: bytes, body: bytes) -> None:
    """Send the rebuilt head and the buffered body; raises BackendFailed."""
    try:
        if len(body) < _JOIN_BELOW:
            await upstream.stream.send_all(head + body)
        else:
            await upstream.stream.send_all(head)
            await upstream.stream.send_all(body)
    except _BROKEN as exc:
        raise BackendFailed(f"the backend closed the connection: {exc}") from None


async def relay_response(
    conn: ClientConnection, upstream: Upstream, request: Request
) -> Outcome:
    """Relay the response to `request`; returns how the exchange ended.

    Raises BackendFailed (502) if the backend fails before the client got
    any byte, and ClientAborted if the client went away.
    """
    outcome = Outcome()
    while True:
        head = await _read_head(upstream, request.method)
        outcome.status = head.status
        if outcome.first_byte_at is None:
            outcome.first_byte_at = trio.current_time()
        if head.status >= 200 or head.framing is Framing.TUNNEL:
            break
        await _to_client(conn, head.raw)  # 1xx: more heads follow

    if head.framing is Framing.TUNNEL:
        # The caller stops watching the client, then runs the tunnel.
        await _to_client(conn, head.raw)
        outcome.tunnel = True
        return outcome

    keeps = request.keep_alive and head.framing is not Framing.CLOSE
    keeps = keeps and _head_keeps(head)
    outcome.client_keeps = keeps
    raw_head = head.raw if keeps else head.saying_close()

    complete = await _relay_body(conn, upstream, head, raw_head, outcome)
    outcome.upstream_reusable = complete and head.backend_keeps_alive
    if not complete:
        outcome.client_keeps = False
    return outcome


def _head_keeps(head: ResponseHead) -> bool:
    """A response that tells the client it closes must be followed by a close."""
    if head.http10:
        return b"keep-alive" in head.connection_tokens
    return b"close" not in head.connection_tokens


async def _read_head(upstream: Upstream, method: bytes) -> ResponseHead:
    buffer = upstream.buffer
    searched = 0
    while (end := find_head_end(buffer, searched)) < 0:
        if len(buffer) > RESPONSE_HEAD_LIMIT:
            raise BackendFailed("the backend's response head is too large")
        searched = max(0, len(buffer) - 3)
        try:
            data = await upstream.stream.receive_some(RELAY_READ)
        except _BROKEN as exc:
            raise BackendFailed(f"the backend reset the connection: {exc}") from None
        if not data:
            raise BackendFailed("the backend closed the connection without answering")
        buffer += data
    raw = bytes(buffer[:end])
    del buffer[:end]
    return parse_response_head(raw, method)


async def _relay_body(
    conn: ClientConnection,
    upstream: Upstream,
    head: ResponseHead,
    raw_head: bytes,
    outcome: Outcome,
) -> bool:
    """Relay the body after `raw_head`; True if it ended as framed."""
    framing = head.framing
    remaining = head.length if framing is Framing.LENGTH else 0
    chunks = ChunkedTracker() if framing is Framing.CHUNKED else None
    pending = bytes(upstream.buffer)
    upstream.buffer.clear()
    first = True
    while True:
        data, ended = pending, False
        if framing is Framing.NONE:
            data, ended = b"", True
        elif framing is Framing.LENGTH:
            if len(data) >= remaining:
                data, ended = data[:remaining], True
            remaining -= len(data)
        elif chunks is not None:
            try:
                end = chunks.feed(data)
            except ValueError:
                return False  # a broken stream: the client sees it cut
            if end >= 0:
                data, ended = data[:end], True

        if first:
            await _to_client(conn, raw_head + data)
            first = False
        elif data:
            await _to_client(conn, data)
        outcome.bytes_down += len(data)
        if ended:
            return True

        try:
            pending = await upstream.stream.receive_some(RELAY_READ)
        except _BROKEN:
            return False
        if not pending:
            return framing is Framing.CLOSE


async def _to_client(conn: ClientConnection, data: bytes) -> None:
    try:
        await conn.stream.send_all(data)
    except _BROKEN:
        raise ClientAborted from None


async def tunnel(conn: ClientConnection, upstream: Upstream) -> None:
    """Carry bytes both ways until both sides have closed (websockets)."""

    async def pump(
        source: trio.SocketStream, sink: trio.SocketStream, first: bytes
    ) -> None:
        with contextlib.suppress(*_BROKEN):
            if first:
                await sink.send_all(first)
            while data := await source.receive_some(RELAY_READ):
                await sink.send_all(data)
            await sink.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, conn.stream, upstream.stream, bytes(conn.buffer))
        nursery.start_soon(pump, upstream.stream, conn.stream, bytes(upstream.buffer))
        conn.buffer.clear()
        upstream.buffer.clear()
