"""Where a backend's response ends, found without touching its bytes.

RPH relays responses byte for byte; it follows their framing (RFC 9112
§6.3) only to know when a response is over, so that the client connection
can carry the next request. The head is parsed just enough for that: the
status, `Content-Length`, `Transfer-Encoding` and `Connection`. A head that
could be framed two ways is refused (502), as a request would be (400).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from rph.errors import BackendFailed

# A response head larger than this is not from a server RPH fronts.
RESPONSE_HEAD_LIMIT = 64 * 1024

# A chunk-size line or trailer longer than this is garbage, not framing.
_LINE_LIMIT = 4096

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) (\d{3})(?: [^\r\n]*)?\r?")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
# RFC 9112 §7.1: chunk-size [ BWS ";" chunk-ext ], then CRLF (a bare LF is
# tolerated, as in heads).
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?")
# The plain size line of a stream's token, which arrives as one whole chunk.
_PLAIN_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")
_CR = ord("\r")


class Framing(enum.Enum):
    NONE = "no body"  # HEAD, 1xx, 204, 304
    LENGTH = "content-length"
    CHUNKED = "chunked"
    CLOSE = "until close"
    TUNNEL = "switching protocols"


@dataclass
class ResponseHead:
    raw: bytes
    status: int
    http10: bool
    framing: Framing
    length: int
    connection_tokens: frozenset[bytes]

    @property
    def backend_keeps_alive(self) -> bool:
        """Whether the backend leaves its connection open after this one."""
        if self.framing is Framing.CLOSE:
            return False
        if self.http10:
            return b"keep-alive" in self.connection_tokens
        return b"close" not in self.connection_tokens

    def saying_close(self) -> bytes:
        """The head as the client must see it when RPH closes afterwards.

        Node's HTTP agent reuses a socket unless the response says it
        closes; an HTTP/1.0 status line without keep-alive says so, else a
        `Connection: close` replaces whatever `Connection` said.
        """
        if self.http10 and b"keep-alive" not in self.connection_tokens:
            return self.raw
        if not self.http10 and b"close" in self.connection_tokens:
            return self.raw
        lines = self.raw.rstrip(b"\r\n").split(b"\n")
        kept = [
            line
            for line in lines
            if not line.lower().startswith((b"connection:", b"keep-alive:"))
        ]
        return b"\n".join(kept) + b"\r\nConnection: close\r\n\r\n"


def find_head_end(buffer: bytes | bytearray, start: int = 0) -> int:
    """The length of the head at the start of `buffer`, or -1 if incomplete.

    `start` is where to search from: what was searched before holds no end.
    """
    match = _HEAD_END.search(buffer, start)
    return match.end() if match else -1


class HeadGatherer:
    """A response head gathered in a buffer as its pieces arrive.

    No I/O: the relay in a task and the lane in a thread each read the
    pieces their own way, add them to the buffer and ask again.
    """

    def __init__(self, buffer: bytearray, method: bytes) -> None:
        self.buffer = buffer
        self._method = method
        self._searched = 0  # what was searched before holds no end

    def __repr__(self) -> str:
        return f"<HeadGatherer buffered={len(self.buffer)}>"

    def head(self) -> ResponseHead | None:
        """The head, taken from the buffer, once whole; else None.

        Raises BackendFailed (502) for a head too large or malformed.
        """
        end = find_head_end(self.buffer, self._searched)
        if end < 0:
            if len(self.buffer) > RESPONSE_HEAD_LIMIT:
                raise BackendFailed("the backend's response head is too large")
            self._searched = max(0, len(self.buffer) - 3)
            return None
        raw = bytes(self.buffer[:end])
        del self.buffer[:end]
        return parse_response_head(raw, self._method)


def parse_response_head(raw: bytes, method: bytes) -> ResponseHead:
    """Parse a complete response head; raises BackendFailed (502)."""
    lines = raw.rstrip(b"\r\n").split(b"\n")
    status_match = _STATUS_LINE.fullmatch(lines[0])
    if not status_match:
        raise BackendFailed("the backend answered something that is not HTTP/1.x")
    http10 = status_match.group(1) == b"0"
    status = int(status_match.group(2))

    lengths: set[bytes] = set()
    codings: list[bytes] = []
    tokens: set[bytes] = set()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or name != name.strip() or not name:
            raise BackendFailed("the backend sent a malformed response header")
        name, value = name.lower(), value.strip()
        if name == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
        elif name == b"transfer-encoding":
            codings += [c.strip().lower() for c in value.split(b",")]
        elif name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))

    if codings and (lengths or http10):
        raise BackendFailed("the backend framed its response two ways")
    if len(lengths) > 1 or any(not v.isdigit() for v in lengths):
        raise BackendFailed("the backend sent a bad Content-Length")

    length = int(next(iter(lengths))) if lengths else 0
    if status == 101:
        framing = Framing.TUNNEL
    elif method == b"HEAD" or status < 200 or status in (204, 304):
        framing = Framing.NONE
    elif codings:
        framing = Framing.CHUNKED if codings[-1] == b"chunked" else Framing.CLOSE
    elif lengths:
        framing = Framing.LENGTH
    else:
        framing = Framing.CLOSE
    return ResponseHead(raw, status, http10, framing, length, frozenset(tokens))


class _Chunk(enum.Enum):
    SIZE = 1
    DATA = 2
    DATA_END = 3
    TRAILER = 4


class ChunkedTracker:
    """Follows a chunked body as it passes, to tell where it ends.

    Lines are read in place where they lie whole in one piece (a streamed
    token's chunk always does), so following a stream costs a search and a
    match per chunk, and no copies.
    """

    def __init__(self) -> None:
        self._state = _Chunk.SIZE
        self._remaining = 0
        self._line = b""  # the start of a line cut by the end of a piece

    def __repr__(self) -> str:
        return f"<ChunkedTracker {self._state.name} remaining={self._remaining}>"

    def feed(self, data: bytes) -> int:
        """How many bytes of `data` belong to the body; -1 if all, and more.

        A return of n >= 0 means the body ended after `data[:n]`. Raises
        ValueError on framing that is not chunked encoding.
        """
        if self._state is _Chunk.SIZE and not self._line and self._whole_chunk(data):
            return -1
        pos, size = 0, len(data)
        while pos < size:
            if self._state is _Chunk.DATA:
                taken = min(self._remaining, size - pos)
                pos += taken
                self._remaining -= taken
                if not self._remaining:
                    self._state = _Chunk.DATA_END
                continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                self._line += data[pos:]
                if len(self._line) > _LINE_LIMIT:
                    raise ValueError("chunk line too long")
                return -1
            if self._line:
                line = self._line + data[pos:newline]
                self._line = b""
                ended = self._end_of_line(line, 0, len(line))
            else:
                ended = self._end_of_line(data, pos, newline)
            pos = newline + 1
            if ended:
                return pos
        return -1

    def _whole_chunk(self, data: bytes) -> bool:
        """Whether `data` is one whole chunk of data, and nothing else.

        A streamed token comes so, and this answers for it with one match
        where the general walk takes a pass for each of its three parts.
        """
        size_line = _PLAIN_SIZE_LINE.match(data)
        if size_line is None:
            return False
        data_end = size_line.end() + int(size_line[1], 16)
        whole = data_end > size_line.end() and data_end + 2 == len(data)
        return whole and data.endswith(b"\r\n")

    def _end_of_line(self, data: bytes, start: int, end: int) -> bool:
        """Take the line `data[start:end]`; True if it ends the body."""
        if self._state is _Chunk.SIZE:
            match = _SIZE_LINE.fullmatch(data, start, end)
            if not match:
                raise ValueError("bad chunk size")
            self._remaining = int(match[1], 16)
            self._state = _Chunk.DATA if self._remaining else _Chunk.TRAILER
            return False
        empty = end == start or (end == start + 1 and data[start] == _CR)
        if self._state is _Chunk.DATA_END:
            if not empty:
                raise ValueError("chunk data longer than its size")
            self._state = _Chunk.SIZE
            return False
        return empty  # a trailer line, or the blank line that ends the body


class BodyEnd:
    """Where a response body ends, followed piece by piece as it passes.

    The relay asks the same of every piece, in its task or in a thread
    (net/pump): how much of it is body, and whether the body ended there.
    Whoever passes a piece on counts it in `relayed`.
    """

    def __init__(self, head: ResponseHead) -> None:
        self.framing = head.framing
        self.remaining = head.length  # what is left of a Content-Length body
        self.relayed = 0  # bytes of body the client was sent
        self._chunks = ChunkedTracker() if head.framing is Framing.CHUNKED else None

    def __repr__(self) -> str:
        return (
            f"<BodyEnd {self.framing.name} remaining={self.remaining}"
            f" relayed={self.relayed}>"
        )

    def cut(self, data: bytes) -> tuple[bytes, bool, bool]:
        """The body's part of `data`; whether the body ended in it; whether
        nothing followed that end.

        Raises ValueError on a chunked body that breaks chunked encoding.
        """
        if self.framing is Framing.LENGTH:
            if len(data) < self.remaining:
                self.remaining -= len(data)
                return data, False, False
            clean = len(data) == self.remaining
            data, self.remaining = data[: self.remaining], 0
            return data, True, clean
        if self._chunks is not None:
            end = self._chunks.feed(data)
            if end >= 0:
                return data[:end], True, end == len(data)
        return data, False, False

    @property
    def is_stream(self) -> bool:
        """Whether the body's length is unknown until it ends (a stream)."""
        return self.framing in (Framing.CHUNKED, Framing.CLOSE)

    @property
    def ends_at_close(self) -> bool:
        """Whether the backend closing is the body's proper end."""
        return self.framing is Framing.CLOSE
