"""Relaying a backend's response from a lane's thread, byte for byte.

The same rules as net/relay, which relays in the connection's task: the
bytes reach the client as the backend wrote them, `Connection` changes
only when RPH closes afterwards, and nothing is made up once the client has
a byte of the answer. One difference: a `101 Switching Protocols` is a 502
here, since only an upgrade request may be answered so and upgrades go to
the task.
"""

from __future__ import annotations

from trio.abc import Clock

from rph.errors import BackendFailed
from rph.net.framing import BodyEnd, Framing, HeadGatherer, ResponseHead
from rph.net.http import Request
from rph.net.laneio import LaneIO
from rph.net.relay import SPLICE_FROM, Outcome, head_keeps
from rph.net.upstream import Upstream, ended_before_answer


def relay_response(
    io: LaneIO, upstream: Upstream, request: Request, outcome: Outcome, clock: Clock
) -> None:
    """Relay the response to `request`, recording in `outcome` how it ended.

    Raises BackendFailed (502) only while the client has no byte of the
    final response, and ClientAborted if the client went away.
    """
    while True:
        response = _read_head(io, upstream, request.method)
        outcome.status = response.status
        if outcome.first_byte_at is None:
            outcome.first_byte_at = clock.current_time()
        if response.status >= 200 or response.framing is Framing.TUNNEL:
            break
        # As the task does: no 1xx to HTTP/1.0, no second 100 Continue.
        if response.status != 100 and request.http_version == b"1.1":
            io.to_client(response.raw)
    if response.framing is Framing.TUNNEL:
        # Only an upgrade request may be answered so (RFC 9110 §15.2.2),
        # and upgrades go to the task.
        raise BackendFailed("the backend switched protocols unasked")

    keeps = request.keep_alive and response.framing is not Framing.CLOSE
    keeps = keeps and head_keeps(response)
    outcome.client_keeps = keeps
    raw_head = response.raw if keeps else response.saying_close()
    complete, clean = _relay_body(io, upstream, response, raw_head, outcome)
    reusable = complete and clean and response.backend_keeps_alive
    outcome.upstream_reusable = reusable and not upstream.half_closed
    if not complete:
        outcome.client_keeps = False


def _read_head(io: LaneIO, upstream: Upstream, method: bytes) -> ResponseHead:
    gatherer = HeadGatherer(upstream.buffer, method)
    while (head := gatherer.head()) is None:
        try:
            data = io.from_backend(upstream)
        except OSError as exc:
            what = f"the backend reset the connection: {exc}"
            raise ended_before_answer(upstream, what) from None
        if not data:
            what = "the backend closed the connection without answering"
            raise ended_before_answer(upstream, what)
        upstream.buffer += data
    return head


def _relay_body(
    io: LaneIO,
    upstream: Upstream,
    response: ResponseHead,
    raw_head: bytes,
    outcome: Outcome,
) -> tuple[bool, bool]:
    """Relay the body; whether it ended as framed, and cleanly."""
    data = bytes(upstream.buffer)
    upstream.buffer.clear()
    if response.framing is Framing.NONE:
        outcome.head_sent = True
        io.to_client(raw_head)
        return True, not data

    body = BodyEnd(response)
    watch = None
    try:
        while True:
            try:
                data, ended, clean = body.cut(data)
            except ValueError:
                if not outcome.head_sent:
                    message = "the backend sent a broken chunked body"
                    raise BackendFailed(message) from None
                return False, False
            if not outcome.head_sent:
                outcome.head_sent = True
                io.to_client(raw_head + data)
            elif data:
                io.to_client(data)
            body.relayed += len(data)
            if ended:
                return True, clean
            if body.framing is Framing.LENGTH and body.remaining >= SPLICE_FROM:
                moved = io.splice_to_client(upstream, body.remaining)
                body.relayed += moved
                return moved == body.remaining, True
            if body.is_stream and watch is None:
                # A stream waits once a token: one wait for the whole body.
                watch = io.open_backend_watch(upstream)
            try:
                data = io.from_backend(upstream, watch)
            except OSError:
                return False, False
            if not data:
                return body.ends_at_close, True
    finally:
        if watch is not None:
            watch.close()
        outcome.bytes_down = body.relayed
