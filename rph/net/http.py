"""Reading requests from clients, with every limit the design sets.

A request's head is read by net/plainhead when it is plain, by h11 when it
is not, and its body fully buffered (routing may look into it), de-chunked
when the client sent chunks. Everything that could make the request mean
different things to RPH and to a backend is refused rather than guessed
(RFC 9112 §6.3): both `Content-Length` and `Transfer-Encoding`,
`Transfer-Encoding` on HTTP/1.0 or other than chunked, differing lengths, a
head over 64 KiB however it arrives. Each refusal is an RPHError carrying
the status to answer; the connection is closed after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import trio

from rph.errors import (
    BadRequest,
    BodyTooLarge,
    HeadTooLarge,
    RequestTimeout,
)
from rph.net.client import ClientConnection, ClientGone
from rph.net.plainhead import read_plain_head
from rph.net.refusals import refusal_for, version_refusal

# The limits of the design: a head is at most 64 KiB and 100 header lines;
# no client legitimately sends more, and a backend may choke on it.
HEAD_LIMIT = 64 * 1024
HEADER_LINES_LIMIT = 100

# A keep-alive connection may stay silent between requests this long, then
# it is closed without a word (as servers do; a 408 would only confuse a
# client that reuses the socket). Once a head has begun, the whole head must
# arrive within HEAD_DEADLINE, and a body being buffered may pause this long
# between bytes; slower than that the client is gone or hostile.
IDLE_DEADLINE = 30.0
HEAD_DEADLINE = 30.0
BODY_IDLE_DEADLINE = 30.0

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass
class Request:
    """One request as RPH understood it, body included."""

    method: bytes
    target: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]  # as sent: original case and order
    connection_tokens: frozenset[bytes]
    body: bytes | bytearray = b""
    has_body: bool = False
    # The length of a body relayed as it arrives, and so not in `body`.
    streamed: int = 0
    started: float = field(default=0.0)

    @property
    def path(self) -> str:
        return self.target.split(b"?", 1)[0].decode("latin-1")

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower case), or None."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def expects_continue(self) -> bool:
        """Whether the client waits for a 100 Continue before its body."""
        expect = (self.header(b"expect") or b"").lower()
        return b"100-continue" in expect and self.http_version == b"1.1"

    @property
    def body_length(self) -> int:
        return self.streamed or len(self.body)

    @property
    def keep_alive(self) -> bool:
        """Whether the client wants the connection kept after the answer."""
        if self.http_version == b"1.1":
            return b"close" not in self.connection_tokens
        return b"keep-alive" in self.connection_tokens

    @property
    def wants_upgrade(self) -> bool:
        return b"upgrade" in self.connection_tokens and bool(self.header(b"upgrade"))


async def read_request(
    conn: ClientConnection, body_limit: Callable[[str], int]
) -> Request:
    """Read the next request, body included.

    `body_limit(path)` is the largest body accepted for that path. Raises
    ClientGone if the client closed or stayed silent between requests, or
    an RPHError with the status to answer (the connection is then closed).
    """
    await _wait_for_head(conn)
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
    # A head nearly always arrives whole: then no deadline is set up at all.
    parsed = _plain(conn.buffer) or _parsed_head(conn.buffer, parser, 0)
    if parsed is None:
        try:
            with trio.fail_after(HEAD_DEADLINE):
                parsed = await _read_head(conn, parser)
        except trio.TooSlowError:
            message = f"request head not received within {HEAD_DEADLINE:g} s"
            raise RequestTimeout(message) from None
    request, head_size = parsed
    request.started = trio.current_time()
    del conn.buffer[:head_size]
    # What the parser has seen of the body so far: the connection's reader
    # may add more to the buffer while the 100 Continue below is sent.
    parsed_body_bytes = len(conn.buffer)

    _check_framing(request)
    chunked = request.header(b"transfer-encoding") is not None
    length_header = request.header(b"content-length")
    length = int(length_header) if length_header is not None else 0
    limit = body_limit(request.path)
    if length > limit:
        raise BodyTooLarge(f"request body over {limit} bytes (max_body)")
    request.has_body = chunked or length_header is not None

    # RFC 9110 §10.1.1: the client waits for this before sending the body
    # (curl waits a whole second for it on bodies over 1 MB). The backend
    # never sees Expect: the body it gets is already here.
    if request.expects_continue and (chunked or length):
        await conn.send(CONTINUE)

    if chunked:
        request.body = await _read_chunked(conn, parser, limit, parsed_body_bytes)
    elif length:
        request.body = await _read_exactly(conn, length)
    return request


async def _wait_for_head(conn: ClientConnection) -> None:
    """Wait for the first byte of a head; ClientGone on EOF or silence."""
    with trio.move_on_after(IDLE_DEADLINE):
        while True:
            # RFC 9112 §2.2: empty lines before a request line are ignored
            # (some clients end a body with an extra CRLF).
            while conn.buffer.startswith((b"\r\n", b"\n")):
                del conn.buffer[: conn.buffer.index(b"\n") + 1]
            if conn.buffer and conn.buffer != b"\r":  # a CR alone may start one
                return
            if not await conn.receive():
                raise ClientGone
    raise ClientGone


async def _read_head(
    conn: ClientConnection, parser: h11.Connection
) -> tuple[Request, int]:
    """Read until the head at the start of `conn.buffer` is complete.

    `parser` has been fed all of `conn.buffer` already. Returns the request
    and the length of its head.
    """
    while True:
        fed = len(conn.buffer)
        if not await conn.receive():
            raise BadRequest("the connection was closed in the middle of a head")
        parsed = _parsed_head(conn.buffer, parser, fed)
        if parsed is not None:
            return parsed


def parse_head(buffer: bytearray) -> tuple[Request, int] | None:
    """The request whose head starts `buffer`, and the head's length; None
    while the head is incomplete. Raises an RPHError, as `read_request`."""
    if (plain := _plain(buffer)) is not None:
        return plain
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
    parsed = _parsed_head(buffer, parser, 0)
    if parsed is not None:
        _check_framing(parsed[0])
    return parsed


def _plain(buffer: bytearray) -> tuple[Request, int] | None:
    """The request of a plain head at the start of `buffer`; None if the
    head is not plain, or not whole (h11 reads it then)."""
    head = read_plain_head(buffer, HEAD_LIMIT)
    if head is None:
        return None
    method, target, version, headers, head_size = head
    return _request(method, target, version, headers), head_size


def _parsed_head(
    buffer: bytearray, parser: h11.Connection, fed: int
) -> tuple[Request, int] | None:
    """Feed `parser` what follows `fed` in `buffer`; the request and the
    length of its head once the head is complete, else None."""
    # An empty receive_data would tell h11 the client closed.
    if len(buffer) > fed:
        parser.receive_data(bytes(buffer[fed:]))
    try:
        event = parser.next_event()
    except h11.RemoteProtocolError as exc:
        raise refusal_for(exc, HEAD_LIMIT, bytes(buffer)) from None
    if not isinstance(event, h11.Request):
        return None
    # h11 checks the head limit only while it waits for more data, so a
    # whole oversized head arriving in one read is caught here.
    head_size = len(buffer) - len(parser.trailing_data[0])
    if head_size > HEAD_LIMIT:
        raise HeadTooLarge(f"request head over {HEAD_LIMIT} bytes")
    return _request_from(event), head_size


def _request_from(event: h11.Request) -> Request:
    headers = list(event.headers.raw_items())
    return _request(event.method, event.target, event.http_version, headers)


def _request(
    method: bytes, target: bytes, version: bytes, headers: list[tuple[bytes, bytes]]
) -> Request:
    if version not in (b"1.0", b"1.1"):
        raise version_refusal(version)
    if len(headers) > HEADER_LINES_LIMIT:
        raise HeadTooLarge(f"more than {HEADER_LINES_LIMIT} header lines")
    tokens = frozenset(
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    )
    return Request(
        method=method,
        target=target,
        http_version=version,
        headers=headers,
        connection_tokens=tokens,
    )


def _check_framing(request: Request) -> None:
    """What h11 accepts but RFC 9112 §6.1 lets a proxy read two ways."""
    names = [name.lower() for name, _ in request.headers]
    if b"transfer-encoding" in names:
        if b"content-length" in names:
            raise BadRequest("both Content-Length and Transfer-Encoding were sent")
        if request.http_version != b"1.1":
            raise BadRequest("Transfer-Encoding is not allowed in HTTP/1.0")


async def _read_chunked(
    conn: ClientConnection, parser: h11.Connection, limit: int, seen: int
) -> bytes:
    # The parser holds the first `seen` bytes of the buffer already; it gets
    # the rest, and what follows the body goes back to the connection's
    # buffer for the next request.
    pieces: list[bytes] = []
    size = 0
    if len(conn.buffer) > seen:
        parser.receive_data(bytes(conn.buffer[seen:]))
    conn.buffer.clear()
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            raise refusal_for(exc, HEAD_LIMIT) from None
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > limit:
                raise BodyTooLarge(f"request body over {limit} bytes (max_body)")
            pieces.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            conn.buffer += parser.trailing_data[0]
            return b"".join(pieces)
        elif event is h11.NEED_DATA:
            await _receive_body_bytes(conn)
            parser.receive_data(bytes(conn.buffer))
            conn.buffer.clear()


async def _read_exactly(conn: ClientConnection, length: int) -> bytearray:
    # Read in place into one buffer of the right size: a 16 MB upload is
    # copied once, not once per growth of a buffer and once more at the end.
    body = conn.begin_body(length)
    try:
        while conn.body_missing():
            await _receive_body_bytes(conn)
    finally:
        conn.end_body()
    return body


async def _receive_body_bytes(conn: ClientConnection) -> None:
    with trio.move_on_after(BODY_IDLE_DEADLINE):
        if not await conn.receive():
            raise ClientGone
        return
    raise RequestTimeout(f"request body brought no byte for {BODY_IDLE_DEADLINE:g} s")
