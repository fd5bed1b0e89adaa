"""A client's connection: its socket, and what was read but not yet used.

One task per connection, `read_continuously`, reads the socket for the
connection's whole life: between requests it gathers the next one, while a
request is answered it notices at once that the client left (an EOF or a
reset reaches the watch of that request) and keeps pipelined bytes for
later. Reading all the time costs nothing per request, where a reader
started and cancelled for each request would cost more than the relaying.
A request body of known length is read in place into one buffer of its
size (`begin_body`).

Writes translate a connection that broke into ClientGone, and closing is
done so that the client can still read everything RPH sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import trio

from rph.net import fastio

# After RPH's last byte, what the client still sends is read and dropped
# for this long before the socket closes: closing with unread bytes makes
# the kernel send a reset, which can destroy a response the client has not
# read yet (a 413 sent before the body, say).
LINGER_DEADLINE = 2.0

# Large reads keep a 16 MB upload to a few dozen trips through the loop
# (with 64 KiB reads, a 1 MB prompt's first token came a millisecond later).
READ_SIZE = 256 * 1024

# Bytes read ahead of the request being answered (pipelined requests) are
# kept up to this; beyond it the client is plainly alive and reading pauses
# until the next request takes them.
PIPELINE_BUFFER_LIMIT = 1024 * 1024

_BROKEN = (trio.BrokenResourceError, trio.ClosedResourceError)


class ClientGone(Exception):
    """The client left: a reset, a failed write, or EOF or silence where a
    request was due."""


class ClientConnection:
    """A client's socket and the bytes read from it but not yet used."""

    def __init__(self, stream: trio.SocketStream, peer: str) -> None:
        self.stream, raw = fastio.adopt(stream)
        self.fast = fastio.FastSocket(raw)
        self.peer = peer
        self.buffer = bytearray()
        self.eof = False
        self.reset = False
        # Set by the watch of the request being answered.
        self.on_eof: Callable[[], Awaitable[None]] | None = None
        self.on_reset: Callable[[], None] | None = None
        self._arrived = trio.Event()
        self._unpaused = trio.Event()
        self._waiting = False
        self._taken_in = 0  # bytes read so far, into `buffer` or a body
        # The unfilled end of a body being read (see `begin_body`).
        self._body_rest: memoryview | None = None

    async def read_continuously(self) -> None:
        """Read until EOF or a reset; the connection's reader."""
        while True:
            body_rest = self._body_rest  # once filled, what follows is buffered
            full = len(self.buffer) >= PIPELINE_BUFFER_LIMIT
            if not body_rest and full and not self._waiting:
                self._unpaused = trio.Event()
                await self._unpaused.wait()
                continue
            try:
                if body_rest:
                    # Straight into the body: no copy, no growing buffer.
                    read = await self.fast.receive_into(body_rest)
                    self._body_rest = body_rest[read:]
                else:
                    data = await self.fast.receive(READ_SIZE)
                    self.buffer += data
                    read = len(data)
                    # A body may have begun while this read waited.
                    self._buffered_into_body()
            except _BROKEN:
                self.reset = True
                self._arrived.set()
                if self.on_reset is not None:
                    self.on_reset()
                return
            if not read:
                self.eof = True
                self._arrived.set()
                if self.on_eof is not None:
                    await self.on_eof()
                return
            self._taken_in += read
            self._arrived.set()

    async def receive(self) -> bool:
        """Wait until more is read (into `buffer` or a body); False at EOF.

        Raises ClientGone if the connection was reset: unlike an EOF, that
        leaves nobody to answer.
        """
        taken_in = self._taken_in
        self._waiting = True
        self._unpaused.set()
        try:
            while self._taken_in == taken_in and not (self.eof or self.reset):
                if self._arrived.is_set():
                    self._arrived = trio.Event()
                await self._arrived.wait()
        finally:
            self._waiting = False
        if self._taken_in > taken_in:
            return True
        if self.reset:
            raise ClientGone
        return False

    def begin_body(self, length: int) -> bytearray:
        """A body of `length` bytes: what `buffer` holds, the rest to come.

        The reader fills the rest in place; `receive` waits for it and
        `body_missing` says how much is left. `end_body` must follow.
        """
        body = bytearray(length)
        self._body_rest = memoryview(body)
        self._buffered_into_body()
        return body

    def _buffered_into_body(self) -> None:
        rest = self._body_rest
        if rest is None or not self.buffer:
            return
        taken = min(len(rest), len(self.buffer))
        with memoryview(self.buffer) as buffered:
            rest[:taken] = buffered[:taken]
        del self.buffer[:taken]
        self._body_rest = rest[taken:]

    def body_missing(self) -> int:
        return len(self._body_rest) if self._body_rest is not None else 0

    def end_body(self) -> None:
        """Back to reading into `buffer` (the next request, pipelined bytes)."""
        if self._body_rest is not None:
            self._body_rest.release()
            self._body_rest = None

    def has_unread(self) -> bool:
        """Whether bytes or an EOF from the client wait in the socket."""
        return not (self.eof or self.reset) and self.stream.socket.is_readable()

    async def send(self, data: bytes) -> None:
        """Write to the client; raises ClientGone if it is not there."""
        try:
            await self.fast.send_all(data)
        except _BROKEN:
            raise ClientGone from None

    async def aclose(self) -> None:
        """Close so that the client can read everything sent to it.

        Called once the reader has stopped. The EOF goes first, so the
        client sees the end at once; what it still sends is read and
        dropped until it closes too, for at most LINGER_DEADLINE.
        """
        with contextlib.suppress(*_BROKEN):
            if not (self.eof or self.reset):
                await self.stream.send_eof()
                with trio.move_on_after(LINGER_DEADLINE):
                    while await self.stream.receive_some(READ_SIZE):
                        pass
        await self.stream.aclose()
