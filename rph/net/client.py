"""A client's connection: its socket, and what was read but not yet used.

One task per connection, `read_continuously`, reads the socket for the
connection's whole life: between requests it gathers the next one, while a
request is answered it notices at once that the client left (an EOF or a
reset reaches the watch of that request) and keeps pipelined bytes for
later. Reading all the time costs nothing per request, where a reader
started and cancelled for each request would cost more than the relaying.

Writes translate a connection that broke into ClientGone, and closing is
done so that the client can still read everything RPH sent.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import trio

# After RPH's last byte, what the client still sends is read and dropped
# for this long before the socket closes: closing with unread bytes makes
# the kernel send a reset, which can destroy a response the client has not
# read yet (a 413 sent before the body, say).
LINGER_DEADLINE = 2.0

# Large reads keep a 16 MB upload to a few dozen trips through the loop.
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
        self.stream = stream
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

    async def read_continuously(self) -> None:
        """Read into `buffer` until EOF or a reset; the connection's reader."""
        while True:
            if len(self.buffer) >= PIPELINE_BUFFER_LIMIT and not self._waiting:
                self._unpaused = trio.Event()
                await self._unpaused.wait()
                continue
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except _BROKEN:
                self.reset = True
                self._arrived.set()
                if self.on_reset is not None:
                    self.on_reset()
                return
            if not data:
                self.eof = True
                self._arrived.set()
                if self.on_eof is not None:
                    await self.on_eof()
                return
            self.buffer += data
            self._arrived.set()

    async def receive(self) -> bool:
        """Wait until `buffer` grows; False once the client sent EOF.

        Raises ClientGone if the connection was reset: unlike an EOF, that
        leaves nobody to answer.
        """
        size = len(self.buffer)
        self._waiting = True
        self._unpaused.set()
        try:
            while len(self.buffer) == size and not (self.eof or self.reset):
                if self._arrived.is_set():
                    self._arrived = trio.Event()
                await self._arrived.wait()
        finally:
            self._waiting = False
        if len(self.buffer) > size:
            return True
        if self.reset:
            raise ClientGone
        return False

    def has_unread(self) -> bool:
        """Whether bytes or an EOF from the client wait in the socket."""
        return not (self.eof or self.reset) and self.stream.socket.is_readable()

    async def send(self, data: bytes) -> None:
        """Write to the client; raises ClientGone if it is not there."""
        try:
            await self.stream.send_all(data)
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
