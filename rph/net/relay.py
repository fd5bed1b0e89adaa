"""Relaying a backend's response to the client, byte for byte.

The response's bytes reach the client exactly as the backend wrote them,
each piece as soon as it is read; the one thing RPH may change is the
`Connection` header, when it will close the client connection afterwards
and the client could not otherwise tell. A `101 Switching Protocols` turns
the connection into a tunnel until both sides have closed.

Once the client has any byte of the final response, nothing can be taken
back: a backend that fails then leaves the client with what it sent and a
connection that closes without a clean end, never a made-up one.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from rph.errors import BackendFailed
from rph.net import fastio, pump
from rph.net.client import ClientConnection, ClientGone
from rph.net.framing import BodyEnd, Framing, HeadGatherer, ResponseHead
from rph.net.http import Request
from rph.net.upstream import BROKEN, Upstream, ended_before_answer

# A body with this much left to relay goes from socket to socket inside the
# kernel where it can (Linux): a large download is not copied through RPH.
SPLICE_FROM = 1024 * 1024 if fastio.CAN_SPLICE else float("inf")


class ClientAborted(Exception):
    """The client went away while its request was being answered."""


@dataclass
class Outcome:
    """How one exchange ended, for the request loop and the log."""

    status: int = 0
    head_sent: bool = False  # the client has bytes of the final response
    client_keeps: bool = False
    upstream_reusable: bool = False
    bytes_down: int = 0
    first_byte_at: float | None = None
    tunnel: bool = False
    aborted: bool = False  # the client went away before the end


async def relay_response(
    conn: ClientConnection, upstream: Upstream, request: Request, outcome: Outcome
) -> None:
    """Relay the response to `request`, recording in `outcome` how it ended.

    Raises BackendFailed (502) only while the client has no byte of the
    final response, and ClientAborted if the client went away.
    """
    while True:
        head = await _read_head(upstream, request.method)
        outcome.status = head.status
        if outcome.first_byte_at is None:
            outcome.first_byte_at = trio.current_time()
        if head.status >= 200 or head.framing is Framing.TUNNEL:
            break
        # RFC 9110 §15.2: no 1xx to an HTTP/1.0 client. A 100 Continue is
        # RPH's to give, and it did when the client asked; the backend's
        # would be a second one.
        if head.status != 100 and request.http_version == b"1.1":
            await _to_client(conn, head.raw)

    if head.framing is Framing.TUNNEL:
        # The caller stops watching the client, then runs the tunnel.
        outcome.head_sent = outcome.tunnel = True
        await _to_client(conn, head.raw)
        return

    keeps = request.keep_alive and head.framing is not Framing.CLOSE
    keeps = keeps and head_keeps(head)
    outcome.client_keeps = keeps
    raw_head = head.raw if keeps else head.saying_close()

    complete, clean = await _relay_body(conn, upstream, head, raw_head, outcome)
    reusable = complete and clean and head.backend_keeps_alive
    outcome.upstream_reusable = reusable and not upstream.half_closed
    if not complete:
        outcome.client_keeps = False


def head_keeps(head: ResponseHead) -> bool:
    """A response that tells the client it closes must be followed by a close."""
    if head.http10:
        return b"keep-alive" in head.connection_tokens
    return b"close" not in head.connection_tokens


async def _read_head(upstream: Upstream, method: bytes) -> ResponseHead:
    gatherer = HeadGatherer(upstream.buffer, method)
    while (head := gatherer.head()) is None:
        try:
            data = await upstream.fast.receive(fastio.BACKEND_READ)
        except BROKEN as exc:
            what = f"the backend reset the connection: {exc}"
            raise ended_before_answer(upstream, what) from None
        if not data:
            what = "the backend closed the connection without answering"
            raise ended_before_answer(upstream, what)
        upstream.buffer += data
    return head


async def _relay_body(
    conn: ClientConnection,
    upstream: Upstream,
    head: ResponseHead,
    raw_head: bytes,
    outcome: Outcome,
) -> tuple[bool, bool]:
    """Relay the body after `raw_head`.

    Returns whether the body ended as framed, and whether nothing came
    after that end (else the connection holds bytes that answer nothing).
    """
    data = bytes(upstream.buffer)
    upstream.buffer.clear()
    if head.framing is Framing.NONE:
        outcome.head_sent = True
        await _to_client(conn, raw_head)
        return True, not data

    body = BodyEnd(head)
    try:
        return await _relay_pieces(conn, upstream, body, raw_head, data, outcome)
    finally:
        outcome.bytes_down = body.relayed  # for the log, however it ended


async def _relay_pieces(
    conn: ClientConnection,
    upstream: Upstream,
    body: BodyEnd,
    raw_head: bytes,
    data: bytes,
    outcome: Outcome,
) -> tuple[bool, bool]:
    """Relay `raw_head` with `data`, the body read with it, then the rest."""
    first = True
    while True:
        try:
            data, ended, clean = body.cut(data)
        except ValueError:
            if first:
                raise BackendFailed("the backend sent a broken chunked body") from None
            return False, False  # the client sees the body cut short

        if first:
            outcome.head_sent = True
            await _to_client(conn, raw_head + data)
            first = False
        elif data:
            await _to_client(conn, data)
        body.relayed += len(data)
        if ended:
            return True, clean

        if body.framing is Framing.LENGTH and body.remaining >= SPLICE_FROM:
            moved = await _splice_to_client(conn, upstream, body.remaining)
            body.relayed += moved
            return moved == body.remaining, True
        # A backend often writes its head apart from the first token: that
        # token goes out from here, without waiting for a thread to start.
        if body.is_stream and body.relayed and pump.has_room():
            return await _pump_to_client(conn, upstream, body)

        try:
            data = await upstream.fast.receive(fastio.BACKEND_READ)
        except BROKEN:
            return False, False
        if not data:
            return body.ends_at_close, True


async def _pump_to_client(
    conn: ClientConnection, upstream: Upstream, body: BodyEnd
) -> tuple[bool, bool]:
    try:
        return await pump.relay_rest(upstream.fast.raw, conn.fast.raw, body)
    except fastio.SinkBroken:
        raise ClientAborted from None


async def _splice_to_client(
    conn: ClientConnection, upstream: Upstream, length: int
) -> int:
    try:
        return await fastio.splice(upstream.fast, conn.fast, length)
    except fastio.SinkBroken:
        raise ClientAborted from None


async def _to_client(conn: ClientConnection, data: bytes) -> None:
    try:
        await conn.fast.send_all(data)
    except BROKEN:
        raise ClientAborted from None


async def tunnel(conn: ClientConnection, upstream: Upstream) -> None:
    """Carry bytes both ways until both sides have closed (websockets).

    An EOF from one side is passed on as a half-close and the other
    direction goes on; a reset or a failed write ends the whole tunnel.
    """
    async with trio.open_nursery() as nursery:

        async def from_client() -> None:
            # The connection's reader reads the client; this takes its bytes.
            try:
                while True:
                    if conn.buffer:
                        data = bytes(conn.buffer)
                        conn.buffer.clear()
                        await upstream.stream.send_all(data)
                    if not await conn.receive():
                        break
                await upstream.stream.send_eof()
            except (ClientGone, *BROKEN):
                nursery.cancel_scope.cancel()

        async def to_client(first: bytes) -> None:
            try:
                if first:
                    await conn.stream.send_all(first)
                while data := await upstream.stream.receive_some(fastio.BACKEND_READ):
                    await conn.stream.send_all(data)
                await conn.stream.send_eof()
            except BROKEN:
                nursery.cancel_scope.cancel()

        nursery.start_soon(from_client)
        nursery.start_soon(to_client, bytes(upstream.buffer))
        upstream.buffer.clear()
