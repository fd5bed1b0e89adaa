"""A lean HTTP/1.1 client: asyncio protocols on raw sockets, nothing else.

The same code talks to the stand-in directly and to RPH, so whatever it
costs weighs on both sides alike, and it costs little: bytes are parsed in
`data_received` as they arrive, only as far as the framing needs, and each
arrival is stamped with `time.time_ns()` — the clock the stand-in stamps its
events with (`"standin_ns"`), so that the two can be subtracted.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"

# An SSE event ends with a blank line; the stand-in stamps each one last.
EVENT_END = b"\n\n"
STAMP = re.compile(rb'"standin_ns":(\d+)')
DONE_EVENT = b"data: [DONE]"


class ProtocolError(Exception):
    """The server sent something this client cannot read as HTTP/1.1."""


@dataclass
class Response:
    """One response, with the arrival times the benchmark needs."""

    status: int = 0
    first_byte_ns: int = 0
    done_ns: int = 0
    body_size: int = 0
    keeps_alive: bool = True
    # (stamp, arrival) of each stamped event, wall-clock nanoseconds.
    events: list[tuple[int, int]] = field(default_factory=list)
    saw_done: bool = False
    # The body's pieces as received, when asked for.
    pieces: list[bytes] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)


class _Reader:
    """Follows one response through its head and framing."""

    def __init__(self, keep_body: bool, stream: bool) -> None:
        self.response = Response()
        self._keep_body = keep_body
        self._stream = stream
        self._head = b""
        self._in_body = False
        self._length = -1  # -1: chunked or until close
        self._chunked = False
        self._chunk_left = 0
        self._lines = b""  # undecoded chunk-size lines and CRLFs
        self._after_data = False
        self._trailers = False
        self._events = b""

    def feed(self, data: bytes, now: int) -> bool:
        """Take `data`; True once the response is complete."""
        if not self.response.first_byte_ns:
            self.response.first_byte_ns = now
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return False
            data = self._head[end + 4 :]
            self._parse_head(self._head[:end])
            if self._length == 0:
                return True
        if self._chunked:
            return self._feed_chunked(data, now)
        if self._length < 0:
            self._body(data, now)
            return False
        self._body(data, now)
        return self.response.body_size >= self._length

    def closed(self) -> bool:
        """The server closed: True if that ended the response properly."""
        return self._in_body and self._length < 0 and not self._chunked

    def _parse_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, status = lines[0].split(b" ", 2)[:2]
        self.response.status = int(status)
        connection = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                self._length = int(value)
            elif name == b"transfer-encoding":
                self._chunked = value == b"chunked"
            elif name == b"connection":
                connection = value
        keeps = b"keep-alive" in connection if version == b"HTTP/1.0" else True
        self.response.keeps_alive = keeps and b"close" not in connection
        if self.response.status in (204, 304):
            self._length = 0
        self._in_body = True

    def _feed_chunked(self, data: bytes, now: int) -> bool:
        pos, size = 0, len(data)
        while pos < size:
            if self._chunk_left:
                taken = min(self._chunk_left, size - pos)
                self._body(data[pos : pos + taken], now)
                self._chunk_left -= taken
                pos += taken
                self._after_data = not self._chunk_left
                continue
            end = data.find(b"\r\n", pos)
            if end < 0:
                self._lines += data[pos:]
                return False
            line, self._lines = self._lines + data[pos:end], b""
            pos = end + 2
            if self._after_data:
                self._after_data = False
            elif self._trailers:
                if not line:
                    return True
            else:
                self._chunk_left = int(line.split(b";")[0], 16)
                self._trailers = not self._chunk_left
        return False

    def _body(self, piece: bytes, now: int) -> None:
        if not piece:
            return
        response = self.response
        response.body_size += len(piece)
        if self._keep_body:
            response.pieces.append(piece)
        if self._stream:
            *complete, self._events = (self._events + piece).split(EVENT_END)
            for event in complete:
                if match := STAMP.search(event):
                    response.events.append((int(match.group(1)), now))
                elif event.startswith(DONE_EVENT):
                    response.saw_done = True


class Connection(asyncio.Protocol):
    """One client connection carrying one request at a time."""

    transport: asyncio.Transport

    def __init__(self) -> None:
        self._reader: _Reader | None = None
        self._done: asyncio.Future[Response] | None = None
        self._first_event: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, port: int) -> Connection:
        """Connect to 127.0.0.1:`port` (asyncio sets TCP_NODELAY)."""
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(cls, HOST, port)
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        reader = self._reader
        if reader is None or self._done is None:
            return  # bytes after an abandoned response; the caller closes
        try:
            complete = reader.feed(data, now)
        except (ValueError, IndexError) as exc:
            self._fail(ProtocolError(f"unreadable response: {exc}"))
            return
        first = self._first_event
        if first is not None and reader.response.events and not first.done():
            first.set_result(None)
        if complete:
            reader.response.done_ns = now
            self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        reader = self._reader
        if reader is not None and reader.closed():
            reader.response.done_ns = time.time_ns()
            reader.response.keeps_alive = False
            self._finish()
        else:
            self._fail(ConnectionError("the server closed mid-response"))

    def _finish(self) -> None:
        assert self._reader is not None
        if self._done is not None and not self._done.done():
            self._done.set_result(self._reader.response)
        self._reader = None

    def _fail(self, error: Exception) -> None:
        for waiter in (self._done, self._first_event):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
        self._reader = None

    async def exchange(
        self,
        request: bytes,
        *,
        keep_body: bool = False,
        stream: bool = False,
    ) -> Response:
        """Send `request` and wait for its whole response."""
        loop = asyncio.get_running_loop()
        self._reader = _Reader(keep_body, stream)
        self._done = loop.create_future()
        self.transport.write(request)
        return await self._done

    async def first_event(self, request: bytes) -> Response:
        """Send a streaming `request`; return once its first event is in.

        The response is left unfinished: the caller aborts the connection.
        """
        loop = asyncio.get_running_loop()
        self._reader = reader = _Reader(keep_body=False, stream=True)
        self._done = loop.create_future()
        self._first_event = loop.create_future()
        self.transport.write(request)
        await self._first_event
        return reader.response

    def close(self) -> None:
        self.transport.close()

    def abort(self) -> None:
        """Go away at once, as a client that gives up mid-stream does."""
        self._reader = None
        if self._done is not None:
            self._done.cancel()
        self.transport.abort()


def request_bytes(
    method: str, target: str, body: bytes = b"", close: bool = False
) -> bytes:
    """A complete HTTP/1.1 request, as a small client library writes it."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}", "User-Agent: rph-bench"]
    if body or method in ("POST", "PUT"):
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head + body
