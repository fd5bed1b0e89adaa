"""Reading requests from clients, and the heads RPH writes itself.

A request's head is parsed by h11 and its body fully buffered (routing may
look into it), de-chunked when the client sent chunks. Everything that
could make the request mean different things to RPH and to a backend is
refused rather than guessed (RFC 9112 §6.3): both `Content-Length` and
`Transfer-Encoding`, `Transfer-Encoding` on HTTP/1.0 or other than chunked,
differing lengths, a head over 64 KiB however it arrives. The head sent on
to the backend is rebuilt from the parse, never copied from the raw bytes.
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
    RPHError,
    UnsupportedCoding,
)

# The limits of the design: a head is at most 64 KiB and 100 header lines;
# no client legitimately sends more, and a backend may choke on it.
HEAD_LIMIT = 64 * 1024
HEADER_LINES_LIMIT = 100

# A client has this long to send a whole head, and a body being buffered
# may pause this long between bytes; slower than that it is gone or hostile.
HEAD_DEADLINE = 30.0
BODY_IDLE_DEADLINE = 30.0

# Large reads keep a 16 MB upload to a few dozen trips through the loop.
READ_SIZE = 256 * 1024

# RFC 9110 §7.6.1: meaningful for one connection only, never forwarded.
# Content-Length is set by RPH from the buffered body; Expect is answered by
# RPH itself; Trailer announces trailers that de-chunking drops.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
        b"content-length",
    }
)

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ClientGone(Exception):
    """The client closed its connection before its request was complete."""


@dataclass
class Request:
    """One request as RPH understood it, body included."""

    method: bytes
    target: bytes
    http_version: bytes
    headers: list[tuple[bytes, bytes]]  # as sent: original case and order
    connection_tokens: frozenset[bytes]
    body: bytes = b""
    has_body: bool = False
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
    def keep_alive(self) -> bool:
        """Whether the client wants the connection kept after the answer."""
        if self.http_version == b"1.1":
            return b"close" not in self.connection_tokens
        return b"keep-alive" in self.connection_tokens

    @property
    def wants_upgrade(self) -> bool:
        return b"upgrade" in self.connection_tokens and bool(self.header(b"upgrade"))


class ClientConnection:
    """A client's socket and the bytes read from it but not yet used."""

    def __init__(self, stream: trio.SocketStream, peer: str) -> None:
        self.stream = stream
        self.peer = peer
        self.buffer = bytearray()
        self.eof = False

    async def receive(self) -> bool:
        """Read more into `buffer`; False once the client sent EOF."""
        if self.eof:
            return False
        try:
            data = await self.stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True


async def read_request(
    conn: ClientConnection, body_limit: Callable[[str], int]
) -> Request | None:
    """Read the next request, or None if the client closed between requests.

    `body_limit(path)` is the largest body accepted for that path. Raises
    an RPHError with the status to answer (the connection is then closed),
    or ClientGone.
    """
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
    request, head_size = await _read_head(conn, parser)
    _check_framing(request)

    transfer_encoding = request.header(b"transfer-encoding")
    length_header = request.header(b"content-length")
    limit = body_limit(request.path)
    if length_header is not None and int(length_header) > limit:
        raise BodyTooLarge(f"request body over {limit} bytes (max_body)")
    request.has_body = transfer_encoding is not None or length_header is not None
    expects = b"100-continue" in (request.header(b"expect") or b"").lower()
    if request.has_body and expects and request.http_version == b"1.1":
        await conn.stream.send_all(CONTINUE)

    del conn.buffer[:head_size]
    if transfer_encoding is not None:
        request.body = await _read_chunked(conn, parser, limit)
    elif length_header is not None:
        request.body = await _read_exactly(conn, int(length_header))
    return request


async def _read_head(
    conn: ClientConnection, parser: h11.Connection
) -> tuple[Request, int]:
    """Parse the head from `conn.buffer`, reading more as needed."""
    with trio.move_on_after(HEAD_DEADLINE):
        fed = 0
        while True:
            # h11 checks the head limit only while it waits for more data,
            # so a whole oversized head arriving in one read is caught here.
            # An empty receive_data would tell h11 the client closed.
            if len(conn.buffer) > fed:
                parser.receive_data(bytes(conn.buffer[fed:]))
                fed = len(conn.buffer)
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                raise _protocol_error(exc) from None
            if isinstance(event, h11.Request):
                head_size = fed - len(parser.trailing_data[0])
                if head_size > HEAD_LIMIT:
                    raise HeadTooLarge(f"request head over {HEAD_LIMIT} bytes")
                return _request_from(event), head_size
            if not await conn.receive():
                if conn.buffer:
                    raise BadRequest("connection closed in the middle of a head")
                raise ClientGone
            if len(conn.buffer) > HEAD_LIMIT + READ_SIZE:
                raise HeadTooLarge(f"request head over {HEAD_LIMIT} bytes")
    if conn.buffer:
        raise RequestTimeout(f"request head not received within {HEAD_DEADLINE:g} s")
    raise ClientGone


def _request_from(event: h11.Request) -> Request:
    headers = list(event.headers.raw_items())
    if len(headers) > HEADER_LINES_LIMIT:
        raise HeadTooLarge(f"more than {HEADER_LINES_LIMIT} header lines")
    tokens = frozenset(
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    )
    return Request(
        method=event.method,
        target=event.target,
        http_version=event.http_version,
        headers=headers,
        connection_tokens=tokens,
        started=trio.current_time(),
    )


def _check_framing(request: Request) -> None:
    names = [name.lower() for name, _ in request.headers]
    if b"transfer-encoding" in names:
        if b"content-length" in names:
            raise BadRequest("both Content-Length and Transfer-Encoding were sent")
        if request.http_version != b"1.1":
            raise BadRequest("Transfer-Encoding is not allowed in HTTP/1.0")


def _protocol_error(exc: h11.RemoteProtocolError) -> RPHError:
    message = f"malformed request: {exc}"
    if exc.error_status_hint == 431:
        return HeadTooLarge(f"request head over {HEAD_LIMIT} bytes")
    if exc.error_status_hint == 501:
        return UnsupportedCoding(f"{exc}; RPH accepts only chunked")
    return BadRequest(message)


async def _read_chunked(
    conn: ClientConnection, parser: h11.Connection, limit: int
) -> bytes:
    # The parser holds every byte read so far; what follows the body goes
    # back to the connection's buffer for the next request.
    pieces: list[bytes] = []
    size = 0
    conn.buffer.clear()
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            raise _protocol_error(exc) from None
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


async def _read_exactly(conn: ClientConnection, length: int) -> bytes:
    while len(conn.buffer) < length:
        await _receive_body_bytes(conn)
    body = bytes(conn.buffer[:length])
    del conn.buffer[:length]
    return body


async def _receive_body_bytes(conn: ClientConnection) -> None:
    with trio.move_on_after(BODY_IDLE_DEADLINE):
        if not await conn.receive():
            raise ClientGone
        return
    raise RequestTimeout(f"request body brought no byte for {BODY_IDLE_DEADLINE:g} s")


def forward_head(request: Request, peer: str, scheme: bytes = b"http") -> bytes:
    """The head RPH sends to the backend, rebuilt from the parse.

    Method, target and headers keep their order, case and duplicates;
    hop-by-hop headers and every header that `Connection` names go, except
    `Upgrade` and `Connection: upgrade` for an upgrade request; the body's
    length is stated; X-Forwarded-* are added last.
    """
    dropped = HOP_BY_HOP | request.connection_tokens
    upgrade = request.wants_upgrade
    lines = [b"%s %s HTTP/1.1" % (request.method, request.target)]
    host = b""
    for name, value in request.headers:
        lower = name.lower()
        if lower == b"host":
            host = value
        if lower == b"upgrade" and upgrade:
            lines.append(b"Upgrade: " + value)
        elif lower not in dropped:
            lines.append(name + b": " + value)
    if upgrade:
        lines.append(b"Connection: upgrade")
    if request.has_body or request.body:
        lines.append(b"Content-Length: %d" % len(request.body))
    lines.append(b"X-Forwarded-For: " + peer.encode())
    lines.append(b"X-Forwarded-Proto: " + scheme)
    if host:
        lines.append(b"X-Forwarded-Host: " + host)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def error_response(error: RPHError, close: bool) -> bytes:
    """A complete response for an error RPH answers itself."""
    body = error.body()
    reason = _REASONS.get(error.status, b"Error")
    head = [
        b"HTTP/1.1 %d %s" % (error.status, reason),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
    ]
    if close:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def json_response(status: int, body: bytes, close: bool) -> bytes:
    """A complete JSON response (control endpoints)."""
    reason = _REASONS.get(status, b"OK")
    head = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Cache-Control: no-store",
    ]
    if close:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
